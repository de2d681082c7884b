"""Settings of `lavit filter` (paper §4.1, three-stage filter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lavit.config import field
from lavit.eval.matching import MATCHERS

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
    judge: str = field("", "Judge for matcher=judge: 'teacher' (the store's teacher), a local checkpoint of a "
                       "supported family, 'tiny[:FAMILY]', or an OpenAI-compatible endpoint "
                       "'http://HOST:PORT/v1' (with judge_model=). Asked with a fixed, versioned prompt for yes/no.")
    judge_model: str = field("", "The model name to ask at an endpoint judge (judge=http(s)://...), as the server "
                             "lists it under /v1/models.")
    judge_timeout: float = field(120.0, "Seconds an endpoint judge may take per request before the run fails.")
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
    engine: Literal["transformers", "vllm"] = field("transformers", "Engine of the text-only answers and a local "
                                                    "judge: transformers' generate, or vLLM (needs the vllm package).")
    device_map: str = field("", "'' = one device; 'auto' splits the text-only model over all visible GPUs "
                            "(transformers).")
    tensor_parallel_size: int = field(1, "engine=vllm: GPUs each model is split over.")
    vllm_max_model_len: int = field(0, "engine=vllm: longest prompt + answer in tokens (0 = the model's own).")
    vllm_enforce_eager: bool = field(False, "engine=vllm: no CUDA graphs / torch.compile (start-up in seconds).")
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
        known = (*MATCHERS, "judge")
        if self.matcher not in known and ":" not in self.matcher:  # before any model loads, every choice named
            raise ValueError(f"matcher must be one of {', '.join(known)} or 'package.module:function', got "
                             f"{self.matcher!r}")
        if (self.matcher == "judge") != bool(self.judge):
            raise ValueError("matcher=judge needs judge=MODEL, and judge= is used only with matcher=judge "
                             f"(got matcher={self.matcher!r}, judge={self.judge!r})")
        if self.judge_cache and self.matcher != "judge":
            raise ValueError("judge_cache= is used only with matcher=judge")
        endpoint = self.judge.startswith(("http://", "https://"))
        if endpoint != bool(self.judge_model):
            raise ValueError("an endpoint judge (judge=http(s)://HOST:PORT/v1) needs judge_model=NAME, and "
                             f"judge_model= is used only with one (got judge={self.judge!r}, judge_model={self.judge_model!r})")
        if self.judge_timeout <= 0:
            raise ValueError("judge_timeout must be positive")
        if self.engine not in ("transformers", "vllm"):
            raise ValueError(f"engine must be transformers or vllm, got {self.engine!r}")
        if self.engine == "transformers" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size is vLLM's (engine=vllm); transformers splits with device_map=auto")
        if self.engine == "vllm" and self.device_map:
            raise ValueError("device_map is transformers'; with engine=vllm split the model with tensor_parallel_size")
        if self.tensor_parallel_size < 1 or self.vllm_max_model_len < 0:
            raise ValueError("tensor_parallel_size must be positive and vllm_max_model_len >= 0")
