"""Distilling across model families: a Qwen3-VL teacher (16-pixel patches) into a Qwen2.5-VL student (14-pixel
patches) and back, extract → filter → train → eval, with the trajectory target checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lavit.cli import main
from lavit.data.samples import open_rgb
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.data.targets import TIE_TOLERANCE
from lavit.models.checkpoint import read_lavit_meta
from lavit.models.families import family_named
from lavit.models.grid import merged_grid
from lavit.models.projection_head import HEAD_WEIGHTS
from lavit.models.tiny import TEACHER_SPEC, build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.teacher.filter import run_filter
from lavit.teacher.filter_config import FilterConfig
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training
from tests.eval.test_eval_e2e import write_mmvp
from tests.teacher.test_extract import write_samples

TOKENS = (4, 64)  # merged image tokens, min and max, for teacher and student alike


def pixel_limits(family: str) -> dict[str, int]:
    unit = family_named(family).pixels_per_token
    return {"min_pixels": TOKENS[0] * unit, "max_pixels": TOKENS[1] * unit}


def axis_by_hand(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of one axis, written out cell by cell independently of `lavit.data.targets`: where the
    axis shrinks, the overlap of destination cell [j/dst, (j+1)/dst] with source cell [i/src, (i+1)/src] in
    source cells (area, mass-conserving); where it grows or stays, half-pixel-centre linear interpolation (what
    paper C.2 and PyTorch's `align_corners=False` mean)."""
    w = np.zeros((dst, src))
    for j in range(dst):
        if dst < src:
            for i in range(src):
                w[j, i] = max(0.0, min((j + 1) / dst, (i + 1) / src) - max(j / dst, i / src)) * src
        else:
            x = max((j + 0.5) * src / dst - 0.5, 0.0)
            x0 = int(x)
            w[j, x0] += 1 - (x - x0)
            w[j, min(x0 + 1, src - 1)] += x - x0
    return w


def resample_by_hand(values: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    return (axis_by_hand(src[0], dst[0]) @ values.reshape(src) @ axis_by_hand(src[1], dst[1]).T).reshape(-1)


def target_by_hand(a_traj: np.ndarray, src: tuple[int, int], dst: tuple[int, int], top_k: int) -> np.ndarray:
    """Resample, min-max (eq. 3), keep the Top-K values (ties at the k-th kept), renormalise."""
    mapped = resample_by_hand(np.asarray(a_traj, dtype=np.float64), src, dst)
    scaled = (mapped - mapped.min()) / (mapped.max() - mapped.min())
    kth = np.sort(scaled)[::-1][top_k - 1]
    kept = np.where(scaled >= kth - TIE_TOLERANCE, scaled, 0.0)
    return kept / kept.sum()


@pytest.mark.slow
@pytest.mark.parametrize("teacher_family,student_family", [("qwen3_vl", "qwen2_5_vl"), ("qwen2_5_vl", "qwen3_vl")])
def test_cross_family_extract_filter_train_eval(tmp_path, teacher_family, student_family):
    samples = write_samples(tmp_path / "data", 12, bad=False)
    images = tmp_path / "data" / "images"
    run_extract(ExtractConfig(samples=str(samples), image_root=str(images), out=str(tmp_path / "signals"),
                              teacher=f"tiny-teacher:{teacher_family}", queries="answer", batch_size=4,
                              max_new_tokens=4, **pixel_limits(teacher_family)))
    # a random teacher is rarely right: keep the alignment stage only, so every extracted row reaches training
    report = run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"),
                                     stages=["alignment"], min_s_focus=0.0))
    assert report["kept"] == 12
    table = read_sft_table([str(tmp_path / "sft")], "answer", need_signals=True)
    rows = table.to_pylist()
    teacher_patch = family_named(teacher_family).patch_size
    for row in rows:  # signals are stored on the teacher's own grid, V_sem at the teacher's width
        size = open_rgb(images / row["image"]).size
        assert tuple(row["a_traj_grid"]) == merged_grid(size, patch_size=teacher_patch, **pixel_limits(teacher_family))
        assert len(row["v_sem"]) == TEACHER_SPEC.hidden_size

    out = tmp_path / "run"
    result = run_training(LavitTrainConfig(
        model=f"tiny:{student_family}", data=[str(tmp_path / "sft")], image_root=str(images), output_dir=str(out),
        max_steps=3, global_batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1, save_steps=1000,
        gate_warmup_steps=2, gradient_checkpointing=False, **pixel_limits(student_family)))
    student_dir = out / "student"
    assert json.loads((student_dir / "config.json").read_text())["model_type"] == student_family
    assert read_lavit_meta(student_dir)["teacher_dim"] == TEACHER_SPEC.hidden_size
    head = load_file(student_dir / HEAD_WEIGHTS)
    assert TEACHER_SPEC.hidden_size in {t.shape[0] for t in head.values() if t.ndim == 2}  # φ_mlp ends at D_teacher
    assert all(np.isfinite(h["traj_loss"]) for h in result["log_history"] if "traj_loss" in h)

    # the student's target is the teacher map resampled onto the student's grid, checked by hand
    processor = build_tiny_processor(build_tiny_tokenizer(), family=student_family, **pixel_limits(student_family))
    dataset = LavitSftDataset(table, str(images), processor, [], system_prompt=None)
    student_patch = family_named(student_family).patch_size
    regridded = 0
    for i, row in enumerate(rows):
        size = open_rgb(images / row["image"]).size
        src = tuple(row["a_traj_grid"])[1:]
        dst = merged_grid(size, patch_size=student_patch, **pixel_limits(student_family))[1:]
        expected = target_by_hand(np.asarray(row["a_traj"]), src, dst, top_k=8)
        np.testing.assert_allclose(dataset[i]["traj_target"].numpy(), expected, rtol=1e-4, atol=1e-6)  # fp32 vs fp64
        regridded += src != dst
    assert regridded >= len(rows) // 2  # the two families really put most images on different grids

    write_mmvp(tmp_path / "MMVP")
    assert main(["eval", "--model", str(student_dir), "--benchmark", "mmvp", "--data-root", str(tmp_path / "MMVP"),
                 "--out", str(tmp_path / "eval"), "--max-new-tokens", "3"]) == 0
    summary = json.loads((tmp_path / "eval" / "mmvp" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["settings"]["latent_mode"] == "forced"
    assert summary["settings"]["max_pixels"] == pixel_limits(student_family)["max_pixels"]


def test_target_by_hand_agrees_with_a_known_case():
    """The hand reference itself, on a 2 × 2 → 4 × 4 upsampling and a 3 × 3 → 2 × 2 downsampling small enough
    to check on paper."""
    up = resample_by_hand(np.array([0.0, 1.0, 2.0, 3.0]), (2, 2), (4, 4)).reshape(4, 4)
    assert up[0].tolist() == [0.0, 0.25, 0.75, 1.0] and up[:, 0].tolist() == [0.0, 0.5, 1.5, 2.0]
    # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]: the middle row and column split in half, the centre in quarters
    down = resample_by_hand(np.arange(9.0), (3, 3), (2, 2)).reshape(2, 2)
    np.testing.assert_allclose(down, [[0 + 0.5 * 1 + 0.5 * 3 + 0.25 * 4, 6.0], [12.0, 15.0]], atol=1e-12)
    assert torch.allclose(torch.tensor(target_by_hand(np.array([0.0, 1.0, 2.0, 3.0]), (2, 2), (2, 2), 2)),
                          torch.tensor([0.0, 0.0, 2 / 5, 3 / 5], dtype=torch.float64))
