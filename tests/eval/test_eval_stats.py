"""The statistics every evaluation reports, against values worked out by hand: Wilson by its closed form,
Clopper–Pearson from the beta quantiles, exact McNemar from the binomial sums, Newcombe's paired interval step by
step and against a published value, and its coverage in a seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from lavit.eval.stats import accuracy_summary, mcnemar_exact, paired_difference, proportion_interval

Z = 1.959963984540054  # the normal 97.5 % quantile


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def cells(n11: int, n10: int, n01: int, n00: int) -> tuple[list[bool], list[bool]]:
    """Answers of A and B with n11 items both right, n10 right only under A, n01 only under B, n00 neither."""
    a = [True] * (n11 + n10) + [False] * (n01 + n00)
    b = [True] * n11 + [False] * n10 + [True] * n01 + [False] * n00
    return a, b


@pytest.mark.parametrize("k, n", [(7, 20), (0, 10), (10, 10), (187, 300), (1, 3)])
def test_wilson_is_the_closed_form(k, n):
    low, high = proportion_interval(k, n)
    assert (low, high) == pytest.approx(wilson(k, n), abs=1e-12)
    assert 0 <= low <= k / n <= high <= 1


def test_wilson_none_right_of_ten():
    assert proportion_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-6)  # z²/(n + z²)


@pytest.mark.parametrize("k, n", [(7, 20), (3, 8), (1, 3), (149, 150)])
def test_clopper_pearson_is_the_beta_quantiles(k, n):
    expected = (sp.beta.ppf(0.025, k, n - k + 1), sp.beta.ppf(0.975, k + 1, n - k))
    assert proportion_interval(k, n, method="clopper_pearson") == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_at_the_edges_has_closed_forms():
    assert proportion_interval(0, 10, method="clopper_pearson") == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-9)
    assert proportion_interval(10, 10, method="clopper_pearson") == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-9)
    # exact is wider than Wilson at small n
    cp, w = proportion_interval(3, 8, method="clopper_pearson"), proportion_interval(3, 8)
    assert cp[0] < w[0] and cp[1] > w[1]


def test_a_90_percent_interval_is_narrower():
    low90, high90 = proportion_interval(7, 20, confidence=0.9)
    low95, high95 = proportion_interval(7, 20)
    assert low95 < low90 < 0.35 < high90 < high95


@pytest.mark.parametrize("b, c, p", [
    (0, 5, 2 / 2 ** 5),  # 0.0625: both tails of Bin(5, ½) at 0 and 5
    (1, 4, 2 * (1 + 5) / 2 ** 5),  # 0.375
    (3, 10, 2 * (1 + 13 + 78 + 286) / 2 ** 13),  # 2·P(X ≤ 3), X ~ Bin(13, ½)
    (2, 2, 1.0),
    (0, 0, 1.0),  # nothing discordant: no evidence of a difference
    (7, 0, 2 / 2 ** 7),
])
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-12)


def test_accuracy_summary():
    s = accuracy_summary([True, False, True, True])
    assert s["n"] == 4 and s["correct"] == 3 and s["accuracy"] == 0.75 and s["interval"] == "wilson"
    assert s["ci95"] == pytest.approx(list(wilson(3, 4)), abs=1e-12)
    exact = accuracy_summary([True, False, True, True], method="clopper_pearson")
    assert exact["interval"] == "clopper_pearson" and exact["ci95"][0] < s["ci95"][0]
    assert accuracy_summary([]) == {"n": 0, "correct": 0, "accuracy": None, "ci95": None, "interval": "wilson"}


def test_newcombe_worked_by_hand():
    # n11 = 20, n10 = 10, n01 = 3, n00 = 17 of n = 50: p_A = 30/50, p_B = 23/50, θ = 7/50
    a, b = cells(20, 10, 3, 17)
    l_a, u_a = wilson(30, 50)
    l_b, u_b = wilson(23, 50)
    cross = 20 * 17 - 10 * 3  # 310 > n/2: continuity-corrected to 310 − 25
    phi = (cross - 25) / math.sqrt(30 * 20 * 23 * 27)
    theta = 0.6 - 0.46
    low = theta - math.sqrt((0.6 - l_a) ** 2 - 2 * phi * (0.6 - l_a) * (u_b - 0.46) + (u_b - 0.46) ** 2)
    high = theta + math.sqrt((u_a - 0.6) ** 2 - 2 * phi * (u_a - 0.6) * (0.46 - l_b) + (0.46 - l_b) ** 2)
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(theta) and d["ci95"] == pytest.approx([low, high], abs=1e-12)
    assert (d["n"], d["both"], d["a_only"], d["b_only"], d["neither"]) == (50, 20, 10, 3, 17)
    assert d["mcnemar_p"] == pytest.approx(mcnemar_exact(10, 3)) and d["discordant_rate"] == pytest.approx(13 / 50)
    assert d["interval"] == "newcombe_hybrid_score"


@pytest.mark.parametrize("table, corrected", [
    ((4, 2, 5, 3), 0),  # n11·n00 − n10·n01 = 12 − 10 = 2 ≤ n/2 = 7: no correlation counted
    ((2, 6, 5, 1), -28),  # 2 − 30 < 0: taken as it is
    ((9, 1, 1, 9), 80 - 10),  # 81 − 1 = 80 > n/2 = 10: less n/2
])
def test_newcombe_correlation_is_continuity_corrected(table, corrected):
    n11, n10, n01, n00 = table
    n = sum(table)
    p_a, p_b = (n11 + n10) / n, (n11 + n01) / n
    l_a, u_a = wilson(n11 + n10, n)
    l_b, u_b = wilson(n11 + n01, n)
    phi = corrected / math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    d = paired_difference(*cells(*table))
    assert d["ci95"] == pytest.approx([
        p_a - p_b - math.sqrt((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2),
        p_a - p_b + math.sqrt((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2)], abs=1e-12)


def test_newcombe_matches_the_published_example():
    # Cavo et al. (2012) complete response before/after consolidation, [[59, 6], [16, 80]]: Fagerland, Lydersen &
    # Laake, "Statistical Analysis of Contingency Tables" ch. 8 (R package contingencytables' tests):
    # estimate −0.0621, Newcombe square-and-add 95 % CI −0.1186 to −0.0046
    d = paired_difference(*cells(59, 6, 16, 80))
    assert round(d["difference"], 4) == -0.0621
    assert [round(x, 4) for x in d["ci95"]] == [-0.1186, -0.0046]


def test_identical_answers_differ_by_nothing():
    a = [True, False, True, True, False]
    d = paired_difference(a, a)
    assert d["difference"] == 0 and d["mcnemar_p"] == 1.0 and d["ci95"][0] < 0 < d["ci95"][1]


def test_paired_interval_covers_near_95_percent():
    # correlated pairs (a model and a close variant): P(A right) = 0.62, P(B right) = 0.55, both right 0.45
    rng = np.random.default_rng(0)
    probabilities = [0.45, 0.17, 0.10, 0.28]  # n11, n10, n01, n00
    truth, n, runs = 0.62 - 0.55, 150, 300
    covered = 0
    for counts in rng.multinomial(n, probabilities, size=runs):
        low, high = paired_difference(*cells(*counts))["ci95"]
        covered += low <= truth <= high
    assert 0.92 <= covered / runs <= 0.985


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="interval method must be one of"):
        proportion_interval(1, 2, method="wald")
    for confidence in (0, 1, 1.5):
        with pytest.raises(ValueError, match="confidence must be in"):
            proportion_interval(1, 2, confidence=confidence)
    for k, n in ((3, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="need 0 <= k <= n"):
            proportion_interval(k, n)
    with pytest.raises(ValueError, match="discordant counts must be >= 0"):
        mcnemar_exact(-1, 3)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="no items"):
        paired_difference([], [])
