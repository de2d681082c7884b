"""Run by test_resume.py: `lavit train` runs killed inside a checkpoint save, one forked child per kill point.

    python kill_driver.py OUT DATA STEP POINT[,POINT...] key=value ...

The parent imports once and forks a child per point before doing any work itself; each child trains into
OUT/POINT and, in the save of step STEP, stops at its point:

    weights        SIGKILL right after the student's weights are written
    mid_weights    SIGKILL while writing the weights (the file cut to half its size first)
    optimizer      SIGKILL after the optimizer and scheduler state
    trainer_state  SIGKILL before trainer_state.json (the RNG state is written)
    marker         SIGKILL after the Trainer's whole save, before lavit_checkpoint.json
    rotation       SIGKILL after the marker, before older checkpoints are rotated away
    disk_full      OSError ENOSPC while writing the optimizer state (the run stops with that error)

The parent writes OUT/POINT.json: the signal that ended the child, or its exit code and error.
"""

import errno
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from transformers import Trainer, TrainerState

import lavit.training.lavit_trainer as lavit_trainer
from lavit.config import load_config
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def patch(owner, name: str, step: int, before=None, after=None, step_of=lambda args: args[0].state.global_step):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        hit = step_of(args) == step
        if hit and before:
            before(*args, **kwargs)
        out = original(*args, **kwargs)
        if hit and after:
            after(*args, **kwargs)
        return out

    setattr(owner, name, wrapped)


def install(point: str, step: int) -> None:
    def cut_weights(trainer, output_dir=None, **kwargs):
        path = Path(output_dir) / lavit_trainer.STUDENT_STATE
        os.truncate(path, path.stat().st_size // 2)
        die()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = lavit_trainer.LavitTrainer
    if point == "weights":
        patch(trainer, "_save", step, after=lambda *a, **k: die())
    elif point == "mid_weights":
        patch(trainer, "_save", step, after=cut_weights)
    elif point == "optimizer":
        patch(Trainer, "_save_optimizer_and_scheduler", step, after=lambda *a, **k: die())
    elif point == "trainer_state":
        patch(TrainerState, "save_to_json", step, before=lambda *a, **k: die(),
              step_of=lambda args: args[0].global_step)
    elif point == "marker":
        patch(lavit_trainer, "write_checkpoint_marker", step, before=lambda *a, **k: die(),
              step_of=lambda args: args[1])
    elif point == "rotation":
        patch(trainer, "_rotate_complete_checkpoints", step, before=lambda *a, **k: die())
    elif point == "disk_full":
        patch(Trainer, "_save_optimizer_and_scheduler", step, before=disk_full)
    else:
        raise ValueError(f"unknown kill point {point}")


def main() -> None:
    out, data, step, points, *overrides = sys.argv[1:]
    for point in points.split(","):
        pid = os.fork()
        if pid == 0:
            code = 3  # the run finished: the kill point was never reached
            try:
                install(point, int(step))
                run_training(load_config(LavitTrainConfig, None, [
                    f"data=[{data}]", f"image_root={Path(data).parent}", f"output_dir={Path(out) / point}",
                    *overrides]))
            except BaseException as err:  # noqa: BLE001 - reported to the parent, which the test reads
                (Path(out) / f"{point}.error").write_text(f"{err}\n{traceback.format_exc()}")
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        ended = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
        error = Path(out) / f"{point}.error"
        ended["error"] = error.read_text() if error.is_file() else None
        (Path(out) / f"{point}.json").write_text(json.dumps(ended))


if __name__ == "__main__":
    main()
