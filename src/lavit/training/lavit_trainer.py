"""`LavitTrainer`: a Hugging Face `Trainer` that only overrides what LaViT needs — the loss (eq. 9,
each term logged and reduced over ranks), the γ(t) gate driven from the global step, and checkpoint
I/O for the student + projection head pair when no sharding engine owns the checkpoint.

Under FSDP or DeepSpeed the engine's own distributed checkpoint (accelerate's DCP-based FSDP
checkpoint, DeepSpeed's `save_checkpoint`) holds model and optimizer state, and resume goes through
the Trainer's engine path; this class then writes no weights of its own."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import Trainer, TrainerCallback

from lavit.models.gating import GateSchedule
from lavit.models.lavit_student import LavitStudent, StudentOutput
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


def student_loss(out: StudentOutput, inputs: dict, lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_total (eq. 9) of one student forward and its terms (`loss_ntp`, `loss_concept`, `loss_traj`)."""
    terms = {"loss_ntp": ntp_loss(out.ntp_logits, out.ntp_targets)}
    if out.concept_pred is not None:
        terms["loss_concept"] = concept_loss(out.concept_pred, inputs["v_sem"])
    if out.student_traj is not None:
        terms["loss_traj"] = traj_loss(out.student_traj, inputs["traj_target"])
    return total_loss(terms["loss_ntp"], terms.get("loss_concept"), terms.get("loss_traj"), lam), terms


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
        loss, terms = student_loss(out, inputs, self.lam)
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
        # Every rank logs at the same steps (the Trainer's own loss is gathered there too), so the
        # terms can be reduced here: the logged value is the mean over all ranks' micro-batches.
        if self._term_count and "loss" in logs:
            names = sorted(self._term_sums)
            totals = torch.tensor([*(self._term_sums[n] for n in names), self._term_count], dtype=torch.float64,
                                  device=self.args.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(totals)
            logs.update({n: float(totals[i] / totals[-1]) for i, n in enumerate(names)})
            logs["gamma"] = self.student.gamma
            self._term_sums.clear()
            self._term_count = 0
        super().log(logs, start_time)

    @property
    def engine_checkpoints(self) -> bool:
        """FSDP or DeepSpeed owns model and optimizer state in its own distributed checkpoint."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    # Without an engine, checkpoints hold the whole student (model, optional LoRA, projection head) so resume
    # is exact; the plain Hugging Face export happens once, at the end (`export_student`).
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.engine_checkpoints:
            # The Trainer hands a gathered `state_dict` here under FSDP FULL_STATE_DICT or ZeRO-3's 16-bit
            # gather; the engine's checkpoint written beside it already holds the same weights for resume, and
            # touching the sharded module itself would read shards, not weights.
            return
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.student, str(output_dir / STUDENT_STATE))  # de-duplicates tied embeddings

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.engine_checkpoints:  # FSDP: accelerate's DCP loader (DeepSpeed never comes here)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / STUDENT_STATE
        if not path.is_file():
            raise FileNotFoundError(f"{resume_from_checkpoint} is not a LaViT checkpoint (no {STUDENT_STATE})")
        missing, unexpected = load_model(model or self.model, str(path), strict=True)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this student: missing {missing}, unexpected {unexpected}")
