"""`lavit bench extract`: cost of the signal pass against a plain forward and an eager reference.

    lavit bench extract --json
    lavit bench extract --json --config qwen2.5-vl-32b --num-layers 16   # on a GPU: the real 32B text dims

One process, one tiny-but-realistic Qwen2.5-VL (hidden 1024, 8 layers, 16 heads / 4 KV heads,
intermediate 5504 ≈ Qwen's 5.4× ratio), ~700 image tokens + ~100 text tokens per sample:
* forward — the plain SDPA decoder forward (`model.model`, no LM head: signals need none);
* extract — the same forward with the `TrajectoryProbe` (A_traj for all layers, every token after
  the image) plus V_sem pooling, i.e. exactly `SignalExtractor.forward_signals`;
* eager — the text decoder on eager attention with `output_attentions=True`, aggregated the same
  way from the returned [layers × B × H × S × S] maps (what the official extractor does).
Times are medians of interleaved repeats. Peak memory: CUDA's peak allocator statistics on GPU,
the process's peak resident set (Linux VmHWM, reset before each call) on CPU; `*_total` ratios
include the weights, `*_activation` ratios only what each call adds above them.
`bytes_per_sample`: one stored row at the real 32B teacher dims (5120-d V_sem fp16, 700-token map).

With `--vllm` (`bench_answers`), the teacher-answer stage too, in the same run: the same model saved to disk,
the same prompts (smaller images, `ANSWER_IMAGE_SIZE`), greedy answers of `max_new_tokens` on transformers
(`generate`, `batch_size` prompts per call, as `lavit extract`) and on vLLM (one call, its scheduler batching):
answers per second of each, their ratio, vLLM's start-up apart, and whether the answers were equal.
"""

from __future__ import annotations

import ctypes
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from lavit.data.signal_store import SIGNAL_SCHEMA
from lavit.inference.engines import TransformersEngine, VllmEngine, import_vllm
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.checkpoint import load_for_inference
from lavit.models.qwen_configs import qwen_spec
from lavit.models.tiny import (
    BASE_WORDS,
    TEACHER_SPEC,
    TinyModelSpec,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
)
from lavit.teacher.extractor import SignalExtractor

BENCH_SPEC = TinyModelSpec(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                           intermediate_size=5504, vision_hidden_size=64, vision_depth=2, vision_heads=2)
_QWEN_32B = qwen_spec("qwen2.5-vl-32b")
# The real Qwen2.5-VL-32B-Instruct text decoder (random bf16 weights on a GPU); `--num-layers` trims it to fit.
# Vocabulary and vision tower stay tiny: the bench times the decoder (`model.model`, no LM head).
QWEN_32B_SPEC = TinyModelSpec(hidden_size=_QWEN_32B.hidden_size, num_hidden_layers=_QWEN_32B.num_hidden_layers,
                              num_attention_heads=_QWEN_32B.num_attention_heads,
                              num_key_value_heads=_QWEN_32B.num_key_value_heads,
                              intermediate_size=_QWEN_32B.intermediate_size, vision_hidden_size=64, vision_depth=2,
                              vision_heads=2, tie_word_embeddings=_QWEN_32B.tie_word_embeddings)
SPECS = {"bench": BENCH_SPEC, "qwen2.5-vl-32b": QWEN_32B_SPEC, "tiny": TEACHER_SPEC}  # tiny: tests
IMAGE_SIZE = (27 * 28, 26 * 28)  # 27 × 26 = 702 merged image tokens
TEACHER_32B_DIM = _QWEN_32B.hidden_size  # V_sem width of the 32B teacher
REAL_MAP_TOKENS = 700
ANSWER_IMAGE_SIZE = (10 * 28, 9 * 28)  # 90 merged image tokens: the answer bench's prefill stays seconds on a CPU


class PeakMemory:
    """Peak bytes during a call: CUDA allocator stats, or Linux VmHWM (reset via /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if not self.cuda and not Path("/proc/self/clear_refs").exists():
            raise RuntimeError("CPU peak memory needs Linux /proc (VmHWM); run the bench on Linux or a GPU")
        self._libc = None if self.cuda else ctypes.CDLL("libc.so.6")

    def _status(self, key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def measure(self, fn) -> tuple[int, int]:
        """(peak total bytes, bytes held before the call)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated(), before
        self._libc.malloc_trim(0)  # hand freed heap back so the baseline is what is really held
        before = self._status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        fn()
        return self._status("VmHWM"), before


def peak_memory(device: torch.device, calls: dict[str, Callable], tries: int) -> dict[str, dict[str, int]]:
    """Peak bytes of each call, the least-disturbed of `tries` (`PeakMemory`): the total, what was held before, and
    what the call added."""
    meter = PeakMemory(device)
    peaks = {}
    for name, fn in calls.items():
        peak, before = min(meter.measure(fn) for _ in range(tries))
        peaks[name] = {"peak_total_bytes": peak, "held_before_bytes": before, "added_bytes": peak - before}
    return peaks


def synced(device: torch.device, fn: Callable) -> Callable:
    """`fn` that returns only when its CUDA kernels have finished, so that a timer around it times them."""
    def run():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def interleaved_medians(calls: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Median seconds of each call, run in turn (after one warm-up each: compilation happens there) so that
    drifting load hits all alike."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) for name, spent in times.items()}


def on_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """`batch`'s tensors on `device`, its pixels in `dtype` (the model's)."""
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


def _inputs(processor, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    words = [w for w in BASE_WORDS if w.isalpha()]
    images, questions, answers = [], [], []
    for _ in range(batch_size):
        images.append(Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)))
        questions.append(" ".join(rng.choice(words, 30)) + " ?")
        answers.append(" ".join(rng.choice(words, 50)))
    return images, questions, answers


def _eager_signals(model, batch: dict, layers: int) -> torch.Tensor:
    """Reference: eager attention maps for every layer, then the same aggregation (A_traj on all keys)."""
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                      mm_token_type_ids=batch["mm_token_type_ids"], output_attentions=True, use_cache=False)
    maps = torch.stack(out.attentions[:layers])  # [L, B, H, S, S]
    q = batch["query_mask"].to(maps.device)  # [B, S]
    summed = (maps.float() * q[None, :, None, :, None]).sum(dim=(0, 2, 3))  # [B, S]
    a_traj = summed / (layers * maps.shape[2] * q.sum(1, keepdim=True))
    image_mask = batch["image_mask"].to(out.last_hidden_state.device)
    v_sem = (out.last_hidden_state * image_mask[..., None]).sum(1) / image_mask.sum(1, keepdim=True)
    return a_traj, v_sem


def bytes_per_sample(rows: int = 64, seed: int = 0) -> float:
    """Parquet bytes per stored row at the 32B teacher's dims (zstd, as `lavit extract` writes)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(rows):
        logits = rng.standard_normal(REAL_MAP_TOKENS)
        a_traj = np.exp(logits) / np.exp(logits).sum()
        records.append({"index": i, "id": f"docvqa-{100000 + i}", "image": f"cot/docvqa/img_{i:06d}.png",
                        "question": "What is the percentage of all consumers who tried the semi hard strip option?",
                        "answer": "8%", "bbox": [14.0, 645.0, 1776.0, 1617.0], "source": "docvqa",
                        "image_size": [2200, 1700], "status": "ok", "reject_reason": None,
                        "teacher_answer": "The percentage is 8%.", "a_traj": a_traj.astype(np.float32).tolist(),
                        "a_traj_grid": [1, 25, 28], "v_sem": rng.standard_normal(TEACHER_32B_DIM).astype(np.float16)
                        .tolist(), "s_focus": float(rng.random())})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(records, schema=SIGNAL_SCHEMA), path, compression="zstd")
        return path.stat().st_size / rows


def bench_extract(batch_size: int = 2, repeats: int = 5, seed: int = 0, config: str = "bench",
                  num_layers: int = 0) -> dict:
    if config not in SPECS:
        raise ValueError(f"bench config must be one of {sorted(SPECS)}")
    spec = SPECS[config]
    if num_layers:
        spec = dataclasses.replace(spec, num_hidden_layers=num_layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pixels = IMAGE_SIZE[0] * IMAGE_SIZE[1]
    processor = build_tiny_processor(build_tiny_tokenizer(), min_pixels=pixels, max_pixels=pixels)
    model = build_tiny_model(processor.tokenizer, spec, seed=seed,
                             attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
    model = model.to(device, dtype).eval()
    extractor = SignalExtractor(model, processor)
    images, questions, answers = _inputs(processor, batch_size, seed)
    batch = extractor.prepare_batch([f"b{i}" for i in range(batch_size)], images, questions, answers)
    moved = on_device(batch, device, dtype)
    layers = spec.num_hidden_layers

    def set_text_attention(name: str) -> None:
        model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"})

    @torch.no_grad()
    def forward():
        set_text_attention("sdpa")
        model.model(input_ids=moved["input_ids"], attention_mask=moved["attention_mask"],
                    pixel_values=moved["pixel_values"], image_grid_thw=moved["image_grid_thw"],
                    mm_token_type_ids=moved["mm_token_type_ids"], use_cache=False)

    def extract():
        set_text_attention(LAVIT_ATTENTION)
        return extractor.forward_signals(moved)

    @torch.no_grad()
    def eager():
        set_text_attention("eager")
        return _eager_signals(model, moved, layers)

    calls = {"forward": synced(device, forward), "extract": synced(device, extract), "eager": synced(device, eager)}
    med = interleaved_medians(calls, repeats)
    peaks = peak_memory(device, calls, tries=3)

    # the fast path must agree with the reference it is timed against
    fast = extract()
    ref_a, _ = eager()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    max_err = max(float(np.abs(f.a_traj - ref_a[b, batch["image_index"][b]].float().cpu().numpy()).max())
                  for b, f in enumerate(fast))
    set_text_attention(LAVIT_ATTENTION)
    seq = int(batch["attention_mask"].sum(1).max())
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "model": {"config": config, "hidden": spec.hidden_size, "layers": layers, "heads": spec.num_attention_heads,
                  "kv_heads": spec.num_key_value_heads, "intermediate": spec.intermediate_size},
        "batch_size": batch_size, "repeats": repeats,
        "image_tokens": int(batch["image_valid"][0].sum()), "sequence_length": seq,
        "query_tokens": int(batch["query_mask"][0].sum()),
        "median_seconds": med,
        "time_ratio_extract_over_forward": med["extract"] / med["forward"],
        "time_ratio_eager_over_extract": med["eager"] / med["extract"],
        "peak_mem_ratio_extract_over_forward": peaks["extract"]["peak_total_bytes"] / peaks["forward"]["peak_total_bytes"],
        "peak_mem_ratio_eager_over_extract": peaks["eager"]["peak_total_bytes"] / peaks["extract"]["peak_total_bytes"],
        "peak_mem_ratio_activation_extract_over_forward": peaks["extract"]["added_bytes"] / max(peaks["forward"]["added_bytes"], 1),
        "peak_mem_ratio_activation_eager_over_extract": peaks["eager"]["added_bytes"] / max(peaks["extract"]["added_bytes"], 1),
        "peak_memory": peaks,
        "a_traj_max_abs_diff_vs_eager": max_err, "a_traj_matches_eager": max_err <= tol,
        "bytes_per_sample": bytes_per_sample(),
        "bytes_per_sample_dims": {"v_sem": TEACHER_32B_DIM, "a_traj": REAL_MAP_TOKENS},
    }


def bench_answers(num_prompts: int = 16, batch_size: int = 8, max_new_tokens: int = 32, seed: int = 0,
                  config: str = "bench", num_layers: int = 0, enforce_eager: bool = False) -> dict:
    """Teacher answers per second on transformers and on vLLM, same model (saved to a temporary directory), same
    prompts; fp32 on a CPU, bf16 on a GPU. Random weights repeat tokens and rarely end early, so every answer
    is about `max_new_tokens` long on both engines."""
    import_vllm()  # before anything is built
    if config not in SPECS:
        raise ValueError(f"bench config must be one of {sorted(SPECS)}")
    spec = dataclasses.replace(SPECS[config], num_hidden_layers=num_layers) if num_layers else SPECS[config]
    pixels = ANSWER_IMAGE_SIZE[0] * ANSWER_IMAGE_SIZE[1]
    processor = build_tiny_processor(build_tiny_tokenizer(), min_pixels=pixels, max_pixels=pixels)
    model = build_tiny_model(processor.tokenizer, spec, seed=seed)
    rng = np.random.default_rng(seed)
    words = [w for w in BASE_WORDS if w.isalpha()]
    images = [Image.fromarray(rng.integers(0, 255, (ANSWER_IMAGE_SIZE[1], ANSWER_IMAGE_SIZE[0], 3), dtype=np.uint8))
              for _ in range(num_prompts)]
    questions = [" ".join(rng.choice(words, 30)) + " ?" for _ in range(num_prompts)]
    ask = {"latent_tokens": [], "mode": "none", "max_new_tokens": max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        del model
        hf_model, hf_processor = load_for_inference(tmp)
        hf = TransformersEngine(hf_model, hf_processor)
        hf.generate(images[:1], questions[:1], **{**ask, "max_new_tokens": 2})  # warm-up
        start = time.perf_counter()
        hf_answers = [a for i in range(0, num_prompts, batch_size)
                      for a in hf.generate(images[i:i + batch_size], questions[i:i + batch_size], **ask)]
        hf_seconds = time.perf_counter() - start
        hf.close()
        start = time.perf_counter()
        vllm = VllmEngine(tmp, dtype="float32" if not torch.cuda.is_available() else "bfloat16", seed=seed,
                          max_model_len=2048, enforce_eager=enforce_eager)
        startup = time.perf_counter() - start
        try:
            vllm.generate(images[:1], questions[:1], **{**ask, "max_new_tokens": 2})  # warm-up
            start = time.perf_counter()
            vllm_answers = vllm.generate(images, questions, **ask)
            vllm_seconds = time.perf_counter() - start
        finally:
            vllm.close()
    rates = {"transformers": num_prompts / hf_seconds, "vllm": num_prompts / vllm_seconds}
    return {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "model": {"config": config, "hidden": spec.hidden_size, "layers": spec.num_hidden_layers},
            "prompts": num_prompts, "transformers_batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "image_tokens": (ANSWER_IMAGE_SIZE[0] // 28) * (ANSWER_IMAGE_SIZE[1] // 28),
            "seconds": {"transformers": hf_seconds, "vllm": vllm_seconds, "vllm_startup": startup},
            "answers_per_second": rates, "ratio_vllm_over_transformers": rates["vllm"] / rates["transformers"],
            "answers_equal": hf_answers == vllm_answers,
            "answers_differing": sum(a != b for a, b in zip(hf_answers, vllm_answers))}
