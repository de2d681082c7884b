"""The shipped `accelerate launch` configs load with accelerate's own loader and fit the student they shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType


CONFIGS = Path(__file__).parents[2] / "recipes" / "accelerate"


@pytest.mark.parametrize("name, kind", [("ddp", DistributedType.MULTI_GPU), ("fsdp2", DistributedType.FSDP),
                                        ("zero2", DistributedType.DEEPSPEED), ("zero3", DistributedType.DEEPSPEED)])
def test_each_config_loads_with_accelerate(name, kind):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_processes >= 2 and not config.use_cpu
    if kind == DistributedType.DEEPSPEED:
        ds_file = Path(config.deepspeed_config["deepspeed_config_file"])
        ds = json.loads((CONFIGS.parents[1] / ds_file).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1]) and ds["bf16"]["enabled"] == "auto"
        # the Trainer fills these from lavit's batch plan, so the recipe's global batch stays the only source
        assert ds["train_batch_size"] == ds["gradient_accumulation_steps"] == "auto"
    else:
        assert config.mixed_precision == "bf16"
    if kind == DistributedType.FSDP:  # the layers to wrap come from the model family (test_engines.py)
        assert config.fsdp_config["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config


def test_zero3_gathers_weights_for_the_export():
    ds = json.loads((CONFIGS / "ds_zero3.json").read_text())
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_the_module_entry_point_accelerate_launches():
    done = subprocess.run([sys.executable, "-m", "lavit.cli", "train", "--help-config"], capture_output=True, text=True)
    assert done.returncode == 0 and "global_batch_size" in done.stdout
