"""`LavitTrainer`: a Hugging Face `Trainer` that only overrides what LaViT needs — the loss (eq. 9,
each term logged), the γ(t) gate driven from the global step, and checkpoint I/O for the
student + projection head pair."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import Trainer, TrainerCallback

from lavit.models.gating import GateSchedule
from lavit.models.lavit_student import LavitStudent
from lavit.training.losses import concept_loss, ntp_loss, total_loss, traj_loss

STUDENT_STATE = "lavit_student.safetensors"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; raised instead of training on garbage."""


class GammaCallback(TrainerCallback):
    """Sets the student's gate value γ(t) from the global step before every step (eq. 5)."""

    def __init__(self, schedule: GateSchedule):
        self.schedule = schedule

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.gamma = self.schedule.gamma(state.global_step)


class LavitTrainer(Trainer):
    def __init__(self, *args, lam: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = lam
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0

    @property
    def student(self) -> LavitStudent:
        return self.accelerator.unwrap_model(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs)
        terms = {"loss_ntp": ntp_loss(out.ntp_logits, out.ntp_targets)}
        if out.concept_pred is not None:
            terms["loss_concept"] = concept_loss(out.concept_pred, inputs["v_sem"])
        if out.student_traj is not None:
            terms["loss_traj"] = traj_loss(out.student_traj, inputs["traj_target"])
        loss = total_loss(terms["loss_ntp"], terms.get("loss_concept"), terms.get("loss_traj"), self.lam)
        values = {name: float(t.detach()) for name, t in terms.items()}
        if not math.isfinite(float(loss.detach())):
            detail = ", ".join(f"{k}={v}" for k, v in values.items())
            raise NonFiniteLossError(f"non-finite loss at step {self.state.global_step} ({detail}); samples "
                                     f"{inputs.get('ids')}. Stopping: check the data and the learning rate.")
        if model.training:
            for name, value in values.items():
                self._term_sums[name] += value
            self._term_count += 1
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_count and "loss" in logs:
            logs.update({k: v / self._term_count for k, v in self._term_sums.items()})
            logs["gamma"] = self.student.gamma
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, start_time)

    # Checkpoints hold the whole student (model, optional LoRA, projection head) so resume is exact;
    # the plain Hugging Face export happens once, at the end (`export_student`).
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.student, str(output_dir / STUDENT_STATE))  # de-duplicates tied embeddings

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        path = Path(resume_from_checkpoint) / STUDENT_STATE
        if not path.is_file():
            raise FileNotFoundError(f"{resume_from_checkpoint} is not a LaViT checkpoint (no {STUDENT_STATE})")
        missing, unexpected = load_model(model or self.model, str(path), strict=True)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this student: missing {missing}, unexpected {unexpected}")
