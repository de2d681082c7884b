"""How the toy world's models learn to see (used by the artifact builder only; not part of LaViT).

    python -m lavit.toyworld.artifacts --out src/lavit/toyworld/artifacts   # runs these recipes

Tiny Qwen2.5-VL models trained on answers alone stay on the language-prior plateau for thousands of
CPU steps: the language model cannot find the asked-about object while the vision tower's tokens do not
yet say what is under them, and the tower gets no useful gradient until the language model looks. So a
toy model is trained in two explicit phases, each on scenes drawn fresh from a world stream every step:

1. **vision** — the vision tower (patch embedding, blocks, merger) plus a linear probe on every merged
   token, trained to predict the colour and the shape under that token (`world.cell_labels`; summed
   cross-entropies) — a perception pretraining, as a real ViT gets before it meets a language model;
2. **language** — the whole model on the questions' answers (the model's own next-token loss), the
   probe's loss still added so the tower's tokens stay perceptive while it adapts; or, with no probe,
   the vision tower frozen.

A model that skips phase 1 (`vision_steps=0`) keeps its random, frozen tower: the text-only model, which
is shown a blank image anyway.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from lavit.data.collator import LavitCollator
from lavit.data.examples import TrainingSample, build_example
from lavit.models.families import family_of
from lavit.toyworld.world import BACKGROUND, COLORS, WorldConfig, cell_labels, make_sample


@dataclass
class PhaseConfig:
    """One training phase of a toy model."""

    steps: int
    learning_rate: float
    batch_size: int = 32
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        if self.steps < 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ValueError("a phase needs steps >= 0, learning_rate > 0, batch_size >= 1, warmup_steps >= 0")


class CellProbe(torch.nn.Module):
    """Linear colour and shape classifiers on each merged vision token (background = class 0)."""

    def __init__(self, width: int, num_shapes: int):
        super().__init__()
        self.colour = torch.nn.Linear(width, len(COLORS) + 1)
        self.shape = torch.nn.Linear(width, num_shapes + 1)

    def loss_and_accuracy(self, tokens: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor):
        c_logits, s_logits = self.colour(tokens), self.shape(tokens)  # [N, 5], [N, num_shapes + 1]
        loss = F.cross_entropy(c_logits, colour) + F.cross_entropy(s_logits, shape)
        right = (c_logits.argmax(-1) == colour) & (s_logits.argmax(-1) == shape)  # [N]
        return loss, right.float().mean()


def _optimiser(params, phase: PhaseConfig):
    optimiser = torch.optim.AdamW(params, lr=phase.learning_rate, weight_decay=0.0)
    return optimiser, get_linear_schedule_with_warmup(optimiser, min(phase.warmup_steps, phase.steps), phase.steps)


def _scenes(rng: np.random.Generator, world: WorldConfig):
    for i in itertools.count():
        yield make_sample(rng, world, f"pre-{i}")


def _cell_targets(samples, world: WorldConfig) -> tuple[torch.Tensor, torch.Tensor]:
    labels = [cell_labels(s.objects, world) for s in samples]
    return (torch.as_tensor(np.concatenate([c for c, _ in labels])),  # [B*g*g] colour classes
            torch.as_tensor(np.concatenate([s for _, s in labels])))  # [B*g*g] shape classes


def train_vision(model, processor, phase: PhaseConfig, world: WorldConfig, *, rng: np.random.Generator,
                 seed: int = 0, desc: str = "vision") -> tuple[CellProbe, dict]:
    """Phase 1: the vision tower and a per-token colour/shape probe. Returns the probe and a log."""
    torch.manual_seed(seed)
    family = family_of(model)
    backbone, visual = family.backbone(model), family.vision_tower(model)
    probe = CellProbe(model.config.text_config.hidden_size, world.num_shapes)
    visual.requires_grad_(True).train()
    params = [*visual.parameters(), *probe.parameters()]
    optimiser, schedule = _optimiser(params, phase)
    scenes = _scenes(rng, world)
    start, accuracy = time.time(), []
    bar = tqdm(range(phase.steps), desc=desc, unit="step")
    for _ in bar:
        samples = [next(scenes) for _ in range(phase.batch_size)]
        pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")
        tokens = torch.cat(backbone.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"]
                                                       ).pooler_output)  # [B*g*g, D]
        loss, acc = probe.loss_and_accuracy(tokens, *_cell_targets(samples, world))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        accuracy.append(float(acc))
        bar.set_postfix(loss=f"{loss.item():.3f}", cell_acc=f"{acc.item():.3f}", refresh=False)
    bar.close()
    return probe, {"steps": phase.steps, "cell_accuracy_last_50": float(np.mean(accuracy[-50:])) if accuracy else None,
                   "wall_seconds": time.time() - start}


def train_language(model, processor, phase: PhaseConfig, world: WorldConfig, *, rng: np.random.Generator,
                   probe: CellProbe | None = None, blank_images: bool = False, seed: int = 0,
                   desc: str = "language") -> dict:
    """Phase 2: the language model on the answers. With the phase-1 `probe` the vision tower trains too, its
    probe loss added; without, the tower is frozen. `blank_images` shows every question with the empty
    background instead of its scene (the text-only model; no probe then)."""
    if probe is not None and blank_images:
        raise ValueError("a blank-image model has no scene for the cell probe to read")
    torch.manual_seed(seed)
    model.train()
    visual = family_of(model).vision_tower(model)
    visual.requires_grad_(probe is not None)
    if probe is None:
        visual.eval()
    tower = {id(p) for p in visual.parameters()}
    params = [p for p in model.parameters() if probe is not None or id(p) not in tower]
    for p in params:
        p.requires_grad_(True)
    params += list(probe.parameters()) if probe is not None else []
    optimiser, schedule = _optimiser(params, phase)
    collate = LavitCollator(processor.tokenizer.pad_token_id)
    blank = Image.new("RGB", (world.image_size, world.image_size), BACKGROUND)
    tokens: list[torch.Tensor] = []
    hook = (visual.register_forward_hook(lambda m, i, o: tokens.append(o.pooler_output))
            if probe is not None else None)
    scenes = _scenes(rng, world)
    start, losses = time.time(), []
    bar = tqdm(range(phase.steps), desc=desc, unit="step")
    try:
        for _ in bar:
            samples = [next(scenes) for _ in range(phase.batch_size)]
            batch = collate([build_example(processor, TrainingSample(s.id, blank if blank_images else s.image,
                                                                     s.question, s.answer), [], system_prompt=None)
                             for s in samples])
            tokens.clear()
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=batch["mm_token_type_ids"], labels=batch["labels"]).loss
            losses.append(float(loss.detach()))
            if probe is not None:
                loss = loss + probe.loss_and_accuracy(tokens[0], *_cell_targets(samples, world))[0]
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
    model.eval()
    visual.requires_grad_(False)
    return {"steps": phase.steps, "answer_loss_last_50": float(np.mean(losses[-50:])) if losses else None,
            "vision_trained": probe is not None, "wall_seconds": time.time() - start}
