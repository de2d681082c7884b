"""A full disk or an unwritable output stops any command with one line on stderr, exit 2, no traceback, whatever
library's write hit it (`lavit.console.failed_write`): first with the libraries' own exceptions raised inside
`lavit eval`, `lavit train` and `lavit extract`, then for real — a small tmpfs the command fills itself, then
space freed and the same command rerun, and a read-only mount. Mounting needs root; those tests skip without it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

import lavit.training.lavit_trainer as lavit_trainer
from lavit.cli import main
from lavit.console import failed_write
from lavit.data import signal_store
from lavit.eval import runner
from lavit.eval.models import ConstantModel
from lavit.toyworld.shapes import make_scene, write_sft_set
from tests.eval.fixtures import write_mmvp

# what safetensors 0.8 raises when the disk fills under `save_file` (the real one: test_writers_on_a_full_tmpfs)
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
# torch 2.14's zip writer on a full disk: to a path (test_writers_on_a_full_tmpfs), to a stream; no errno in either
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
TORCH_STREAM_FULL = "PytorchStreamWriter failed writing file data/0: file write failed"
TRAIN = ["global_batch_size=4", "logging_steps=1", "save_steps=1", "gate=none", "warmup_ratio=0",
         f"min_pixels={4 * 28 * 28}", f"max_pixels={64 * 28 * 28}", "gradient_checkpointing=false"]


def one_line(capsys) -> str:
    """The command's one error line (with its newline), checked to be the only one and no traceback; progress
    bars may share stderr."""
    err = capsys.readouterr().err
    lines = re.findall(r"lavit [a-z-]+: error: [^\r\n]*\n", err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def full_disk(monkeypatch) -> None:
    """Every filesystem reads as full (for the torch rule, which asks before trusting a short write)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2**30, used=2**30, free=0))


@pytest.fixture
def mmvp(tmp_path):
    return write_mmvp(tmp_path / "MMVP")


@pytest.fixture(scope="module")
def sft_set(tmp_path_factory):
    return write_sft_set(tmp_path_factory.mktemp("sft"), 8, seed=0)


def eval_args(mmvp: Path, out: Path, batch_size: int = 8) -> list[str]:
    return ["eval", "--model", "constant:A", "--benchmark", "mmvp", "--data-root", str(mmvp), "--out", str(out),
            "--batch-size", str(batch_size)]


def train_args(sft_set: Path, out: Path, *extra: str) -> list[str]:
    return ["train", f"data={sft_set}", f"image_root={sft_set.parent}", f"output_dir={out}", *TRAIN, *extra]


# ------------------------------------------------------------------------------ the libraries' own exceptions

def test_a_safetensors_error_in_a_checkpoint_save_is_one_line(sft_set, tmp_path, monkeypatch, capsys):
    def full(model, filename, *args, **kwargs):
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(lavit_trainer, "save_model", full)
    out = tmp_path / "run"
    assert main(train_args(sft_set, out, "max_steps=1")) == 2
    err = one_line(capsys)
    assert f"disk full (No space left on device) writing {out}: free space on " in err
    assert "rerun the same command with overwrite=true (no checkpoint was complete)" in err


def test_torch_short_write_is_a_full_disk_only_on_a_full_filesystem(sft_set, tmp_path, monkeypatch, capsys):
    def short_write(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_SHORT_WRITE)

    monkeypatch.setattr(torch, "save", short_write)  # the Trainer's optimizer state
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="unexpected pos"):  # the disk has room: a real failure, a traceback
        main(train_args(sft_set, out, "max_steps=1"))
    full_disk(monkeypatch)
    assert main(train_args(sft_set, out, "max_steps=1", "overwrite=true")) == 2
    assert f"disk full (No space left on device) writing {out}: free space on " in one_line(capsys)


def test_eval_quota_behind_another_exception_and_a_denied_output(mmvp, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def over_quota(data, path):
        raise ValueError("summary not written") from OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(runner, "write_json_atomic", over_quota)
    assert main(eval_args(mmvp, out)) == 2
    assert f"disk full (Disk quota exceeded) writing {out}: free space on " in one_line(capsys)

    def denied(data, path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(runner, "write_json_atomic", denied)
    assert main(eval_args(mmvp, out)) == 2
    summary = out / "mmvp" / "summary.json"
    assert f"cannot write to {summary}: permission denied; choose a writable --out" in one_line(capsys)


def test_other_failures_still_raise(mmvp, tmp_path, monkeypatch):
    def unreadable_input(data, path):  # denied, but not the output: the user's data, a real error
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(mmvp / "Questions.csv"))

    monkeypatch.setattr(runner, "write_json_atomic", unreadable_input)
    with pytest.raises(PermissionError):
        main(eval_args(mmvp, tmp_path / "out"))
    monkeypatch.setattr(runner, "write_json_atomic", lambda data, path: {}["bug"])
    full_disk(monkeypatch)  # a full disk does not make a bug a disk error
    with pytest.raises(KeyError):
        main(eval_args(mmvp, tmp_path / "out"))


@pytest.mark.parametrize("message,full", [
    (TORCH_STREAM_FULL, True),
    (TORCH_SHORT_WRITE, True),
    ("CUDA error: an illegal memory access was encountered", False),
])
def test_torch_messages(tmp_path, monkeypatch, message, full):
    assert failed_write(RuntimeError(message), str(tmp_path)) is None  # the filesystem has room
    full_disk(monkeypatch)
    assert (failed_write(RuntimeError(message), str(tmp_path)) is not None) == full


def test_a_distributed_checkpoint_failure_is_a_full_disk(tmp_path):
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    try:  # FSDP's checkpoints (torch.distributed.checkpoint) gather each rank's failure into one exception
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as err:
        failure = _wrap_exception(err)
    failed = failed_write(CheckpointException("save", {0: failure, 1: failure}), str(tmp_path))
    assert failed is not None and failed.full and failed.path == tmp_path


def test_a_message_that_replaced_its_context_keeps_it(tmp_path):
    try:  # as the signal store says a filesystem without hard links cannot hold a store
        try:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(tmp_path / "x"))
        except OSError:
            raise ValueError("a lavit store needs a filesystem with hard links") from None
    except ValueError as err:
        assert failed_write(err, str(tmp_path)) is None


# --------------------------------------------------------------------------------------------- real filesystems

@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str):
    """A tmpfs of `size` mounted on `folder`, unmounted on the way out; the test skips where mounting fails."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the real-filesystem tests need one (and root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def remount(folder: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write `folder`/filler until its filesystem is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(1 << 16)):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


WRITERS = {
    "torch.save": lambda path: torch.save({"w": torch.zeros(2**20)}, path / "w.pt"),
    "safetensors": lambda path: safetensors.torch.save_file({"w": torch.zeros(2**20)}, path / "w.safetensors"),
    "pyarrow": lambda path: pq.write_table(pa.table({"x": np.random.default_rng(0).random(2**19)}), path / "x.parquet",
                                           compression="none"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_on_a_full_tmpfs(tmp_path, writer):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        with pytest.raises(Exception) as raised:  # 4 MiB into 1 MiB
            WRITERS[writer](disk)
        failed = failed_write(raised.value, str(disk))
        assert failed is not None and failed.full and failed.reason == "No space left on device", raised.value
        assert failed.message("--out", "rerun") == f"disk full (No space left on device) writing {disk}: free space " \
                                                   f"on {disk} and rerun"


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_on_a_read_only_mount(tmp_path, writer):
    with tmpfs(tmp_path / "disk", "1m", "ro") as disk:
        with pytest.raises(Exception) as raised:
            WRITERS[writer](disk)
        failed = failed_write(raised.value, str(disk))
        assert failed is not None and not failed.full and failed.reason == "read-only file system", raised.value


def test_eval_fills_the_disk_then_resumes_once_there_is_room(mmvp, tmp_path, monkeypatch, capsys):
    asked, filling = [], []

    def answer(self, items, max_new_tokens=None):
        asked.extend(item.id for item in items)
        if filling and len(asked) > 2:  # the disk fills while the run goes on
            fill(filling[0])
        return [self.letter + " " * 4096] * len(items)  # a page per record: no slack left in the file's last page

    monkeypatch.setattr(ConstantModel, "answer", answer)
    assert main(eval_args(mmvp, tmp_path / "reference", batch_size=2)) == 0
    reference = (tmp_path / "reference" / "mmvp" / "predictions.jsonl").read_text()
    capsys.readouterr()
    asked.clear()
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        filling.append(disk)
        assert main(eval_args(mmvp, out, batch_size=2)) == 2
        assert one_line(capsys) == (f"lavit eval: error: disk full (No space left on device) writing {out}: free "
                                    f"space on {disk} and rerun the same command to resume\n")
        stored = (out / "mmvp" / "predictions.jsonl").read_text().count("\n")
        assert 2 <= stored < 8
        filling.clear()
        (disk / "filler").unlink()
        asked.clear()
        assert main(eval_args(mmvp, out, batch_size=2)) == 0
        assert len(asked) == 8 - stored  # the rerun asks only what the full disk stopped
        assert (out / "mmvp" / "predictions.jsonl").read_text() == reference


def test_extract_fills_the_disk_then_resumes_once_there_is_room(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        scene = make_scene(rng)
        scene.image.save(images / f"g{i}.png")
        records.append({"id": f"g{i}", "image": f"g{i}.png", "question": f"what color is the {scene.shape} ?",
                        "answer": scene.color, "bbox": list(scene.bbox)})
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    real, shards, filling = pq.write_table, [], []

    def write_table(table, where, **kwargs):  # pyarrow's own write, onto a disk that fills at the second shard
        shards.append(where)
        if filling and len(shards) == 2:
            fill(filling[0])
        real(table, where, **kwargs)

    monkeypatch.setattr(signal_store.pq, "write_table", write_table)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "store"
        args = ["extract", f"samples={tmp_path / 'samples.jsonl'}", f"image_root={images}", f"out={out}",
                "teacher=tiny-teacher", "max_new_tokens=3", "batch_size=1", "rows_per_file=1"]
        filling.append(disk)
        assert main(args) == 2
        assert one_line(capsys) == (f"lavit extract: error: disk full (No space left on device) writing {out}: free "
                                    f"space on {disk} and rerun the same command to resume\n")
        assert len(signal_store.shard_files(out)) == 1
        filling.clear()
        (disk / "filler").unlink()
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["store_counts"]["ok"] == 3
        assert len(signal_store.shard_files(out)) == 3


@pytest.mark.slow
def test_a_first_checkpoint_that_does_not_fit(sft_set, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m") as disk:  # the run's files fit, its first checkpoint (~4.7 MB) does not
        out = disk / "run"
        assert main(train_args(sft_set, out, "max_steps=1")) == 2
        err = one_line(capsys)
        assert err == (f"lavit train: error: disk full (No space left on device) writing {out}: free space on {disk} "
                       "and rerun the same command with overwrite=true (no checkpoint was complete)\n")
        remount(disk, "size=64m")
        assert main(train_args(sft_set, out, "max_steps=1", "overwrite=true")) == 0


@pytest.mark.slow
def test_a_second_checkpoint_that_does_not_fit_resumes_from_the_first(sft_set, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "7m") as disk:  # checkpoint-1 fits; checkpoint-2's optimizer state does not
        out = disk / "run"
        assert main(train_args(sft_set, out, "max_steps=2")) == 2
        err = one_line(capsys)
        # torch's short write, a RuntimeError without errno, taken for a full disk: the tmpfs has no room left
        assert err == (f"lavit train: error: disk full (No space left on device) writing {out}: free space on {disk} "
                       "and rerun the same command with resume=latest to resume\n")
        optimizer = [(out / f"checkpoint-{n}" / "optimizer.pt").stat().st_size for n in (1, 2)]
        assert optimizer[1] < optimizer[0]  # torch.save's write was cut short
        remount(disk, "size=64m")
        capsys.readouterr()
        with pytest.warns(RuntimeWarning, match="checkpoint-2 is a torn checkpoint"):
            assert main(train_args(sft_set, out, "max_steps=2", "resume=latest")) == 0
        assert json.loads(capsys.readouterr().out)["global_step"] == 2


def test_a_read_only_output_is_one_line(mmvp, sft_set, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m", "ro") as disk:
        out = disk / "out"
        assert main(eval_args(mmvp, out)) == 2
        assert one_line(capsys) == (f"lavit eval: error: cannot write to {out}: read-only file system; "
                                    "choose a writable --out\n")
        assert main(train_args(sft_set, out, "max_steps=1")) == 2
        assert one_line(capsys) == (f"lavit train: error: cannot write to {out}: read-only file system; choose a "
                                    "writable output_dir=\n")
