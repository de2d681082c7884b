"""Toy models of the toy world: real Qwen-VL models at small sizes (Qwen2.5-VL by default; the students can
be of any supported family, `lavit demo --student-family`).

* teacher     — larger (hidden 192, 3 layers, vision hidden 64), trained on unbiased colours until it
                perceives (a real 32B teacher sees far better than a 3B student);
* base        — the student architecture (hidden 128, 2 layers) with a perception-pretrained vision
                tower and a language model trained only briefly: it has learnt the prior, not where to look
                (Table 1's "base" row);
* text_only   — the student architecture trained on the same questions with a blank image: it can only
                learn the language prior (the difficulty filter's text-only model);
* capacity    — (measured, not kept) the student architecture trained fully on unbiased data: proof that
                perception is learnable at the student's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lavit.data.samples import open_rgb
from lavit.eval.matching import answers_match
from lavit.inference.generate import generate_answers
from lavit.models.families import DEFAULT_FAMILY, family_named
from lavit.models.gating import InferenceGate
from lavit.models.tiny import STUDENT_SPEC, TinyModelSpec, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.toyworld.world import BACKGROUND, WorldConfig

TOY_TEACHER_SPEC = TinyModelSpec(hidden_size=192, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=384, vision_hidden_size=64, vision_depth=2, vision_heads=2,
                                 tie_word_embeddings=False)
TOY_STUDENT_SPEC = STUDENT_SPEC
BLANK_IMAGE = "blank.png"


def toy_tokens(world: WorldConfig = WorldConfig()) -> int:
    """Merged tokens per toy image: the world's grid squared (168 pixels, both committed worlds: 6 × 6 = 36)."""
    return world.grid ** 2


def toy_pixels(family: str = DEFAULT_FAMILY, world: WorldConfig = WorldConfig()) -> int:
    """The image processor's pixel budget that puts every toy image on the world's grid in `family` (the default
    world's 168 × 168 pixels at 14-pixel patches, 192 × 192 at 16)."""
    return toy_tokens(world) * family_named(family).pixels_per_token


def toy_tokenizer(world: WorldConfig = WorldConfig()):
    return build_tiny_tokenizer(extra_words=list(world.shapes))


def new_toy_model(spec: TinyModelSpec, seed: int, family: str = DEFAULT_FAMILY, world: WorldConfig = WorldConfig()):
    """A randomly initialised toy model of `family` and its processor (every image on the world's grid). Its
    vocabulary has every shape name of the world (the premise world's "diamond" is not a tiny-model base word;
    the default world's vocabulary is the base one)."""
    pixels = toy_pixels(family, world)
    processor = build_tiny_processor(toy_tokenizer(world), family=family, min_pixels=pixels, max_pixels=pixels)
    return build_tiny_model(processor.tokenizer, spec, seed=seed, family=family), processor


def blank_image(path: Path, size: int = WorldConfig().image_size) -> Path:
    """The grey canvas (the world's background, no objects) the text-only model sees."""
    if not path.exists():
        Image.new("RGB", (size, size), BACKGROUND).save(path)
    return path


def toy_accuracy(model, processor, jsonl: Path, *, latent_tokens: list[str] | None = None, mode: str = "none",
                 system_prompt: str | None = None, image_override: Path | None = None, batch_size: int = 64,
                 max_samples: int = 0, gate: InferenceGate | None = None) -> dict:
    """Greedy answers on a world split, scored with the default matcher: overall, per kind, and per sample."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    rows = rows[:max_samples] if max_samples else rows
    images_dir = jsonl.parent / "images"
    answers: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        images = [open_rgb(image_override or images_dir / r["image"]) for r in chunk]
        answers += generate_answers(model, processor, images, [r["question"] for r in chunk],
                                    latent_tokens=latent_tokens or [], mode=mode, system_prompt=system_prompt,
                                    max_new_tokens=3, gate=gate)
    correct = np.array([answers_match(a, r["answer"]) for a, r in zip(answers, rows)])
    kinds = sorted({r["kind"] for r in rows})
    has_prior = np.array([r["prior_answer"] is not None for r in rows], dtype=bool)
    consistent = has_prior & np.array([r["answer"] == r["prior_answer"] for r in rows])
    violating = has_prior & ~consistent
    return {"accuracy": float(correct.mean()),
            "per_kind": {k: float(correct[[r["kind"] == k for r in rows]].mean()) for k in kinds},
            # the language prior alone is right on the first group and wrong on the second
            "per_prior": {"prior_consistent": float(correct[consistent].mean()) if consistent.any() else None,
                          "prior_violating": float(correct[violating].mean()) if violating.any() else None},
            "correct": {r["id"]: bool(c) for r, c in zip(rows, correct)},
            "answers": {r["id"]: a for r, a in zip(rows, answers)}}
