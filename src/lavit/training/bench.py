"""`lavit bench train`: LaViT's training-step and generation overhead against the plain model,
measured in one process on the same model and batch (ratios of medians over repeats), for each model family.

    lavit bench train --json                         # every supported family
    lavit bench train --json --family qwen3_vl       # one

`lavit bench dataset`: host memory of the training set (`LavitSftDataset`, rows read from Arrow) against
the eager path that turned the table into Python objects (`to_pylist`), each in a fresh interpreter.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from lavit.data.collator import LavitCollator
from lavit.data.examples import LAVIT_SYSTEM_PROMPT, TrainingSample, build_example
from lavit.data.sft_dataset import LavitSftDataset, parquet_files, read_sft_table
from lavit.data.signal_store import write_table_atomic
from lavit.inference.generate import generate_answers
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.continuous_latents import LatentFeedback, attach_latent_feedback
from lavit.models.families import FAMILIES, family_named
from lavit.models.grid import box_cells, merged_grid
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.models.tiny import TinyModelSpec, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.bench import interleaved_medians
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import student_loss
from lavit.training.losses import ntp_loss

# Big enough that the attention and matmuls, not Python, dominate a CPU step.
BENCH_SPEC = TinyModelSpec(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                           intermediate_size=768, vision_hidden_size=64, vision_depth=2, vision_heads=2)
IMAGE_TOKENS = 256  # merged image tokens per sample, whatever the family's patch size


BENCH_SIDE = 448  # px: 16 × 16 merged tokens of 28 px
NO_CPU_BF16 = ("not measured: this CPU has no bf16 matrix kernels (AVX-512 BF16 or AMX), and PyTorch's reference "
               "bf16 GEMM it falls back to is some 200x slower than fp32")


def cpu_bf16_kernels() -> bool:
    """Whether this CPU runs bf16 matrix products on oneDNN's kernels (AVX-512 BF16 or AMX), not the reference GEMM."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def noise_image(rng: np.random.Generator) -> Image.Image:
    """A BENCH_SIDE² RGB noise image: the step's cost depends on the token count, not on what the pixels show."""
    return Image.fromarray(rng.integers(0, 255, (BENCH_SIDE, BENCH_SIDE, 3), dtype=np.uint8))  # [H, W, 3]


def _batch(processor, latent_names: list[str], batch_size: int, teacher_dim: int, seed: int, pixels: int) -> dict:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(batch_size):
        image = noise_image(rng)
        side = int(rng.integers(96, 176))
        x1, y1 = (int(v) for v in rng.integers(0, BENCH_SIDE - side, 2))
        bbox = (x1, y1, x1 + side, y1 + side)
        grid = merged_grid(image.size, min_pixels=pixels, max_pixels=pixels)  # any grid: resampled to the student's
        a_traj = np.where(box_cells(bbox, image.size, grid), 1.0, 0.05).astype(np.float32)  # the box, on a floor
        sample = TrainingSample(f"b{i}", image, "what color is the square ?", "the square is red",
                                rng.standard_normal(teacher_dim).astype(np.float32), a_traj, grid)
        examples.append(build_example(processor, sample, latent_names, system_prompt=LAVIT_SYSTEM_PROMPT))
    return LavitCollator(processor.tokenizer.pad_token_id)(examples)


def bench_train(batch_size: int = 8, repeats: int = 9, num_latents: int = 4, gen_tokens: int = 32, seed: int = 0,
                families: tuple[str, ...] = ()) -> dict:
    """`bench_family` for each family in `families` (default: all): {"per_family": {family: result}}."""
    families = families or tuple(FAMILIES)
    for name in families:
        family_named(name)
    results = {}
    for i, name in enumerate(families, 1):
        print(f"bench train: {name} ({i} of {len(families)})", file=sys.stderr, flush=True)
        results[name] = bench_family(name, batch_size, repeats, num_latents, gen_tokens, seed)
    return {"per_family": results}


@contextmanager
def latent_design(model, feedback: LatentFeedback | None):
    """Within this block `model` runs `feedback`'s continuous latents (None: discrete); outside, discrete."""
    attach_latent_feedback(model, feedback)
    try:
        yield
    finally:
        attach_latent_feedback(model, None)


def bench_family(family: str, batch_size: int = 8, repeats: int = 9, num_latents: int = 4, gen_tokens: int = 32,
                 seed: int = 0) -> dict:
    """Median step time of LaViT (γ = ε gate, L_ntp + L_concept + L_traj) over Naive-SFT, in fp32 and under bf16
    autocast with fp32 weights (precision=bf16; on a CPU with bf16 matrix kernels only), and of forced K-latent
    generation over plain generation (same 32-token answers), on a BENCH_SPEC-sized model of `family`; the same LaViT
    step and generation with continuous latents (`latent_design=continuous`: K−1 feedback passes before the final
    one) in fp32, in the same runs."""
    torch.manual_seed(seed)
    fam = family_named(family)
    pixels = IMAGE_TOKENS * fam.pixels_per_token
    processor = build_tiny_processor(build_tiny_tokenizer(), family=family, min_pixels=pixels, max_pixels=pixels)
    model = build_tiny_model(processor.tokenizer, BENCH_SPEC, seed=seed, family=family,
                             attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
    names = latent_token_names(num_latents)
    latent_ids = add_latent_tokens(processor.tokenizer, model, names)
    fam.vision_tower(model).requires_grad_(False)
    teacher_dim = 2 * BENCH_SPEC.hidden_size
    lavit = LavitStudent(model, latent_ids, ProjectionHead(BENCH_SPEC.hidden_size, teacher_dim), trajectory_loss=True)
    feedback = LatentFeedback()
    with latent_design(model, feedback):  # the student keeps the design it was built with; generation reads the model's
        continuous = LavitStudent(model, latent_ids, lavit.projection_head, trajectory_loss=True)
    sft = LavitStudent(model, [], None, trajectory_loss=False)
    lavit.gamma = continuous.gamma = 1e-3  # inside the warm-up: the gated 4-D mask is built every step
    lavit_batch = _batch(processor, names, batch_size, teacher_dim, seed, pixels)
    sft_batch = _batch(processor, [], batch_size, teacher_dim, seed, pixels)
    params = [p for p in lavit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def lavit_step():
        student_loss(lavit(lavit_batch), lavit_batch, lam=LavitTrainConfig.lam)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft_step():
        out = sft(sft_batch)
        ntp_loss(out.ntp_logits, out.ntp_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def continuous_step():
        student_loss(continuous(lavit_batch), lavit_batch, lam=LavitTrainConfig.lam)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fp32 = interleaved_medians({"lavit": lavit_step, "sft": sft_step, "continuous": continuous_step}, repeats)

    def autocast(step):  # the precision=bf16 path: fp32 master weights, bf16 compute
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step()
        return run

    if cpu_bf16_kernels():
        bf16 = interleaved_medians({"lavit": autocast(lavit_step), "sft": autocast(sft_step)}, repeats)
        bf16_results = {"step_time_ratio_lavit_over_sft_bf16_autocast": bf16["lavit"] / bf16["sft"],
                        "lavit_step_seconds_bf16_autocast": bf16["lavit"],
                        "sft_step_seconds_bf16_autocast": bf16["sft"]}
    else:
        bf16_results = {"bf16_autocast": NO_CPU_BF16}
    model.eval()
    rng = np.random.default_rng(seed + 1)
    images = [noise_image(rng) for _ in range(batch_size)]
    questions = ["what color is the circle ?"] * batch_size
    gen = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens)

    def latent_generation():
        return generate_answers(model, processor, images, questions, latent_tokens=names, mode="forced", **gen)

    def continuous_generation():
        with latent_design(model, feedback):
            return latent_generation()

    generation = interleaved_medians({
        "latent": latent_generation,
        "plain": lambda: generate_answers(model, processor, images, questions, latent_tokens=[], mode="none", **gen),
        "continuous": continuous_generation,
    }, repeats)
    return {
        "step_time_ratio_lavit_over_sft": fp32["lavit"] / fp32["sft"],
        "gen_time_ratio_latent_over_plain": generation["latent"] / generation["plain"],
        "step_time_ratio_continuous_over_sft": fp32["continuous"] / fp32["sft"],
        "step_time_ratio_continuous_over_lavit": fp32["continuous"] / fp32["lavit"],
        "gen_time_ratio_continuous_over_plain": generation["continuous"] / generation["plain"],
        "lavit_step_seconds": fp32["lavit"],
        "sft_step_seconds": fp32["sft"],
        **bf16_results,
        "latent_gen_seconds": generation["latent"],
        "plain_gen_seconds": generation["plain"],
        "continuous_step_seconds": fp32["continuous"],
        "continuous_gen_seconds": generation["continuous"],
        "settings": {
            "batch_size": batch_size, "repeats": repeats, "num_latent_tokens": num_latents, "gen_tokens": gen_tokens,
            "seq_len_lavit": int(lavit_batch["input_ids"].shape[1]), "seq_len_sft": int(sft_batch["input_ids"].shape[1]),
            "image_tokens": int(lavit_batch["image_valid"].sum(1).max()), "model": BENCH_SPEC.__dict__,
            "family": family,
            "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        },
    }



DATASET_VARIANTS = ("eager_to_pylist", "lazy_arrow")


def write_memory_bench_set(directory: Path, rows: int, teacher_dim: int, traj_cells: int, shard_rows: int,
                           seed: int) -> Path:
    """A folder of LaViT-SFT shards (zstd, `shard_rows` rows each) of `rows` rows: fp16 V_sem and a float32 A_traj
    of `traj_cells` cells on a 1 × h × w grid. Every row names the one small image under `directory/images`."""
    rng = np.random.default_rng(seed)
    height = max(d for d in range(1, math.isqrt(traj_cells) + 1) if traj_cells % d == 0)
    (directory / "images").mkdir(parents=True)
    (directory / "data").mkdir()
    Image.new("RGB", (56, 56)).save(directory / "images" / "a.png")
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        # Noise-like floats, as real hidden states and attention maps are: zstd barely shrinks them.
        v_sem = rng.standard_normal((n, teacher_dim)).astype(np.float16)
        a_traj = np.exp(1.5 * rng.standard_normal((n, traj_cells))).astype(np.float32)
        a_traj /= a_traj.sum(1, keepdims=True)

        def lists(values: np.ndarray, width: int) -> pa.ListArray:
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
            return pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))

        table = pa.table({
            "id": [f"s{start + i:07d}" for i in range(n)],
            "image": ["a.png"] * n,
            "question": [f"what color is the shape in picture {start + i} ?" for i in range(n)],
            "answer": [f"the shape is red ({start + i})" for i in range(n)],
            "status": ["ok"] * n,
            "a_traj": lists(a_traj, traj_cells),
            "a_traj_grid": lists(np.tile(np.array([1, height, traj_cells // height], np.int32), n), 3),
            "v_sem": lists(v_sem, teacher_dim),
        })
        write_table_atomic(table, directory / "data" / f"shard-{start // shard_rows:05d}.parquet")
    return directory / "data"


def _proc_bytes(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{path} has no {key} line: the dataset bench needs Linux /proc")


def _eager_reader(data: str):
    """The path this package took before rows were read from Arrow: every shard read whole, the table turned
    into one dict per row (`to_pylist`), each item's signals converted from those Python floats."""
    table = pa.concat_tables([pq.read_table(f) for f in parquet_files([data])], promote_options="default")
    rows = table.to_pylist()

    def read(index: int) -> dict:
        row = rows[index]
        return {"id": str(row["id"]), "v_sem": np.asarray(row["v_sem"], dtype=np.float32),
                "a_traj": np.asarray(row["a_traj"], dtype=np.float32),
                "a_traj_grid": tuple(int(x) for x in row["a_traj_grid"])}

    return read, len(rows), table  # the table too: the trainer kept it referenced beside the rows


def _forked_worker_private_growth(read, n: int) -> int:
    """Private memory that a forked process (a dataloader worker) adds by reading every row: the pages it writes
    to (a Python object's reference count is such a write) or allocates."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(readable)
        before = _proc_bytes("/proc/self/smaps_rollup", "Private_Dirty")
        for i in range(n):
            read(i)
        os.write(writable, str(_proc_bytes("/proc/self/smaps_rollup", "Private_Dirty") - before).encode())
        os._exit(0)
    os.close(writable)
    with os.fdopen(readable) as pipe:
        growth = int(pipe.read())
    os.waitpid(pid, 0)
    return growth


def dataset_memory_child(variant: str, data: str, image_root: str) -> None:
    """Print, as JSON, what opening the set and reading every row adds to this (fresh) interpreter."""
    gc.collect()
    start = {key: _proc_bytes("/proc/self/status", key) for key in ("VmRSS", "RssAnon")}
    start_arrow = pa.total_allocated_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    if variant == "eager_to_pylist":
        read, n, table = _eager_reader(data)
    else:
        dataset = LavitSftDataset(read_sft_table([data], "answer", need_signals=True), image_root, None, [],
                                  system_prompt=None)
        read, n, table = dataset.row, len(dataset), dataset.table
    gc.collect()
    opened = _proc_bytes("/proc/self/status", "VmRSS")
    arrow_heap = pa.total_allocated_bytes() - start_arrow
    worker = _forked_worker_private_growth(read, n)
    for i in range(n):
        read(i)
    gc.collect()
    print(json.dumps({
        "rows": n, "arrow_table_bytes": table.nbytes, "arrow_heap_bytes": arrow_heap,
        "rss_growth_open_bytes": opened - start["VmRSS"],
        "rss_growth_bytes": _proc_bytes("/proc/self/status", "VmRSS") - start["VmRSS"],
        "anon_growth_bytes": _proc_bytes("/proc/self/status", "RssAnon") - start["RssAnon"],
        "peak_rss_growth_bytes": _proc_bytes("/proc/self/status", "VmHWM") - start["VmRSS"],
        "forked_worker_private_growth_bytes": worker,
    }))


def bench_dataset(rows: int = 1000, teacher_dim: int = 5120, traj_cells: int = 1280, shard_rows: int = 500,
                  seed: int = 0) -> dict:
    """Host memory of each of DATASET_VARIANTS on one Parquet set, each in a fresh interpreter (growth over
    its state after imports): RSS after opening the set and reading every row once (`anon`: the part that is
    the process's own heap, not shared file pages), and what one forked dataloader worker adds by reading
    every row. `per_1000_rows_mib` scales each figure to 1 000 rows."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_memory_bench_set(Path(tmp), rows, teacher_dim, traj_cells, shard_rows, seed)
        parquet_bytes = sum(f.stat().st_size for f in parquet_files([str(data)]))
        code = "import sys; from lavit.training.bench import dataset_memory_child as m; m(*sys.argv[1:])"
        variants = {}
        for variant in DATASET_VARIANTS:
            done = subprocess.run([sys.executable, "-c", code, variant, str(data), str(Path(tmp) / "images")],
                                  capture_output=True, text=True, check=True)
            variants[variant] = json.loads(done.stdout.splitlines()[-1])
    for name, result in variants.items():
        if result["rows"] != rows:
            raise RuntimeError(f"{name} read {result['rows']} of {rows} rows")
        result["rss_growth_over_parquet"] = result["rss_growth_bytes"] / parquet_bytes
        result["per_1000_rows_mib"] = {key.removesuffix("_bytes"): round(value * 1000 / rows / 2**20, 2)
                                      for key, value in result.items() if key.endswith("_bytes")}
    return {
        "parquet_bytes": parquet_bytes, "parquet_per_1000_rows_mib": round(parquet_bytes * 1000 / rows / 2**20, 2),
        "variants": variants,
        "rss_growth_ratio_eager_over_lazy": (variants["eager_to_pylist"]["rss_growth_bytes"]
                                             / variants["lazy_arrow"]["rss_growth_bytes"]),
        "settings": {"rows": rows, "teacher_dim": teacher_dim, "traj_cells": traj_cells, "shard_rows": shard_rows,
                     "seed": seed, "pyarrow": pa.__version__, "memory_pool": pa.default_memory_pool().backend_name},
    }
