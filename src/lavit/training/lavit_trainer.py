"""`LavitTrainer`: a Hugging Face `Trainer` that only overrides what LaViT needs — the loss (eq. 9,
each term logged and reduced over ranks; with the distillation baselines' term for method=kd / lavit_kd), the
γ(t) gate driven from the global step, and checkpoint I/O for the student + projection head pair when no
sharding engine owns the checkpoint (`CompleteCheckpoints`, which method=gkd's TRL trainer shares).

Under FSDP or DeepSpeed the engine's own distributed checkpoint (accelerate's DCP-based FSDP
checkpoint, DeepSpeed's `save_checkpoint`) holds model and optimizer state, and resume goes through
the Trainer's engine path; this class then writes no weights of its own.

A checkpoint counts only when complete: the last act of every save, after every rank's files are written,
is `lavit_checkpoint.json` listing each file with its size (and the run's settings). A save cut short by a
kill or a full disk leaves no marker, or files that no longer match it, and `checkpoint_problem` says so;
old checkpoints are rotated away only after the new one's marker is written."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lavit.data.signal_store import write_json_atomic
from lavit.models.gating import GateSchedule
from lavit.models.lavit_student import LavitStudent, StudentOutput
from lavit.training.losses import KdObjective, concept_loss, kd_ntp_loss, ntp_loss, read_loss, total_loss, traj_loss

STUDENT_STATE = "lavit_student.safetensors"
CHECKPOINT_MARKER = "lavit_checkpoint.json"
# Batch entries that are loss targets, never model inputs: they stay fp32 whatever the engine's compute dtype.
LOSS_TARGETS = ("v_sem", "traj_target", "kd_logprobs")


LOSS_SUM = "loss_sum"  # the checkpoint marker's key for the loss summed over the steps so far


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; raised instead of training on garbage."""


class GammaCallback(TrainerCallback):
    """Sets the student's gate value γ(t) from the global step before every step (eq. 5)."""

    def __init__(self, schedule: GateSchedule):
        self.schedule = schedule

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.gamma = self.schedule.gamma(state.global_step)


def student_loss(out: StudentOutput, inputs: dict, lam: float, read_weight: float = 0.0,
                 kd: KdObjective | None = None,
                 latent_ids: list[int] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_total (eq. 9) of one student forward and its terms (`loss_ntp`, `loss_concept`, `loss_traj`, and
    `loss_read` when the readout's attention mass is recorded). With `kd` (method=kd, lavit_kd) L_ntp distils the
    answer tokens — the labelled positions whose target is not one of `latent_ids` — from the teacher's top-k in
    `inputs` (`kd_ntp_loss`), logged as `loss_kd` (mean divergence) and `loss_ce` (mean cross-entropy, every
    labelled token, comparable across methods)."""
    if kd is None:
        terms = {"loss_ntp": ntp_loss(out.ntp_logits, out.ntp_targets)}
    else:
        answer = ~torch.isin(out.ntp_targets, torch.as_tensor(list(latent_ids), dtype=out.ntp_targets.dtype,
                                                              device=out.ntp_targets.device))  # [N]
        mask = inputs["kd_mask"]  # [B, T]: row-major like the labelled positions, so the orders agree
        ntp, divergence, ce = kd_ntp_loss(out.ntp_logits, out.ntp_targets, answer, inputs["kd_ids"][mask],
                                          inputs["kd_logprobs"][mask], kd)
        terms = {"loss_ntp": ntp, "loss_kd": divergence, "loss_ce": ce}
    if out.concept_pred is not None:
        terms["loss_concept"] = concept_loss(out.concept_pred, inputs["v_sem"])
    if out.student_traj is not None:
        terms["loss_traj"] = traj_loss(out.student_traj, inputs["traj_target"])
    if out.readout_latent_mass is not None:
        terms["loss_read"] = read_loss(out.readout_latent_mass)
    return total_loss(terms["loss_ntp"], terms.get("loss_concept"), terms.get("loss_traj"), lam,
                      terms.get("loss_read"), read_weight), terms


def checkpoint_step(folder: Path) -> int | None:
    """N of a `checkpoint-N` folder, None for any other name."""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name)
    return int(match.group(1)) if match else None


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders in `output_dir`, by step."""
    found = [p for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def read_checkpoint_marker(folder: str | Path) -> dict:
    """The completion record of a checkpoint (`ValueError` naming what is wrong when it is not complete)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / CHECKPOINT_MARKER).read_text())
    except FileNotFoundError:
        raise ValueError(f"no {CHECKPOINT_MARKER}: its save did not finish") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{CHECKPOINT_MARKER} is unreadable ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not isinstance(
            record.get("step"), int):
        raise ValueError(f"{CHECKPOINT_MARKER} lacks its step or file list")
    for name, size in record["files"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{name} is missing")
        if path.stat().st_size != size:
            raise ValueError(f"{name} has {path.stat().st_size} bytes, {size} when saved")
    return record


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    try:
        read_checkpoint_marker(folder)
    except ValueError as err:
        return str(err)
    return None


def write_checkpoint_marker(folder: Path, step: int, settings: dict, loss_sum: float | None = None) -> None:
    """The checkpoint's completion record: its step, files and sizes, the run's settings and the training loss
    summed over steps 1..step (what a resumed run's mean loss over the whole run needs)."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != CHECKPOINT_MARKER}
    write_json_atomic({"step": step, "files": files, "settings": settings,
                       **({LOSS_SUM: loss_sum} if loss_sum is not None else {})}, folder / CHECKPOINT_MARKER)


class CompleteCheckpoints:
    """What every lavit training run's `Trainer` (LaViT's own, TRL's for method=gkd) shares: checkpoints that count
    only once complete (`lavit_checkpoint.json`, rotation after completion) and, without an engine, hold the trained
    module's state under its own names (`STUDENT_STATE`); the loss summed for a resumed run; fp32 gradient reduction
    under FSDP2. `run_settings` are recorded in every checkpoint's marker (a resume compares
    them); `keep_checkpoints` keeps at most that many complete checkpoints (0 = all). The Trainer's own
    `save_total_limit` must stay unset: it rotates before the new checkpoint is known to be complete."""

    def __init__(self, *args, run_settings: dict | None = None, keep_checkpoints: int = 0,
                 loss_sum_before: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.save_total_limit:
            raise ValueError(f"{type(self).__name__} rotates checkpoints itself (keep_checkpoints=); leave "
                             "save_total_limit unset")
        self.run_settings = run_settings or {}
        self.keep_checkpoints = keep_checkpoints
        self.loss_sum_before = loss_sum_before  # the loss summed over the steps before a resumed checkpoint
        self._reduce_gradients_in_fp32()

    def _reduce_gradients_in_fp32(self) -> None:
        """accelerate's FSDP2 bf16 policy also reduces gradients in bf16, rounding the sum over ranks each step;
        keep bf16 compute and reduce in fp32 (torch's recommended policy), before the model is sharded."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and plugin.fsdp_version == 2 and plugin.mixed_precision_policy is not None:
            plugin.mixed_precision_policy = dataclasses.replace(plugin.mixed_precision_policy,
                                                                reduce_dtype=torch.float32)

    @property
    def engine_checkpoints(self) -> bool:
        """FSDP or DeepSpeed owns model and optimizer state in its own distributed checkpoint."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    def _save_checkpoint(self, model, trial, *args, **kwargs) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            # saving again into an existing folder (a resume from an older checkpoint): torn until it completes
            (folder / CHECKPOINT_MARKER).unlink(missing_ok=True)
        super()._save_checkpoint(model, trial, *args, **kwargs)
        self.accelerator.wait_for_everyone()  # every rank's shards and RNG state are on disk
        loss_sum = self.loss_sum_so_far()  # a collective: every rank takes part
        if self.args.should_save:
            write_checkpoint_marker(folder, self.state.global_step, self.run_settings, loss_sum)
            self._rotate_complete_checkpoints(folder)

    def loss_sum_so_far(self) -> float:
        """The training loss summed over steps 1..now, as the Trainer sums it for its mean: what it has drained at
        its logging steps, the part not logged yet (averaged over processes, as a log does) and what came before a
        resume."""
        unlogged = nested_gather(self._tr_loss.detach(), self.args.parallel_mode).mean().item()
        return self.loss_sum_before + self._total_loss_scalar + unlogged

    def _rotate_complete_checkpoints(self, saved: Path) -> None:
        """Keep `saved` and the newest complete checkpoints before it, `keep_checkpoints` in all. Torn
        folders and later steps (left by a resume from an older checkpoint, and saved over on the way) stay."""
        if not self.keep_checkpoints:
            return
        step = checkpoint_step(saved)
        older = [p for p in checkpoint_folders(saved.parent) if checkpoint_step(p) < step and not checkpoint_problem(p)]
        for folder in older[:max(len(older) - (self.keep_checkpoints - 1), 0)]:
            shutil.rmtree(folder)

    # Without an engine, checkpoints hold the whole student (model, optional LoRA, projection head) so resume
    # is exact, written and read back under the module's own parameter names (the Trainer's default, a
    # `save_pretrained` in the checkpoint format, does not load back into a transformers 5 Qwen-VL: its keys are
    # renamed on save, and a resume would warn and go on from the base weights); the plain Hugging Face export
    # happens once, at the end (`export_student`).
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
        # safetensors' save_model de-duplicates tied embeddings
        save_model(self.accelerator.unwrap_model(self.model), str(output_dir / STUDENT_STATE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.engine_checkpoints:  # FSDP: accelerate's DCP loader (DeepSpeed never comes here)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / STUDENT_STATE
        if not path.is_file():
            raise FileNotFoundError(f"{resume_from_checkpoint} is not a LaViT checkpoint (no {STUDENT_STATE})")
        missing, unexpected = load_model(model or self.model, str(path), strict=True)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this student: missing {missing}, unexpected {unexpected}")


class LavitTrainer(CompleteCheckpoints, Trainer):
    """The LaViT student's trainer (any method but gkd): its loss, the gate, and its own checkpoint files when no
    engine owns the checkpoint. `kd`: the distillation term of method=kd / lavit_kd."""

    def __init__(self, *args, lam: float = 0.3, read_weight: float = 0.0, kd: KdObjective | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.read_weight = read_weight
        self.kd = kd
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_count = 0

    @property
    def student(self) -> LavitStudent:
        return self.accelerator.unwrap_model(self.model)

    def _prepare_inputs(self, inputs: dict) -> dict:
        # Under DeepSpeed the Trainer casts every float input to the engine's dtype (bf16); the loss targets
        # are not inputs, and a bf16 A_traj target no longer sums to 1, so they go over in fp32.
        targets = {k: inputs.pop(k) for k in LOSS_TARGETS if k in inputs}
        prepared = super()._prepare_inputs(inputs)
        prepared.update({k: v.to(self.args.device, torch.float32) for k, v in targets.items()})
        return prepared

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs)
        loss, terms = student_loss(out, inputs, self.lam, self.read_weight, self.kd, self.student.latent_token_ids)
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
