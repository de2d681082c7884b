"""A store's shard folder holds only shards: stock readers load it without lavit; old layouts get a clear error;
one writer of record: exclusive creation, locked manifest updates, one writer per shard prefix, stale locks cleared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import datasets
import pyarrow.parquet as pq
import pytest

from lavit.data import signal_store
from lavit.data.signal_store import (
    MANIFEST,
    MANIFEST_LOCK,
    SCHEMA_VERSION,
    ShardWriter,
    StoreBusy,
    StoreLock,
    create_store,
    pending_row,
    read_manifest,
    read_store,
    repair_store,
    shard_files,
    store_counts,
    temp_path,
    update_manifest,
    write_json_atomic,
    write_manifest,
)


def make_store(directory, n=5):
    directory.mkdir()
    write_manifest({"schema_version": SCHEMA_VERSION, "kind": "teacher_signals", "teacher": "t", "settings": {}},
                   directory)
    writer = ShardWriter(directory, "signals-w000of001")
    rows = [pending_row(i, f"s{i}", "a.png", f"q{i} ?", "red", "toy") for i in range(n)]
    writer.write(rows[:3])
    writer.write(rows[3:])
    # side files a real store carries next to its manifest
    write_json_atomic({"kept": 0}, directory / "filter_report.json")
    (directory / "dropped.jsonl").write_text(json.dumps({"id": "x", "stage": "extract"}) + "\n")
    return rows


def test_stock_readers_load_only_the_shards(tmp_path):
    store = tmp_path / "store"
    make_store(store)
    assert [p.parent.name for p in shard_files(store)] == ["data", "data"]
    ids = [f"s{i}" for i in range(5)]
    assert read_store(store).column("id").to_pylist() == ids
    assert sorted(pq.read_table(store / "data").column("id").to_pylist()) == ids
    loaded = datasets.load_dataset("parquet", data_dir=str(store / "data"), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["train"]["id"]) == ids
    # the dataset card points datasets at the shards, not at the JSON side files
    loaded = datasets.load_dataset(str(store), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["train"]["id"]) == ids and "status" in loaded["train"].column_names


def test_a_version_1_store_is_refused_with_the_fix(tmp_path):
    store = tmp_path / "old"
    make_store(store)
    for shard in shard_files(store):
        shard.rename(store / shard.name)
    write_json_atomic({"schema_version": 1, "kind": "teacher_signals"}, store / MANIFEST)
    with pytest.raises(ValueError, match="schema version 1 .* mv "):
        read_store(store)


def test_manifest_read_errors_name_the_file(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / MANIFEST).write_text('{"schema_version": 2,')  # torn by hand or by a full disk
    with pytest.raises(ValueError, match=rf"{store / MANIFEST}: not a readable manifest"):
        read_manifest(store)
    (store / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{store / MANIFEST}: .*JSON list, not an object"):
        read_manifest(store)
    with pytest.raises(FileNotFoundError, match="no manifest.json: not a lavit store"):
        read_manifest(tmp_path)


def test_create_store_is_exclusive_and_temporary_files_are_hidden_and_unique(tmp_path):
    first = {"schema_version": SCHEMA_VERSION, "kind": "teacher_signals", "teacher": "a", "settings": {"k": 1}}
    assert create_store(tmp_path / "s", first) == (first, True)
    manifest, created = create_store(tmp_path / "s", {**first, "teacher": "b", "settings": {"k": 2}})
    assert (manifest, created) == (first, False)  # the existing store's, for the caller to compare
    assert "Teacher: a." in (tmp_path / "s" / "README.md").read_text()
    names = {temp_path(tmp_path / "manifest.json").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(".manifest.json.") and n.endswith(".tmp") for n in names)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", MANIFEST]  # nothing left behind


def test_update_manifest_refusal_leaves_it_unchanged(tmp_path):
    make_store(tmp_path / "s")

    def refuse(manifest):
        manifest["teacher"] = "changed"
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        update_manifest(tmp_path / "s", refuse)
    assert read_manifest(tmp_path / "s")["teacher"] == "t"
    assert update_manifest(tmp_path / "s", lambda m: m.update(counts=store_counts(tmp_path / "s")))["counts"] == {
        "rows": 5, "ok": 0, "rejected": 5, "rejected_by_reason": {}}
    assert not (tmp_path / "s" / MANIFEST_LOCK).exists()


def test_rows_with_fields_that_are_not_text_are_still_storable(tmp_path):
    rows = [pending_row(0, "a", 5, {"q": 1}, ["x"], 7), pending_row(1, "b", "b.png", "q\ud800", 3, None)]
    assert [(r["image"], r["question"], r["answer"], r["source"]) for r in rows] == [
        (None, None, None, None), ("b.png", None, "3", None)]
    make_store(tmp_path / "s", n=0)
    with ShardWriter(tmp_path / "s", "signals-w000of001") as writer:  # an ArrowTypeError before: the batch died
        writer.write(rows)
    assert read_store(tmp_path / "s").column("id").to_pylist() == ["a", "b"]


def holder(tmp_path, **fields) -> dict:
    return {"machine": signal_store._this_machine(), "host": "here", "pid": os.getpid(), "token": "other",
            "since": "then", **fields}


def write_lock(path, content: dict, age: float = 0.0) -> None:
    path.write_text(json.dumps(content))
    then = time.time() - age
    os.utime(path, (then, then))


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_live_holder_keeps_its_lock(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, holder(tmp_path))  # this very process, under another token: alive
    with pytest.raises(StoreBusy, match="held by here pid"):
        StoreLock(path, "the thing").acquire(wait=False)
    write_lock(path, holder(tmp_path, machine="another host ns", pid=1))  # another machine, refreshed just now
    with pytest.raises(StoreBusy):
        StoreLock(path, "the thing").acquire(wait=False)
    assert json.loads(path.read_text())["token"] == "other"


def test_stale_locks_are_cleared_and_said(tmp_path, caplog):
    path = tmp_path / ".lock"
    write_lock(path, holder(tmp_path, pid=dead_pid()))  # killed on this machine: stale at once
    with caplog.at_level("WARNING"), StoreLock(path, "the thing").acquire(wait=False) as lock:
        assert lock.owned() and json.loads(path.read_text())["token"] == lock.token
    assert "cleared a stale lock on the thing" in caplog.text and not path.exists()
    # another machine's holder that stopped refreshing its lock (its clock is not ours: the filesystem's is used)
    write_lock(path, holder(tmp_path, machine="another host ns", pid=1), age=signal_store.LOCK_STALE_SECONDS + 60)
    with StoreLock(path, "the thing").acquire(wait=False) as lock:
        assert lock.owned()
    path.write_bytes(b"")  # not even a holder: only its age counts
    with pytest.raises(StoreBusy):
        StoreLock(path, "the thing").acquire(wait=False)


def test_a_lost_lock_is_noticed_and_never_removed(tmp_path):
    path = tmp_path / ".lock"
    lock = StoreLock(path, "the thing").acquire(wait=False)
    old = time.time() - 100
    os.utime(path, (old, old))
    lock.beat()  # the heartbeat refreshes it
    assert path.stat().st_mtime > old + 50 and not lock.lost
    write_lock(path, holder(tmp_path, token="taker"))  # judged dead and taken over meanwhile
    lock.beat()
    with pytest.raises(StoreBusy, match="lost the lock on the thing"):
        lock.check()
    lock.release()
    assert json.loads(path.read_text())["token"] == "taker"


def test_one_writer_per_shard_prefix(tmp_path):
    make_store(tmp_path / "s", n=0)
    with ShardWriter(tmp_path / "s", "signals-w000of002"):
        with pytest.raises(StoreBusy, match="shard prefix signals-w000of002"):
            ShardWriter(tmp_path / "s", "signals-w000of002")
        ShardWriter(tmp_path / "s", "signals-w001of002").close()  # other prefixes write alongside
    ShardWriter(tmp_path / "s", "signals-w000of002").close()
    assert not list((tmp_path / "s").glob(".writer-*"))


def test_a_journal_keeps_its_complete_lines_and_drops_a_torn_one(tmp_path):
    from lavit.data.signal_store import read_journal

    path = tmp_path / "journal.jsonl"
    assert read_journal(path) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert read_journal(path) == [{"a": 1}, {"a": 2}] and path.read_text() == '{"a": 1}\n\n{"a": 2}\n'  # untouched
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3', encoding="utf-8")  # killed mid-line
    assert read_journal(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n' and not list(tmp_path.glob("*.tmp"))
    path.write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")  # even a parsable line without its newline is torn
    assert read_journal(path) == [{"a": 1}]


def store_with_duplicates(directory):
    """Two workers of other counts that both stored s1..s3 (as `--shard 0/2` and `--shard 0/3` did together): the
    first copy of s2 is 'rejected', its second 'ok'."""
    directory.mkdir()
    write_manifest({"schema_version": SCHEMA_VERSION, "kind": "teacher_signals", "teacher": "t", "settings": {}},
                   directory)
    rows = [pending_row(i, f"s{i}", "a.png", f"q{i} ?", "red", "toy") for i in range(5)]
    with ShardWriter(directory, "signals-w000of002") as writer:
        writer.write([{**r, "status": "ok"} if r["id"] != "s2" else r for r in rows[:4]])
    with ShardWriter(directory, "signals-w000of003") as writer:
        writer.write([{**r, "status": "ok"} for r in rows[1:4]])
        writer.write([{**rows[4], "status": "ok"}])
    return rows


def test_a_store_holding_an_id_twice_names_the_repair_and_the_repair_keeps_one_copy(tmp_path, capsys):
    from lavit.cli import main

    store = tmp_path / "s"
    store_with_duplicates(store)
    with pytest.raises(ValueError, match=rf"ids stored more than once: \['s1', 's2', 's3'\] \(3 in all\); "
                                         rf"`lavit repair-store {store}` lists the copy of each it keeps"):
        read_store(store)
    with ShardWriter(store, "signals-w001of002") as writer, pytest.raises(ValueError, match="lavit repair-store"):
        writer.stored_ids()  # a resumed extract stops here, before its work, not at its final count
    before = {p.name: p.read_bytes() for p in shard_files(store)}
    assert main(["repair-store", str(store)]) == 0  # a dry run: lists, changes nothing
    plan = json.loads(capsys.readouterr().out)
    assert plan["duplicate_ids"] == 3 and plan["extra_copies"] == 3 and not plan["applied"]
    assert plan["ids"][1] == {"id": "s2", "keep": "data/signals-w000of003-00000.parquet row 1 (ok)",
                              "remove": ["data/signals-w000of002-00000.parquet row 2 (rejected)"]}
    assert plan["ids"][0]["keep"] == "data/signals-w000of002-00000.parquet row 1 (ok)"  # the first of two 'ok'
    assert {p.name: p.read_bytes() for p in shard_files(store)} == before
    assert main(["repair-store", str(store), "--apply"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"]
    table = read_store(store)
    assert table.column("id").to_pylist() == ["s0", "s1", "s2", "s3", "s4"]
    assert table.column("status").to_pylist() == ["ok"] * 5
    assert [p.name for p in shard_files(store)] == ["signals-w000of002-00000.parquet",  # s0, s1, s3
                                                   "signals-w000of003-00000.parquet",  # s2 alone
                                                   "signals-w000of003-00001.parquet"]
    assert read_manifest(store)["counts"] == store_counts(store)
    assert repair_store(store)["duplicate_ids"] == 0
    assert not [p.name for p in store.rglob(".*")]  # its lock and temporary files are gone


def test_a_store_is_not_repaired_while_a_writer_holds_it(tmp_path):
    store = tmp_path / "s"
    store_with_duplicates(store)
    before = {p.name: p.read_bytes() for p in shard_files(store)}
    with ShardWriter(store, "signals-w001of002"):
        with pytest.raises(ValueError, match=r"is being written \(signals-w001of002 \(.* pid \d+\)\); repair it once"):
            repair_store(store, apply=True)
    assert {p.name: p.read_bytes() for p in shard_files(store)} == before


def test_a_lock_temp_file_left_by_a_killed_process_is_removed_by_the_next_lock(tmp_path):
    # killed after writing its lock's temporary file and before linking it, a run left it in the store for good
    store = tmp_path / "s"
    make_store(store, n=0)
    killed = ("import os, signal, sys\n"
              "from pathlib import Path\n"
              "from lavit.data import signal_store\n"
              "half = signal_store.temp_path(Path(sys.argv[1], 'data', 'signals-w002of003-00000.parquet'))\n"
              "half.write_bytes(b'half a shard')  # of a prefix no later run may write\n"
              "signal_store._link_exclusive = lambda source, target: os.kill(os.getpid(), signal.SIGKILL)\n"
              "signal_store.ShardWriter(sys.argv[1], 'signals-w000of001')\n")
    proc = subprocess.run([sys.executable, "-c", killed, str(store)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    (left,) = store.glob("..writer-signals-w000of001.lock.*.tmp")
    (half,) = (store / "data").glob(".signals-w002of003-00000.parquet.*.tmp")
    # an older lavit's name says no writer: removed once old; another machine's, only once not refreshed for as long
    unnamed, elsewhere = store / ".manifest.json.0123456789ab.tmp", store / ".README.md.ffffffff-1.0123456789ab.tmp"
    for path in (unnamed, elsewhere):
        path.write_text("{}")
    old = time.time() - signal_store.LOCK_STALE_SECONDS - 60
    os.utime(unnamed, (old, old))
    with ShardWriter(store, "signals-w000of001") as writer:  # the next run takes the lock, and clears the leftovers
        writer.write([pending_row(0, "s0", "a.png", "q ?", "red", "toy")])
        assert not left.exists() and not half.exists() and not unnamed.exists() and elsewhere.exists()
    assert read_store(store).column("id").to_pylist() == ["s0"]
