"""Parquet storage of teacher signals and the LaViT-SFT set (DESIGN §3).

A store is a directory holding `manifest.json` (and, for a filtered set, `filter_report.json` and
`dropped.jsonl`), a dataset card `README.md`, and its zstd Parquet shards under `data/`, so that the
shard folder holds nothing else. Every shard is written to a temporary name and renamed into place, so
a killed writer leaves either a whole shard or none; a rerun reads the ids already stored and skips
them. Rows keep their position in the input list (`index`), and `read_store` returns them in that
order, so the stored set does not depend on how often a run was interrupted. Loadable without lavit:
`pyarrow.parquet.read_table(STORE/data)`, `datasets.load_dataset("parquet", data_dir=STORE/data)` or
`datasets.load_dataset(STORE)` (the card names the shards).

One writer of record, also across machines on a shared filesystem: a store is created by an exclusive
create of its manifest (`create_store`: of several runs starting at one instant exactly one writes it, the
others compare their settings with it); the manifest is changed only under the store's lock
(`update_manifest`), and its counts are derived from the shards, never accumulated; each shard prefix (one
per extraction worker) has one writer, which holds that prefix's lock (`ShardWriter`), and the workers writing
at one time are of one count (`open_worker_writer`: workers of two counts would split the input two ways and store
some ids twice). Temporary files have unique hidden names that say which process wrote them, so concurrent writers
never rename each other's, stock readers never see them, and one left by a killed process is removed by the next
lock taken in its folder (`remove_dead_temps`). A store holding an id twice all the same (made by an older lavit,
or by hand) is repaired by `lavit repair-store` (`repair_store`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lavit.data.samples import answer_text, text_value

# 2: shards moved from the store's root into data/. The teacher's top-k columns (`KD_COLUMNS`) came later without a
# new version: they are nullable, a shard written before them reads them as null (every reader here fills a
# column a shard lacks with nulls), and only method=kd / lavit_kd need them (and say to re-extract when absent).
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
SHARD_DIR = "data"
# The teacher's top-k columns (their types and meaning: SIGNAL_SCHEMA).
KD_TOKEN_IDS, KD_TOKENS, KD_TOPK_IDS, KD_TOPK_TOKENS, KD_TOPK_LOGPROBS, KD_TEMPERATURE = (
    "kd_token_ids", "kd_tokens", "kd_topk_ids", "kd_topk_tokens", "kd_topk_logprobs", "kd_temperature")
KD_COLUMNS = (KD_TOKEN_IDS, KD_TOKENS, KD_TOPK_IDS, KD_TOPK_TOKENS, KD_TOPK_LOGPROBS, KD_TEMPERATURE)

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
    # samples.sample_fingerprint of the fields extracted from; null in shards written before the column existed
    ("sample_sha256", pa.string()),
    # The teacher's next-token distribution where it produces its answer (`lavit extract kd_top_k=k`, null when 0 or
    # written before): one entry per answer token and the end-of-turn token, T in all; top-k lists are row-major [T, k].
    (KD_TOKEN_IDS, pa.list_(pa.int32())),  # [T] the teacher's tokens at those positions
    (KD_TOKENS, pa.list_(pa.string())),  # [T] their strings in the teacher's tokenizer (the last: its end-of-turn)
    (KD_TOPK_IDS, pa.list_(pa.int32())),  # [T*k] the k most probable next tokens at each position
    (KD_TOPK_TOKENS, pa.list_(pa.string())),  # [T*k] their strings (null for an id past the teacher's tokenizer)
    (KD_TOPK_LOGPROBS, pa.list_(pa.float32())),  # [T*k] their log-probabilities at kd_temperature
    (KD_TEMPERATURE, pa.float32()),  # τ of those log-probabilities: log softmax(logits / τ)
])
SAMPLE_FINGERPRINT = "sample_sha256"


def pending_row(index: int, sample_id: str, image, question, answer, source) -> dict:
    """A row with the sample's fields and no signals yet: status 'rejected' until signals are filled in. A field
    that is not storable text is stored as null; `samples.check_text` rejects such a sample ('field_not_text')."""
    row = dict.fromkeys(SIGNAL_SCHEMA.names)
    row.update(index=index, id=sample_id, image=text_value(image), question=text_value(question),
               answer=answer_text(answer), source=text_value(source), status="rejected")
    return row


def temp_path(path: Path) -> Path:
    """A unique hidden name beside `path` that names its writer (machine tag and pid, `_TEMP_OWNER`): concurrent
    writers never share one, pyarrow's and datasets' readers skip names starting with '.', and one left by a killed
    writer is known as such (`remove_dead_temps`)."""
    return path.with_name(f".{path.name}.{_machine_tag()}-{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_table_atomic(table: pa.Table, path: Path) -> None:
    tmp = temp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text_atomic(text: str, path: Path) -> None:
    tmp = temp_path(path)
    try:
        _write_durable(tmp, text.encode("utf-8"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(data: dict, path: Path) -> None:
    _write_text_atomic(json.dumps(data, indent=2, sort_keys=True), path)


def read_journal(path: Path) -> list[dict]:
    """The records of an append-only JSON-lines journal (eval predictions, extract's vLLM answers): its complete
    lines. A last line torn by a kill (no newline) is dropped, and the file rewritten without it, atomically."""
    if not path.is_file():
        return []
    complete, _, tail = path.read_text(encoding="utf-8").rpartition("\n")
    lines = [line for line in complete.split("\n") if line.strip()]
    if tail.strip():
        _write_text_atomic("".join(line + "\n" for line in lines), path)
    return [json.loads(line) for line in lines]


def _link_exclusive(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source` unless `target` exists: an atomic, exclusive create of a complete
    file, also on NFS (the method open(2) gives there: a link whose reply was lost shows in the link count)."""
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        raise ValueError(f"cannot create {target} ({err}): a lavit store needs a filesystem with hard links and "
                         "atomic renames (a local disk, NFS, Lustre, GPFS, BeeGFS)") from None
    return os.stat(source).st_nlink == 2


def shard_files(directory: Path) -> list[Path]:
    return sorted((Path(directory) / SHARD_DIR).glob("*.parquet"))


def write_manifest(manifest: dict, directory: Path) -> None:
    """`manifest.json` plus a dataset card whose `configs` entry points `datasets.load_dataset` at the shards.
    For a store only this process writes; where others may, create with `create_store` and change with
    `update_manifest`."""
    write_json_atomic(manifest, Path(directory) / MANIFEST)
    _write_card(manifest, Path(directory))


def _write_card(manifest: dict, directory: Path) -> None:
    card = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
            f"    path: {SHARD_DIR}/*.parquet", "---", "",
            f"# lavit store: {manifest.get('kind', 'unknown kind')}", "",
            f"Teacher: {manifest.get('teacher')}. Schema version {manifest.get('schema_version')}; "
            f"settings and counts in `{MANIFEST}`. Shards: `{SHARD_DIR}/*.parquet`.", "", *_kd_card(manifest)]
    _write_text_atomic("\n".join(card), directory / "README.md")


def _recorded_settings(manifest: dict) -> dict:
    """The extraction settings a store records: a signal store's `settings`, a filtered set's `extract_settings`."""
    for key in ("settings", "extract_settings"):
        if isinstance(manifest.get(key), dict):
            return manifest[key]
    return {}


def _kd_card(manifest: dict) -> list[str]:
    """The card's section on the teacher's top-k columns, for a store extracted with kd_top_k > 0."""
    settings = _recorded_settings(manifest)
    k = settings.get("kd_top_k") or 0
    if not k:
        return []
    return [f"## Teacher top-k (kd_top_k={k}, kd_temperature={settings.get('kd_temperature', 1.0)})", "",
            "The teacher's next-token distribution at each position that produces one of its answer tokens or its "
            "end-of-turn token (T positions per row), for `lavit train method=kd` / `method=lavit_kd`. List columns, "
            "top-k lists row-major [T, k]:", "",
            "- `kd_token_ids` [T] int32, `kd_tokens` [T] string: the teacher's tokens at those positions (ids and "
            "strings of its tokenizer; the last is its end-of-turn).",
            f"- `kd_topk_ids` [T·{k}] int32, `kd_topk_tokens` [T·{k}] string: the {k} most probable next tokens at "
            "each position (a string is null for an id of the teacher's head past its tokenizer).",
            f"- `kd_topk_logprobs` [T·{k}] float32: their log-probabilities, log softmax(logits / τ).",
            "- `kd_temperature` float32: τ.", "",
            "Training maps the strings to the student's vocabulary; the teacher mass outside the top-k, or on tokens "
            "the student lacks, is one 'rest' bucket.", ""]


def create_store(directory: str | Path, manifest: dict) -> tuple[dict, bool]:
    """(the store's manifest, whether this call created it). The manifest appears complete and exclusively:
    of several processes creating one store at one instant exactly one writes `manifest`, and every other gets
    the winner's, to compare its settings with (and refuse to write on a mismatch)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    tmp = temp_path(path)
    try:
        _write_durable(tmp, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        created = _link_exclusive(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not created:
        return read_manifest(directory), False
    _write_card(manifest, directory)
    return manifest, True


def update_manifest(directory: str | Path, change: Callable[[dict], None]) -> dict:
    """Read, `change` in place and write the manifest (and card) under the store's lock, so concurrent updates
    never lose one another; `change` may raise to refuse, leaving the manifest as it was."""
    directory = Path(directory)
    with StoreLock(directory / MANIFEST_LOCK, f"the manifest of {directory}").acquire(wait=True) as lock:
        manifest = read_manifest(directory)
        change(manifest)
        lock.check()
        write_manifest(manifest, directory)
    return manifest


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
    refuse_duplicate_ids(directory, table.column("id").to_pylist())
    if "index" in table.column_names:
        table = table.sort_by("index")
    return table


def refuse_duplicate_ids(directory: Path, ids: list[str]) -> None:
    """Refuse a store holding an id more than once (workers of two counts of an older lavit, or a hand-made store),
    naming the command that repairs it."""
    if len(set(ids)) == len(ids):
        return
    seen, dups = set(), set()
    for i in ids:
        (dups if i in seen else seen).add(i)
    raise ValueError(f"{directory}: ids stored more than once: {sorted(dups)[:10]} ({len(dups)} in all); "
                     f"`lavit repair-store {directory}` lists the copy of each it keeps, and with --apply removes the "
                     "others")


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST}: not a lavit store")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a readable manifest (a JSON {type(manifest).__name__}, not an object)")
    return manifest


def recorded_image_root(manifest: dict) -> str:
    """The image root a store's rows were extracted from, as its manifest records it (a signal store's `settings`,
    a filtered set's `extract_settings`); '' when it records none (an imported store)."""
    image_root = _recorded_settings(manifest).get("image_root")
    return image_root if isinstance(image_root, str) else ""


MANIFEST_LOCK = ".manifest.lock"
# A holder refreshes its lock's time every LOCK_HEARTBEAT_SECONDS; a lock not refreshed for LOCK_STALE_SECONDS
# (by the filesystem's clock) is a dead holder's, on any machine. On the holder's own machine a lock whose
# process has exited is stale at once.
LOCK_HEARTBEAT_SECONDS = 15.0
LOCK_STALE_SECONDS = 120.0
_log = logging.getLogger(__name__)


def _this_machine() -> str:
    """Host name plus PID namespace: two containers on one host may share a name but not their process ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet still has a pid
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@functools.cache
def _machine_tag() -> str:
    """8 hex digits naming `_this_machine()` in temporary file names."""
    return hashlib.sha256(_this_machine().encode()).hexdigest()[:8]


def _filesystem_offset(folder: Path) -> float:
    """The clock of the filesystem holding `folder` (its server's, on NFS) minus ours: file times are compared with
    it, never with our own clock."""
    probe = temp_path(folder / ".clock")
    try:
        _write_durable(probe, b"")
        return probe.stat().st_mtime - time.time()
    finally:
        probe.unlink(missing_ok=True)


_TEMP_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)\.[0-9a-f]{12}\.tmp$")


def remove_dead_temps(folder: Path) -> list[str]:
    """Remove the temporary files in `folder` whose writer is gone, and return their names. A kill between writing
    a temporary file and renaming it (or, for a lock, linking it) leaves one behind. Gone: a process of this
    machine that has exited (at once); any other writer, or a name that does not say (older lavit), once the file
    went `LOCK_STALE_SECONDS` untouched by the filesystem's clock (a live writer's temporary file lives for
    milliseconds; a lock waiter refreshes its own)."""
    removed: list[str] = []
    offset: float | None = None
    for path in folder.glob(".*.tmp"):
        owner = _TEMP_OWNER.search(path.name)
        if owner and owner.group(1) == _machine_tag():
            gone = not _process_alive(int(owner.group(2)))
        else:
            offset = _filesystem_offset(folder) if offset is None else offset
            try:
                gone = time.time() + offset - path.stat().st_mtime > LOCK_STALE_SECONDS
            except FileNotFoundError:
                continue
        if gone:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _read_lock(path: Path) -> tuple[bytes, dict, float] | None:
    """(content, holder, mtime) of one lock file, read through one descriptor; None once it is gone."""
    try:
        with open(path, "rb") as f:
            raw, mtime = f.read(), os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw)
    except ValueError:
        holder = {}
    return raw, holder if isinstance(holder, dict) else {}, mtime


class StoreBusy(ValueError):
    """The lock is held by a live process (or was lost to one that judged this one dead)."""


class StoreLock:
    """An exclusive lock file that holds on shared filesystems (NFS, Lustre, GPFS), where `fcntl`/`flock` locks
    are unreliable or absent: a hard link (`_link_exclusive`) from a complete file naming the holder (machine,
    pid, token). The holder refreshes the file's time from a background thread; a waiter clears a lock whose
    holder has exited (same machine) or that went `LOCK_STALE_SECONDS` without a refresh, and says so."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop: threading.Event | None = None
        self._fs_offset: float | None = None

    def acquire(self, wait: bool = True) -> StoreLock:
        """Take the lock; while a live process holds it, wait (`wait`) or raise `StoreBusy`."""
        holder = {"machine": _this_machine(), "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "what": self.what}
        for name in remove_dead_temps(self.path.parent):
            _log.warning("removed %s, left in %s by a killed process", name, self.path.parent)
        mine = temp_path(self.path)
        started, said = time.monotonic(), False
        touched = started
        try:
            _write_durable(mine, json.dumps(holder).encode("utf-8"))
            while not _link_exclusive(mine, self.path):
                found = _read_lock(self.path)
                if found is None:
                    continue
                if self._stale(found[1], found[2]):
                    self._clear(found)
                    continue
                other = found[1]
                message = (f"{self.what} is held by {other.get('host', '?')} pid {other.get('pid', '?')} since "
                           f"{other.get('since', '?')} ({self.path}; a lock whose process is gone is cleared "
                           f"{LOCK_STALE_SECONDS:.0f} s after its last refresh, at once on its own machine)")
                if not wait:
                    raise StoreBusy(message)
                if not said and time.monotonic() - started > 10:  # a manifest update takes a second or so
                    _log.warning("waiting: %s", message)
                    said = True
                if time.monotonic() - touched > LOCK_HEARTBEAT_SECONDS:  # so no one takes `mine` for a dead one's
                    os.utime(mine)
                    touched = time.monotonic()
                time.sleep(random.uniform(0.005, 0.05))
        finally:
            mine.unlink(missing_ok=True)
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._stop,), daemon=True, name=f"lock {self.path}").start()
        return self

    def _stale(self, holder: dict, mtime: float) -> bool:
        if holder.get("machine") == _this_machine() and isinstance(holder.get("pid"), int):
            if not _process_alive(holder["pid"]):
                return True
        if self._fs_offset is None:  # measured once per lock
            self._fs_offset = _filesystem_offset(self.path.parent)
        return time.time() + self._fs_offset - mtime > LOCK_STALE_SECONDS

    def live_holder(self) -> dict | None:
        """Who holds this lock, while that process is live; None when the lock is free or its holder is gone."""
        found = _read_lock(self.path)
        if found is None or self._stale(found[1], found[2]):
            return None
        return found[1]

    def _clear(self, found: tuple[bytes, dict, float]) -> None:
        """Remove the stale lock `found`; if another waiter cleared it first and a third process took the lock
        meanwhile, the live lock moved aside by mistake is put back."""
        moved = temp_path(self.path)
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        taken = _read_lock(moved)
        if taken is not None and taken[0] == found[0]:
            holder = found[1]
            _log.warning("cleared a stale lock on %s left by %s pid %s (since %s)", self.what, holder.get("host", "?"),
                         holder.get("pid", "?"), holder.get("since", "?"))
        elif taken is not None:
            _link_exclusive(moved, self.path)
        moved.unlink(missing_ok=True)

    def owned(self) -> bool:
        found = _read_lock(self.path)
        return found is not None and found[1].get("token") == self.token

    def beat(self) -> None:
        """Refresh the lock's time, or note that it was lost (taken over by a process that judged this one dead)."""
        try:
            if self.owned():
                os.utime(self.path)
                return
        except OSError:
            pass
        self.lost = True

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(LOCK_HEARTBEAT_SECONDS) and not self.lost:
            self.beat()

    def check(self) -> None:
        """Raise `StoreBusy` unless this process still holds the lock."""
        if self.lost or not self.owned():
            self.lost = True
            raise StoreBusy(f"lost the lock on {self.what} ({self.path}): another process took it over, judging "
                            "this one dead; stopping so that two writers never mix their rows")

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        if self.owned():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ShardWriter:
    """Appends rows as numbered shards `data/<prefix>-NNNNN.parquet`; knows which ids are already stored.

    The one writer of its prefix: it holds the prefix's lock (a second writer of the same prefix, e.g. a worker
    started twice, raises `StoreBusy`) until `close()` (or the end of a `with` block, or garbage collection)."""

    def __init__(self, directory: str | Path, prefix: str, schema: pa.Schema = SIGNAL_SCHEMA):
        self.store = Path(directory)
        self.directory = self.store / SHARD_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.schema = schema
        self.lock = StoreLock(self.store / f".writer-{prefix}.lock",
                              f"shard prefix {prefix} of {self.store}").acquire(wait=False)
        self._release = weakref.finalize(self, self.lock.release)
        for stale in self.directory.glob(f".{prefix}-*.tmp"):  # left by a killed writer of this prefix; as its
            stale.unlink()  # one writer now, nothing of this prefix can be in flight (other prefixes' may be)
        remove_dead_temps(self.directory)  # other prefixes': a dead writer's, as a prefix may never be written again
        mine = sorted(self.directory.glob(f"{prefix}-*.parquet"))
        self.next_shard = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in mine), default=-1)

    def close(self) -> None:
        self._release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stored_ids(self) -> set[str]:
        """The ids the store holds; a store holding one twice is refused here, before a resumed run's work."""
        ids: list[str] = []
        for f in shard_files(self.store):
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
        refuse_duplicate_ids(self.store, ids)
        return set(ids)

    def write(self, rows: list[dict]) -> Path:
        self.lock.check()
        path = self.directory / f"{self.prefix}-{self.next_shard:05d}.parquet"
        write_table_atomic(pa.Table.from_pylist(rows, schema=self.schema), path)
        self.next_shard += 1
        return path


WORKER_PREFIX = "signals-w{worker:03d}of{workers:03d}"
_WRITER_LOCK = re.compile(r"\.writer-(.+)\.lock")
_WORKER_COUNT = re.compile(r"signals-w\d+of(\d+)")


def live_writers(directory: Path, workers: int | None = None) -> list[str]:
    """The shard writers of the store holding their prefix's lock now, described (prefix, host, pid); with
    `workers`, only those that are not extract workers of that count (an import's writer is of no count)."""
    busy = []
    for path in sorted(Path(directory).glob(".writer-*.lock")):
        prefix = _WRITER_LOCK.fullmatch(path.name).group(1)
        count = _WORKER_COUNT.fullmatch(prefix)
        if workers is not None and count and int(count.group(1)) == workers:
            continue
        holder = StoreLock(path, f"shard prefix {prefix}").live_holder()
        if holder is not None:
            busy.append(f"{prefix} ({holder.get('host', '?')} pid {holder.get('pid', '?')})")
    return busy


def open_worker_writer(directory: str | Path, worker: int, workers: int) -> ShardWriter:
    """The writer of extract worker `worker` of `workers` (`--shard i/n`): its prefix's `ShardWriter`, taken under
    the store's lock once no writer of another count is live. Workers split the batch groups by `g % n`, so
    workers of two counts would store some ids twice; of workers of two counts started together, those of the
    count that took the store first write and the others are refused before writing. A later run may use another
    count (its stored ids are skipped): the store's count (`workers` in the manifest) is recorded anew."""
    directory = Path(directory)
    with StoreLock(directory / MANIFEST_LOCK, f"the writers of {directory}").acquire(wait=True) as lock:
        busy = live_writers(directory, workers)
        if busy:
            raise ValueError(f"{directory} is being written by writers of another count ({'; '.join(busy)}), and "
                             f"this extract worker is --shard {worker}/{workers}: workers of two counts would store "
                             "some samples twice. Start every worker of a run with one count n (--shard 0/n ... "
                             "n-1/n), or start this count once those have finished (the samples stored are skipped)")
        manifest = read_manifest(directory)
        if manifest.get("workers") != workers:
            manifest["workers"] = workers
            lock.check()
            write_manifest(manifest, directory)
        return ShardWriter(directory, WORKER_PREFIX.format(worker=worker, workers=workers))


def check_finite_row(row: dict) -> None:
    """NaN/inf in a stored signal is an error naming the sample (never trained on, never zero-filled)."""
    for key in ("a_traj", "v_sem", KD_TOPK_LOGPROBS):
        values = row.get(key)
        if values is not None and not np.isfinite(np.asarray(values, dtype=np.float32)).all():
            raise ValueError(f"sample {row.get('id')}: stored {key} contains NaN or inf")


def store_counts(directory: Path) -> dict:
    table = read_store(directory, columns=["id", "status", "reject_reason"])
    reasons = Counter(r.split(":")[0] for r in table.column("reject_reason").to_pylist() if r)
    statuses = Counter(table.column("status").to_pylist())
    return {"rows": table.num_rows, "ok": statuses.get("ok", 0), "rejected": statuses.get("rejected", 0),
            "rejected_by_reason": dict(sorted(reasons.items()))}


def stored_sample_fingerprints(directory: str | Path) -> dict[str, str | None]:
    """Each stored row's id → the fingerprint of the sample fields it was extracted from; None for the rows of
    shards written before the column existed (they cannot be checked)."""
    found: dict[str, str | None] = {}
    for path in shard_files(Path(directory)):
        if SAMPLE_FINGERPRINT not in pq.read_schema(path).names:
            found.update(dict.fromkeys(pq.read_table(path, columns=["id"]).column("id").to_pylist()))
            continue
        table = pq.read_table(path, columns=["id", SAMPLE_FINGERPRINT])
        found.update(zip(table.column("id").to_pylist(), table.column(SAMPLE_FINGERPRINT).to_pylist()))
    return found


def changed_ids(stored: Mapping[str, str | None], current: Mapping[str, str]) -> list[str]:
    """The ids of `current` (id → fingerprint of the sample now) whose stored row was extracted from other fields.
    A row without a recorded fingerprint cannot be compared and is not among them."""
    return sorted(i for i, sha in stored.items() if sha is not None and i in current and current[i] != sha)


def remove_changed_rows(directory: str | Path, current: Mapping[str, str]) -> list[str]:
    """Delete every row that `changed_ids` names, under the store's lock: each shard holding one is rewritten
    without it, atomically (a shard left empty is removed). Idempotent, so concurrent workers may all call it: a
    row extracted from the current fields is never touched. Returns the ids removed."""
    directory = Path(directory)
    removed: list[str] = []
    with StoreLock(directory / MANIFEST_LOCK, f"the rows of {directory}").acquire(wait=True) as lock:
        for path in shard_files(directory):
            if SAMPLE_FINGERPRINT not in pq.read_schema(path).names:
                continue
            keys = pq.read_table(path, columns=["id", SAMPLE_FINGERPRINT])
            stale = changed_ids(dict(zip(keys.column("id").to_pylist(),
                                         keys.column(SAMPLE_FINGERPRINT).to_pylist())), current)
            if not stale:
                continue
            table = pq.read_table(path)
            kept = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(stale, pa.string()))))
            lock.check()
            if kept.num_rows:
                write_table_atomic(kept, path)
            else:
                path.unlink()
            removed += stale
    return sorted(removed)


def duplicate_copies(directory: str | Path) -> dict[str, list[dict]]:
    """Every copy of each id the store holds more than once, in reading order (shard name, then row):
    {id: [{"shard": "data/NAME", "row": position in the shard, "status": ...}, ...]}."""
    copies: dict[str, list[dict]] = {}
    for path in shard_files(Path(directory)):
        table = pq.read_table(path, columns=["id", "status"])
        for row, (i, status) in enumerate(zip(table.column("id").to_pylist(), table.column("status").to_pylist())):
            copies.setdefault(i, []).append({"shard": f"{SHARD_DIR}/{path.name}", "row": row, "status": status})
    return {i: found for i, found in copies.items() if len(found) > 1}


def kept_copy(copies: list[dict]) -> dict:
    """The copy `repair_store` keeps: an 'ok' row over a 'rejected' one (it holds signals), then the first read."""
    return min(copies, key=lambda c: c["status"] != "ok")  # min keeps the first of equals


def _describe(copy: dict) -> str:
    return f"{copy['shard']} row {copy['row']} ({copy['status']})"


def repair_store(directory: str | Path, apply: bool = False) -> dict:
    """Which copy of each id stored more than once is kept (`kept_copy`) and which are removed; with `apply`, the
    shards holding a removed copy are rewritten without it, atomically, under the store's lock (a shard left empty
    is removed) and a signal store's counts derived again. Refused while a writer of the store is live."""
    directory = Path(directory)
    manifest = read_manifest(directory)  # a lavit store, or a clear error
    if not apply:
        return _repair_plan(directory, duplicate_copies(directory), applied=False)
    with StoreLock(directory / MANIFEST_LOCK, f"the rows of {directory}").acquire(wait=True) as lock:
        busy = live_writers(directory)
        if busy:
            raise ValueError(f"{directory} is being written ({'; '.join(busy)}); repair it once they have finished")
        copies = duplicate_copies(directory)
        removed: dict[str, list[int]] = {}
        for found in copies.values():
            keep = kept_copy(found)
            for copy in found:
                if copy is not keep:
                    removed.setdefault(copy["shard"], []).append(copy["row"])
        for shard, rows in removed.items():
            table = pq.read_table(directory / shard)
            keep_mask = np.ones(table.num_rows, dtype=bool)
            keep_mask[rows] = False
            lock.check()
            if keep_mask.any():
                write_table_atomic(table.filter(pa.array(keep_mask)), directory / shard)
            else:
                (directory / shard).unlink()
        if removed and manifest.get("kind") == "teacher_signals":
            manifest = read_manifest(directory)
            manifest["counts"] = store_counts(directory)
            lock.check()
            write_manifest(manifest, directory)
    return _repair_plan(directory, copies, applied=True)


def _repair_plan(directory: Path, copies: dict[str, list[dict]], applied: bool) -> dict:
    """What `repair_store` keeps and removes, as `lavit repair-store` prints it."""
    ids = []
    for sample_id, found in sorted(copies.items()):
        keep = kept_copy(found)
        ids.append({"id": sample_id, "keep": _describe(keep), "remove": [_describe(c) for c in found if c is not keep]})
    removed = sum(len(entry["remove"]) for entry in ids)
    if not ids:
        note = "no id is stored more than once: nothing to repair"
    elif applied:
        note = f"removed {removed} copies; every id is now stored once"
    else:
        note = f"dry run, nothing changed: rerun with --apply to remove these {removed} copies"
    return {"store": str(directory), "rule": "keep the 'ok' copy over a 'rejected' one, then the first in shard-name "
            "order", "duplicate_ids": len(ids), "extra_copies": removed, "applied": applied, "note": note, "ids": ids}
