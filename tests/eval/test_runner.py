"""`lavit eval`'s output folder is never silently shared: a rerun with settings that alter the results is refused
with the differences listed, one spelled another way is the same run, a running eval holds its folder, and a
folder that is the benchmark's own is refused. Every accuracy in a summary carries its interval; MMVP's documented
label errors are corrected only when asked, and recorded."""

from __future__ import annotations

import json
import os

import pytest
from fixtures import write_blink, write_mmstar, write_mmvp

from lavit.data.run_dir import RunLock
from lavit.eval.models import ConstantModel
from lavit.eval.protocols.lavit import PROTOCOL as LAVIT
from lavit.eval.runner import output_dir, run_eval
from lavit.eval.stats import proportion_interval


class LocalModel:
    """A checkpoint folder by its path as given, answering A; counts what it was asked."""

    protocol = LAVIT

    def __init__(self, path):
        self.path, self.asked = str(path), []

    def describe(self) -> dict:
        return {"model": self.path, "protocol": {**LAVIT.describe(), "deviations": {}}}

    def answer(self, items, max_new_tokens=None):
        self.asked += [it.id for it in items]
        return ["A"] * len(items)


def test_a_rerun_with_other_settings_is_refused_listing_them(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    with pytest.raises(ValueError, match=r"different settings \(run.json: model: 'constant:A' → 'constant:B'\); "
                                         "use another --out"):
        run_eval(ConstantModel("B"), "mmvp", root, tmp_path / "out")


def test_one_checkpoint_spelled_relative_or_absolute_is_one_run(tmp_path, monkeypatch):
    root = write_mmvp(tmp_path / "MMVP")
    (tmp_path / "student").mkdir()
    monkeypatch.chdir(tmp_path)
    first = LocalModel("student")
    run_eval(first, "mmvp", root, tmp_path / "out", max_samples=3)
    again = LocalModel(tmp_path / "student")
    summary = run_eval(again, "mmvp", "MMVP", tmp_path / "out")
    assert first.asked == ["1", "2", "3"] and again.asked == ["4", "5", "6", "7", "8"]  # continued, not refused
    assert summary["settings"]["model"] == str(tmp_path / "student")


def test_a_running_eval_holds_its_folder(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    with RunLock(output_dir(tmp_path / "out", "mmvp")):
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()}"):
            run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    assert not (output_dir(tmp_path / "out", "mmvp") / "predictions.jsonl").exists()


def test_an_output_folder_that_is_the_benchmarks_own_is_refused(tmp_path):
    root = write_mmvp(tmp_path / "data" / "mmvp")
    with pytest.raises(ValueError, match="output folder .* is the input data_root"):
        run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "data")
    assert not (root / "predictions.jsonl").exists()


def test_every_accuracy_carries_its_interval_over_the_scored_items(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    (root / "MMVP Images" / "2.jpg").unlink()  # a skip: out of n, and pair 0 incomplete
    summary = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    # constant A on a b b a a a b a without item 2: 5 of 7; complete pairs (3,4) (5,6) (7,8): 1 of 3
    assert summary["n"] == 7 and summary["interval"] == "wilson"
    assert summary["accuracy_ci95"] == pytest.approx(list(proportion_interval(5, 7)))
    assert summary["pairs"] == 3 and summary["pairs_correct"] == 1
    assert summary["pair_accuracy_ci95"] == pytest.approx(list(proportion_interval(1, 3)))
    # the method is no setting of the run: the same folder reports it exactly on request
    exact = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out", interval="clopper_pearson")
    assert exact["interval"] == "clopper_pearson"
    assert exact["accuracy_ci95"] == pytest.approx(list(proportion_interval(5, 7, method="clopper_pearson")))
    assert json.loads((output_dir(tmp_path / "out", "mmvp") / "summary.json").read_text())["interval"] == \
        "clopper_pearson"

    mmstar = run_eval(ConstantModel("A"), "mmstar", write_mmstar(tmp_path / "MMStar"), tmp_path / "out")
    assert mmstar["per_category_ci95"]["math"] == pytest.approx(list(proportion_interval(1, 3)))
    assert mmstar["per_category_n"] == {"coarse perception": 3, "math": 3}
    assert mmstar["per_l2_category_ci95"]["numeric commonsense"] == pytest.approx(list(proportion_interval(0, 1)))
    with pytest.raises(ValueError, match="interval must be one of"):
        run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "o2", interval="wald")


def mmvp_rows(overrides: dict | None = None) -> list[tuple]:
    """280 rows numbered as the published file around its swapped pairs: 99/100 tusks, 279/280 posture."""
    rows = [(f"Filler question {n}?", "(a) Yes (b) No", "(a)" if n % 2 else "(b)") for n in range(1, 281)]
    for n, answer in ((99, "(a)"), (100, "(b)")):
        rows[n - 1] = ("Does the elephant have long or short tusks?", "(a) Long (b) Short", answer)
    for n, answer in ((279, "(a)"), (280, "(b)")):
        rows[n - 1] = ("Is the elderly person standing or sitting in the picture?", "(a) Standing (b) Sitting", answer)
    for n, row in (overrides or {}).items():
        rows[n - 1] = row
    return rows


def test_label_fixes_apply_only_when_asked_and_are_recorded(tmp_path):
    root = write_mmvp(tmp_path / "MMVP", rows=mmvp_rows())
    plain = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "plain")
    fixed = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "fixed", label_fixes=True)
    assert "label_fixes" not in plain and "label_fixes" not in plain["settings"]
    assert [(f["id"], f["published"], f["corrected"]) for f in fixed["label_fixes"]] == [
        ("99", "A", "B"), ("100", "B", "A"), ("279", "A", "B"), ("280", "B", "A")]
    assert all("https://github.com/tsb0601/MMVP/issues/30" in f["source"] for f in fixed["label_fixes"])
    assert fixed["label_fixes_not_applied"] == []
    assert fixed["settings"]["label_fixes"] == ["99:A→B", "100:B→A", "279:A→B", "280:B→A"]
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "fixed" / "mmvp" / "predictions.jsonl").open())}
    assert records["99"]["truth"] == "B" and records["99"]["published_truth"] == "A" and not records["99"]["correct"]
    assert records["100"]["correct"] and "published_truth" not in records["98"]
    assert fixed["correct"] == plain["correct"]  # each swap moves one right answer of constant A to its partner
    with pytest.raises(ValueError, match=r"different settings \(run.json: label_fixes: \['99:A→B'"):
        run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "fixed")  # never mixed with an unfixed run
    short = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "short", label_fixes=True, max_samples=100)
    assert [f["id"] for f in short["label_fixes"]] == ["99", "100"]
    assert short["label_fixes_not_applied"] == [{"id": "279", "reason": "not_in_run"},
                                                {"id": "280", "reason": "not_in_run"}]
    with pytest.raises(ValueError, match="no documented label errors are known for blink:Spatial_Relation"):
        run_eval(ConstantModel("A"), "blink:Spatial_Relation", write_blink(tmp_path / "BLINK"), tmp_path / "b",
                 label_fixes=True)


@pytest.mark.parametrize("overrides, outcome", [
    ({99: ("Does the elephant have long or short tusks?", "(a) Long (b) Short", "(b)"),
      100: ("Does the elephant have long or short tusks?", "(a) Long (b) Short", "(a)")}, "already_corrected"),
    ({99: ("Is the dog facing left or right?", "(a) Left (b) Right", "(a)")}, "is not numbered as the published one"),
    ({99: ("Does the elephant have long or short tusks?", "(a) Long (b) Short (c) None", "(c)")},
     "expects the published answer 'A'"),
])
def test_label_fixes_touch_only_the_items_they_describe(tmp_path, overrides, outcome):
    root = write_mmvp(tmp_path / "MMVP", rows=mmvp_rows(overrides))
    if outcome != "already_corrected":
        with pytest.raises(ValueError, match=outcome):
            run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out", label_fixes=True)
        assert not (tmp_path / "out").exists()  # refused before anything is written
        return
    summary = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out", label_fixes=True)  # a mended copy
    assert [f["id"] for f in summary["label_fixes"]] == ["279", "280"]
    assert summary["label_fixes_not_applied"] == [{"id": "99", "reason": "already_corrected"},
                                                  {"id": "100", "reason": "already_corrected"}]
