"""Each validity check of the toy testbed against hand-made inputs on both sides of its threshold."""

from __future__ import annotations

import pytest

from lavit.toyworld.validity import check_validity, criterion, failures


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
