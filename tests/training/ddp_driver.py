"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: one `lavit train` run over the process group.

    torchrun --nproc_per_node 2 tests/training/ddp_driver.py OUT DATA key=value ...

Each rank records a digest of its own final weights, its log history and every file it wrote inside the
run's output directory (a spy on the write functions), under OUT/ranks/ — outside the run's directory.
"""

import builtins
import io
import json
import os
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers.modeling_utils
from transformers import TrainerCallback

import lavit.models.projection_head
import lavit.training.lavit_trainer
from lavit.config import load_config
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training


class Digest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.digest = {name: float(p.detach().double().sum()) for name, p in model.named_parameters()}


def spy_on_writes(run_dir: Path, written: list[str]) -> None:
    """Record the paths under `run_dir` this process writes through Python, torch or safetensors."""
    def note(path) -> None:
        path = Path(os.fspath(path)).resolve()
        if run_dir in path.parents:
            written.append(str(path.relative_to(run_dir)))

    def wrap(write, writes_to_arg: int, mode_check: bool = False):
        def spy(*args, **kwargs):
            target = args[writes_to_arg] if len(args) > writes_to_arg else kwargs.get("filename", kwargs.get("f"))
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if isinstance(target, (str, os.PathLike)) and (not mode_check or any(c in mode for c in "wax+")):
                note(target)
            return write(*args, **kwargs)
        return spy

    builtins.open = io.open = wrap(io.open, 0, mode_check=True)
    os.replace = wrap(os.replace, 1)
    torch.save = wrap(torch.save, 1)
    safetensors.torch.save_file = wrap(safetensors.torch.save_file, 1)
    transformers.modeling_utils.safe_save_file = wrap(transformers.modeling_utils.safe_save_file, 1)
    lavit.training.lavit_trainer.save_model = wrap(lavit.training.lavit_trainer.save_model, 1)
    lavit.models.projection_head.save_file = wrap(lavit.models.projection_head.save_file, 1)


def main() -> None:
    out, data, *overrides = sys.argv[1:]
    run_dir = (Path(out) / "run").resolve()
    cfg = load_config(LavitTrainConfig, None, [f"data=[{data}]", f"image_root={Path(data).parent}",
                                               f"output_dir={run_dir}", *overrides])
    written: list[str] = []
    spy_on_writes(run_dir, written)
    digest = Digest()
    result = run_training(cfg, callbacks=[digest])
    rank = int(os.environ.get("RANK", "0"))
    ranks = Path(out) / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "distributed": torch.distributed.is_initialized(), "digest": digest.digest,
        "log_history": result["log_history"], "written": sorted(set(written)),
        "plan": {k: result[k] for k in ("world_size", "per_device_batch_size", "gradient_accumulation_steps",
                                        "global_batch_size")}}))
    if torch.distributed.is_initialized():  # barrier, then teardown: no rank exits under another's collective
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
