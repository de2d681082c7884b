import math

import pytest
import torch

from lavit.models.gating import GateSchedule, InferenceGate, build_gated_attention_mask, gated_query_mask


def test_cosine_schedule_follows_eq5():
    s = GateSchedule("cosine", epsilon=1e-6, warmup_steps=400)
    assert s.gamma(0) == pytest.approx(1e-6)
    assert s.gamma(200) == pytest.approx(1e-6 + (1 - 1e-6) / 2)
    assert s.gamma(100) == pytest.approx(1e-6 + (1 - 1e-6) / 2 * (1 - math.cos(math.pi / 4)))
    assert s.gamma(400) == 1.0 and s.gamma(999) == 1.0
    assert all(s.gamma(t) < s.gamma(t + 1) for t in range(399))


def test_hard_and_none_variants():
    hard = GateSchedule("hard", warmup_steps=10)
    assert [hard.gamma(t) for t in (0, 9, 10)] == [0.0, 0.0, 1.0]
    assert GateSchedule("none").gamma(0) == 1.0


@pytest.mark.parametrize("kwargs", [{"variant": "soft"}, {"epsilon": 0.0}, {"epsilon": 1.0}, {"warmup_steps": -1}])
def test_bad_schedules_rejected(kwargs):
    with pytest.raises(ValueError):
        GateSchedule(**kwargs)


def _layout():
    # sequence: [sys, img, img, q, q, lat, lat, ans, ans, pad]
    image = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    latent = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    return image, latent, attn


def test_gated_queries_are_question_and_answer_by_default():
    image, latent, attn = _layout()
    assert gated_query_mask(image, latent, attn).int().tolist() == [[0, 0, 0, 1, 1, 0, 0, 1, 1, 0]]
    assert gated_query_mask(image, latent, attn, gate_question_tokens=False).int().tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, 0]]


def test_gated_mask_values():
    image, latent, attn = _layout()
    gate = gated_query_mask(image, latent, attn)
    mask = build_gated_attention_mask(attn, image, gate, 1e-6, torch.float32)[0, 0]  # [S, S]
    blocked = torch.finfo(torch.float32).min
    assert mask.shape == (10, 10)
    assert mask[0, 1] == blocked  # causal
    assert mask[8, 9] == blocked and mask[9, 9] == blocked  # padding key
    assert mask[7, 1] == pytest.approx(math.log(1e-6)) and mask[3, 2] == pytest.approx(math.log(1e-6))  # gated
    assert mask[5, 1] == 0 and mask[6, 2] == 0  # latents see the image
    assert mask[7, 5] == 0 and mask[7, 0] == 0  # answer sees latents and the prefix
    hard = build_gated_attention_mask(attn, image, gate, 0.0, torch.float32)[0, 0]
    assert hard[7, 1] == blocked


def test_final_gamma_ends_every_variant_below_one():
    cosine = GateSchedule("cosine", epsilon=1e-6, warmup_steps=10, final=0.25)
    assert cosine.gamma(0) == pytest.approx(1e-6) and cosine.gamma(5) == pytest.approx(1e-6 + (0.25 - 1e-6) / 2)
    assert cosine.gamma(10) == cosine.gamma(99) == 0.25
    assert [GateSchedule("hard", warmup_steps=3, final=0.5).gamma(t) for t in (0, 3)] == [0.0, 0.5]
    assert GateSchedule("none", final=0.0).gamma(0) == 0.0  # latent-only vision from the first step
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="final gate"):
            GateSchedule(final=bad)


def test_gate_readout_adds_the_last_latent_only():
    image, latent, attn = _layout()
    assert gated_query_mask(image, latent, attn, gate_readout=True).int().tolist() == [[0, 0, 0, 1, 1, 0, 1, 1, 1, 0]]
    assert gated_query_mask(image, latent, attn, gate_question_tokens=False, gate_readout=True).int().tolist() == [
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]]
    no_latents = torch.zeros_like(latent)  # nothing to read out: the flag adds no position
    assert torch.equal(gated_query_mask(image, no_latents, attn, gate_readout=True), gated_query_mask(image, no_latents,
                                                                                                         attn))


def test_inference_gate_from_a_checkpoints_meta():
    assert InferenceGate.from_meta({}) is None and InferenceGate.from_meta({"inference_gate": None}) is None
    gate = InferenceGate.from_meta({"inference_gate": {"gamma": 0.0, "question_tokens": False, "readout": True}})
    assert gate == InferenceGate(0.0, question_tokens=False, readout=True)
    for bad in (1.0, -0.5):
        with pytest.raises(ValueError, match="0 <= γ < 1"):
            InferenceGate(bad)
