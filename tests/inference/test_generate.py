"""Latent modes: forced/natural/masked/none, batched, latent tokens never in the returned text."""

import math
from contextlib import ExitStack

import pytest
import torch
from PIL import Image

import lavit.models.attention as attention
from lavit.inference.generate import build_generation_inputs, generate_answers
from lavit.models.families import family_of
from lavit.models.gating import InferenceGate, gated_query_mask

QUESTIONS = ["what color is the circle ?", "what shape is it ?"]


def images():
    return [Image.new("RGB", (112, 84), (200, 30, 30)), Image.new("RGB", (140, 140), (30, 200, 30))]


def hybrid(tiny) -> bool:
    """Linear-attention layers in the decoder (Qwen3.5): masked mode is refused there."""
    return family_of(tiny.model).is_hybrid(tiny.model.config.text_config)


def next_token_logits(tiny, mode, hide):
    inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode=mode,
                                     system_prompt=None)
    context = attention.hidden_keys(torch.isin(inputs["input_ids"], torch.tensor(tiny.latent_ids))) if hide else None
    with torch.no_grad():
        if context is None:
            return tiny.model(**inputs).logits[:, -1]
        with context:
            return tiny.model(**inputs).logits[:, -1]


@pytest.mark.parametrize("mode", ["forced", "natural", "masked", "none"])
def test_every_mode_returns_text_without_latent_tokens(tiny, mode):
    latents = [] if mode == "none" else tiny.names
    if mode == "masked" and hybrid(tiny):
        with pytest.raises(ValueError, match="recurrent state"):
            generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=latents, mode=mode)
        return
    answers = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=latents, mode=mode,
                               max_new_tokens=6, min_new_tokens=6)
    assert len(answers) == 2 and all("lvr" not in a for a in answers)


def test_forced_appends_exactly_k_latents_after_the_prompt(tiny):
    inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                                     system_prompt=None)
    assert inputs["input_ids"][:, -4:].tolist() == [tiny.latent_ids] * 2  # left padding keeps them at the end
    natural = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="natural",
                                      system_prompt=None)
    assert not torch.isin(natural["input_ids"], torch.tensor(tiny.latent_ids)).any()


def test_masked_hides_latents_from_later_tokens(tiny):
    """Changing <lvr_1..K-1> changes forced answers but not masked ones (the first answer token is read
    off <lvr_K>'s own state, which in masked mode sees only the prompt and itself)."""
    forced, masked = next_token_logits(tiny, "forced", False), next_token_logits(tiny, "masked", True)
    with torch.no_grad():
        tiny.model.get_input_embeddings().weight[tiny.latent_ids[:-1]] += 5.0
    forced2, masked2 = next_token_logits(tiny, "forced", False), next_token_logits(tiny, "masked", True)
    text = torch.ones(forced.shape[1], dtype=torch.bool)
    text[tiny.latent_ids] = False  # the tied lm_head rows of the latent tokens move with their embeddings
    assert not torch.allclose(forced[:, text], forced2[:, text])
    # linear-attention layers carry the latents past any mask: why generate_answers refuses masked mode there
    assert torch.equal(masked[:, text], masked2[:, text]) != hybrid(tiny)


def test_masked_mask_reaching_the_model_blocks_latent_keys(tiny, sdpa_masks):
    if hybrid(tiny):
        pytest.skip("masked mode is refused for hybrid decoders (test_every_mode_returns_text_without_latent_tokens)")
    seen = sdpa_masks
    generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="masked",
                     max_new_tokens=2, min_new_tokens=2)
    inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="masked",
                                     system_prompt=None)
    latent_cols = torch.isin(inputs["input_ids"], torch.tensor(tiny.latent_ids))  # [B, S]
    prefill, decode = seen[0], seen[-1]
    prompt_len = latent_cols.shape[1]
    assert prefill.shape[-2:] == (prompt_len, prompt_len)
    for b in range(2):
        cols = latent_cols[b].nonzero().flatten()
        others = (~latent_cols[b]).nonzero().flatten()
        allowed = prefill[b, 0] if prefill.dtype == torch.bool else prefill[b, 0] > torch.finfo(prefill.dtype).min
        assert not allowed[others][:, cols].any()  # no non-latent query sees a latent key
        first_real = inputs["attention_mask"][b].nonzero()[0, 0]
        assert allowed[cols[-1], cols[-1]] and allowed[cols[-1], first_real]  # a latent sees itself and the prompt
        decode_allowed = decode[b, 0, -1] if decode.dtype == torch.bool else decode[b, 0, -1] > torch.finfo(decode.dtype).min
        assert not decode_allowed[cols].any()  # nor does a generated token


def test_batched_equals_unbatched(tiny):
    both = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names,
                            max_new_tokens=5, min_new_tokens=5)
    alone = [generate_answers(tiny.model, tiny.processor, [im], [q], latent_tokens=tiny.names,
                              max_new_tokens=5, min_new_tokens=5)[0] for im, q in zip(images(), QUESTIONS)]
    assert both == alone


def test_bad_modes(tiny):
    with pytest.raises(ValueError, match="latent mode"):
        build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="hidden",
                                system_prompt=None)
    with pytest.raises(ValueError, match="needs the model's latent tokens"):
        build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=[], mode="forced", system_prompt=None)


def gated_logits(tiny, pictures, gate: InferenceGate | None, hide: bool):
    """First-answer-token logits of the forced prompt under an inference gate, latents optionally hidden."""
    inputs = build_generation_inputs(tiny.processor, pictures, QUESTIONS, latent_tokens=tiny.names, mode="forced",
                                     system_prompt=None)
    latents = torch.isin(inputs["input_ids"], torch.tensor(tiny.latent_ids))
    with ExitStack() as stack, torch.no_grad():
        if gate is not None:
            image = inputs["input_ids"] == tiny.model.config.image_token_id
            gated = gated_query_mask(image, latents, inputs["attention_mask"], gate.question_tokens, gate.readout)
            stack.enter_context(attention.gated_image_keys(image, gated, gate.gamma))
        if hide:
            stack.enter_context(attention.hidden_keys(latents))
        return tiny.model(**inputs).logits[:, -1]


def test_a_closed_readout_gate_leaves_the_image_only_to_the_latents(tiny):
    """γ = 0 on the question and the readout: with the latents hidden too, the answer cannot depend on the image;
    with them visible it does (through latents 1..K-1); without the gate, hiding the latents is not enough."""
    if hybrid(tiny):
        pytest.skip("hiding latents is refused for hybrid decoders (their recurrent state carries them)")
    other = [Image.new("RGB", (112, 84), (30, 30, 200)), Image.new("RGB", (140, 140), (200, 200, 30))]
    closed = InferenceGate(0.0, question_tokens=True, readout=True)
    assert torch.equal(gated_logits(tiny, images(), closed, True), gated_logits(tiny, other, closed, True))
    assert not torch.allclose(gated_logits(tiny, images(), closed, False), gated_logits(tiny, other, closed, False))
    assert not torch.allclose(gated_logits(tiny, images(), None, True), gated_logits(tiny, other, None, True))


@pytest.mark.parametrize("gamma", [0.0, 0.25])
def test_inference_gate_mask_reaching_the_model(tiny, sdpa_masks, gamma):
    """ln γ (γ = 0: blocked) on exactly (gated query, image key), in the prompt pass and every decode step."""
    gate = InferenceGate(gamma, question_tokens=False, readout=True)
    generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                     max_new_tokens=2, min_new_tokens=2, gate=gate)
    prefill, decode = sdpa_masks[0], sdpa_masks[-1]
    plain = list(sdpa_masks)
    sdpa_masks.clear()
    generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                     max_new_tokens=2, min_new_tokens=2)
    plain_prefill, plain_decode = sdpa_masks[0], sdpa_masks[-1]
    assert len(plain) == len(sdpa_masks)
    inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                                     system_prompt=None)
    image = inputs["input_ids"] == tiny.model.config.image_token_id  # [B, S]

    def additive(mask):
        return torch.where(mask, 0.0, torch.finfo(torch.float32).min) if mask.dtype == torch.bool else mask.float()

    low = torch.finfo(torch.float32).min
    for b in range(2):
        got, want = additive(prefill)[b, 0], additive(plain_prefill).expand_as(prefill)[b, 0]  # [S, S]
        readout = inputs["input_ids"].shape[1] - 1
        changed = (got != want).nonzero().tolist()
        assert changed and all(q == readout and image[b, k] for q, k in changed)  # only the readout's image keys
        if gamma == 0.0:
            assert (got[readout][image[b]] <= low / 2).all()
        else:
            allowed = image[b] & (want[readout] == 0)
            assert torch.allclose(got[readout][allowed], torch.full_like(got[readout][allowed], math.log(gamma)))
        step, step_plain = additive(decode)[b, 0, -1], additive(plain_decode).expand_as(decode)[b, 0, -1]
        keys = image[b].nonzero().flatten()
        assert ((step[keys] <= low / 2) if gamma == 0.0 else torch.isclose(step[keys], step_plain[keys] +
                                                                             math.log(gamma))).all()


def test_inference_gate_refuses_natural_mode(tiny):
    with pytest.raises(ValueError, match="natural mode"):
        generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="natural",
                         gate=InferenceGate(0.0))


def test_none_with_a_students_latents_generates_none_of_them(tiny):
    """Mode none given the latent tokens: even a model that would write them itself (here: their logits forced
    up) answers without them, so the answer keeps its whole token budget."""
    def favour_latents(module, args, logits):
        logits[..., tiny.latent_ids] += 100.0
        return logits

    hook = tiny.model.lm_head.register_forward_hook(favour_latents)
    try:
        inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=[], mode="none",
                                         system_prompt=None)
        free = tiny.model.generate(**inputs, do_sample=False, max_new_tokens=3,
                                   pad_token_id=tiny.tokenizer.pad_token_id)
        assert torch.isin(free[:, inputs["input_ids"].shape[1]:], torch.tensor(tiny.latent_ids)).all()
        answers = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names,
                                   mode="none", max_new_tokens=3, min_new_tokens=3)
    finally:
        hook.remove()
    assert all(a for a in answers)  # three answer tokens, none spent on latents (they would be stripped)
