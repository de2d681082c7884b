"""Mechanism diagnostics: latent maps and the answer's image mass equal eager-attention references, the
gate shows in the answer's mass, and the KL / S_focus are the hand formulas on those maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.analysis.latent_maps import BoxedSample, build_probe_set, latent_map_stats, snapshot
from lavit.models.grid import box_cells
from lavit.models.lavit_student import LavitStudent


def samples(n=3):
    rng = np.random.default_rng(0)
    return [BoxedSample(f"b{i}", Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)),
                        "what color is the circle ?", "red", [0, 0, 56, 56]) for i in range(n)]


def eager_rows(tiny, batch, rows, gamma):
    """[B, R, S] attention of query positions `rows`, averaged over layers and heads, on the eager path."""
    full = torch.stack(tiny.eager_attentions(batch, gamma)).mean(dim=(0, 2))  # [B, S, S]
    return full[torch.arange(full.shape[0])[:, None], rows]  # [B, R, S]


def test_probe_set_marks_boxes_and_answers(tiny):
    probe = build_probe_set(tiny.processor, samples(), tiny.names, system_prompt=None)
    cells = box_cells([0, 0, 56, 56], (112, 112), (1, 4, 4))
    assert probe.box_masks.shape == (3, 16) and (probe.box_masks[0].numpy() == cells).all() and cells.sum() == 4
    ids = probe.batch["input_ids"][torch.arange(3), probe.first_answers]
    assert tiny.tokenizer.convert_ids_to_tokens(ids.tolist()) == ["red"] * 3
    assert (probe.first_answers - 1 == probe.batch["latent_positions"][:, -1]).all()  # produced by <lvr_K>


@pytest.mark.parametrize("gamma", [1e-6, 1.0])
def test_snapshot_equals_eager_attention_and_shows_the_gate(tiny, gamma):
    probe = build_probe_set(tiny.processor, samples(), tiny.names, system_prompt=None)
    student = LavitStudent(tiny.model, tiny.latent_ids)
    student.gamma = gamma
    snap = snapshot(student, probe)
    batch = probe.batch
    rows = torch.cat([batch["latent_positions"], probe.first_answers[:, None]], dim=1)
    eager = eager_rows(tiny, batch, rows, gamma)  # [B, K+1, S]
    mass = (eager[:, -1] * batch["image_mask"]).sum(-1).mean()
    assert snap["answer_image_mass"] == pytest.approx(float(mass), abs=1e-5)
    if gamma < 1:
        assert snap["answer_image_mass"] < 1e-4  # the gate closes the answer's direct path to the image
    else:
        assert snap["answer_image_mass"] > 0.05
    latent = eager[:, :-1][torch.arange(3)[:, None, None], torch.arange(4)[None, :, None],
                           batch["image_index"][:, None, :]]  # [B, K, N]
    latent = latent / latent.sum(-1, keepdim=True)
    focus = (latent.mean(1) * probe.box_masks).sum(-1).mean()
    assert snap["latent_s_focus"] == pytest.approx(float(focus), abs=1e-5)
    assert snap["gamma"] == gamma and 0.0 <= snap["answer_accuracy"] <= 1.0
    assert student.training  # put back as it was


def test_latent_map_stats_is_the_mean_kl_over_latents_at_gamma_one(tiny):
    probe = build_probe_set(tiny.processor, samples(2), tiny.names, system_prompt=None)
    student = LavitStudent(tiny.model, tiny.latent_ids)
    student.gamma = 1e-6  # the diagnostics always read the inference path
    target = torch.zeros(2, 16)
    target[:, [0, 1, 4, 5]] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    stats = latent_map_stats(student, probe, target)
    assert student.gamma == 1e-6
    batch = probe.batch
    eager = eager_rows(tiny, batch, batch["latent_positions"], 1.0)  # [B, K, S]
    maps = eager[torch.arange(2)[:, None, None], torch.arange(4)[None, :, None], batch["image_index"][:, None, :]]
    maps = (maps / maps.sum(-1, keepdim=True)).double()
    t = target.double()[:, None, :]
    kl = torch.where(t > 0, t * (t.clamp_min(1e-12).log() - maps.log()), torch.zeros_like(maps)).sum(-1).mean()
    assert stats["kl_target_vs_latent"] == pytest.approx(float(kl), rel=1e-5)
    assert stats["s_focus"] == pytest.approx(float((maps.mean(1) * probe.box_masks).sum(-1).mean()), abs=1e-6)
    with pytest.raises(ValueError, match="latent tokens"):
        latent_map_stats(student, build_probe_set(tiny.processor, samples(2), [], system_prompt=None), target)
