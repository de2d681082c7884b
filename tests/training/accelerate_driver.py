"""Run by test_engines.py under `accelerate launch`: one `lavit train` run through accelerate's own engine path
(FSDP2 or DeepSpeed, from a shipped config), on 2 CPU processes.

    accelerate launch --config_file CFG tests/training/accelerate_driver.py OUT [RECIPE.yaml] key=value ...

accelerate turns on FSDP only for GPU device types (`AcceleratorState` sets `DistributedType.FSDP` inside its
GPU branch; on CPU the state stays `MULTI_CPU` and the plugin is dropped). So for an FSDP config this driver
puts the plugin accelerate built from the config back and marks the state FSDP, calling the plugin's own
`set_mixed_precision` as accelerate's GPU branch does; everything after that (the wrap policy, `fully_shard`
with the plugin's `MixedPrecisionPolicy`, the DCP checkpoints, `get_state_dict`) is accelerate's and the
Trainer's own code. DeepSpeed runs unmodified on its CPU accelerator (`DS_ACCELERATOR=cpu`).

Each rank writes OUT/rank{r}.json: the engine, its precision policy, the dtypes seen inside the run (the
projection head's weights as the engine hands them over, the decoder's compute dtype, the loss terms and
their targets) and the files it wrote under the run's output_dir.
"""

import json
import os
import sys
from pathlib import Path

import accelerate.state
import torch
from accelerate.utils import DistributedType
from ddp_driver import spy_on_writes
from transformers import TrainerCallback

import lavit.models.attention
import lavit.models.projection_head
import lavit.training.lavit_trainer
from lavit.config import load_config
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training

SEEN: dict[str, str] = {}


def force_fsdp_on_cpu() -> None:
    original = accelerate.state.AcceleratorState.__init__
    plugins = []

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if kwargs.get("fsdp_plugin") is not None and not plugins:
            plugins.append(kwargs["fsdp_plugin"])
            if self._mixed_precision != "no":
                plugins[0].set_mixed_precision(self._mixed_precision)
        # every AcceleratorState() re-reads the process state (MULTI_CPU): put FSDP back each time
        if plugins and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugins[0]

    accelerate.state.AcceleratorState.__init__ = init


def spy(module, name: str, record) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        record(args, kwargs, out)
        return out

    setattr(module, name, wrapped)


def note(key: str, value) -> None:
    SEEN.setdefault(key, str(value).removeprefix("torch."))


def install_spies() -> None:
    head_forward = lavit.models.projection_head.ProjectionHead.forward

    def head(self, latent_hidden):
        note("head_weight_dtype", self.net[0].weight.dtype)
        out = head_forward(self, latent_hidden)
        note("head_output_dtype", out.dtype)
        return out

    lavit.models.projection_head.ProjectionHead.forward = head

    def attention(args, kwargs, out):
        note("decoder_query_dtype", args[1].dtype)
        if args[4] is not None and args[4].dtype != torch.bool:
            note("gated_mask_dtype", args[4].dtype)

    spy(lavit.models.attention, "sdpa_attention_forward", attention)

    def loss(args, kwargs, out):
        _, terms = out
        for name, value in terms.items():
            note(f"{name}_dtype", value.dtype)
        for key in lavit.training.lavit_trainer.LOSS_TARGETS:
            if key in args[1]:  # each method's targets (kd_logprobs: method=kd and lavit_kd only)
                note(f"{key}_dtype", args[1][key].dtype)

    spy(lavit.training.lavit_trainer, "student_loss", loss)


class Engine(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        acc = accelerate.state.AcceleratorState()
        SEEN["engine"] = acc.distributed_type.value
        plugin = getattr(acc, "fsdp_plugin", None)
        if acc.distributed_type == DistributedType.FSDP:
            policy = plugin.mixed_precision_policy
            SEEN["param_dtype"] = str(policy.param_dtype).removeprefix("torch.")
            SEEN["reduce_dtype"] = str(policy.reduce_dtype).removeprefix("torch.")
            SEEN["master_dtype"] = str({p.dtype for p in model.parameters() if p.requires_grad}).replace("torch.", "")
            SEEN["sharded_units"] = str(sorted({type(m).__name__ for m in model.modules()
                                                if type(m).__name__.startswith("FSDP")
                                                and m is not model}))


def main() -> None:
    out, *overrides = sys.argv[1:]
    recipe = overrides.pop(0) if overrides and overrides[0].endswith(".yaml") else None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        force_fsdp_on_cpu()
    install_spies()
    cfg = load_config(LavitTrainConfig, recipe, overrides)
    written: list[str] = []
    spy_on_writes(Path(cfg.output_dir).resolve(), written)
    run_training(cfg, callbacks=[Engine()])
    rank = int(os.environ.get("RANK", 0))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({**SEEN, "written": sorted(set(written))}, indent=1))


if __name__ == "__main__":
    main()
