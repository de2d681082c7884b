"""`lavit bench gpu`: on one GPU, the figures a user needs before renting GPUs, with random bf16 weights at the real
widths, in one process (medians of interleaved repeats, ratios against the plain path measured beside it):

    lavit bench gpu --out runs/bench_gpu.json                      # one H100/H200: 4–7 min, estimated
    lavit bench gpu --tiny --out /tmp/bench_gpu.json               # anywhere: tiny models, the path only (make test)

* student — Qwen2.5-VL-3B (`qwen_config`: every width, the 151 936-row vocabulary, the 32-block ViT) reading ~1 MP
  images (1 280 merged image tokens) with a question and an answer of a Visual-CoT's length. One training step as
  `lavit train` takes it (frozen ViT, gradient checkpointing, L_ntp + λ(L_concept + L_traj), backward, AdamW) of
  LaViT at γ = 1e-3 (the warm-up: the gate is built every step) with the gate as the dense 4-D mask and on
  FlexAttention (`gate_attention`), and of Naive-SFT (no latents, no gate); peak memory of each.
  bf16 weights with AdamW states in bf16: a real run keeps fp32 masters (precision=bf16), sharded over its GPUs.
* generation — the same student: K forced latents then an answer of `gen_tokens`, against the plain answer alone.
* teacher — `bench_extract` at Qwen2.5-VL-32B's text widths cut to `teacher_layers` decoder layers (tiny
  vocabulary and ViT: the decoder is timed): signal pass, plain forward, eager reference, and their memory.
* numerics — the student cut to `numerics_layers` (and the teacher to `numerics_teacher_layers`) at real width, run
  in fp32 on the dense gate (the reference) and against it in bf16 on each gate, and in fp32 on FlexAttention:
  relative errors ‖x − x_ref‖ / ‖x_ref‖ of the final states, the latent→image maps, the loss and all gradients
  (the teacher: A_traj and V_sem), against `FP32_BOUND` / `BF16_BOUND`. TF32 is off while they run.

The JSON is rewritten after every part, so a run cut short keeps what it measured; a short table is printed last.
FlexAttention steps need CUDA (torch has no FlexAttention backward on a CPU): elsewhere only the dense gate is
stepped, and the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from lavit.console import say
from lavit.data.collator import LavitCollator
from lavit.data.examples import LAVIT_SYSTEM_PROMPT, TrainingSample, build_example
from lavit.data.signal_store import write_json_atomic
from lavit.inference.generate import generate_answers
from lavit.models.attention import LAVIT_ATTENTION, flex_gate_chosen
from lavit.models.checkpoint import enable_activation_checkpointing
from lavit.models.families import family_named
from lavit.models.families.layout import token_ids
from lavit.models.grid import box_cells
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.models.qwen_configs import qwen_config
from lavit.models.tiny import BASE_WORDS, STUDENT_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.bench import SPECS as TEACHER_SPECS
from lavit.teacher.bench import bench_extract, interleaved_medians, on_device, peak_memory, synced
from lavit.teacher.extractor import SignalExtractor
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import student_loss
from lavit.training.losses import ntp_loss

FAMILY = "qwen2_5_vl"  # the paper's pair: the 3B student, the 32B teacher
TEXT_ATTENTION = {"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"}
GAMMA = 1e-3  # inside the warm-up: the gate is built every step
FP32_BOUND = 1e-4  # fp32 FlexAttention vs fp32 dense (the CPU tests hold 1e-5 on tiny widths)
BF16_BOUND = 5e-2  # bf16 vs fp32 (unit roundoff 2^-8 ≈ 3.9e-3, compounded over the layers and the backward)
WORDS = [w for w in BASE_WORDS if w.isalpha()]
LAVIT_LAM = LavitTrainConfig.lam  # λ in L_total (eq. 9), `lavit train`'s default


@dataclass(frozen=True)
class GpuBenchSizes:
    """What `bench_gpu` builds and measures."""

    student: str  # a `qwen_config` name, or "tiny" (STUDENT_SPEC: the path only)
    student_layers: int  # decoder layers kept (the 3B has 36)
    vision_layers: int  # ViT blocks kept (32)
    image_tokens: int  # merged image tokens per sample (1 280 ≈ 1 MP at 28 px per token: Table A1's max_pixels)
    question_words: int
    answer_words: int
    batch_size: int
    num_latents: int
    repeats: int
    gen_tokens: int
    teacher: str  # a `lavit.teacher.bench.SPECS` name
    teacher_layers: int
    teacher_batch: int
    numerics_layers: int
    numerics_vision_layers: int
    numerics_batch: int
    numerics_teacher_layers: int


REAL = GpuBenchSizes(student="qwen2.5-vl-3b", student_layers=36, vision_layers=32, image_tokens=1280,
                     question_words=24, answer_words=12, batch_size=4, num_latents=4, repeats=5, gen_tokens=32,
                     teacher="qwen2.5-vl-32b", teacher_layers=16, teacher_batch=2, numerics_layers=4,
                     numerics_vision_layers=2, numerics_batch=2, numerics_teacher_layers=2)
# One layer each where the path is the same for one as for many: the CPU run checks the path, not the figures.
TINY = GpuBenchSizes(student="tiny", student_layers=1, vision_layers=1, image_tokens=16, question_words=8,
                     answer_words=4, batch_size=2, num_latents=4, repeats=1, gen_tokens=2, teacher="tiny",
                     teacher_layers=0, teacher_batch=1, numerics_layers=1, numerics_vision_layers=1, numerics_batch=2,
                     numerics_teacher_layers=1)


def default_gate_attentions(device: torch.device) -> tuple[str, ...]:
    """The gates a training step can be measured on here: FlexAttention's backward needs CUDA."""
    return ("dense", "flex") if flex_gate_chosen("auto", device) else ("dense",)


# ------------------------------------------------------------------------------------------------ inputs


def token_grid(tokens: int) -> tuple[int, int]:
    """(h, w) merged tokens, h·w = `tokens`, as square as the count allows."""
    h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return h, tokens // h


def exact_processor(image_tokens: int):
    """The tiny word-level processor of the student family, its pixel limits pinned to `image_tokens` tokens."""
    pixels = image_tokens * family_named(FAMILY).pixels_per_token
    return build_tiny_processor(build_tiny_tokenizer(), family=FAMILY, min_pixels=pixels, max_pixels=pixels)


def noise_images(rng: np.random.Generator, count: int, image_tokens: int) -> list[Image.Image]:
    """RGB noise exactly `image_tokens` merged tokens large: the cost depends on the token count, not the pixels."""
    side = math.isqrt(family_named(FAMILY).pixels_per_token)
    h, w = token_grid(image_tokens)
    return [Image.fromarray(rng.integers(0, 255, (h * side, w * side, 3), dtype=np.uint8)) for _ in range(count)]


def words(rng: np.random.Generator, count: int) -> str:
    return " ".join(rng.choice(WORDS, count))


def student_batch(processor, latent_names: list[str], sizes: GpuBenchSizes, batch_size: int, teacher_dim: int,
                  seed: int) -> dict:
    """A collated batch with teacher targets: a box on a floor as A_traj, a random V_sem."""
    rng = np.random.default_rng(seed)
    grid = (1, *token_grid(sizes.image_tokens))
    examples = []
    for i, image in enumerate(noise_images(rng, batch_size, sizes.image_tokens)):
        x1, y1 = (int(v) for v in rng.integers(0, min(image.size) // 2, 2))
        box = (x1, y1, x1 + image.size[0] // 3, y1 + image.size[1] // 3)
        a_traj = np.where(box_cells(box, image.size, grid), 1.0, 0.05).astype(np.float32)
        sample = TrainingSample(f"b{i}", image, words(rng, sizes.question_words) + " ?", words(rng, sizes.answer_words),
                                rng.standard_normal(teacher_dim).astype(np.float32), a_traj, grid)
        examples.append(build_example(processor, sample, latent_names, system_prompt=LAVIT_SYSTEM_PROMPT))
    return LavitCollator(processor.tokenizer.pad_token_id)(examples)


# ------------------------------------------------------------------------------------------------ models


def student_model(sizes: GpuBenchSizes, processor, device: torch.device, dtype: torch.dtype, text_layers: int,
                  vision_layers: int, seed: int):
    """The student: the real config cut in depth (random weights made on `device`), or the tiny one."""
    torch.manual_seed(seed)
    if sizes.student == "tiny":
        spec = dataclasses.replace(STUDENT_SPEC, num_hidden_layers=text_layers, vision_depth=vision_layers)
        return build_tiny_model(processor.tokenizer, spec, seed=seed, family=FAMILY,
                                attn_implementation=TEXT_ATTENTION).to(device, dtype)
    config = qwen_config(sizes.student, text_layers=text_layers, vision_layers=vision_layers)
    # The word-level tokenizer's ids for the tokens the config names; its ids are rows of the real vocabulary.
    tokenizer = processor.tokenizer
    for name, value in token_ids(tokenizer).items():
        setattr(config, name, value)
    config.text_config.bos_token_id = config.text_config.pad_token_id = tokenizer.pad_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=TEXT_ATTENTION,
                                                                 dtype=dtype)
    return model


def lavit_pair(model, processor, sizes: GpuBenchSizes, teacher_dim: int) -> tuple[LavitStudent, LavitStudent, list]:
    """LaViT (K latents, φ_mlp, L_traj, γ = GAMMA) and Naive-SFT around the same model."""
    names = latent_token_names(sizes.num_latents)
    latent_ids = add_latent_tokens(processor.tokenizer, model, names)
    head = ProjectionHead(model.config.text_config.hidden_size, teacher_dim).to(model.device, model.dtype)
    lavit = LavitStudent(model, latent_ids, head, trajectory_loss=True)
    lavit.gamma = GAMMA
    return lavit, LavitStudent(model, [], None, trajectory_loss=False), names


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ parts


def bench_student(sizes: GpuBenchSizes, device: torch.device, dtype: torch.dtype, gate_attentions: tuple[str, ...],
                  seed: int) -> tuple[dict, dict]:
    """Training steps and generation of the student: ({"student": ...}, {"generation": ...})."""
    processor = exact_processor(sizes.image_tokens)
    model = student_model(sizes, processor, device, dtype, sizes.student_layers, sizes.vision_layers, seed)
    family_named(FAMILY).vision_tower(model).requires_grad_(False)
    enable_activation_checkpointing(model)
    lavit, sft, names = lavit_pair(model, processor, sizes, TEACHER_SPECS[sizes.teacher].hidden_size)
    student = measure_steps(sizes, device, dtype, gate_attentions, seed, processor, lavit, sft, names)
    release()  # the optimizer's states and the batches went with measure_steps
    model.eval()
    model.config.use_cache = True  # off for the checkpointed steps; generation reads its KV cache
    return student, measure_generation(sizes, device, seed, model, processor, names)


def measure_steps(sizes: GpuBenchSizes, device: torch.device, dtype: torch.dtype, gate_attentions: tuple[str, ...],
                  seed: int, processor, lavit: LavitStudent, sft: LavitStudent, names: list[str]) -> dict:
    """LaViT's step on each gate and Naive-SFT's, on the same model: median seconds, peak memory, ratios."""
    model = lavit.hf_model
    teacher_dim = lavit.projection_head.teacher_dim
    lavit_batch = on_device(student_batch(processor, names, sizes, sizes.batch_size, teacher_dim, seed), device, dtype)
    sft_batch = on_device(student_batch(processor, [], sizes, sizes.batch_size, teacher_dim, seed), device, dtype)
    optimizer = torch.optim.AdamW([p for p in lavit.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def lavit_step(gate_attention: str) -> Callable:
        def step():
            lavit.gate_attention = gate_attention
            student_loss(lavit(lavit_batch), lavit_batch, lam=LAVIT_LAM)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def sft_step():
        out = sft(sft_batch)
        ntp_loss(out.ntp_logits, out.ntp_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {f"lavit_{g}": synced(device, lavit_step(g)) for g in gate_attentions}
    steps["naive_sft"] = synced(device, sft_step)
    say(f"bench gpu: student steps {', '.join(steps)} ({sizes.repeats} repeats)")
    seconds = interleaved_medians(steps, sizes.repeats)
    memory = peak_memory(device, steps, tries=min(2, sizes.repeats))
    ratios = {f"{name}_over_sft": seconds[name] / seconds["naive_sft"] for name in steps if name != "naive_sft"}
    if "lavit_flex" in steps:
        ratios["flex_over_dense"] = seconds["lavit_flex"] / seconds["lavit_dense"]
    text = model.config.text_config
    return {
        "model": {"config": sizes.student, "hidden": text.hidden_size, "layers": text.num_hidden_layers,
                  "heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
                  "intermediate": text.intermediate_size, "vocab_rows": text.vocab_size,
                  "vision_blocks": model.config.vision_config.depth,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "trainable_parameters": sum(p.numel() for p in lavit.parameters() if p.requires_grad)},
        "dtype": str(dtype).removeprefix("torch."), "batch_size": sizes.batch_size,
        "sequence_length_lavit": int(lavit_batch["input_ids"].shape[1]),
        "sequence_length_sft": int(sft_batch["input_ids"].shape[1]),
        "image_tokens": int(lavit_batch["image_valid"].sum(1).max()), "num_latent_tokens": sizes.num_latents,
        "gamma": GAMMA, "gradient_checkpointing": True, "frozen_vision": True,
        "optimizer": "AdamW, states in the weights' dtype",
        "median_seconds": seconds, "ratios": ratios, "peak_memory": memory,
        "not_measured": {} if "flex" in gate_attentions else {
            "lavit_flex": "torch's FlexAttention has no backward on a CPU: the gate on flex trains on CUDA only"},
    }


def measure_generation(sizes: GpuBenchSizes, device: torch.device, seed: int, model, processor,
                       names: list[str]) -> dict:
    """K forced latents then `gen_tokens` answer tokens, against the plain answer: median seconds and their ratio."""
    rng = np.random.default_rng(seed + 1)
    images = noise_images(rng, sizes.batch_size, sizes.image_tokens)
    questions = [words(rng, sizes.question_words) + " ?" for _ in images]
    ask = dict(max_new_tokens=sizes.gen_tokens, min_new_tokens=sizes.gen_tokens)
    say(f"bench gpu: generation, {sizes.gen_tokens} tokens, latent vs plain")
    gen = interleaved_medians({
        "latent": synced(device, lambda: generate_answers(model, processor, images, questions, latent_tokens=names,
                                                          mode="forced", **ask)),
        "plain": synced(device, lambda: generate_answers(model, processor, images, questions, latent_tokens=[],
                                                         mode="none", **ask)),
    }, sizes.repeats)
    return {"median_seconds": gen, "ratio_latent_over_plain": gen["latent"] / gen["plain"],
            "batch_size": sizes.batch_size, "gen_tokens": sizes.gen_tokens, "num_latent_tokens": sizes.num_latents}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖, in fp32."""
    reference = reference.float()
    return float((value.float() - reference).norm() / reference.norm().clamp_min(torch.finfo(torch.float32).tiny))


@contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 that is fp32: no TF32 in matrix products or cuDNN convolutions (the ViT's patch embedding)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def student_pass(student: LavitStudent, batch: dict, gate_attention: str) -> dict:
    """One LaViT step's forward and backward (no update): final states at real tokens, maps, loss, gradients."""
    student.gate_attention = gate_attention
    student.zero_grad(set_to_none=True)
    out = student(batch)
    loss = student_loss(out, batch, lam=LAVIT_LAM)[0]
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in student.parameters() if p.grad is not None])
    student.zero_grad(set_to_none=True)
    return {"hidden": out.hidden_states.detach()[batch["attention_mask"].bool()], "traj": out.student_traj.detach(),
            "loss": loss.detach(), "grads": grads}


def bench_student_numerics(sizes: GpuBenchSizes, device: torch.device, gate_attentions: tuple[str, ...],
                           seed: int) -> dict:
    """The cut student in bf16 on each gate and in fp32 on FlexAttention, against fp32 on the dense gate."""
    processor = exact_processor(sizes.image_tokens)
    model = student_model(sizes, processor, device, torch.float32, sizes.numerics_layers,
                          sizes.numerics_vision_layers, seed)
    family_named(FAMILY).vision_tower(model).requires_grad_(False)
    teacher_dim = TEACHER_SPECS[sizes.teacher].hidden_size
    fp32, _, names = lavit_pair(model, processor, sizes, teacher_dim)
    batch = student_batch(processor, names, sizes, sizes.numerics_batch, teacher_dim, seed)
    bf16 = LavitStudent(copy.deepcopy(model).to(torch.bfloat16), fp32.latent_token_ids,
                        copy.deepcopy(fp32.projection_head).to(torch.bfloat16), trajectory_loss=True)
    bf16.gamma = GAMMA
    model.train()
    bf16.model.train()
    say(f"bench gpu: student numerics, {sizes.numerics_layers} layers, fp32 dense reference")
    cases = {}
    with exact_fp32():
        reference = student_pass(fp32, on_device(batch, device, torch.float32), "dense")
        runs = [(f"{g}_bf16", bf16, torch.bfloat16, g, BF16_BOUND) for g in gate_attentions]
        runs += [("flex_fp32", fp32, torch.float32, "flex", FP32_BOUND)] if "flex" in gate_attentions else []
        for name, student, dtype, gate_attention, bound in runs:
            got = student_pass(student, on_device(batch, device, dtype), gate_attention)
            errors = {key: relative_error(got[key], reference[key]) for key in reference}
            cases[name] = {"relative_error": errors, "bound": bound, "within_bound": max(errors.values()) <= bound}
    del model, fp32, bf16
    release()
    return {"layers": sizes.numerics_layers, "vision_blocks": sizes.numerics_vision_layers,
            "batch_size": sizes.numerics_batch, "reference": "fp32, dense gate", "cases": cases,
            "within_bounds": all(case["within_bound"] for case in cases.values())}


def bench_teacher_numerics(sizes: GpuBenchSizes, device: torch.device, seed: int) -> dict:
    """The teacher's signals (A_traj, V_sem) in bf16 against fp32, on the cut teacher."""
    spec = dataclasses.replace(TEACHER_SPECS[sizes.teacher], num_hidden_layers=sizes.numerics_teacher_layers)
    processor = exact_processor(sizes.image_tokens)
    model = build_tiny_model(processor.tokenizer, spec, seed=seed, family=FAMILY,
                             attn_implementation=TEXT_ATTENTION).to(device)
    extractor = SignalExtractor(model, processor)
    rng = np.random.default_rng(seed)
    images = noise_images(rng, sizes.teacher_batch, sizes.image_tokens)
    batch = extractor.prepare_batch([f"t{i}" for i in range(len(images))], images,
                                    [words(rng, sizes.question_words) + " ?" for _ in images],
                                    [words(rng, sizes.answer_words) for _ in images])
    say(f"bench gpu: teacher numerics, {sizes.numerics_teacher_layers} layers, bf16 vs fp32")
    with exact_fp32():
        reference = extractor.forward_signals(batch)
        model.to(torch.bfloat16)
        low = extractor.forward_signals(batch)

    def joined(signals, key: str) -> torch.Tensor:
        return torch.cat([torch.from_numpy(getattr(s, key).astype(np.float32)) for s in signals])

    errors = {key: relative_error(joined(low, key), joined(reference, key)) for key in ("a_traj", "v_sem")}
    del model, extractor
    release()
    return {"layers": sizes.numerics_teacher_layers, "relative_error": errors, "bound": BF16_BOUND,
            "within_bounds": max(errors.values()) <= BF16_BOUND}


def bench_gpu(sizes: GpuBenchSizes = REAL, out: Path | None = None, seed: int = 0,
              gate_attentions: tuple[str, ...] | None = None) -> dict:
    """Every part in turn on the first GPU (or the CPU), `out` rewritten after each."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # this CPU class has no bf16 matrix kernels
    gate_attentions = gate_attentions or default_gate_attentions(device)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "sizes": dataclasses.asdict(sizes), "gate_attentions": list(gate_attentions),
    }

    def record(key: str, value: dict) -> None:
        result[key] = value
        if out is not None:
            write_json_atomic(result, out)

    start = time.perf_counter()
    student, generation = bench_student(sizes, device, dtype, gate_attentions, seed)
    release()
    record("student", student)
    record("generation", generation)
    record("numerics", {"student": bench_student_numerics(sizes, device, gate_attentions, seed)})
    record("numerics", result["numerics"] | {"teacher": bench_teacher_numerics(sizes, device, seed)})
    say(f"bench gpu: teacher signal pass vs forward vs eager, {sizes.teacher} at "
        f"{sizes.teacher_layers or 'all'} layers")
    record("teacher", bench_extract(batch_size=sizes.teacher_batch, repeats=sizes.repeats, seed=seed,
                                    config=sizes.teacher, num_layers=sizes.teacher_layers))
    record("seconds_total", {"bench": time.perf_counter() - start})
    return result


def numerics_ok(result: dict) -> bool:
    return all(part["within_bounds"] for part in result["numerics"].values())


def gpu_table(result: dict) -> str:
    """The short table `lavit bench gpu` prints last."""
    gib = 2**30
    student, gen, teacher = result["student"], result["generation"], result["teacher"]
    sec, mem = student["median_seconds"], student["peak_memory"]
    rows = [(f"student step, {name.removeprefix('lavit_')} gate / Naive-SFT",
             f"{student['ratios'][f'{name}_over_sft']:.2f} ({sec[name]:.3f} s / {sec['naive_sft']:.3f} s)")
            for name in sec if name != "naive_sft"]
    if "flex_over_dense" in student["ratios"]:
        rows.append(("student step, flex / dense gate", f"{student['ratios']['flex_over_dense']:.2f}"))
    rows += [(f"student peak memory, {name}", f"{mem[name]['peak_total_bytes'] / gib:.1f} GiB") for name in mem]
    rows += [(f"student step not measured, {name}", why) for name, why in student["not_measured"].items()]
    gen_seconds = gen["median_seconds"]
    rows.append(("latent / plain generation", f"{gen['ratio_latent_over_plain']:.2f} ({gen_seconds['latent']:.3f} s / "
                 f"{gen_seconds['plain']:.3f} s)"))
    model = teacher["model"]
    rows += [(f"teacher ({model['config']}, {model['layers']} layers) signal pass / forward",
              f"{teacher['time_ratio_extract_over_forward']:.2f}"),
             ("teacher eager / signal pass", f"{teacher['time_ratio_eager_over_extract']:.2f}"),
             ("teacher peak memory, forward / signal pass / eager",
              " / ".join(f"{teacher['peak_memory'][k]['peak_total_bytes'] / gib:.1f}"
                         for k in ("forward", "extract", "eager")) + " GiB")]
    for name, case in result["numerics"]["student"]["cases"].items():
        worst = max(case["relative_error"], key=case["relative_error"].get)
        rows.append((f"numerics, student {name} vs fp32 dense",
                     f"{'ok' if case['within_bound'] else 'FAIL'}: max {case['relative_error'][worst]:.1e} ({worst}) "
                     f"≤ {case['bound']:.0e}"))
    t_num = result["numerics"]["teacher"]
    rows.append(("numerics, teacher bf16 vs fp32", f"{'ok' if t_num['within_bounds'] else 'FAIL'}: A_traj "
                 f"{t_num['relative_error']['a_traj']:.1e}, V_sem {t_num['relative_error']['v_sem']:.1e} "
                 f"≤ {t_num['bound']:.0e}"))
    width = max(len(name) for name, _ in rows)
    header = f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}"
    return "\n".join([header] + [f"{name:<{width}}  {value}" for name, value in rows])


def run(args: argparse.Namespace) -> int:
    """Measure with the sizes `args` ask for, print the JSON (with --json) and the table last; 1 when a numerics
    bound fails."""
    if not args.tiny and not torch.cuda.is_available():
        raise ValueError("lavit bench gpu measures the real widths on a GPU and this machine has none (hours on a "
                         "CPU); --tiny runs the same path with tiny models")
    chosen = {"student_layers": args.student_layers, "teacher_layers": args.teacher_layers,
              "batch_size": args.batch_size, "repeats": args.repeats}
    sizes = dataclasses.replace(TINY if args.tiny else REAL, **{k: v for k, v in chosen.items() if v})
    result = bench_gpu(sizes, out=Path(args.out))
    if args.json:
        print(json.dumps(result))
    print(gpu_table(result))
    return 0 if numerics_ok(result) else 1
