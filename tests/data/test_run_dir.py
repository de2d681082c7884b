"""Output folders never silently shared: an output that is or holds an input is refused before anything is
deleted, one run holds a folder at a time (also across processes, and after its holder was killed), and
recorded settings compare with paths resolved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lavit.data.run_dir import (
    LOCK,
    RunLock,
    prepare_output_folder,
    record_settings,
    refuse_inputs_inside,
    resolve_paths,
    settings_differences,
)


@pytest.fixture
def store(tmp_path) -> Path:
    """An input folder (a teacher-signal store, say) with a file in it."""
    signals = tmp_path / "runs" / "signals"
    signals.mkdir(parents=True)
    (signals / "manifest.json").write_text("{}")
    return signals


def test_filter_out_equal_to_or_above_its_signals_is_refused_before_anything_is_deleted(store, tmp_path):
    # `lavit filter signals=S out=S overwrite=true`, and out a folder above S: out used to be removed first
    for out, relation in ((store, "is"), (store.parent, "contains"), (tmp_path, "contains")):
        with pytest.raises(ValueError, match=f"out {out} {relation} the input signals"):
            prepare_output_folder(out, {"signals": str(store)}, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(store)
    with pytest.raises(ValueError, match="is the input signals"):
        prepare_output_folder(link, {"signals": store}, overwrite=True)
    assert (store / "manifest.json").read_text() == "{}"


def test_inputs_beside_the_output_and_inputs_that_do_not_exist_are_fine(store, tmp_path):
    refuse_inputs_inside(store.parent / "lavit_sft", {"signals": store})
    refuse_inputs_inside(tmp_path, {"judge_cache": "", "text_model": tmp_path / "missing", "images": []})
    with pytest.raises(ValueError, match="output_dir .* contains the input data"):
        refuse_inputs_inside(tmp_path, {"data": ["elsewhere", str(store / "manifest.json")]}, key="output_dir")


def test_an_output_inside_an_input_is_refused_before_anything_is_deleted(store, tmp_path):
    # `lavit filter signals=S out=S/data overwrite=true` deleted every shard of S, then said "S holds no rows"
    shards = store / "data"
    shards.mkdir()
    (shards / "signals-w000of001-00000.parquet").write_text("rows")
    images = tmp_path / "images"
    (images / "coco").mkdir(parents=True)
    (images / "coco" / "1.png").write_text("pixels")
    for out, name in ((shards, "signals"), (shards / "signals-w000of001-00000.parquet", "signals"),
                      (store / "new", "signals"), (images / "coco", "image_root")):
        with pytest.raises(ValueError, match=f"out {out} lies inside the input {name} "):
            prepare_output_folder(out, {"signals": store, "image_root": images}, overwrite=True)
    assert (shards / "signals-w000of001-00000.parquet").read_text() == "rows"
    assert (images / "coco" / "1.png").read_text() == "pixels" and not (store / "new").exists()


def test_an_output_inside_an_image_folder_is_refused_only_when_it_holds_files(store, tmp_path, monkeypatch):
    """An image root is often the working directory: a new output folder anywhere under it harms no image, while
    one that already holds files (images, perhaps) could lose them to overwrite=true."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images" / "coco").mkdir(parents=True)
    (tmp_path / "images" / "coco" / "1.png").write_text("pixels")
    inputs = {"signals": store, "image_root": "."}
    prepare_output_folder(tmp_path / "runs" / "filtered", inputs, overwrite=True, folders=("image_root",))
    with pytest.raises(ValueError, match=r"lies inside the input image_root \(\.\) and holds files"):
        prepare_output_folder(tmp_path / "images" / "coco", inputs, overwrite=True, folders=("image_root",))
    with pytest.raises(ValueError, match="is the input image_root"):
        prepare_output_folder(tmp_path, {"image_root": "."}, overwrite=True, folders=("image_root",))
    with pytest.raises(ValueError, match="lies inside the input signals"):  # a store is never a mere folder
        prepare_output_folder(store / "new", inputs, overwrite=True, folders=("image_root",))
    assert (tmp_path / "images" / "coco" / "1.png").read_text() == "pixels"


def test_a_non_empty_output_is_refused_unless_overwrite_which_empties_it(store, tmp_path):
    out = tmp_path / "out"
    prepare_output_folder(out, {"signals": store}, overwrite=False)  # absent: nothing to do
    out.mkdir()
    prepare_output_folder(out, {"signals": store}, overwrite=False)  # empty: fine
    (out / "old.parquet").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty; set overwrite=true"):
        prepare_output_folder(out, {"signals": store}, overwrite=False)
    assert (out / "old.parquet").exists()
    prepare_output_folder(out, {"signals": store}, overwrite=True)
    assert not out.exists() and (store / "manifest.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_output_folder(tmp_path / "file", {}, overwrite=True)


def test_settings_differences_list_each_changed_key_but_those_that_may_change():
    recorded = json.loads(json.dumps({"lam": 0.3, "data": ["/a"], "save_steps": 200, "old": 1}))
    current = {"lam": 0.5, "data": ("/a",), "save_steps": 100, "new": True}
    assert settings_differences(recorded, current, may_change=["save_steps"]) == [
        "lam: 0.3 → 0.5", "new: '(not recorded)' → True", "old: 1 → '(not recorded)'"]
    assert settings_differences(recorded, recorded) == []


def test_paths_spelled_relative_or_absolute_record_as_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = resolve_paths({"samples": "s.jsonl", "data": ["a", "b/c"], "image_root": "", "seed": 1},
                             ["samples", "data", "image_root"])
    absolute = resolve_paths({"samples": str(tmp_path / "s.jsonl"), "data": [str(tmp_path / "a"), "./b/c"],
                              "image_root": str(tmp_path), "seed": 1}, ["samples", "data", "image_root"])
    assert relative == absolute and relative["data"][1] == str(tmp_path / "b" / "c")
    assert settings_differences(relative, absolute) == []


HOLD = """
import sys
from lavit.data.run_dir import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_one_run_holds_a_folder_at_a_time_across_processes(tmp_path):
    proc = holder(tmp_path / "run")
    try:
        with pytest.raises(ValueError, match=rf"is in use by another run \(pid {proc.pid} on host .*\); wait"):
            with RunLock(tmp_path / "run"):
                pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not (tmp_path / "run" / LOCK).exists()  # released and removed at the end
    with RunLock(tmp_path / "run") as lock:
        assert lock.stale is None
        assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(ValueError, match=f"in use by another run \\(pid {os.getpid()}"):
            with RunLock(tmp_path / "run"):  # the same process twice is refused too
                pass


def test_a_killed_holder_never_blocks_the_next_run_and_is_reported(tmp_path):
    proc = holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "run" / LOCK).exists()  # a killed run cannot remove its file
    with RunLock(tmp_path / "run") as lock:
        assert lock.stale["pid"] == proc.pid
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with RunLock(tmp_path / "file"):
            pass


def test_recorded_settings_refuse_others_and_accept_their_own(tmp_path):
    record_settings(tmp_path / "run.json", {"model": "/m", "max_new_tokens": 32})
    record_settings(tmp_path / "run.json", {"model": "/m", "max_new_tokens": 32})
    with pytest.raises(ValueError, match=rf"{tmp_path} holds results of different settings \(run.json: "
                                         r"max_new_tokens: 32 → 64\); use another --out"):
        record_settings(tmp_path / "run.json", {"model": "/m", "max_new_tokens": 64}, hint="use another --out")
    record_settings(tmp_path / "run.json", {"model": "/m", "max_new_tokens": 64}, may_change=["max_new_tokens"])
    assert json.loads((tmp_path / "run.json").read_text())["max_new_tokens"] == 64
