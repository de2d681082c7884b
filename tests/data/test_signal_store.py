"""A store's shard folder holds only shards: stock readers load it without lavit; old layouts get a clear error."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest

from lavit.data.signal_store import (
    MANIFEST,
    SCHEMA_VERSION,
    ShardWriter,
    pending_row,
    read_store,
    shard_files,
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
