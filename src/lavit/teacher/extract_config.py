"""Settings of `lavit extract` (paper §4.1, DESIGN §2)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Literal

from lavit.config import field
from lavit.teacher.probe import QUERY_CHOICES

# Settings that do not change a single stored value; a resumed run may change them freely.
RESUMABLE_KEYS = ("out", "shard", "max_samples", "rows_per_file", "device_map")


@dataclass
class ExtractConfig:
    samples: str = field("", "Input samples: our JSONL (.jsonl) or a Visual-CoT JSON (.json, raw or LVR-formatted).")
    input_format: Literal["auto", "jsonl", "visual_cot"] = field("auto", "Reader; auto picks by file extension.")
    image_root: str = field("", "Directory the samples' relative image paths start from.")
    out: str = field("runs/signals", "Output store (Parquet shards + manifest.json). Rerunning resumes it.")
    teacher: str = field("Qwen/Qwen2.5-VL-32B-Instruct", "Teacher: Hugging Face path or id of any supported family "
                         "(it may differ from the student's), or 'tiny-teacher' / 'tiny-teacher:FAMILY' for a "
                         "built-in random tiny teacher (smoke tests).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field("auto", "auto = bfloat16 on GPU, float32 on CPU.")
    device_map: str = field("", "'' = one device (this worker's GPU, else CPU); 'auto' splits the teacher over all "
                            "visible GPUs.")
    batch_size: int = field(8, "Samples per generation call and per signal forward pass.")
    max_new_tokens: int = field(128, "Longest teacher answer (greedy).")
    layers: str = field("all", "Decoder layers averaged in A_traj: 'all' (eq. 2), 'last:N' (official code: last:8), "
                        "'first:N' or a comma list of indices.")
    queries: Literal["after_image", "question", "answer"] = field(
        "after_image", "Query tokens averaged in A_traj: every token after the image (question + answer, eq. 2), "
        "the question only, or 'answer': the queries that produce the teacher's answer tokens (where it looked "
        "while answering; the end-of-turn token excluded).")
    system_prompt: str = field("", "Teacher system prompt; empty = the chat template's default.")
    min_pixels: int = field(0, "Image processor min pixels (0 = the teacher processor's default).")
    max_pixels: int = field(0, "Image processor max pixels (0 = the teacher processor's default).")
    lvr_box_format: Literal["normalized", "normalized_square"] = field(
        "normalized", "How LVR-formatted Visual-CoT `bboxes` are normalised (see lavit.data.visual_cot).")
    min_image_side: int = field(28, "Reject images with a side shorter than this (px).")
    max_image_pixels: int = field(89_478_485, "Reject images with more pixels than this (decompression-bomb guard).")
    shard: str = field("", "'i/n': process only this worker's share (batch groups g with g % n == i). Empty = "
                       "all, or RANK/WORLD_SIZE when launched by torchrun/accelerate.")
    rows_per_file: int = field(512, "Rows per Parquet shard (rounded up to whole batches).")
    max_samples: int = field(0, "Only the first N input samples, rounded up to whole batches (0 = all).")
    seed: int = field(0, "Seed (weights of 'tiny-teacher'; generation is greedy).")

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.rows_per_file < 1:
            raise ValueError("batch_size, max_new_tokens and rows_per_file must be positive")
        if self.queries not in QUERY_CHOICES:
            raise ValueError(f"queries must be one of {QUERY_CHOICES}")
        if self.min_pixels < 0 or self.max_pixels < 0 or (self.max_pixels and self.min_pixels > self.max_pixels):
            raise ValueError("need 0 <= min_pixels <= max_pixels")
        self.worker()  # validates `shard`

    def worker(self) -> tuple[int, int]:
        """(index, count) of this data-parallel worker."""
        if not self.shard:
            return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        match = re.fullmatch(r"(\d+)/(\d+)", self.shard.strip())
        if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError(f"shard must be 'i/n' with 0 <= i < n, got {self.shard!r}")
        return int(match.group(1)), int(match.group(2))

    def signal_settings(self) -> dict:
        """The settings every stored value depends on (must match to resume a store)."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_KEYS}
