"""Paired differences over seeds: the t interval against hand-computed values, and the verdict."""

from __future__ import annotations

import math

import pytest

from lavit.analysis.stats import paired_summary, t_interval, verdict


def test_t_interval_matches_a_hand_computed_interval():
    # values 1, 2, 3, 4, 5: mean 3, sample sd sqrt(2.5), t_{0.975, 4} = 2.7764451
    low, high = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert low == pytest.approx(3 - half, abs=1e-6) and high == pytest.approx(3 + half, abs=1e-6)
    # two values: t_{0.975, 1} = 12.7062047; mean 0.5, sd sqrt(0.5)
    low, high = t_interval([0.0, 1.0])
    assert high - 0.5 == pytest.approx(12.7062047 * math.sqrt(0.5) / math.sqrt(2), abs=1e-6)
    assert t_interval([0.3]) is None  # one seed: no spread, no interval
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread at all: a point
    with pytest.raises(ValueError):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], confidence=1.0)


def test_paired_summary_and_verdict_come_from_the_interval_only():
    lavit, naive = [0.80, 0.82, 0.79, 0.85, 0.81], [0.70, 0.71, 0.72, 0.70, 0.69]
    summary = paired_summary(lavit, naive)
    assert summary["per_seed"] == pytest.approx([0.10, 0.11, 0.07, 0.15, 0.12])
    assert summary["mean"] == pytest.approx(0.11) and summary["n"] == 5
    assert verdict(tuple(summary["ci95"])) == "lavit_better"
    assert verdict(tuple(paired_summary(naive, lavit)["ci95"])) == "naive_better"
    noisy = paired_summary([0.80, 0.70, 0.85, 0.65, 0.75], [0.75, 0.75, 0.75, 0.75, 0.75])
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and verdict(tuple(noisy["ci95"])) == "no_detectable_difference"
    single = paired_summary([0.9], [0.1])
    assert single["ci95"] is None and verdict(None) == "no_detectable_difference"  # a large mean is not enough
    assert verdict((0.0, 0.2)) == "no_detectable_difference"  # touching 0 is not above it
    with pytest.raises(ValueError, match="equal"):
        paired_summary([0.1, 0.2], [0.1])
