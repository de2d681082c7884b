"""The guide's figures are drawn by the code they show: every stage of the diagram is a real command, the gate plot
is GateSchedule's, and each drawing function writes a PNG from its data (the full set, with the toy teacher and the
control student, in the slow test)."""

from __future__ import annotations

import argparse

import figures
import numpy as np
import pytest
from PIL import Image

from lavit.cli import build_parser


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_the_pipeline_names_real_commands_and_is_drawn(tmp_path):
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert [s.command for s in figures.STAGES if s.command not in subs] == []
    figures.pipeline_figure(tmp_path / "p.png")
    width, height = png_size(tmp_path / "p.png")
    assert width > 1000 and height > 500


def test_the_gate_figure_draws_the_schedule(tmp_path, monkeypatch):
    drawn = {}
    real_plot = figures.plt.Axes.plot

    def record(ax, x, y, *args, label=None, **kwargs):
        drawn.setdefault(label, []).append(np.asarray(y))
        return real_plot(ax, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(figures.plt.Axes, "plot", record)
    figures.gate_figure(tmp_path / "g.png", warmup_steps=4, steps=8)
    cosine, log_cosine = drawn["cosine (eq. 5, default)"]
    # eq. 5 by hand: γ = ε + (1 − ε)/2 · (1 − cos(π t / T_w)) for t < T_w, then 1
    eps = 1e-6
    expected = [eps + (1 - eps) / 2 * (1 - np.cos(np.pi * t / 4)) if t < 4 else 1.0 for t in range(9)]
    np.testing.assert_allclose(cosine, expected, rtol=1e-12)
    np.testing.assert_allclose(log_cosine, np.log(expected), rtol=1e-12)
    assert list(drawn["hard (w/o curriculum gate)"][0]) == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert drawn["cosine, gate_final=0.1"][0][-1] == pytest.approx(0.1)
    png_size(tmp_path / "g.png")


def test_the_heatmap_and_audit_plots_draw_their_data(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(2)]
    maps = {name: [m / m.sum() for m in rng.random((2, 2, 2))] for name in ("teacher", "student")}
    figures.heatmap_figure(tmp_path / "h.png", scenes, [[0, 0, 28, 28], [28, 28, 56, 56]], ["q1", "q2"], maps)
    png_size(tmp_path / "h.png")
    table = [{"intervention": "forced", "applicable": True, "accuracy": 0.6, "ci95": [0.5, 0.7]},
             {"intervention": "zero", "applicable": True, "accuracy": 0.3, "ci95": [0.2, 0.4], "flip_rate": 0.4,
              "vs_forced": {"difference": -0.3, "mcnemar_p": 1e-5}},
             {"intervention": "first_repeat", "applicable": False, "reason": "needs K >= 3"}]
    figures.audit_figure(tmp_path / "a.png", table, "audit")
    png_size(tmp_path / "a.png")


@pytest.mark.slow
def test_every_figure_of_the_guide_is_made(tmp_path):
    written = figures.write_figures(tmp_path)
    assert set(written) == {"pipeline.png", "gate_schedule.png", "attention_heatmaps.png", "audit.png"}
    for path in written.values():
        png_size(path)
