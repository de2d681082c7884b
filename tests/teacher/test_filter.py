"""The three-stage filter removes exactly the samples built to fail each stage, and says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavit.cli import main
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.data.signal_store import SCHEMA_VERSION, ShardWriter, read_store, write_json_atomic
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.filter import apply_filter, run_filter
from lavit.teacher.filter_config import FilterConfig


def row(i: int, sample_id: str, answer: str, teacher: str, s_focus: float | None = 0.5, status: str = "ok",
        a_traj: list | None = None) -> dict:
    ok = status == "ok"
    return {"index": i, "id": sample_id, "image": "a.png", "question": f"question {sample_id} ?", "answer": answer,
            "bbox": [0.0, 0.0, 20.0, 20.0] if s_focus is not None else None, "source": "toy", "image_size": [56, 56],
            "status": status, "reject_reason": None if ok else "image_missing: a.png", "teacher_answer": teacher if ok else None,
            "a_traj": (a_traj or [0.1, 0.2, 0.3, 0.4]) if ok else None, "a_traj_grid": [1, 2, 2] if ok else None,
            "v_sem": [0.5] * 8 if ok else None, "s_focus": s_focus if ok else None}


ROWS = [
    row(0, "kept", "red", "The circle is red."),
    row(1, "wrong", "red", "It is blue."),
    row(2, "easy", "yes", "Yes."),
    row(3, "unfocused", "green", "green", s_focus=0.1),
    row(4, "nobox", "green", "green", s_focus=None),
    row(5, "broken", "red", "red", status="rejected"),
    row(6, "nan", "red", "red", a_traj=[0.1, float("nan"), 0.3, 0.4]),
    row(7, "letter", "(B)", "The answer is B."),
    row(8, "number", "3", "There are three."),
]
TEXT_ONLY = {"question easy ?": "yes", "question kept ?": "blue"}  # what a text-only model would say


def text_only(questions: list[str]) -> list[str]:
    return [TEXT_ONLY.get(q, "no idea") for q in questions]


def test_each_stage_removes_exactly_its_samples():
    kept, dropped = apply_filter(ROWS, FilterConfig(), text_only)
    assert [r["id"] for r in kept] == ["kept", "letter", "number"]
    assert {d["id"]: d["stage"] for d in dropped} == {
        "broken": "extract", "nan": "invalid_signal", "wrong": "correctness", "easy": "difficulty",
        "unfocused": "alignment", "nobox": "alignment"}
    # a fixed reason code per decision (summable), the values that made it in `detail`
    assert {d["id"]: d["reason"] for d in dropped} == {
        "broken": "image_missing", "nan": "nonfinite_signal", "wrong": "teacher_wrong", "easy": "text_only_correct",
        "unfocused": "low_s_focus", "nobox": "no_box"}
    details = {d["id"]: d["detail"] for d in dropped}
    assert details["unfocused"] == "S_focus 0.100 < 0.2" and "NaN" in details["nan"]
    assert details["broken"] == "image_missing: a.png" and "'It is blue.'" in details["wrong"]
    assert all(r["teacher_correct"] and r["text_only_correct"] is False for r in kept)


def test_stage_selection_threshold_and_boxless_samples():
    kept, _ = apply_filter(ROWS, FilterConfig(stages=["alignment"], min_s_focus=0.05, require_box=False), text_only)
    assert [r["id"] for r in kept] == ["kept", "wrong", "easy", "unfocused", "nobox", "letter", "number"]
    kept, _ = apply_filter(ROWS, FilterConfig(stages=["correctness"], matcher="exact"), text_only)
    assert [r["id"] for r in kept] == ["unfocused", "nobox"]
    with pytest.raises(ValueError, match="stages"):
        FilterConfig(stages=["correctness", "vibes"])
    with pytest.raises(ValueError, match="matcher"):
        apply_filter(ROWS, FilterConfig(matcher="nonsense"), text_only)


def write_store(directory: Path, rows: list[dict]) -> None:
    directory.mkdir(parents=True)
    write_json_atomic({"schema_version": SCHEMA_VERSION, "kind": "teacher_signals", "teacher": "tiny-teacher",
                       "settings": {}}, directory / "manifest.json")
    ShardWriter(directory, "signals-w000of001").write(rows)


def test_run_filter_writes_a_trainable_set_and_a_report(tmp_path):
    write_store(tmp_path / "signals", ROWS)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "a.png")
    cfg = FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"), text_model="tiny",
                       max_new_tokens=3)
    report = run_filter(cfg)
    dropped = [json.loads(line) for line in (tmp_path / "sft" / "dropped.jsonl").read_text().splitlines()]
    assert report["input_rows"] == 9 and report["kept"] + len(dropped) == 9
    assert report["dropped_by_stage"]["extract"] == 1 and report["dropped_by_stage"]["correctness"] == 1
    assert sum(report["dropped_by_stage"].values()) == len(dropped)
    assert report["dropped_by_reason"]["extract"] == {"image_missing": 1}
    assert report["dropped_by_reason"]["alignment"] == {"low_s_focus": 1, "no_box": 1}
    assert {stage: sum(codes.values()) for stage, codes in report["dropped_by_reason"].items()} == {
        stage: n for stage, n in report["dropped_by_stage"].items() if n}
    kept = read_store(tmp_path / "sft").to_pylist()
    assert len(kept) == report["kept"] and all(r["text_only_answer"] is not None for r in kept)
    # the trainer reads the filtered set directly, targets resampled to the student grid
    table = read_sft_table([str(tmp_path / "sft")], "answer", need_signals=True)
    dataset = LavitSftDataset(table, str(tmp_path), build_tiny_processor(build_tiny_tokenizer()), [],
                              system_prompt=None)
    example = dataset[0]
    assert example["traj_target"].sum().item() == pytest.approx(1.0)
    assert example["traj_target"].numel() == example["image_positions"].numel()
    with pytest.raises(ValueError, match="exists"):
        run_filter(cfg)
    assert main(["filter", f"signals={tmp_path / 'signals'}", f"out={tmp_path / 'sft'}", "overwrite=true",
                 "stages=[correctness,alignment]"]) == 0
    assert main(["filter", f"signals={tmp_path / 'nowhere'}", f"out={tmp_path / 'x'}"]) == 2


def test_nan_in_a_stored_signal_never_reaches_training(tmp_path):
    write_store(tmp_path / "signals", [row(0, "nan", "red", "red", a_traj=[0.1, float("nan"), 0.3, 0.4])])
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    table = read_sft_table([str(tmp_path / "signals")], "answer", need_signals=True)
    dataset = LavitSftDataset(table, str(tmp_path), build_tiny_processor(build_tiny_tokenizer()), [],
                              system_prompt=None)
    with pytest.raises(ValueError, match="sample nan: .*NaN"):
        dataset[0]
    assert np.isnan(table.column("a_traj").to_pylist()[0][1])


def test_trainer_reads_only_ok_rows_of_a_raw_store(tmp_path):
    write_store(tmp_path / "signals", [row(0, "good", "red", "red"), row(1, "bad", "red", "red", status="rejected")])
    table = read_sft_table([str(tmp_path / "signals")], "answer", need_signals=True)
    assert table.column("id").to_pylist() == ["good"]


def test_incomplete_or_teacherless_stores_are_refused(tmp_path):
    write_store(tmp_path / "signals", ROWS[:3])
    manifest = json.loads((tmp_path / "signals" / "manifest.json").read_text())
    write_json_atomic({**manifest, "num_input_samples": 9}, tmp_path / "signals" / "manifest.json")
    with pytest.raises(ValueError, match="holds 3 of 9 samples"):
        run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "o"), stages=["alignment"]))
    imported = [{**r, "teacher_answer": None} for r in ROWS[:2]]
    with pytest.raises(ValueError, match="without a teacher answer"):
        apply_filter(imported, FilterConfig(), text_only)
    kept, _ = apply_filter(imported, FilterConfig(stages=["alignment"]), text_only)
    assert [r["id"] for r in kept] == ["kept", "wrong"]
