"""vLLM answers as transformers does, token for token, greedy in fp32, on the tiny models of every family vLLM runs
here (`VLLM_FAMILIES`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL); Qwen3.5 is refused (vLLM's CPU linear attention needs bf16)."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from vllm_models import VLLM_ENGINE, build_redrawn, export_redrawn_student
from PIL import Image

from lavit.inference.engines import VLLM_FAMILIES, VllmEngine, build_engine
from lavit.inference.generate import build_generation_inputs
from lavit.models.checkpoint import load_for_inference
from lavit.models.gating import InferenceGate

QUESTIONS = ["what color is the circle ?", "which shape is red ?", "how many cat are there ?"] * 2


def images() -> list[list[Image.Image]]:
    """One image per question (two sizes, so the image-token counts differ), the last question with two."""
    out = []
    for i in range(len(QUESTIONS)):
        size = (112, 84) if i % 2 else (140, 112)
        out.append([Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))])
    out[-1].append(out[0][0])
    return out


# every family on the word-level tiny tokenizer, and Qwen2.5-VL on the real Qwen BPE tokenizer too
CASES = [*VLLM_FAMILIES, "qwen2_5_vl+qwen_tokenizer"]


@pytest.fixture(scope="module", params=CASES)
def engines(request, tmp_path_factory):
    family, _, tokenizer = request.param.partition("+")
    directory = tmp_path_factory.mktemp(f"vllm-{family}") / "student"
    names = export_redrawn_student(directory, family, qwen_tokenizer=bool(tokenizer))
    model, processor = load_for_inference(str(directory), dtype="float32")
    engine = VllmEngine(str(directory), max_images=2, **VLLM_ENGINE)
    yield names, model, processor, engine
    engine.close()


def transformers_ids(model, processor, ims, questions, names, mode, max_new_tokens) -> list[list[int]]:
    """transformers' greedy new tokens per row, up to and including the first end-of-turn (the rest is padding)."""
    inputs = build_generation_inputs(processor, ims, questions, latent_tokens=names, mode=mode, system_prompt=None)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=processor.tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
        rows.append(row[:stop + 1])
    return rows


@pytest.mark.parametrize("mode", ["forced", "natural", "plain", "text_only"])
def test_vllm_answers_equal_transformers_token_for_token(engines, mode):
    names, model, processor, engine = engines
    latent = [] if mode in ("plain", "text_only") else names
    gen_mode = {"plain": "none", "text_only": "none"}.get(mode, mode)
    ims = None if mode == "text_only" else images()
    theirs = transformers_ids(model, processor, ims, QUESTIONS, latent, gen_mode, 8)
    ours = engine.generate_token_ids(ims, QUESTIONS, latent_tokens=latent, mode=gen_mode, max_new_tokens=8)
    assert ours == theirs
    # the identity means something only where answers vary with the input: with the question (rows 0-2) and,
    # for one question at least, with the image (row i and i + 3: the same question on another image)
    assert len({tuple(r) for r in ours[:3]}) == 3
    if ims is not None:
        assert any(ours[i] != ours[i + 3] for i in range(3))
    answers = engine.generate(ims, QUESTIONS, latent_tokens=latent, mode=gen_mode, max_new_tokens=8)
    decoded = [processor.tokenizer.decode([t for t in r if t not in processor.tokenizer.convert_tokens_to_ids(names)],
                                          skip_special_tokens=True).strip() for r in theirs]
    assert answers == decoded and not any(n in a for a in answers for n in names)


def test_forced_latents_change_the_answers(engines):
    names, _, _, engine = engines
    forced = engine.generate_token_ids(images(), QUESTIONS, latent_tokens=names, mode="forced", max_new_tokens=8)
    plain = engine.generate_token_ids(images(), QUESTIONS, latent_tokens=[], mode="none", max_new_tokens=8)
    assert forced != plain  # a prompt that lost its latents would show here


def test_vllm_refuses_what_needs_lavit_attention(engines):
    names, _, _, engine = engines
    with pytest.raises(ValueError, match="masked"):
        engine.generate(images(), QUESTIONS, latent_tokens=names, mode="masked")
    with pytest.raises(ValueError, match="suppresses"):
        engine.generate(images(), QUESTIONS, latent_tokens=names, mode="none")
    with pytest.raises(ValueError, match="inference gate"):
        build_engine("vllm", "unused", gate=InferenceGate(gamma=0.5, question_tokens=True, readout=False))


def test_a_prompt_tokenised_differently_is_an_error(engines, monkeypatch):
    """The per-prompt id check is live: a processor resizing differently from vLLM's makes the answers refused."""
    names, _, _, engine = engines
    changed = copy.deepcopy(engine.processor)
    changed.image_processor.size.longest_edge = changed.image_processor.size.shortest_edge
    monkeypatch.setattr(engine, "processor", changed)
    with pytest.raises(ValueError, match="tokenised prompt 0 differently"):
        engine.generate(images(), QUESTIONS, latent_tokens=names, mode="forced", max_new_tokens=2)


def test_qwen3_5_is_refused_before_vllm_starts(tmp_path):
    model, processor = build_redrawn("qwen3_5")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="qwen3_5 models are not run by vLLM here"):
        VllmEngine(str(tmp_path), **VLLM_ENGINE)
