"""Decoding resolved once against a checkpoint's generation config and applied exactly: plain greedy ignores the
checkpoint's repetition penalty (which transformers' `generate` would otherwise merge in and vLLM would not), the
generation-config decoding applies it, settings neither engine can apply alike are refused, and a raw answer is
cut after its first eos as a batch of one returns it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import GenerationConfig

from lavit.inference.decoding import resolve_decoding, trim_after_eos
from lavit.inference.engines import TransformersEngine
from lavit.models.checkpoint import load_model_and_processor

QWEN = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}


def test_qwens_config_resolves_to_greedy_with_or_without_its_penalty():
    config = GenerationConfig(**QWEN)
    greedy = resolve_decoding(config, 151645)
    assert (greedy["repetition_penalty"], greedy["eos_token_id"]) == (1.0, [151645, 151643])
    assert greedy["checkpoint"]["repetition_penalty"] == 1.05  # what was left out is recorded
    kept = resolve_decoding(config, 151645, decoding="generation_config", sampling_from_checkpoint=True)
    assert kept["repetition_penalty"] == 1.05  # top_k 1: sampling that is greedy in effect
    assert resolve_decoding(config, 151645, eos="tokenizer")["eos_token_id"] == [151645]
    assert resolve_decoding(None, 7)["eos_token_id"] == [7]  # no config: the tokenizer's eos


def test_what_both_engines_cannot_apply_alike_is_refused():
    sampling = GenerationConfig(**{**QWEN, "top_k": 50, "temperature": 0.7})
    with pytest.raises(ValueError, match=r"samples \(do_sample=true, temperature=0.7, top_k=50"):
        resolve_decoding(sampling, 1, decoding="generation_config", sampling_from_checkpoint=True)
    # lmms-eval passes do_sample=False: the same config is then greedy, penalty kept
    assert resolve_decoding(sampling, 1, decoding="generation_config")["repetition_penalty"] == 1.05
    beams = GenerationConfig(num_beams=4, no_repeat_ngram_size=3, eos_token_id=1)
    with pytest.raises(ValueError, match=r"sets num_beams=4, no_repeat_ngram_size=3, which lavit does not apply"):
        resolve_decoding(beams, 1, decoding="generation_config")
    assert resolve_decoding(beams, 1)["decoding"] == "greedy"  # plain greedy reads none of it
    with pytest.raises(ValueError, match="names an eos token"):
        resolve_decoding(GenerationConfig(), None)
    with pytest.raises(ValueError, match="decoding must be one of"):
        resolve_decoding(None, 1, decoding="beam")


def test_trim_after_eos():
    assert trim_after_eos([5, 6, 2, 0, 0], [2, 3]) == [5, 6, 2]
    assert trim_after_eos([5, 3, 2], [2, 3]) == [5, 3]
    assert trim_after_eos([5, 6], [2]) == [5, 6]


def _answers(decoding: dict | None, penalty: float, *, explicit: float | None = None, raw: bool = False):
    """Answers of the seeded tiny model whose checkpoint config carries `penalty`, through the engine with
    `decoding`; or, with `explicit`, transformers' own `generate` told that penalty and nothing else."""
    model, processor = load_model_and_processor("tiny", seed=3)
    model.generation_config = GenerationConfig(**{**model.generation_config.to_dict(), "repetition_penalty": penalty})
    images = [Image.new("RGB", (56, 56), (200, 30, 30)), Image.new("RGB", (84, 56), (30, 30, 200))]
    questions = ["what color is the circle ?", "what shape is it ?"]
    if explicit is None:
        engine = TransformersEngine(model, processor, decoding=decoding)
        return engine.generate(images, questions, latent_tokens=[], mode="none", max_new_tokens=12,
                               keep_special_tokens=raw)
    from lavit.inference.generate import generate_answers

    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, repetition_penalty=explicit)
    return generate_answers(model, processor, images, questions, latent_tokens=[], mode="none", max_new_tokens=12)


def test_the_engine_applies_exactly_the_resolved_decoding():
    greedy = _answers(None, 5.0)
    with_penalty = _answers({"decoding": "generation_config"}, 5.0)
    assert greedy == _answers(None, 1.0, explicit=1.0)  # the checkpoint's 5.0 never reached generate
    assert with_penalty == _answers(None, 1.0, explicit=5.0)
    assert greedy != with_penalty  # a penalty this large changes the answers: the equalities above mean something


class ScriptedModel:
    """A model whose `generate` returns the prompt followed by scripted new tokens (row 1 ends on an eos, row 2
    goes on, so row 1 is padded as in any batch): the decoding, not the model, is under test."""

    def __init__(self, new_tokens: list[list[int]], eos: list[int]):
        self.new_tokens, self.device = new_tokens, torch.device("cpu")
        self.generation_config = GenerationConfig(eos_token_id=eos)

    def generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor(self.new_tokens)], dim=1)


def test_a_raw_answer_keeps_special_tokens_and_ends_at_its_eos():
    from lavit.inference.generate import generate_answers

    _, processor = load_model_and_processor("tiny")
    tokenizer = processor.tokenizer
    word, other, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("red", "circle", "<|im_end|>",
                                                                            "<|endoftext|>"))
    model = ScriptedModel([[word, other, eos, pad, pad], [other, other, word, word, word]], eos=[eos])
    images = [Image.new("RGB", (56, 56)), Image.new("RGB", (84, 56))]
    questions = ["what color is the circle ?", "what shape is it ?"]
    raw = generate_answers(model, processor, images, questions, latent_tokens=[], mode="none", max_new_tokens=5,
                           keep_special_tokens=True)
    assert raw == [tokenizer.decode([word, other, eos], skip_special_tokens=False),
                   tokenizer.decode([other, other, word, word, word], skip_special_tokens=False)]
    assert raw[0].endswith("<|im_end|>") and "<|endoftext|>" not in raw[0]  # cut after its eos: no padding
    text = generate_answers(model, processor, images, questions, latent_tokens=[], mode="none", max_new_tokens=5)
    assert text[0] == tokenizer.decode([word, other], skip_special_tokens=True)
