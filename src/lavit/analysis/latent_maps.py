"""Does LaViT do what it says? Where a student's latent tokens and answer look, on samples with boxes.

* `snapshot` — under the student's current gate: the first answer token's attention mass on the image
  (the query the gate acts on: ~0 while γ ≈ ε), the latent tokens' S_focus (eq. 1 on their mean map)
  and the answer's teacher-forced accuracy. `DynamicsCallback` records it over training steps.
* `latent_map_stats` — at inference (γ = 1): KL(teacher target ‖ latent map), averaged over the K
  latents as L_traj sums them (eq. 7 / K), and the latent map's S_focus.

All maps are the mean over layers and heads of the chosen queries' attention (`attention_from`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import TrainerCallback

from lavit.data.collator import LavitCollator
from lavit.data.examples import IGNORE_INDEX, TrainingSample, build_example
from lavit.models.grid import box_cells
from lavit.models.lavit_student import LavitStudent, latent_image_distribution


@dataclass
class BoxedSample:
    id: str
    image: Image.Image
    question: str
    answer: str
    bbox: list[float]


@dataclass
class ProbeSet:
    """A fixed, collated batch (reference answers, the student's latent tokens forced) with its boxes."""

    batch: dict
    box_masks: torch.Tensor  # [B, N] bool, the image tokens whose cell centre lies in the box
    first_answers: torch.Tensor  # [B] position of the first answer token (a gated query)
    first_answer_ids: torch.Tensor  # [B]
    ids: list[str]


def build_probe_set(processor, samples: list[BoxedSample], latent_tokens: list[str], *,
                    system_prompt: str | None) -> ProbeSet:
    examples = [build_example(processor, TrainingSample(s.id, s.image, s.question, s.answer), latent_tokens,
                              system_prompt=system_prompt) for s in samples]
    batch = LavitCollator(processor.tokenizer.pad_token_id)(examples)
    merge = processor.image_processor.merge_size
    masks = torch.zeros_like(batch["image_valid"])  # [B, N]
    for b, s in enumerate(samples):
        t, h, w = (int(x) for x in batch["image_grid_thw"][b])
        cells = box_cells(s.bbox, s.image.size, (t, h // merge, w // merge))
        masks[b, :cells.size] = torch.from_numpy(cells.copy())
    answer = (batch["labels"] != IGNORE_INDEX) & ~batch["latent_mask"]  # [B, S]
    first = answer.int().argmax(dim=1)  # [B]
    return ProbeSet(batch, masks, first, batch["input_ids"][torch.arange(len(samples)), first],
                    [s.id for s in samples])


def _focus(maps: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """S_focus of distributions over image tokens [B, N] (eq. 1): their mass on the box tokens, [B]."""
    return (maps * box_masks).sum(-1)


def _on_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def snapshot(student: LavitStudent, probe: ProbeSet) -> dict:
    """Where the student looks right now, under its current γ (training diagnostics)."""
    device = next(student.parameters()).device
    batch = _on_device(probe.batch, device)
    latents = batch["latent_positions"]  # [B, K]
    first = probe.first_answers.to(device)  # [B]
    rows = torch.stack([first - 1, first], dim=1)  # [B, 2]: the query producing the answer, the answer token
    was_training = student.training
    student.eval()
    try:
        maps, hidden = student.attention_from(batch, torch.cat([latents, rows], dim=1))  # [B, K+2, S]
        logits = student.hf_model.lm_head(hidden[torch.arange(hidden.shape[0], device=device), first - 1])  # [B, V]
    finally:
        student.train(was_training)
    answer_row = maps[:, -1]  # [B, S]
    out = {"gamma": float(student.gamma),
           "answer_image_mass": float((answer_row * batch["image_mask"]).sum(-1).mean()),
           "answer_accuracy": float((logits.argmax(-1).cpu() == probe.first_answer_ids).float().mean()),
           "latent_s_focus": None}
    if latents.shape[1]:
        dist = latent_image_distribution(maps[:, :-2], batch["image_index"], batch["image_valid"])  # [B, K, N]
        out["latent_s_focus"] = float(_focus(dist.mean(1).cpu(), probe.box_masks).mean())
    return out


@torch.no_grad()
def latent_map_stats(student: LavitStudent, probe: ProbeSet, targets: torch.Tensor) -> dict:
    """The latent tokens' maps at inference (γ = 1) against the teacher's targets [B, N] (distributions on
    the student's grid, as built for L_traj): KL(target ‖ latent_k) averaged over k, and S_focus."""
    if probe.batch["latent_positions"].shape[1] == 0:
        raise ValueError("latent_map_stats needs a student with latent tokens")
    device = next(student.parameters()).device
    batch = _on_device(probe.batch, device)
    gamma, was_training = student.gamma, student.training
    student.gamma = 1.0
    student.eval()
    try:
        maps, _ = student.attention_from(batch, batch["latent_positions"])  # [B, K, S]
    finally:
        student.gamma = gamma
        student.train(was_training)
    dist = latent_image_distribution(maps, batch["image_index"], batch["image_valid"]).cpu().double()  # [B, K, N]
    target = targets.double()[:, None, :].expand_as(dist)  # [B, K, N]
    log_ratio = torch.log(target.clamp_min(1e-12)) - torch.log(dist.clamp_min(1e-12))
    kl = torch.where(target > 0, target * log_ratio, torch.zeros_like(target)).sum(-1).mean(-1)  # [B]
    focus = _focus(dist.mean(1), probe.box_masks)  # [B]
    return {"kl_target_vs_latent": float(kl.mean()), "s_focus": float(focus.mean()), "n": int(kl.numel()),
            "per_sample": {i: {"kl": float(k), "s_focus": float(f)} for i, k, f in zip(probe.ids, kl, focus)}}


class DynamicsCallback(TrainerCallback):
    """Records `snapshot` at step 0, every `every` steps and at the end, with the γ in force at that step
    (add it after the `GammaCallback`). The probe set is built from `samples` when training starts, with
    the trainer's processor (`processing_class`) and the student's latent tokens."""

    def __init__(self, samples: list[BoxedSample], every: int, *, system_prompt: str | None = None):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.samples = samples
        self.every = every
        self.system_prompt = system_prompt
        self.probe: ProbeSet | None = None
        self.records: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if processing_class is None:
            raise ValueError("DynamicsCallback needs the trainer's processor (processing_class)")
        student = _unwrap(model)
        names = processing_class.tokenizer.convert_ids_to_tokens(student.latent_token_ids)
        self.probe = build_probe_set(processing_class, self.samples, names, system_prompt=self.system_prompt)

    def _record(self, state, model) -> None:
        if state.is_world_process_zero:
            self.records.append({"step": state.global_step, **snapshot(_unwrap(model), self.probe)})

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.records or self.records[-1]["step"] != state.global_step:
            self._record(state, model)


def _unwrap(model) -> LavitStudent:
    return model.module if hasattr(model, "module") else model
