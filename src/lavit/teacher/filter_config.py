"""Settings of `lavit filter` (paper §4.1, three-stage filter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lavit.config import field

STAGES = ("correctness", "difficulty", "alignment")


@dataclass
class FilterConfig:
    signals: str = field("", "Teacher-signal store written by `lavit extract`.")
    out: str = field("runs/lavit_sft", "Output: the LaViT-SFT set (Parquet), filter_report.json, dropped.jsonl.")
    stages: list[str] = field(list(STAGES), "Stages to apply, in order: correctness, difficulty, alignment.")
    matcher: str = field("default", "Answer matcher for correctness and difficulty: 'default' (letters, numbers, "
                         "yes/no, normalised text), 'exact', or 'package.module:function'.")
    text_model: str = field("teacher", "Text-only model of the difficulty stage: 'teacher' (the store's teacher, "
                            "asked without the image), a Qwen-VL path/id, or 'tiny'.")
    text_only_image: str = field("", "Image file shown to the text-only model with every question (e.g. a blank "
                                 "canvas for a model trained on blank images); empty = no image at all.")
    min_s_focus: float = field(0.2, "Alignment stage: keep samples with S_focus >= this (paper: 0.2).")
    require_box: bool = field(True, "Alignment stage: drop samples without a box (S_focus undefined); false keeps "
                              "them unchecked.")
    batch_size: int = field(8, "Questions per text-only generate call.")
    max_new_tokens: int = field(64, "Longest text-only answer.")
    system_prompt: str = field("", "System prompt for the text-only model; empty = the template's default.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field("auto", "auto = bfloat16 on GPU, float32 on CPU.")
    device_map: str = field("", "'' = one device; 'auto' splits the text-only model over all visible GPUs.")
    overwrite: bool = field(False, "Replace an existing output directory.")
    seed: int = field(0, "Seed for 'tiny' models.")

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be distinct names from {STAGES}, got {self.stages}")
        if not 0.0 <= self.min_s_focus <= 1.0:
            raise ValueError("min_s_focus must be in [0, 1]")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be positive")
