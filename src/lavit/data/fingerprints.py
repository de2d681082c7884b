"""Fingerprints of what a run read: content hashes, so two runs (or a run and its resume) can tell whether they
read the same data, whatever the paths are called.

* `file_fingerprint(path)`: `{"sha256", "bytes"}` of one file's content.
* `files_fingerprint(paths, root)`: one digest over several files, each named by its path relative to `root`
  (a renamed or moved file changes it; a copied folder does not), with the file count.
* `store_fingerprint(store)`: a signal store's shards and manifest (`lavit train` resumes only on the same data).
* `record_fingerprint(record)`: one JSON-able record (a sample's fields), canonical: keys sorted, no spaces.

Content, not modification times: a folder copied to another machine keeps its fingerprint, and a file rewritten
with other content under the same name changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def _hash_file(path: Path, digest) -> int:
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


def file_fingerprint(path: str | Path) -> dict:
    """`{"sha256": hex, "bytes": n}` of the file's content."""
    digest = hashlib.sha256()
    size = _hash_file(Path(path), digest)
    return {"sha256": digest.hexdigest(), "bytes": size}


def files_fingerprint(paths: Iterable[str | Path], root: str | Path) -> dict:
    """`{"sha256", "files", "bytes"}`: one digest over the files' names relative to `root` and their contents, in
    name order (the order they are given in does not matter). A path outside `root` is an error."""
    root = Path(root).resolve()
    named = sorted((str(Path(p).resolve().relative_to(root)), Path(p)) for p in paths)
    digest, total = hashlib.sha256(), 0
    for name, path in named:
        inner = hashlib.sha256()
        total += _hash_file(path, inner)
        digest.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return {"sha256": digest.hexdigest(), "files": len(named), "bytes": total}


def store_fingerprint(store: str | Path) -> dict:
    """A signal store's (or filtered set's) content: its Parquet shards under `data/` and its `manifest.json`."""
    store = Path(store)
    shards = sorted((store / "data").glob("*.parquet"))
    return files_fingerprint([*shards, store / "manifest.json"], store)


def record_fingerprint(record: dict) -> str:
    """sha256 of a JSON-able record in canonical form (sorted keys, compact separators)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_differences(recorded: dict, current: dict) -> list[str]:
    """'name: sha256 abc123… → def456…' for every fingerprint named in either mapping that differs."""
    def short(entry) -> str:
        if not isinstance(entry, dict):
            return "(none)"
        return f"{entry.get('sha256', '?')[:12]}… ({entry.get('files', 1)} files, {entry.get('bytes', '?')} bytes)"

    return [f"{name}: {short(recorded.get(name))} → {short(current.get(name))}"
            for name in sorted(set(recorded) | set(current))
            if (recorded.get(name) or {}).get("sha256") != (current.get(name) or {}).get("sha256")]
