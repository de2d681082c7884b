"""Statistics for one evaluation: intervals for an accuracy over n items, and paired comparisons of two
answer sets on the same items.

Benchmarks are small (BLINK sub-tasks 124–150 items, MMVP 300): a normal (Wald) interval under-covers
there and can leave [0, 1], so accuracies get Wilson score intervals (or exact Clopper–Pearson, on
request), the paired difference of two accuracies Newcombe's hybrid score interval for paired data
(Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions based on
paired data", method 10), and the test of "no difference" is the exact McNemar test: a two-sided binomial
test of the discordant items, b of them right only under A and c only under B, against p = 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

INTERVAL_METHODS = ("wilson", "clopper_pearson")
PAIRED_METHOD = "newcombe_hybrid_score"


def proportion_interval(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Two-sided interval for a proportion k/n: Wilson score (default) or exact Clopper–Pearson."""
    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method must be one of {INTERVAL_METHODS}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = stats.binomtest(k, n).proportion_ci(confidence, method="wilson" if method == "wilson" else "exact")
    return float(ci.low), float(ci.high)


def accuracy_summary(correct: Sequence[bool], confidence: float = 0.95, method: str = "wilson") -> dict:
    """`{n, correct, accuracy, ci95: [low, high], interval: method}`; accuracy and ci95 are None for no items."""
    n, k = len(correct), int(sum(bool(c) for c in correct))
    ci = proportion_interval(k, n, confidence, method) if n else None
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": None if ci is None else list(ci),
            "interval": method}


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b items right only under A and c right only under B (1.0 when
    no item is discordant)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def paired_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict:
    """Accuracy of A minus accuracy of B on the same items (a[i], b[i] for item i): the difference, Newcombe's
    method-10 interval, the exact McNemar p, and the discordant counts.

    With cells n11 (both right), n10 (A only), n01 (B only), n00 (neither): p_A = (n11 + n10)/n,
    p_B = (n11 + n01)/n, θ = p_A − p_B; with Wilson limits (l_A, u_A), (l_B, u_B), D = n11·n00 − n10·n01
    continuity-corrected as method 10 defines it (C = D − n/2 when D > n/2, 0 when 0 ≤ D ≤ n/2, D when D < 0) and
    φ = C / √((n11+n10)(n01+n00)(n11+n01)(n10+n00)) (0 when a margin is empty),
    θ − √((p_A−l_A)² − 2φ(p_A−l_A)(u_B−p_B) + (u_B−p_B)²) ≤ θ ≤ θ + √((u_A−p_A)² − 2φ(u_A−p_A)(p_B−l_B) + (p_B−l_B)²).
    """
    if len(a) != len(b):
        raise ValueError(f"paired answers need equal lengths (got {len(a)} and {len(b)})")
    n = len(a)
    if n == 0:
        raise ValueError("paired difference of no items")
    n11 = sum(1 for x, y in zip(a, b) if x and y)
    n10 = sum(1 for x, y in zip(a, b) if x and not y)
    n01 = sum(1 for x, y in zip(a, b) if y and not x)
    n00 = n - n11 - n10 - n01
    p_a, p_b = (n11 + n10) / n, (n11 + n01) / n
    l_a, u_a = proportion_interval(n11 + n10, n, confidence)
    l_b, u_b = proportion_interval(n11 + n01, n, confidence)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    cross = n11 * n00 - n10 * n01
    corrected = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    theta = p_a - p_b
    lower = math.sqrt(max((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2, 0.0))
    upper = math.sqrt(max((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2, 0.0))
    return {"n": n, "accuracy_a": p_a, "accuracy_b": p_b, "difference": theta,
            "ci95": [max(theta - lower, -1.0), min(theta + upper, 1.0)], "interval": PAIRED_METHOD,
            "mcnemar_p": mcnemar_exact(n10, n01), "a_only": n10, "b_only": n01, "both": n11, "neither": n00,
            "discordant_rate": (n10 + n01) / n}
