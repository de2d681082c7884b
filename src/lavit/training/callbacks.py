"""Console and log-file behaviour of `lavit train`: one progress bar per run on the terminal, every
logged dict (loss terms, γ, learning rate) as a JSON line in `output_dir/train_log.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm
from transformers import ProgressCallback, TrainerCallback

TRAIN_LOG = "train_log.jsonl"


class ProgressBarCallback(ProgressCallback):
    """The Trainer's progress bar with a name and the latest loss on it, without printing the log dicts."""

    def __init__(self, desc: str = "train"):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", dynamic_ncols=True)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)


class JsonlLogCallback(TrainerCallback):
    """Appends every log dict, with its step, to a JSON-lines file (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
