"""Comparing two training methods over seeds: paired differences with a t confidence interval.

Each seed gives both methods the same pool draw, data and budget, so the per-seed difference
(method A − method B) is the unit of analysis; its mean gets a two-sided Student-t interval, and the
verdict is read off that interval alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

VERDICTS = ("lavit_better", "naive_better", "no_detectable_difference")


def mean_of_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are there (a seed without a prior-violating question gives None), or None."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval for the mean: mean ± t_{(1+c)/2, n-1} · s / √n, with s the sample
    standard deviation (n − 1 in the denominator). None for fewer than two values (no spread to estimate)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    n = len(values)
    if any(not math.isfinite(v) for v in values):
        raise ValueError("t_interval needs finite values")
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def verdict(ci: tuple[float, float] | None) -> str:
    """lavit_better when the whole interval is above 0, naive_better when below, otherwise (or without an
    interval) no_detectable_difference."""
    if ci is None:
        return "no_detectable_difference"
    low, high = ci
    if low > 0:
        return "lavit_better"
    if high < 0:
        return "naive_better"
    return "no_detectable_difference"


def paired_summary(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Per-seed differences a − b, their mean and t interval (`ci95`: [low, high], or None for one seed)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need equal, non-zero lengths (got {len(a)} and {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    ci = t_interval(diffs, confidence)
    return {"per_seed": diffs, "mean": sum(diffs) / len(diffs), "ci95": None if ci is None else [ci[0], ci[1]],
            "n": len(diffs)}
