"""The training set is checked when it is opened: every unusable row is named before any step runs."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavit.data import sft_dataset
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer


def open_set(root, rows):
    return LavitSftDataset(pa.Table.from_pylist(rows), str(root / "images"),
                           build_tiny_processor(build_tiny_tokenizer()), [], system_prompt=None, with_signals=False)


def test_every_bad_row_is_listed_when_the_set_is_opened(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (56, 56)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (56, 56)).save(tmp_path / "outside.png")
    good = {"image": "a.png", "question": "q ?", "answer": "red"}
    rows = [{**good, "id": "ok"}, {**good, "id": "empty", "answer": ""}, {**good, "id": "blank", "answer": "  "},
            {**good, "id": "none", "answer": None}, {**good, "id": "gone", "image": "b.png"},
            {**good, "id": "gone2", "image": "c.png"}, {**good, "id": "up", "image": "../outside.png"},
            {**good, "id": "abs", "image": str(tmp_path / "outside.png")}]
    with pytest.raises(ValueError) as err:
        open_set(tmp_path, rows)
    message = str(err.value)
    assert "missing or empty answer (3 rows): empty, blank, none" in message
    assert "image not found" in message and "(2 rows): gone, gone2" in message
    assert "outside image_root" in message and "(2 rows): up, abs" in message
    assert ": ok" not in message and ", ok" not in message  # the usable row is not blamed
    assert len(open_set(tmp_path, rows[:1])) == 1


SIGNAL_TYPES = {"v_sem": pa.list_(pa.float16()), "a_traj": pa.list_(pa.float32()), "a_traj_grid": pa.list_(pa.int32())}


def signal_rows(rng, start: int, n: int, dim: int = 24) -> list[dict]:
    """Rows of a raw store: every third one rejected (signals null); grids of varying size, one map holding NaN."""
    rows = []
    for i in range(start, start + n):
        grid = [1, 2 + i % 3, 3 + i % 2]
        ok = i % 3 != 1
        a_traj = rng.random(int(np.prod(grid)), dtype=np.float32).tolist()
        if i == start + 2:
            a_traj[1] = float("nan")
        rows.append({"id": f"r{i}", "image": "a.png", "question": f"question {i} ?", "answer": f"answer {i}",
                     "status": "ok" if ok else "rejected", "extra": "x" * 50,
                     "v_sem": rng.standard_normal(dim).astype(np.float16).tolist() if ok else None,
                     "a_traj": a_traj if ok else None, "a_traj_grid": grid if ok else None})
    return rows


def write_shards(directory: Path, shards: list[list[dict]]) -> Path:
    directory.mkdir(parents=True)
    for k, rows in enumerate(shards):
        schema = pa.schema([(name, SIGNAL_TYPES.get(name, pa.string())) for name in rows[0]])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), directory / f"shard-{k}.parquet", compression="zstd")
    return directory


def eager_rows(directory: Path) -> list[dict]:
    """What the training set used to hold: the whole table as Python objects, signals converted from them."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted(directory.glob("*.parquet"))], promote_options="default")
    rows = table.filter(pc.equal(table.column("status"), "ok")).to_pylist()
    return [{"id": str(r["id"]), "image": r["image"], "question": r["question"], "answer": r["answer"],
             "v_sem": np.asarray(r["v_sem"], dtype=np.float32), "a_traj": np.asarray(r["a_traj"], dtype=np.float32),
             "a_traj_grid": tuple(int(x) for x in r["a_traj_grid"])} for r in rows]


def assert_rows_equal(dataset: LavitSftDataset, expected: list[dict]) -> None:
    assert len(dataset) == len(expected)
    for i, want in enumerate(expected):
        got = dataset.row(i)
        assert {k: got[k] for k in ("id", "image", "question", "answer", "a_traj_grid")} == {
            k: want[k] for k in ("id", "image", "question", "answer", "a_traj_grid")}
        for name in ("v_sem", "a_traj"):
            assert got[name].dtype == np.float32 and got[name].shape == want[name].shape, (i, name)
            assert np.array_equal(got[name], want[name], equal_nan=True), (i, name)
        sample = dataset.sample(i)
        assert (sample.id, sample.question, sample.answer, sample.a_traj_grid) == (
            want["id"], want["question"], want["answer"], want["a_traj_grid"])
        assert np.array_equal(sample.v_sem, want["v_sem"]) and sample.image.size == (56, 56)


def signal_set(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (56, 56)).save(tmp_path / "images" / "a.png")
    rng = np.random.default_rng(0)
    return write_shards(tmp_path / "sft", [signal_rows(rng, 0, 13), signal_rows(rng, 13, 8)])


def test_rows_read_lazily_equal_the_eager_conversion(tmp_path, monkeypatch):
    data = signal_set(tmp_path)
    monkeypatch.setattr(sft_dataset, "DECODE_BATCH_ROWS", 3)  # many decoded batches: rows cross chunk boundaries
    expected = eager_rows(data)
    assert len(expected) == 14 and any(np.isnan(r["a_traj"]).any() for r in expected)
    table = read_sft_table([str(data)], "answer", need_signals=True)
    assert table.column_names == ["id", "image", "question", "answer", "v_sem", "a_traj", "a_traj_grid"]
    assert table.column("id").num_chunks > 2
    open_signals = lambda t: LavitSftDataset(t, str(tmp_path / "images"), None, [], system_prompt=None)  # noqa: E731
    assert_rows_equal(open_signals(table), expected)
    assert open_signals(table).teacher_dim == 24
    assert_rows_equal(open_signals(read_sft_table([str(data)], "answer", need_signals=True, max_samples=5)),
                      expected[:5])
    # a table built in memory, two chunks, sliced: the row offsets are the slice's, not the buffers'
    kept = [{k: r[k] for k in table.column_names} for r in signal_rows(np.random.default_rng(1), 0, 12)
            if r["status"] == "ok"]
    chunked = pa.concat_tables([pa.Table.from_pylist(kept[:4], schema=table.schema),
                                pa.Table.from_pylist(kept[4:], schema=table.schema)]).slice(1, 6)
    assert chunked.column("v_sem").num_chunks == 2
    assert_rows_equal(open_signals(chunked), [
        {**r, "v_sem": np.asarray(r["v_sem"], dtype=np.float32), "a_traj": np.asarray(r["a_traj"], dtype=np.float32),
         "a_traj_grid": tuple(r["a_traj_grid"])} for r in kept[1:7]])


def test_the_table_is_mapped_from_a_file_that_is_already_gone(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rng = np.random.default_rng(0)
    data = write_shards(tmp_path / "sft", [signal_rows(rng, 0, 60, dim=2048), signal_rows(rng, 60, 60, dim=2048)])
    before = pa.total_allocated_bytes()
    eager = pa.concat_tables([pq.read_table(f) for f in sorted(data.glob("*.parquet"))])
    assert pa.total_allocated_bytes() - before > 0.9 * eager.nbytes  # the measure sees decoded buffers
    del eager
    before = pa.total_allocated_bytes()
    table = read_sft_table([str(data)], "answer", need_signals=True)
    gc.collect()
    assert table.num_rows == 80 and table.nbytes > 300_000
    assert pa.total_allocated_bytes() - before < 0.05 * table.nbytes  # the rows live in the map, not on the heap
    assert list((tmp_path / "tmp").iterdir()) == []  # unlinked once mapped: nothing is left behind
    expected = eager_rows(data)
    assert np.array_equal(table.column("v_sem")[79].values.to_numpy().astype(np.float32), expected[79]["v_sem"])


def test_the_checks_at_open_cover_every_shard(tmp_path):
    data = signal_set(tmp_path)
    rows = signal_rows(np.random.default_rng(3), 0, 4)
    twin = write_shards(tmp_path / "twin", [signal_rows(np.random.default_rng(0), 0, 13), rows[:1] + rows[2:]])
    with pytest.raises(ValueError, match="duplicate ids"):  # r0 again in the second shard, past max_samples
        read_sft_table([str(twin)], "answer", need_signals=True, max_samples=2)
    rejected = write_shards(tmp_path / "rejected", [[{**r, "status": "rejected"} for r in rows]])
    with pytest.raises(ValueError, match="empty"):
        read_sft_table([str(rejected)], "answer", need_signals=True)
    with pytest.raises(ValueError, match=r"lacks columns \['teacher_answer'\]"):
        read_sft_table([str(data)], "teacher_answer", need_signals=True)
    # a shard without an answer column reads as null answers, which the set then names row by row
    bare = write_shards(tmp_path / "bare", [[{k: v for k, v in r.items() if k != "answer"} for r in rows]])
    table = read_sft_table([str(data / "shard-1.parquet"), str(bare)], "answer", need_signals=True)
    assert table.num_rows == 5 + 3 and table.column("answer").null_count == 3
    with pytest.raises(ValueError, match=r"missing or empty answer \(3 rows\): r0, r2, r3$"):
        LavitSftDataset(table, str(tmp_path / "images"), None, [], system_prompt=None)
    # without a status column, a row without signals is named when the set is opened, not at its first step
    no_status = write_shards(tmp_path / "no_status", [[{k: v for k, v in r.items() if k != "status"} for r in rows]])
    table = read_sft_table([str(no_status)], "answer", need_signals=True)
    with pytest.raises(ValueError, match=r"missing v_sem \(1 rows\): r1; missing a_traj \(1 rows\): r1; "
                                         r"missing a_traj_grid \(1 rows\): r1"):
        LavitSftDataset(table, str(tmp_path / "images"), None, [], system_prompt=None)
    assert len(LavitSftDataset(table, str(tmp_path / "images"), None, [], system_prompt=None, with_signals=False)) == 4
