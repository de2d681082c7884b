"""What long CLI runs print: one line per stage (`say`) and progress bars, without library chatter."""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path


class MissingDependency(ImportError):
    """An optional package a command was asked to use is not installed; the message says how to install it (the
    CLI prints it as an error, not a traceback)."""


class EndpointError(RuntimeError):
    """A service a command was pointed at (an OpenAI-compatible judge) is unreachable or answered badly; the
    message names it (the CLI prints it as an error, not a traceback)."""


def quiet_libraries() -> None:
    """No library warnings or weight-loading/saving bars on the console (errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------- failed writes

FULL = (errno.ENOSPC, errno.EDQUOT)
DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)
# torch's zip writer reports a short write without its errno (`unexpected pos N vs M` from a str path, "failed
# writing file …" from a stream): taken for a full disk only where the filesystem has next to nothing left
TORCH_SHORT_WRITE = ("unexpected pos", "pytorchstreamwriter failed writing")
ALMOST_FULL_BYTES = 64 * 2**20


def exception_chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from or while handling, as its traceback shows them (a context
    suppressed by `raise … from None` is left out: its message replaced the context's on purpose)."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return chain


def reported_errnos(chain: list[BaseException]) -> set[int]:
    """The errnos of FULL and DENIED the chain reports: an OSError's own, or one a message names — safetensors'
    SafetensorError ("… (os error 28)"), pyarrow's "[errno 28]" detail, torch.distributed.checkpoint's failures."""
    found = set()
    for err in chain:
        if isinstance(err, OSError) and err.errno in FULL + DENIED:
            found.add(err.errno)
        text = str(err).lower()
        found |= {code for code in FULL + DENIED
                  if os.strerror(code).lower() in text or re.search(rf"\b(os error|errno) {code}\b", text)}
    return found


def reported_paths(chain: list[BaseException]) -> list[Path]:
    """The file names the chain's OSErrors carry (set where the call that failed took a path)."""
    names = [name for err in chain if isinstance(err, OSError) for name in (err.filename, err.filename2)]
    return [Path(os.fsdecode(name)) for name in names if isinstance(name, (str, bytes, os.PathLike))]


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (a failed run may not have created its output folder)."""
    path = Path(os.path.realpath(path))
    while not path.exists():
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds `path`: where space has to be freed."""
    path = existing_ancestor(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def almost_full(path: Path) -> bool:
    """Whether the filesystem holding `path` has (almost) no room left: under 64 MiB, and under 1 % of its size
    (a write that failed for want of room leaves next to nothing; a small filesystem may be that small)."""
    usage = shutil.disk_usage(existing_ancestor(path))
    return usage.free < min(ALMOST_FULL_BYTES, usage.total // 100)


def related(path: Path, out: Path) -> bool:
    """Whether writing `path` is part of writing `out`: it is `out`, inside it, or a folder on the way to it."""
    path, out = Path(os.path.realpath(path)), Path(os.path.realpath(out))
    return path.is_relative_to(out) or out.is_relative_to(path)


def output_denied(out: Path, paths: list[Path]) -> bool:
    """Whether a denied write was the output's: a path the error names is `out`, inside it or on the way to it,
    or, where it names none, `out` cannot be written (a denied input or cache is a failure of its own)."""
    if paths:
        return any(related(path, out) for path in paths)
    return not os.access(existing_ancestor(out), os.W_OK)


@dataclass(frozen=True)
class FailedWrite:
    """A command's write that failed for want of room (`full`) or of permission to write its output."""

    path: Path | None  # what was being written: the file the error names, else the command's output
    reason: str  # "No space left on device", "Disk quota exceeded", "read-only file system", "permission denied"
    full: bool

    def message(self, option: str, rerun: str) -> str:
        """One line: for a full disk where to free space and `rerun` (how to resume); for an unwritable output,
        to choose another with `option` (`--out`, `output_dir=`)."""
        if not self.full:
            return f"cannot write to {self.path}: {self.reason}; choose a writable {option}"
        if self.path is None:
            return f"disk full ({self.reason}): free space and {rerun}"
        return f"disk full ({self.reason}) writing {self.path}: free space on {mount_point(self.path)} and {rerun}"


def failed_write(err: BaseException, out: str | None) -> FailedWrite | None:
    """What `err` says of a command writing to `out` (None: it writes nowhere of its own): a full disk, its
    output unwritable, or None for any other failure, whichever library raised it.

    Everything written before a full disk is complete (atomic renames, journals, checkpoint markers), so it needs
    only space and a rerun."""
    chain = exception_chain(err)
    codes, paths = reported_errnos(chain), reported_paths(chain)
    where = paths[0] if paths else Path(out) if out else None
    full = [code for code in FULL if code in codes]
    short_write = any(marker in str(link).lower() for link in chain for marker in TORCH_SHORT_WRITE)
    if not full and short_write and where is not None and almost_full(where):
        full = [errno.ENOSPC]
    if full:
        return FailedWrite(where, os.strerror(full[0]), full=True)
    if out is None or not codes & set(DENIED) or not output_denied(Path(out), paths):
        return None
    read_only = errno.EROFS in codes or os.statvfs(existing_ancestor(Path(out))).f_flag & os.ST_RDONLY
    return FailedWrite(where, "read-only file system" if read_only else "permission denied", full=False)
