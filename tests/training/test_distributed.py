"""Distributed training on 2 CPU processes (gloo, torchrun): data-parallel training equals one process at the
same global batch, and only rank 0 writes the run's files. (FSDP2 and DeepSpeed: test_engines.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavit.toyworld.shapes import write_sft_set
from lavit.training.lavit_config import LavitTrainConfig

DRIVER = Path(__file__).with_name("ddp_driver.py")
COMMON = ["max_steps=3", "learning_rate=1e-3", "warmup_ratio=0.0", "logging_steps=1", "save_steps=2",
          "gate_warmup_steps=2", "min_pixels=3136", "max_pixels=50176", "gradient_checkpointing=false",
          "global_batch_size=4"]


def torchrun(driver: Path, processes: int, *args: str) -> None:
    # --standalone picks a free rendezvous port (a fixed or 0 master port can collide or hang)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(driver), *args]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=driver.parent)
    assert done.returncode == 0, done.stderr[-4000:]


def launch(out: Path, data: Path, processes: int, *overrides: str) -> list[dict]:
    torchrun(DRIVER, processes, str(out), str(data), *COMMON, *overrides)
    return [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(processes)]


def terms(history: list[dict]) -> list[dict]:
    keys = ("loss_ntp", "loss_concept", "loss_traj", "gamma")
    return [{k: h[k] for k in keys} for h in history if "loss_ntp" in h]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # one-word answers: every sample has the same number of labelled tokens, so a mean over two micro-batches
    # of 2 equals the mean over one batch of 4 and the runs below must agree to float tolerance
    return write_sft_set(tmp_path_factory.mktemp("sft"), 16, seed=3)


@pytest.mark.slow
def test_two_ranks_equal_one_process_at_the_same_global_batch(data, tmp_path):
    single = launch(tmp_path / "single", data, 1)[0]
    for per_device in (2, 1):  # 2 samples per rank per step, or 1 with 2 accumulation steps
        two_ranks_equal(single, data, tmp_path / f"per_device_{per_device}", per_device)


def two_ranks_equal(single: dict, data: Path, tmp_path: Path, per_device: int) -> None:
    ranks = launch(tmp_path / "ddp", data, 2, f"per_device_batch_size={per_device}")
    assert all(r["distributed"] for r in ranks)
    assert [r["plan"] for r in ranks] == [{"world_size": 2, "per_device_batch_size": per_device,
                                          "gradient_accumulation_steps": 2 // per_device, "global_batch_size": 4}] * 2
    # both ranks hold the same weights, and they are the single process's weights
    assert ranks[0]["digest"] == ranks[1]["digest"]
    for name, value in single["digest"].items():
        assert ranks[0]["digest"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    # the logged loss terms are the mean over both ranks: the single process's values, on every rank
    for got, want in zip(terms(ranks[0]["log_history"]), terms(single["log_history"]), strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert terms(ranks[1]["log_history"]) == terms(ranks[0]["log_history"])
    # rank 1 wrote nothing of the run's but its own RNG state in checkpoints (the Trainer's per-rank file)
    assert all(Path(p).name == "rng_state_1.pth" for p in ranks[1]["written"]), ranks[1]["written"]
    assert {"train_results.json", "student/model.safetensors", "checkpoint-2/lavit_student.safetensors"} <= set(
        ranks[0]["written"])
    results = json.loads((tmp_path / "ddp" / "run" / "train_results.json").read_text())
    assert (results["world_size"], results["per_device_batch_size"], results["global_batch_size"]) == (2, per_device, 4)


def test_batch_plan_derives_accumulation_and_refuses_what_does_not_divide():
    cfg = LavitTrainConfig(global_batch_size=16)
    assert cfg.batch_plan(1) == {"world_size": 1, "per_device_batch_size": 16, "gradient_accumulation_steps": 1,
                                 "global_batch_size": 16}
    assert cfg.batch_plan(8)["per_device_batch_size"] == 2
    small = LavitTrainConfig(global_batch_size=16, per_device_batch_size=1)
    assert small.batch_plan(4)["gradient_accumulation_steps"] == 4
    for world, per_device in ((3, 0), (32, 0), (2, 3)):
        with pytest.raises(ValueError, match="global_batch_size 16"):
            LavitTrainConfig(global_batch_size=16, per_device_batch_size=per_device).batch_plan(world)
