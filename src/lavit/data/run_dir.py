"""Output folders that are never silently shared (`lavit train`, `extract`, `filter`, `eval`, `audit`, `analyze`).

Three rules, each a clear error before any work: an output that is, contains, or lies inside one of the run's
inputs is refused before anything is written or deleted (replacing it would destroy the input, writing inside it
would change it); one run holds a folder at a time (`RunLock`); and a folder holding results of other settings is
refused, the differences listed (`record_settings`, `settings_differences`), unless the caller is told to replace
it (`prepare_output_folder`). Recorded settings hold absolute paths (`resolve_paths`), so one file spelled
relative or absolute compares equal.

It lives in `lavit.data` so every stage above can import it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from lavit.data.signal_store import write_json_atomic

LOCK = "lavit.lock"
_UNSET = "(not recorded)"


def _paths(value) -> list:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def resolve_paths(settings: Mapping, keys: Iterable[str]) -> dict:
    """`settings` with the values under `keys` (a path or a list of paths) made absolute ('' is the working
    directory, as every reader takes it)."""
    resolved = dict(settings)
    for key in keys:
        value = settings[key]
        absolute = [str(Path(p).resolve()) for p in _paths(value)]
        resolved[key] = absolute[0] if isinstance(value, (str, os.PathLike)) else absolute
    return resolved


def _relation(target: Path, where: Path) -> str | None:
    """How the output `target` stands to the input `where` (both resolved): 'is', 'contains', 'lies inside', or
    None when they are apart."""
    if where == target:
        return "is"
    if target in where.parents:
        return "contains"
    if where in target.parents:
        return "lies inside"
    return None


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def refuse_inputs_inside(out: str | Path, inputs: Mapping[str, object], key: str = "out",
                         folders: Collection[str] = ()) -> None:
    """Refuse an output folder that is, contains, or lies inside one of `inputs` ({setting: path or paths}):
    clearing it would delete that input or part of it, and writing inside an input (a store's `data/`, a model)
    changes what it holds. '' and paths that do not exist have nothing to lose.

    `folders` names the inputs that are folders the run reads files from (image roots, a benchmark's folder, often
    the working directory itself): an output inside one is refused only when it already holds files — replacing it
    could delete some of them — while a new or empty folder there harms none."""
    target = Path(out).resolve()
    for name, value in inputs.items():
        for path in _paths(value):
            if not str(path) or not Path(path).exists():
                continue
            relation = _relation(target, Path(path).resolve())
            if relation == "lies inside" and name in folders and not _holds_files(target):
                continue
            if relation:
                held = " and holds files" if name in folders and relation == "lies inside" else ""
                raise ValueError(f"{key} {out} {relation} the input {name} ({path}){held}: writing there would "
                                 f"overwrite, delete or change it; choose an {key} outside the inputs")


def prepare_output_folder(out: str | Path, inputs: Mapping[str, object], overwrite: bool, key: str = "out",
                          folders: Collection[str] = ()) -> None:
    """Make `out` ready for a run that writes it whole: refuse an `out` that is, contains or lies inside an input
    (`refuse_inputs_inside`), then a non-empty `out` unless `overwrite`, which empties it — in that order, so an
    input is never deleted."""
    out = Path(out)
    refuse_inputs_inside(out, inputs, key, folders)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{key} {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} exists and is not empty; set overwrite=true to replace it, or choose another "
                             f"{key}=")
        shutil.rmtree(out)


def settings_differences(recorded: Mapping, current: Mapping, may_change: Iterable[str] = ()) -> list[str]:
    """'key: recorded → current' for every setting that differs, except `may_change`; values compare as
    JSON reads them back (tuples as lists)."""
    current = json.loads(json.dumps(current))
    skip = set(may_change)
    return [f"{k}: {recorded.get(k, _UNSET)!r} → {current.get(k, _UNSET)!r}"
            for k in sorted(set(recorded) | set(current))
            if k not in skip and recorded.get(k, _UNSET) != current.get(k, _UNSET)]


def record_settings(path: str | Path, settings: Mapping, may_change: Iterable[str] = (),
                    hint: str = "choose another output folder") -> None:
    """Refuse when `path` records other settings than `settings` (each difference listed), else record them:
    a rerun with the same settings continues or replaces its own results, never another run's."""
    path = Path(path)
    if path.is_file():
        differences = settings_differences(json.loads(path.read_text(encoding="utf-8")), settings, may_change)
        if differences:
            raise ValueError(f"{path.parent} holds results of different settings ({path.name}: {'; '.join(differences)}); "
                             f"{hint}")
    write_json_atomic(dict(settings), path)


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:200]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:200]}


def describe_holder(holder: dict) -> str:
    if "pid" not in holder:
        return f"holder unknown: {holder}"
    return f"pid {holder['pid']} on host {holder.get('host')}, since {holder.get('since')}"


class RunLock:
    """One run at a time in `folder`: an exclusive `flock` on `folder/lavit.lock`, which names its holder
    (pid, host, start time). The kernel drops the lock when its holder dies, so a killed run never blocks
    the next one; the file it leaves only names it (`stale`, reported by the caller). On a shared file
    system the lock is the server's (NFS v4 locks); a file system without locks is an error, not a pass."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: int | None = None
        self.stale: dict | None = None  # the holder a killed run left in the file, if any

    def __enter__(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise ValueError(f"{self.folder} is in use by another run ({describe_holder(holder)}); wait for it "
                                 "to finish or choose another output folder") from None
            except OSError as err:
                os.close(fd)
                raise ValueError(f"cannot lock {self.path} ({err}): this file system does not support locks; "
                                 "choose an output folder on one that does") from None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            # the previous holder removed the file between our open and our lock: lock the new one instead
            os.close(fd)
        previous = _holder(fd)
        self.stale = previous or None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        # removed while still held, so no process ever locks a file that is about to vanish unnoticed
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
