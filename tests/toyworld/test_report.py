"""The report reads the mechanism chain off the diagnostics: each link's wording follows its numbers."""

from __future__ import annotations

import pytest

from lavit.toyworld.report import diagnosis_lines


def results(kl_after: float, masked_drop: list[float], verdict: str = "no_detectable_difference") -> dict:
    dynamics = {"lavit": {"0": [{"answer_image_mass": 0.1}, {"answer_image_mass": 0.8}],
                          "1": [{"answer_image_mass": 0.2}, {"answer_image_mass": 0.6}]},
                "naive_sft": {"0": [{"answer_image_mass": 0.5}]}}
    return {"latent_map": {"lavit": {"kl_target_vs_latent": kl_after, "s_focus": 0.6},
                           "base": {"kl_target_vs_latent": 1.5, "s_focus": 0.2}},
            "masked_drop": {"mean": sum(masked_drop) / len(masked_drop), "per_seed": masked_drop},
            "dynamics": dynamics,
            "settings": {"steps": 200, "gate_warmup_fraction": 0.4}, "paired_difference": {"verdict": verdict}}


@pytest.mark.parametrize("kl_after, masked_drop, learned, depends", [
    (0.3, [0.0, 0.0, 0.0], "**learn**", "**does not depend**"),
    (1.6, [0.0, 0.0, 0.0], "**do not learn**", "**does not depend**"),
    (0.3, [0.05, 0.04, 0.06], "**learn**", "**depends**"),
    # a mean drop of 2.2 points whose interval over seeds spans 0 (the premise world's LaViT) is no dependence
    (0.3, [0.057, 0.013, 0.033, 0.063, -0.057], "**learn**", "**does not depend**"),
    (0.3, [0.05], "**learn**", "**does not depend**"),  # one seed: no interval, no claim
])
def test_each_link_is_worded_from_its_numbers(kl_after, masked_drop, learned, depends):
    lines = diagnosis_lines(results(kl_after, masked_drop))
    assert learned in lines[0] and depends in lines[1]
    assert ("95 % t interval over seeds" in lines[1]) == (len(masked_drop) > 1)
    if masked_drop == [0.05, 0.04, 0.06]:  # the change is −5.0 points, its interval the drop's negated
        assert "by -5.0 points (95 % t interval over seeds -7.5 to -2.5)" in lines[1]
    # gate opens at 0.4 × 200 steps; the answer's final image mass is the mean of each seed's last record
    assert "step 80" in lines[2] and "0.70 of their attention" in lines[2] and "Naive-SFT 0.50" in lines[2]
    broken = any("chain breaks" in line for line in lines)
    assert broken == (depends == "**does not depend**")


def test_no_break_is_claimed_when_lavit_wins():
    assert not any("chain breaks" in line for line in diagnosis_lines(results(0.3, [0.0, 0.0], "lavit_better")))
