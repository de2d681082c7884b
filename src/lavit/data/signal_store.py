"""Parquet storage of teacher signals and the LaViT-SFT set (DESIGN §3).

A store is a directory holding `manifest.json` (and, for a filtered set, `filter_report.json` and
`dropped.jsonl`), a dataset card `README.md`, and its zstd Parquet shards under `data/`, so that the
shard folder holds nothing else. Every shard is written to a temporary name and renamed into place, so
a killed writer leaves either a whole shard or none; a rerun reads the ids already stored and skips
them. Rows keep their position in the input list (`index`), and `read_store` returns them in that
order, so the stored set does not depend on how often a run was interrupted. Loadable without lavit:
`pyarrow.parquet.read_table(STORE/data)`, `datasets.load_dataset("parquet", data_dir=STORE/data)` or
`datasets.load_dataset(STORE)` (the card names the shards).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2  # 2: shards moved from the store's root into data/
MANIFEST = "manifest.json"
SHARD_DIR = "data"

# One row per input sample. Rejected samples keep their row (status 'rejected', reason set, signals null).
SIGNAL_SCHEMA = pa.schema([
    ("index", pa.int64()),
    ("id", pa.string()),
    ("image", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("bbox", pa.list_(pa.float64())),  # [x1, y1, x2, y2] in source-image pixels
    ("source", pa.string()),
    ("image_size", pa.list_(pa.int32())),  # [width, height]
    ("status", pa.string()),  # 'ok' | 'rejected'
    ("reject_reason", pa.string()),
    ("teacher_answer", pa.string()),
    ("a_traj", pa.list_(pa.float32())),  # raw eq.-2 aggregate over the image tokens, row-major (t, h, w)
    ("a_traj_grid", pa.list_(pa.int32())),  # [t, h, w] merged-token grid of a_traj
    ("v_sem", pa.list_(pa.float16())),  # mean-pooled final-layer teacher states at the image tokens
    ("s_focus", pa.float64()),  # eq. 1, null without a box
])


def pending_row(index: int, sample_id: str, image: str, question: str, answer, source: str | None) -> dict:
    """A row with the sample's fields and no signals yet: status 'rejected' until signals are filled in."""
    row = dict.fromkeys(SIGNAL_SCHEMA.names)
    row.update(index=index, id=sample_id, image=image, question=question,
               answer=None if answer is None else str(answer), source=source, status="rejected")
    return row


def write_table_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def shard_files(directory: Path) -> list[Path]:
    return sorted((Path(directory) / SHARD_DIR).glob("*.parquet"))


def write_manifest(manifest: dict, directory: Path) -> None:
    """`manifest.json` plus a dataset card whose `configs` entry points `datasets.load_dataset` at the shards."""
    write_json_atomic(manifest, Path(directory) / MANIFEST)
    card = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
            f"    path: {SHARD_DIR}/*.parquet", "---", "",
            f"# lavit store: {manifest.get('kind', 'unknown kind')}", "",
            f"Teacher: {manifest.get('teacher')}. Schema version {manifest.get('schema_version')}; "
            f"settings and counts in `{MANIFEST}`. Shards: `{SHARD_DIR}/*.parquet`.", ""]
    tmp = Path(directory) / "README.md.tmp"
    tmp.write_text("\n".join(card))
    os.replace(tmp, Path(directory) / "README.md")


def read_store(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of a store in input order; errors on duplicate ids or an unknown schema version."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("schema_version") == 1:
        raise ValueError(f"{directory}: schema version 1 keeps its shards in the store's root; this lavit reads them "
                         f"from {SHARD_DIR}/ (move them: mkdir {directory}/{SHARD_DIR} && mv {directory}/*.parquet "
                         f"{directory}/{SHARD_DIR}/, then set schema_version to {SCHEMA_VERSION} in {MANIFEST})")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{directory}: schema version {manifest.get('schema_version')} (this lavit reads {SCHEMA_VERSION})")
    files = shard_files(directory)
    if not files:
        return SIGNAL_SCHEMA.empty_table() if columns is None else SIGNAL_SCHEMA.empty_table().select(columns)
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files], promote_options="default")
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        seen, dups = set(), set()
        for i in ids:
            (dups if i in seen else seen).add(i)
        raise ValueError(f"{directory}: ids stored more than once: {sorted(dups)[:10]}")
    if "index" in table.column_names:
        table = table.sort_by("index")
    return table


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST}: not a lavit store")
    return json.loads(path.read_text())


class ShardWriter:
    """Appends rows as numbered shards `data/<prefix>-NNNNN.parquet`; knows which ids are already stored."""

    def __init__(self, directory: str | Path, prefix: str, schema: pa.Schema = SIGNAL_SCHEMA):
        self.store = Path(directory)
        self.directory = self.store / SHARD_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.schema = schema
        for stale in self.directory.glob(f"{prefix}-*.tmp"):  # left by this worker when killed; other
            stale.unlink()  # workers' temporary files may be in flight, so only our own prefix is cleared
        mine = sorted(self.directory.glob(f"{prefix}-*.parquet"))
        self.next_shard = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in mine), default=-1)

    def stored_ids(self) -> set[str]:
        ids: set[str] = set()
        for f in shard_files(self.store):
            ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        return ids

    def write(self, rows: list[dict]) -> Path:
        path = self.directory / f"{self.prefix}-{self.next_shard:05d}.parquet"
        write_table_atomic(pa.Table.from_pylist(rows, schema=self.schema), path)
        self.next_shard += 1
        return path


def check_finite_row(row: dict) -> None:
    """NaN/inf in a stored signal is an error naming the sample (never trained on, never zero-filled)."""
    for key in ("a_traj", "v_sem"):
        values = row.get(key)
        if values is not None and not np.isfinite(np.asarray(values, dtype=np.float32)).all():
            raise ValueError(f"sample {row.get('id')}: stored {key} contains NaN or inf")


def store_counts(directory: Path) -> dict:
    table = read_store(directory, columns=["id", "status", "reject_reason"])
    reasons = Counter(r.split(":")[0] for r in table.column("reject_reason").to_pylist() if r)
    statuses = Counter(table.column("status").to_pylist())
    return {"rows": table.num_rows, "ok": statuses.get("ok", 0), "rejected": statuses.get("rejected", 0),
            "rejected_by_reason": dict(sorted(reasons.items()))}
