"""Builds the audit's trained positive control: a toy-world LaViT student whose answer cannot see the image.

    .venv/bin/python tests/toyworld/build_controls.py --out tests/toyworld/controls   # ~8 min on 2 cores

The demo's seed-0 data (pool draw 0 → toy-teacher signals → the filtered set + replay) and recipe (200 steps), with
the readout (the last latent, which predicts the answer) and the question gated at γ ≡ 0 in training and at
inference: vision reaches the answer only through latents 1..K-1. Writes OUT/latent_only (the exported student,
~2 MB) and OUT/latent_only.json (its test accuracy forced / without latents / masked).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from lavit.console import quiet_libraries
from lavit.demo import DemoConfig, evaluate, prepare_seed, student_config
from lavit.toyworld.world import write_split
from lavit.training.train import run_training

LATENT_ONLY = {"gate_readout": True, "gate": "none", "gate_final": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = DemoConfig(out=str(work), seeds=1)
        prepared = prepare_seed(cfg, 0, work / "seed0")
        trained = run_training(student_config(cfg, "lavit", prepared["data"], prepared["images"], work / "latent_only",
                                              0, **LATENT_ONLY), desc="latent-only control")
        test = write_split(work / "data", "test", cfg.test_samples, world_seed=cfg.world_seed, cfg=cfg.world)
        scores = {mode: evaluate(trained["student_dir"], test, mode=mode)["accuracy"]
                  for mode in ("forced", "none", "masked")}
        shutil.rmtree(out / "latent_only", ignore_errors=True)
        shutil.copytree(trained["student_dir"], out / "latent_only")
    (out / "latent_only.json").write_text(json.dumps({"settings": LATENT_ONLY, "demo_seed": 0, "steps": cfg.steps,
                                                      "test_accuracy": scores}, indent=2) + "\n")
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
