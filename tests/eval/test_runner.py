"""`lavit eval`'s output folder is never silently shared: a rerun with settings that alter the results is refused
with the differences listed, one spelled another way is the same run, a running eval holds its folder, and a
folder that is the benchmark's own is refused."""

from __future__ import annotations

import os

import pytest
from fixtures import write_mmvp

from lavit.data.run_dir import RunLock
from lavit.eval.models import ConstantModel
from lavit.eval.runner import output_dir, run_eval


class LocalModel:
    """A checkpoint folder by its path as given, answering A; counts what it was asked."""

    def __init__(self, path):
        self.path, self.asked = str(path), []

    def describe(self) -> dict:
        return {"model": self.path, "max_new_tokens": 32}

    def answer(self, items):
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
