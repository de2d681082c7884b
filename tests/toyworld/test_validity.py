"""Each validity check of the toy testbed against hand-made inputs on both sides of its threshold."""

from __future__ import annotations

import pytest

from lavit.toyworld.report import all_validity, validity_lines
from lavit.toyworld.validity import check_premise, check_validity, criterion, failures, premise_validity


def scores(overall=0.9, consistent=0.9, violating=0.9, color=0.9):
    return {"overall": overall, "prior_consistent": consistent, "prior_violating": violating, "color": color}


GOOD = dict(teacher_val=scores(0.97, 1.0, 0.93), teacher_s_focus=0.5, capacity_val=0.95,
            base_val=scores(0.75, 0.98, 0.30), naive_val=scores(0.8, 0.90, 0.6),
            text_only_val=scores(0.7, 1.0, 0.0, color=0.72), prior_strength=0.7)


def test_a_valid_testbed_passes_every_check():
    validity = check_validity(**GOOD)
    assert set(validity) == {"teacher_val_accuracy", "teacher_val_prior_violating", "teacher_test_s_focus",
                             "student_capacity_val_accuracy", "base_val_prior_violating",
                             "naive_sft_prior_consistent_change", "text_only_color_vs_prior"}
    assert failures(validity) == []
    assert validity["naive_sft_prior_consistent_change"]["value"] == pytest.approx(0.90 - 0.98)
    assert validity["text_only_color_vs_prior"]["value"] == pytest.approx(0.02)
    for c in validity.values():
        assert set(c) == {"value", "threshold", "comparison", "pass", "description"}


@pytest.mark.parametrize("change, failed", [
    ({"teacher_val": scores(0.94, 1.0, 0.93)}, "teacher_val_accuracy"),
    ({"teacher_val": scores(0.97, 1.0, 0.89)}, "teacher_val_prior_violating"),
    ({"teacher_s_focus": 0.34}, "teacher_test_s_focus"),
    ({"capacity_val": 0.89}, "student_capacity_val_accuracy"),
    ({"capacity_val": None}, "student_capacity_val_accuracy"),  # not measured = not shown
    ({"base_val": scores(0.75, 0.98, 0.46)}, "base_val_prior_violating"),
    ({"naive_val": scores(0.8, 0.87, 0.6)}, "naive_sft_prior_consistent_change"),  # 0.87 - 0.98 = -0.11
    ({"text_only_val": scores(color=0.64)}, "text_only_color_vs_prior"),
    ({"text_only_val": scores(color=0.76)}, "text_only_color_vs_prior"),
])
def test_each_check_fails_on_its_side_of_the_threshold(change, failed):
    assert failures(check_validity(**(GOOD | change))) == [failed]


def test_thresholds_are_inclusive_and_comparisons_checked():
    assert criterion(0.95, 0.95, ">=", "")["pass"] and criterion(0.45, 0.45, "<=", "")["pass"]
    assert not criterion(None, 0.5, ">=", "")["pass"]
    with pytest.raises(ValueError):
        criterion(0.5, 0.5, ">", "")


PREMISE = dict(teacher_test=0.97, naive_test=0.70, teacher_s_focus=0.50, naive_s_focus=0.25)


def test_the_premise_checks_pass_on_a_student_that_misses_the_evidence():
    checks = check_premise(**PREMISE)
    assert set(checks) == {"naive_sft_test_gap_to_teacher", "naive_sft_s_focus_vs_teacher"}
    assert failures(checks) == []
    assert checks["naive_sft_test_gap_to_teacher"]["value"] == pytest.approx(0.27)
    assert checks["naive_sft_s_focus_vs_teacher"]["value"] == pytest.approx(0.5)


@pytest.mark.parametrize("change, failed", [
    ({"naive_test": 0.83}, ["naive_sft_test_gap_to_teacher"]),  # 0.97 - 0.83 = 0.14 < 0.15
    ({"naive_test": None}, ["naive_sft_test_gap_to_teacher"]),
    ({"naive_s_focus": 0.40}, ["naive_sft_s_focus_vs_teacher"]),  # 0.8 of the teacher's
    ({"teacher_s_focus": 0.0}, ["naive_sft_s_focus_vs_teacher"]),  # no ratio to a teacher that never looks
    ({"naive_test": 0.95, "naive_s_focus": 0.5}, ["naive_sft_test_gap_to_teacher", "naive_sft_s_focus_vs_teacher"]),
])
def test_each_premise_check_fails_on_its_side(change, failed):
    assert failures(check_premise(**(PREMISE | change))) == failed


def demo_results(world_name: str, naive: float = 0.70, naive_focus: float = 0.25) -> dict:
    return {"settings": {"world_name": world_name}, "validity": check_validity(**GOOD),
            "accuracy": {"test": {"teacher": {"overall": 0.97}, "naive_sft": {"overall": naive}}},
            "s_focus": {"teacher": 0.5, "naive_sft": naive_focus, "lavit": 0.6, "base": 0.2}}


def test_the_premise_checks_apply_to_the_premise_world_only_and_the_report_shows_them():
    assert premise_validity(demo_results("default")) == {}
    premise = premise_validity(demo_results("premise"))
    assert premise == check_premise(**PREMISE)
    shown = "\n".join(validity_lines(all_validity(demo_results("premise"))))
    assert "`naive_sft_test_gap_to_teacher`) | 0.270 | >= 0.15 | yes" in shown
    assert "`naive_sft_s_focus_vs_teacher`) | 0.500 | <= 0.75 | yes" in shown and "All 9 validity checks pass" in shown
    failed = demo_results("premise", naive=0.9)
    assert "failed 1 of 9" in "\n".join(validity_lines(all_validity(failed)))
    assert "naive_sft_test_gap_to_teacher" in " ".join(verdict_lines_of(failed))
    assert "All 7 validity checks pass" in "\n".join(validity_lines(all_validity(demo_results("default", naive=0.9))))


def verdict_lines_of(results: dict) -> list[str]:
    from lavit.toyworld.report import verdict_lines

    paired = {"n": 1, "verdict": "no_detectable_difference", "mean": 0.0, "ci95": None, "per_seed": [0.0],
              "per_split": {}}
    stats = {"kl_target_vs_latent": 1.0, "s_focus": 0.3}
    return verdict_lines(results | {"paired_difference": paired, "latent_map": {"lavit": stats, "base": stats},
                                    "masked_drop": {"mean": 0.0}})
