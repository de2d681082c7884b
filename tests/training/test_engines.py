"""Every shipped engine config, every family, under the engines' bf16 policies (paper Table A1: bf16, several
GPUs) — rehearsed on 2 CPU processes through accelerate's own config, wrap-policy and launch code.

The fast tests load each config with accelerate's loader and build what the engine would from it for every
family's tiny student (FSDP2's auto-wrap policy, DeepSpeed's `auto` fields). The slow ones train under
`accelerate launch` with FSDP2 (`MixedPrecisionPolicy(param_dtype=bf16)`) and DeepSpeed ZeRO-2/3 bf16 (the
whole module cast to bf16), save, resume from the engine's checkpoint to the uninterrupted curve, and export.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from safetensors import safe_open
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from transformers import AutoModelForImageTextToText, TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

from lavit.models.families import FAMILIES, family_of
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.models.tiny import STUDENT_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.toyworld.shapes import write_sft_set

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "recipes" / "accelerate"
DRIVER = Path(__file__).with_name("accelerate_driver.py")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
TRAIN = ["max_steps=4", "save_steps=2", "gate_warmup_steps=2", "learning_rate=1e-3", "warmup_ratio=0.0",
         "logging_steps=1", "min_pixels=3136", "max_pixels=50176", "gradient_checkpointing=false",
         "global_batch_size=4", "precision=bf16"]


def tiny_student(family: str) -> LavitStudent:
    tokenizer = build_tiny_processor(build_tiny_tokenizer(), family=family).tokenizer
    model = build_tiny_model(tokenizer, STUDENT_SPEC, family=family)
    return LavitStudent(model, [], ProjectionHead(model.config.text_config.hidden_size, 16))


def launch_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file config` gives its processes (accelerate's own code)."""
    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, *_ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_config_wraps_every_familys_layers(family):
    student = tiny_student(family)
    hf = student.hf_model
    env = launch_env(CONFIGS / "fsdp2.yaml")
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap is None
    wraps = fsdp2_prepare_auto_wrap_policy(plugin, student)
    wrapped = [m for m in student.modules() if wraps(m)]
    units = [*family_of(hf).decoder_layers(hf), *family_of(hf).vision_tower(hf).blocks]
    assert len(wrapped) == len(units) and all(any(m is u for u in units) for m in wrapped)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_fill_their_auto_fields_for_every_family(family, stage, tmp_path):
    student = tiny_student(family)  # built first: a live ZeRO-3 config would make from_config partition it
    config = load_config_from_file(str(CONFIGS / f"zero{stage}.yaml"))
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, per_device_train_batch_size=2,
                             gradient_accumulation_steps=1, use_cpu=True, report_to="none")
    ds = HfTrainerDeepSpeedConfig(str(ROOT / config.deepspeed_config["deepspeed_config_file"]))
    try:
        ds.trainer_config_process(args)
        ds.trainer_config_finalize(args, student, num_training_steps=10)  # reads the student's hidden size
    finally:
        unset_hf_deepspeed_config()
    hidden = student.config.text_config.hidden_size
    assert ds.config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
    assert ds.config["bf16"]["enabled"] is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_driver(config: Path, out: Path, data: Path, image_root: Path, *settings: str) -> list[dict]:
    """`accelerate launch --config_file config` of the driver: `lavit train` into out/run with `settings` (an
    optional recipe first); returns what each rank recorded."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
           str(free_port()), str(DRIVER), str(out / "ranks"), *settings, f"data={data}", f"image_root={image_root}",
           f"output_dir={out / 'run'}"]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]


def accelerate_train(config: Path, out: Path, data: Path, *overrides: str) -> list[dict]:
    return launch_driver(config, out, data, data.parent, *TRAIN, *overrides)


def cpu_config(name: str, tmp_path: Path) -> Path:
    """The shipped config as it is, on 2 CPU processes."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config.update(num_processes=2, use_cpu=True)
    if "deepspeed_config" in config:
        ds_file = config["deepspeed_config"]["deepspeed_config_file"]
        config["deepspeed_config"]["deepspeed_config_file"] = str(ROOT / ds_file)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sft_set(tmp_path_factory.mktemp("sft"), 16, seed=3)


def train_resume_export(name: str, data: Path, tmp_path: Path, family: str, resume: bool = True) -> list[dict]:
    """Train 4 steps under the engine (checkpoints after 2 and 4), optionally resume a copy of checkpoint-2 to the
    same curve, and load the export; returns what each rank of the full run recorded."""
    config = cpu_config(name, tmp_path)
    full = accelerate_train(config, tmp_path / "full", data, f"model=tiny:{family}")
    curve = losses(tmp_path / "full" / "run")
    assert len(curve) == 4
    if resume:  # from the engine's own checkpoint after step 2, in a folder holding only that checkpoint
        (tmp_path / "resumed" / "run").mkdir(parents=True)
        shutil.copytree(tmp_path / "full" / "run" / "checkpoint-2", tmp_path / "resumed" / "run" / "checkpoint-2")
        accelerate_train(config, tmp_path / "resumed", data, f"model=tiny:{family}", "resume=latest")
        assert losses(tmp_path / "resumed" / "run") == pytest.approx(curve[2:], rel=1e-5)
    student = AutoModelForImageTextToText.from_pretrained(tmp_path / "full" / "run" / "student")
    assert family_of(student).model_type == family
    assert all(torch.isfinite(p).all() for p in student.parameters())
    # a tied embedding is written once (a gathered state holds it twice) and loads tied
    assert student.config.get_text_config().tie_word_embeddings
    with safe_open(tmp_path / "full" / "run" / "student" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("lm_head")]
    assert student.lm_head.weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    seen = full[0]
    assert {k: v for k, v in full[1].items() if k != "written"} == {k: v for k, v in seen.items() if k != "written"}
    # the engine handed the head bf16 weights (the bf16 path ran) and every loss term stayed fp32
    assert seen["head_weight_dtype"] == "bfloat16" and seen["head_output_dtype"] == "float32"
    assert seen["decoder_query_dtype"] == "bfloat16"
    for key in ("loss_ntp", "loss_concept", "loss_traj", "v_sem", "traj_target"):
        assert seen[f"{key}_dtype"] == "float32", key
    return full


@pytest.mark.slow
def test_fsdp2_bf16_policy_trains_resumes_and_exports(data, tmp_path):
    family = "qwen2_5_vl"  # the other families' layers: test_fsdp2_config_wraps_every_familys_layers
    ranks = train_resume_export("fsdp2", data, tmp_path, family)
    seen = ranks[0]
    assert seen["engine"] == "FSDP"
    # accelerate's bf16 policy, gradients reduced in fp32, fp32 master weights
    assert (seen["param_dtype"], seen["reduce_dtype"], seen["master_dtype"]) == ("bfloat16", "float32", "{float32}")
    hf = tiny_student(family).hf_model
    assert all(f"FSDP{name}" in seen["sharded_units"] for name in family_of(hf).shard_units(hf))
    # each rank writes its own shard of the distributed checkpoints (and its RNG state); all else is rank 0's
    assert ranks[1]["written"] and all(p.startswith("checkpoint-") and (p.endswith(".distcp") or
                                       p.endswith("rng_state_1.pth")) for p in ranks[1]["written"]), ranks[1]
    assert {"student/model.safetensors", "student/lavit.json", "student/projection_head.safetensors",
            "train_results.json"} <= set(seen["written"])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (make test installs it)")
@pytest.mark.parametrize("stage, resume", [(2, False), (3, True)])
def test_deepspeed_bf16_trains_resumes_and_exports(data, tmp_path, stage, resume):
    assert train_resume_export(f"zero{stage}", data, tmp_path, "qwen2_5_vl", resume)[0]["engine"] == "DEEPSPEED"
