"""Settings of `lavit extract` (paper §4.1, DESIGN §2)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Literal

from lavit.config import field
from lavit.data.run_dir import resolve_paths
from lavit.inference.engines import check_engine
from lavit.teacher.probe import QUERY_CHOICES

# Settings that do not change a single stored value; a resumed run may change them freely.
# The vLLM options are the engine's placement and batching, as device_map is transformers'.
RESUMABLE_KEYS = ("out", "shard", "max_samples", "rows_per_file", "device_map", "tensor_parallel_size",
                  "vllm_batch_size", "vllm_max_model_len", "vllm_enforce_eager", "changed_samples")
# device_map values: '' = one device; the strategies that split the teacher over GPUs (under data-parallel ranks,
# over the rank's own GPUs only); 'cpu'.
SPLIT_DEVICE_MAPS = ("auto", "balanced", "sequential")
DEVICE_MAPS = ("", *SPLIT_DEVICE_MAPS, "cpu")


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
    device_map: str = field("", "'' = one device (this worker's GPU, else CPU); 'auto' (or 'balanced', "
                            "'sequential') splits the teacher over the visible GPUs — under torchrun/accelerate "
                            "launch with L ranks on a node of N GPUs, over rank r's own N/L GPUs [r*N/L, (r+1)*N/L) "
                            "(refused unless L divides N); without CUDA every rank loads onto the CPU; 'cpu'. "
                            "transformers: the answers and the probe pass; with engine=vllm the probe pass only.")
    engine: Literal["transformers", "vllm"] = field(
        "transformers", "Engine of the teacher's answers: transformers' generate, or vLLM (needs the vllm package). "
        "With vllm the run has two phases — every answer of this worker (journaled in OUT/teacher_answers-*.jsonl), "
        "then the probe pass in transformers — so the two never hold the teacher at once; a killed run resumes "
        "either phase. The probe pass always runs in transformers.")
    tensor_parallel_size: int = field(1, "engine=vllm: GPUs the teacher is split over within this worker "
                                      "(data parallel across workers with shard=).")
    vllm_batch_size: int = field(256, "engine=vllm: samples per vLLM generate call (its scheduler batches within; a "
                                 "killed answer phase loses at most one call's answers).")
    vllm_max_model_len: int = field(0, "engine=vllm: longest prompt + answer in tokens (0 = the model's own).")
    vllm_enforce_eager: bool = field(False, "engine=vllm: no CUDA graphs / torch.compile (start-up in seconds: "
                                     "small runs and tests).")
    batch_size: int = field(8, "Samples per generation call and per signal forward pass.")
    max_new_tokens: int = field(128, "Longest teacher answer (greedy).")
    layers: str = field("all", "Decoder layers averaged in A_traj: 'all' (eq. 2), 'last:N' (official code: last:8), "
                        "'first:N' or a comma list of indices.")
    queries: Literal["after_image", "question", "answer"] = field(
        "after_image", "Query tokens averaged in A_traj: every token after the image (question + answer, eq. 2), "
        "the question only, or 'answer': the queries that produce the teacher's answer tokens (where it looked "
        "while answering; the end-of-turn token excluded).")
    kd_top_k: int = field(0, "Also store, at each position where the teacher produces an answer token or its "
                          "end-of-turn token, its k most probable next tokens (ids, token strings, log-probabilities: "
                          "the kd_* columns) for `lavit train method=kd / lavit_kd`; 0 = not stored. ~16 bytes per "
                          "entry before compression (id, log-probability, token string): k=8 adds ~130 bytes per "
                          "answer token.")
    kd_temperature: float = field(1.0, "τ of the stored top-k log-probabilities, log softmax(logits / τ); training "
                                  "refuses another kd_temperature (the top-k alone cannot be re-tempered exactly).")
    system_prompt: str = field("", "Teacher system prompt; empty = the chat template's default.")
    min_pixels: int = field(0, "Image processor min pixels (0 = the teacher processor's default; the recipes set "
                            "Table A1's 200704, the student's).")
    max_pixels: int = field(0, "Image processor max pixels (0 = the teacher processor's default, 12845056 for "
                            "Qwen2.5-VL; the recipes set Table A1's 1003520, so teacher and student see one area).")
    lvr_box_format: Literal["normalized", "normalized_square"] = field(
        "normalized", "How LVR-formatted Visual-CoT `bboxes` are normalised (see lavit.data.visual_cot).")
    min_image_side: int = field(28, "Reject images with a side shorter than this (px).")
    max_image_pixels: int = field(89_478_485, "Reject images with more pixels than this, checked on the file's header "
                                  "before decoding (decompression-bomb guard; PIL itself refuses over 178956970).")
    max_text_tokens: int = field(1024, "Reject samples whose question or answer is longer than this many teacher "
                                 "tokens (text_too_long), so one sample cannot exhaust the memory of its batch.")
    shard: str = field("", "'i/n': process only this worker's share (batch groups g with g % n == i). Empty = "
                       "all, or RANK/WORLD_SIZE when launched by torchrun/accelerate.")
    rows_per_file: int = field(512, "Rows per Parquet shard (rounded up to whole batches).")
    max_samples: int = field(0, "Only the first N input samples, rounded up to whole batches (0 = all).")
    seed: int = field(0, "Seed (weights of 'tiny-teacher'; generation is greedy).")
    changed_samples: Literal["refuse", "reextract"] = field(
        "refuse", "A rerun whose samples file gives a stored id other fields (image path, question, answer, box, "
        "source) than its row was extracted from: 'refuse' stops before any work, listing those ids; 'reextract' "
        "deletes only their rows and extracts them again. Rows stored before lavit recorded the fields' "
        "fingerprint (sample_sha256 null) cannot be checked. An image file replaced under the same name is not "
        "detected.")

    def __post_init__(self) -> None:
        # The config layer refuses negative integers in recipes and overrides; this covers ExtractConfig(...) too.
        negative = [f.name for f in fields(self) if isinstance(v := getattr(self, f.name), int) and v < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0")
        positive = ("batch_size", "max_new_tokens", "rows_per_file", "min_image_side", "max_image_pixels",
                    "max_text_tokens", "tensor_parallel_size", "vllm_batch_size")
        zero = [name for name in positive if getattr(self, name) < 1]
        if zero:
            raise ValueError(f"{', '.join(zero)} must be at least 1")
        check_engine(self.engine)
        if self.device_map not in DEVICE_MAPS:
            raise ValueError(f"device_map must be one of {list(DEVICE_MAPS)}, got {self.device_map!r}")
        if self.changed_samples not in ("refuse", "reextract"):
            raise ValueError(f"changed_samples must be 'refuse' or 'reextract', got {self.changed_samples!r}")
        if self.engine == "transformers" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size is vLLM's (engine=vllm); transformers splits with device_map=auto")
        if self.kd_temperature <= 0:
            raise ValueError("kd_temperature must be > 0")
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
        """The settings every stored value depends on (must match to resume a store); input paths resolved, so
        a relative and an absolute spelling of one file resume each other."""
        settings = {k: v for k, v in asdict(self).items() if k not in RESUMABLE_KEYS}
        return resolve_paths(settings, ("samples", "image_root"))
