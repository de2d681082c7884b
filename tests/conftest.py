"""Shared builders: a tiny student with latent tokens, its processor, and samples of two image sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.data.collator import LavitCollator
from lavit.data.examples import LAVIT_SYSTEM_PROMPT, TrainingSample, build_example
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.checkpoint import export_student
from lavit.models.families import DEFAULT_FAMILY, FAMILIES
from lavit.models.grid import merged_grid
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.tiny import STUDENT_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.toyworld.shapes import box_map

TEACHER_DIM = 192

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` runs two workers on two cores: torch's default of one thread per core in each worker (and in
    # the processes a test starts) would oversubscribe them, and spinning OpenMP threads slow both several-fold.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


class Tiny:
    """A fresh tiny student (text decoder on lavit_sdpa) with K latent tokens, and helpers."""

    def __init__(self, k: int = 4, seed: int = 0, spec=STUDENT_SPEC, family: str = DEFAULT_FAMILY):
        self.family = family
        self.processor = build_tiny_processor(build_tiny_tokenizer(), family=family)
        self.tokenizer = self.processor.tokenizer
        self.model = build_tiny_model(self.tokenizer, spec, seed=seed, family=family,
                                      attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
        self.names = latent_token_names(k) if k else []
        torch.manual_seed(seed)
        self.latent_ids = add_latent_tokens(self.tokenizer, self.model, self.names) if k else []

    def sample(self, i: int, size=(112, 84), question="what color is the circle ?", answer="red") -> TrainingSample:
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        grid = merged_grid(size)
        return TrainingSample(f"s{i}", Image.fromarray(pixels), question, answer,
                              rng.standard_normal(TEACHER_DIM).astype(np.float32),
                              box_map((10, 10, 50, 50), size, grid[1:]), grid)

    def examples(self, sizes=((112, 84), (140, 140)), answers=("red", "a big green circle")) -> list[dict]:
        return [build_example(self.processor, self.sample(i, s, answer=a), self.names,
                              system_prompt=LAVIT_SYSTEM_PROMPT) for i, (s, a) in enumerate(zip(sizes, answers))]

    def batch(self, gate_question_tokens: bool = True, **kwargs) -> dict:
        return LavitCollator(self.tokenizer.pad_token_id, gate_question_tokens)(self.examples(**kwargs))

    @torch.no_grad()
    def eager_attentions(self, batch: dict, gamma: float) -> tuple[torch.Tensor, ...]:
        """Per-layer attention probabilities [B, H, S, S] from transformers' eager path, under the student's
        mask at this γ (the reference the `lavit_sdpa` probes are checked against)."""
        student = LavitStudent(self.model, self.latent_ids, trajectory_loss=False)
        student.gamma = gamma
        captured = {}
        self.model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})
        backbone = self.model.model
        original = backbone.forward
        try:
            def capture(**kwargs):
                kwargs.pop("lavit_probe", None)
                out = original(**kwargs, output_attentions=True)
                captured["attn"] = out.attentions
                return out

            backbone.forward = capture
            student(batch)
        finally:
            backbone.forward = original
            self.model.set_attn_implementation({"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
        return captured["attn"]


def _export_tiny_student(directory, template: str = "<lvr_{i}>", with_meta: bool = True) -> list[str]:
    """Save a random tiny student with 4 latent tokens as a plain HF checkpoint (+ lavit.json if `with_meta`)."""
    processor = build_tiny_processor(build_tiny_tokenizer())
    model = build_tiny_model(processor.tokenizer, STUDENT_SPEC, seed=1,
                             attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
    names = latent_token_names(4, template)
    ids = add_latent_tokens(processor.tokenizer, model, names)
    export_student(LavitStudent(model, ids), processor, directory, {"latent_tokens": names})
    if not with_meta:
        (Path(directory) / "lavit.json").unlink()
    return names


@pytest.fixture(scope="session")
def export_tiny_student():
    return _export_tiny_student


@pytest.fixture(params=list(FAMILIES))
def tiny(request) -> Tiny:
    """A tiny student of each supported model family in turn (the whole test matrix runs per family)."""
    return Tiny(family=request.param)


@pytest.fixture
def sdpa_masks(monkeypatch) -> list:
    """Every attention mask that reaches SDPA through `lavit_sdpa`, in call order."""
    import lavit.models.attention as attention

    seen: list = []
    original = attention.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    return seen


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
