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
    matcher: str = field("default", "Answer matcher for correctness and difficulty: 'default' (rules: option "
                         "letters, numbers, yes/no, colour/shape words, normalised text; a pair they cannot decide is "
                         "dropped as rules_uncertain), 'judge' (the rules, then the `judge` model for the pairs they "
                         "defer), 'exact', or 'package.module:function' returning True, False or None (undecided).")
    judge: str = field("", "Judge model for matcher=judge: 'teacher' (the store's teacher), a local checkpoint of a "
                       "supported family, or 'tiny[:FAMILY]'. Asked with a fixed, versioned prompt for yes/no.")
    judge_cache: str = field("", "JSONL cache of the judge's outputs, keyed by prompt version, judge, question, "
                             "truth and answer, so a rerun asks nothing twice; '' = OUT.judge_cache.jsonl beside "
                             "the output folder (kept by overwrite=true).")
    judge_max_new_tokens: int = field(8, "Longest judge output (its verdict is the first word).")
    text_model: str = field("teacher", "Text-only model of the difficulty stage: 'teacher' (the store's teacher, "
                            "asked without the image), a Qwen-VL path/id, or 'tiny'.")
    text_only_image: str = field("", "Image file shown to the text-only model with every question (e.g. a blank "
                                 "canvas for a model trained on blank images); empty = no image at all.")
    min_s_focus: float = field(0.2, "Alignment stage: keep samples with S_focus >= this (paper: 0.2).")
    require_box: bool = field(True, "Alignment stage: drop samples without a box (S_focus undefined); false keeps "
                              "them unchecked.")
    batch_size: int = field(8, "Questions per text-only generate call, and pairs per judge call.")
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
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.judge_max_new_tokens < 1:
            raise ValueError("batch_size, max_new_tokens and judge_max_new_tokens must be positive")
        if (self.matcher == "judge") != bool(self.judge):
            raise ValueError("matcher=judge needs judge=MODEL, and judge= is used only with matcher=judge "
                             f"(got matcher={self.matcher!r}, judge={self.judge!r})")
        if self.judge_cache and self.matcher != "judge":
            raise ValueError("judge_cache= is used only with matcher=judge")
