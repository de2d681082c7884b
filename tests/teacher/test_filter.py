"""The three-stage filter removes exactly the samples built to fail each stage, and says why; answers the
rules cannot decide go to a judge model (matcher=judge) or are dropped as undecided, never passed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavit.cli import main
from lavit.data.fingerprints import store_fingerprint
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.data.signal_store import SCHEMA_VERSION, ShardWriter, read_store, write_json_atomic
from lavit.eval.judge import CachedJudge, transformers_judge
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.filter import apply_filter, judge_identity, run_filter
from lavit.teacher.filter_config import FilterConfig


def _judges():
    """tests/eval/judges.py (tiny judges with a fixed output); tests/ is no package, so it is loaded by path."""
    spec = importlib.util.spec_from_file_location("eval_judges", Path(__file__).parents[1] / "eval" / "judges.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    kept, dropped, verdicts = apply_filter(ROWS, FilterConfig(), text_only)
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
    # every answer pair was decided by a certain rule: 7 teacher answers, then the 6 correct ones' text-only answers
    assert verdicts["correctness"] == {"pairs": 7, "rules": 7, "judge": 0, "undecided": 0,
                                       "rules_by_rule": {"equal": 3, "letter": 1, "number": 1, "word_class": 2},
                                       "judge_verdicts": {"yes": 0, "no": 0, "unparsable": 0}, "judge_cached": 0}
    assert verdicts["difficulty"]["rules"] == 6 and verdicts["difficulty"]["undecided"] == 0
    assert {d["id"]: d["decided_by"] for d in dropped}["wrong"] == "rules"


def test_stage_selection_threshold_and_boxless_samples():
    kept, _, verdicts = apply_filter(ROWS, FilterConfig(stages=["alignment"], min_s_focus=0.05, require_box=False),
                                     text_only)
    assert [r["id"] for r in kept] == ["kept", "wrong", "easy", "unfocused", "nobox", "letter", "number"]
    assert verdicts == {}
    kept, _, _ = apply_filter(ROWS, FilterConfig(stages=["correctness"], matcher="exact"), text_only)
    assert [r["id"] for r in kept] == ["unfocused", "nobox"]
    with pytest.raises(ValueError, match="stages"):
        FilterConfig(stages=["correctness", "vibes"])
    # refused as the config is read, every matcher named (judge too: the message used to list only two)
    with pytest.raises(ValueError, match="matcher must be one of default, exact, judge or 'package.module:function', "
                                         "got 'nonsense'"):
        FilterConfig(matcher="nonsense")


def write_store(directory: Path, rows: list[dict]) -> None:
    directory.mkdir(parents=True)
    write_json_atomic({"schema_version": SCHEMA_VERSION, "kind": "teacher_signals", "teacher": "tiny-teacher",
                       "settings": {}}, directory / "manifest.json")
    ShardWriter(directory, "signals-w000of001").write(rows)


def test_run_filter_writes_a_trainable_set_and_a_report(tmp_path):
    write_store(tmp_path / "signals", ROWS)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "a.png")
    # a text-only model that answers "no idea" to everything: a certain wrong answer for every truth
    text_model = _judges().save_fixed_output_judge(tmp_path / "no-idea", ["no", "idea"])
    cfg = FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"), text_model=str(text_model),
                       max_new_tokens=3)
    report = run_filter(cfg)
    dropped = [json.loads(line) for line in (tmp_path / "sft" / "dropped.jsonl").read_text().splitlines()]
    assert report["input_rows"] == 9 and report["kept"] + len(dropped) == 9 and report["kept"] == 4
    assert report["verdicts"]["difficulty"]["rules_by_rule"] == {"refusal": 6}
    assert report["matcher"] == "default" and report["judge"] is None
    assert report["dropped_by_stage"]["extract"] == 1 and report["dropped_by_stage"]["correctness"] == 1
    assert sum(report["dropped_by_stage"].values()) == len(dropped)
    assert report["dropped_by_reason"]["extract"] == {"image_missing": 1}
    assert report["dropped_by_reason"]["alignment"] == {"low_s_focus": 1, "no_box": 1}
    assert {stage: sum(codes.values()) for stage, codes in report["dropped_by_reason"].items()} == {
        stage: n for stage, n in report["dropped_by_stage"].items() if n}
    kept = read_store(tmp_path / "sft").to_pylist()
    assert len(kept) == report["kept"] and all(r["text_only_answer"] is not None for r in kept)
    # the set names what it was filtered from, by content
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert manifest["signals_fingerprint"] == report["signals_fingerprint"] == store_fingerprint(tmp_path / "signals")
    assert report["signals_fingerprint"]["files"] == 2  # the shard and the manifest
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
    kept, _, _ = apply_filter(imported, FilterConfig(stages=["alignment"]), text_only)
    assert [r["id"] for r in kept] == ["kept", "wrong"]


def test_undecided_answers_are_dropped_with_their_reason():
    rows = [row(0, "para", "The man wears a red shirt.", "The man is wearing a red shirt."),
            row(1, "hedge", "3", "3 or 4"),
            row(2, "guess", "A woman rides a bicycle.", "A woman rides a bicycle.")]
    answers = {"question guess ?": "She is cycling."}
    kept, dropped, verdicts = apply_filter(rows, FilterConfig(), lambda qs: [answers[q] for q in qs])
    assert kept == []
    assert [(d["id"], d["stage"], d["reason"], d["rule"]) for d in dropped] == [
        ("para", "correctness", "rules_uncertain", "free_text"),
        ("hedge", "correctness", "teacher_wrong", "hedge"),
        ("guess", "difficulty", "rules_uncertain", "free_text")]  # not shown wrong: maybe answerable blind
    assert "matcher=judge" in dropped[0]["detail"]
    assert verdicts["correctness"]["undecided"] == 1 and verdicts["difficulty"]["undecided"] == 1


ROWS_FOR_JUDGE = [
    row(0, "shade", "red", "crimson"),  # rules defer, the judge says yes; text-only 'blue' is certainly wrong
    row(1, "para", "The man wears a red shirt.", "The man is wearing a red shirt."),  # judge twice
    row(2, "letter", "(B)", "The answer is B."),  # rules; the text-only 'blue' may be option B's text: judge
    row(3, "wrong", "3", "There are 4."),  # rules: wrong
    row(4, "easy", "blue", "blue"),  # rules, and the text-only 'blue' is right by rules too
]


def test_judge_decides_what_the_rules_defer_in_both_answer_stages(tmp_path):
    judges = _judges()
    model, processor = judges.fixed_output_judge(["yes"])
    judge = CachedJudge(transformers_judge(model, processor), "yes-judge", tmp_path / "cache.jsonl", batch_size=8)
    kept, dropped, verdicts = apply_filter(ROWS_FOR_JUDGE, FilterConfig(matcher="judge", judge="yes-judge"),
                                           lambda qs: ["blue"] * len(qs), judge)
    assert [r["id"] for r in kept] == ["shade"]
    assert [(d["id"], d["stage"], d["reason"], d["decided_by"], d["judge_output"]) for d in dropped] == [
        ("wrong", "correctness", "teacher_wrong", "rules", None),
        ("para", "difficulty", "text_only_correct", "judge", "yes"),
        ("letter", "difficulty", "text_only_correct", "judge", "yes"),
        ("easy", "difficulty", "text_only_correct", "rules", None)]
    assert "(judge judge-v1: 'yes')" in dropped[1]["detail"]
    assert verdicts["correctness"] | {"rules_by_rule": None} == {
        "pairs": 5, "rules": 3, "judge": 2, "undecided": 0, "rules_by_rule": None,
        "judge_verdicts": {"yes": 2, "no": 0, "unparsable": 0}, "judge_cached": 0}
    assert verdicts["difficulty"]["rules"] == 2 and verdicts["difficulty"]["judge_verdicts"]["yes"] == 2
    assert judge.asked == 4 and judge.calls == 2  # one batch per stage
    with pytest.raises(ValueError, match="needs a judge"):
        apply_filter(ROWS_FOR_JUDGE, FilterConfig(matcher="judge", judge="yes-judge"), text_only)


def test_run_filter_with_a_judge_model_counts_caches_and_records(tmp_path, monkeypatch):
    judges = _judges()
    write_store(tmp_path / "signals", ROWS_FOR_JUDGE)
    yes_dir = judges.save_fixed_output_judge(tmp_path / "yes-judge", ["yes"])
    blue_dir = judges.save_fixed_output_judge(tmp_path / "blue-model", ["blue"])
    loads = []

    def counting_load(name, **kwargs):
        loads.append(Path(name).name)
        return load(name, **kwargs)

    import lavit.inference.engines as engines  # where the filter's models are loaded (`build_engine`)

    load = engines.load_for_inference
    monkeypatch.setattr(engines, "load_for_inference", counting_load)
    cfg = FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"), text_model=str(blue_dir),
                       matcher="judge", judge=str(yes_dir), max_new_tokens=3)
    report = run_filter(cfg)
    assert report["kept"] == 1 and loads == ["blue-model", "yes-judge"]
    assert report["verdicts"]["correctness"]["judge_verdicts"] == {"yes": 2, "no": 0, "unparsable": 0}
    assert report["verdicts"]["difficulty"]["judge"] == 2 and report["verdicts"]["difficulty"]["rules"] == 2
    cache = tmp_path / "sft.judge_cache.jsonl"  # beside the output folder
    assert report["judge"] == {"model": str(yes_dir), "cache_key_name": str(yes_dir.resolve()),
                               "prompt_version": "judge-v1", "cache": str(cache), "asked": 4, "calls": 2, "cached": 0}
    assert len(cache.read_text().splitlines()) == 4
    dropped = [json.loads(line) for line in (tmp_path / "sft" / "dropped.jsonl").read_text().splitlines()]
    assert {d["id"]: d["judge_output"] for d in dropped} == {"wrong": None, "para": "yes", "letter": "yes",
                                                             "easy": None}
    assert json.loads((tmp_path / "sft" / "manifest.json").read_text())["judge"] == str(yes_dir)

    # a rerun asks the judge nothing and never loads it
    loads.clear()
    rerun = run_filter(FilterConfig(**{**cfg.__dict__, "overwrite": True}))
    assert loads == ["blue-model"] and rerun["judge"]["asked"] == 0 and rerun["judge"]["cached"] == 4
    assert rerun["verdicts"]["correctness"]["judge_cached"] == 2 and rerun["kept"] == report["kept"]
    assert len(cache.read_text().splitlines()) == 4

    # the same model as text-only model and judge is loaded once
    loads.clear()
    run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "same"), text_model=str(yes_dir),
                            matcher="judge", judge=str(yes_dir), stages=["difficulty"], max_new_tokens=3))
    assert loads == ["yes-judge"]


def test_an_unparsable_judge_output_is_a_recorded_rejection(tmp_path):
    write_store(tmp_path / "signals", ROWS_FOR_JUDGE)
    maybe_dir = _judges().save_fixed_output_judge(tmp_path / "maybe-judge", ["maybe"])
    report = run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"),
                                     stages=["correctness"], matcher="judge", judge=str(maybe_dir),
                                     judge_cache=str(tmp_path / "cache" / "judge.jsonl")))
    dropped = {d["id"]: d for d in map(json.loads, (tmp_path / "sft" / "dropped.jsonl").read_text().splitlines())}
    assert {i: d["reason"] for i, d in dropped.items()} == {"shade": "judge_unparsable", "para": "judge_unparsable",
                                                            "wrong": "teacher_wrong"}
    assert dropped["shade"]["judge_output"] == "maybe" and "'maybe' is not yes/no" in dropped["shade"]["detail"]
    assert report["verdicts"]["correctness"]["judge_verdicts"] == {"yes": 0, "no": 0, "unparsable": 2}
    assert report["dropped_by_reason"]["correctness"] == {"judge_unparsable": 2, "teacher_wrong": 1}
    assert report["kept"] == 2 and report["judge"]["cache"] == str(tmp_path / "cache" / "judge.jsonl")


def test_the_judge_verdict_follows_the_answer(tmp_path):
    """A judge that says yes iff 'good' is in its prompt: each deferred pair gets its own verdict."""
    judges = _judges()
    rows = [row(0, "judged_yes", "A woman rides a bicycle.", "A woman is riding a good bicycle."),
            row(1, "judged_no", "A woman rides a bicycle.", "A man walks a dog."),
            row(2, "rules_no", "3", "There are 4.")]
    write_store(tmp_path / "signals", rows)
    judge_dir = judges.save_judge(tmp_path / "marker-judge", *judges.marker_judge("good"))
    report = run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"),
                                     stages=["correctness"], matcher="judge", judge=str(judge_dir),
                                     judge_max_new_tokens=1))
    assert read_store(tmp_path / "sft").column("id").to_pylist() == ["judged_yes"]
    dropped = {d["id"]: d for d in map(json.loads, (tmp_path / "sft" / "dropped.jsonl").read_text().splitlines())}
    assert {i: (d["decided_by"], d["judge_output"]) for i, d in dropped.items()} == {
        "judged_no": ("judge", "no"), "rules_no": ("rules", None)}
    assert report["verdicts"]["correctness"]["judge_verdicts"] == {"yes": 1, "no": 1, "unparsable": 0}


def test_judge_settings_are_checked():
    with pytest.raises(ValueError, match="matcher=judge needs judge=MODEL"):
        FilterConfig(matcher="judge")
    with pytest.raises(ValueError, match="only with matcher=judge"):
        FilterConfig(judge="some/model")
    with pytest.raises(ValueError, match="judge_cache= is used only"):
        FilterConfig(judge_cache="x.jsonl")
    assert judge_identity("tiny:qwen3_vl", 3) == "tiny:qwen3_vl@seed3"
    assert judge_identity("Qwen/Qwen2.5-VL-72B-Instruct", 0) == "Qwen/Qwen2.5-VL-72B-Instruct"


def test_an_out_that_is_or_holds_the_signals_is_refused_before_anything_is_deleted(tmp_path):
    signals = tmp_path / "runs" / "signals"
    write_store(signals, ROWS)
    before = sorted(p.name for p in signals.rglob("*"))
    for out in (signals, signals.parent):  # `out=S overwrite=true` and a folder above S used to delete S first
        with pytest.raises(ValueError, match=f"out {out} (is|contains) the input signals"):
            run_filter(FilterConfig(signals=str(signals), out=str(out), stages=["correctness"], overwrite=True))
    assert sorted(p.name for p in signals.rglob("*")) == before


def test_an_out_inside_the_signals_or_at_their_image_root_is_refused_before_anything_is_deleted(tmp_path, capsys):
    # `out=S/data overwrite=true` deleted every shard of S; `out=<the store's image root>` deleted every image
    signals, images = tmp_path / "signals", tmp_path / "images"
    write_store(signals, ROWS)
    manifest = json.loads((signals / "manifest.json").read_text())
    write_json_atomic({**manifest, "settings": {"image_root": str(images)}}, signals / "manifest.json")
    (images / "train").mkdir(parents=True)
    Image.new("RGB", (56, 56)).save(images / "train" / "a.png")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, relation, name in ((signals / "data", "lies inside", "signals"),
                                (images, "is", "image_root of the signals"),
                                (images / "train", "lies inside", "image_root of the signals")):
        assert main(["filter", f"signals={signals}", f"out={out}", "stages=[alignment]", "overwrite=true"]) == 2
        err = capsys.readouterr().err
        assert f"lavit filter: error: out {out} {relation} the input {name} (" in err and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert len(read_store(signals)) == len(ROWS)


def test_a_filtered_set_given_as_signals_is_refused_before_anything_is_written(tmp_path, capsys):
    # it used to write data/ and filter_report.json, then crash with KeyError: 'settings'
    write_store(tmp_path / "signals", ROWS)
    run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"), stages=["alignment"]))
    assert main(["filter", f"signals={tmp_path / 'sft'}", f"out={tmp_path / 'again'}", "stages=[alignment]"]) == 2
    err = capsys.readouterr().err
    assert (f"lavit filter: error: {tmp_path / 'sft'} is already a filtered set (filter_report.json); filter its "
            f"source store ({tmp_path / 'signals'})") in err
    assert not (tmp_path / "again").exists()
    (tmp_path / "sft" / "filter_report.json").unlink()  # the manifest alone says so too
    with pytest.raises(ValueError, match="is already a filtered set"):
        run_filter(FilterConfig(signals=str(tmp_path / "sft"), out=str(tmp_path / "again"), stages=["alignment"]))
    assert not (tmp_path / "again").exists()


def test_an_unreachable_endpoint_judge_stops_the_cli_with_an_error_line(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_store(tmp_path / "signals", ROWS_FOR_JUDGE)
    assert main(["filter", f"signals={tmp_path / 'signals'}", f"out={tmp_path / 'sft'}", "stages=[correctness]",
                 "matcher=judge", f"judge=http://127.0.0.1:{port}/v1", "judge_model=m", "judge_timeout=5"]) == 2
    err = capsys.readouterr().err  # after the judge's progress bar
    assert f"\nlavit filter: error: judge endpoint http://127.0.0.1:{port}/v1/chat/completions unreachable" in err
    assert "Traceback" not in err
    assert not (tmp_path / "sft" / "filter_report.json").exists()  # no verdict was invented
