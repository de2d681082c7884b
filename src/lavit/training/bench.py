"""`lavit bench train`: LaViT's training-step and generation overhead against the plain model,
measured in one process on the same model and batch (ratios of medians over repeats), for each model family.

    lavit bench train --json                         # every supported family
    lavit bench train --json --family qwen3_vl       # one
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from lavit.data.collator import LavitCollator
from lavit.data.examples import LAVIT_SYSTEM_PROMPT, TrainingSample, build_example
from lavit.inference.generate import generate_answers
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.families import FAMILIES, family_named
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.models.tiny import TinyModelSpec, build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.signals import merged_grid
from lavit.toyworld.shapes import box_map, make_scene
from lavit.training.losses import concept_loss, ntp_loss, total_loss, traj_loss

# Big enough that the attention and matmuls, not Python, dominate a CPU step.
BENCH_SPEC = TinyModelSpec(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                           intermediate_size=768, vision_hidden_size=64, vision_depth=2, vision_heads=2)
IMAGE_TOKENS = 256  # merged image tokens per sample, whatever the family's patch size


def _interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of two callables, run alternately (after one warm-up each) so that drifting
    machine load hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _batch(processor, latent_names: list[str], batch_size: int, teacher_dim: int, seed: int, pixels: int) -> dict:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(batch_size):
        scene = make_scene(rng)
        image = scene.image.resize((448, 448))
        grid = merged_grid(image.size, min_pixels=pixels, max_pixels=pixels)  # any grid: resampled to the student's
        bbox = tuple(v * 448 // s for v, s in zip(scene.bbox, (*scene.image.size, *scene.image.size)))
        sample = TrainingSample(f"b{i}", image, f"what color is the {scene.shape} ?", f"the {scene.shape} is {scene.color}",
                                rng.standard_normal(teacher_dim).astype(np.float32),
                                box_map(bbox, image.size, grid[1:]), grid)
        examples.append(build_example(processor, sample, latent_names, system_prompt=LAVIT_SYSTEM_PROMPT))
    return LavitCollator(processor.tokenizer.pad_token_id)(examples)


def bench_train(batch_size: int = 8, repeats: int = 9, num_latents: int = 4, gen_tokens: int = 32, seed: int = 0,
                families: tuple[str, ...] = ()) -> dict:
    """`bench_family` for each family in `families` (default: all): {"per_family": {family: result}}."""
    families = families or tuple(FAMILIES)
    for name in families:
        family_named(name)
    return {"per_family": {name: bench_family(name, batch_size, repeats, num_latents, gen_tokens, seed)
                           for name in families}}


def bench_family(family: str, batch_size: int = 8, repeats: int = 9, num_latents: int = 4, gen_tokens: int = 32,
                 seed: int = 0) -> dict:
    """Median step time of LaViT (γ = ε gate, L_ntp + L_concept + L_traj) over Naive-SFT, in fp32 and under bf16
    autocast with fp32 weights (precision=bf16), and of forced K-latent generation over plain generation (same
    32-token answers), on a BENCH_SPEC-sized model of `family`."""
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
    sft = LavitStudent(model, [], None, trajectory_loss=False)
    lavit.gamma = 1e-3  # inside the warm-up: the gated 4-D mask is built every step
    lavit_batch = _batch(processor, names, batch_size, teacher_dim, seed, pixels)
    sft_batch = _batch(processor, [], batch_size, teacher_dim, seed, pixels)
    params = [p for p in lavit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def lavit_step():
        out = lavit(lavit_batch)
        loss = total_loss(ntp_loss(out.ntp_logits, out.ntp_targets), concept_loss(out.concept_pred, lavit_batch["v_sem"]),
                          traj_loss(out.student_traj, lavit_batch["traj_target"]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft_step():
        out = sft(sft_batch)
        ntp_loss(out.ntp_logits, out.ntp_targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    lavit_s, sft_s = _interleaved_medians(lavit_step, sft_step, repeats)

    def autocast(step):  # the precision=bf16 path: fp32 master weights, bf16 compute
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step()
        return run

    lavit_bf16_s, sft_bf16_s = _interleaved_medians(autocast(lavit_step), autocast(sft_step), repeats)
    model.eval()
    rng = np.random.default_rng(seed + 1)
    images = [make_scene(rng).image.resize((448, 448)) for _ in range(batch_size)]
    questions = ["what color is the circle ?"] * batch_size
    gen = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens)
    latent_s, plain_s = _interleaved_medians(
        lambda: generate_answers(model, processor, images, questions, latent_tokens=names, mode="forced", **gen),
        lambda: generate_answers(model, processor, images, questions, latent_tokens=[], mode="none", **gen),
        repeats)
    return {
        "step_time_ratio_lavit_over_sft": lavit_s / sft_s,
        "step_time_ratio_lavit_over_sft_bf16_autocast": lavit_bf16_s / sft_bf16_s,
        "gen_time_ratio_latent_over_plain": latent_s / plain_s,
        "lavit_step_seconds": lavit_s,
        "sft_step_seconds": sft_s,
        "lavit_step_seconds_bf16_autocast": lavit_bf16_s,
        "sft_step_seconds_bf16_autocast": sft_bf16_s,
        "latent_gen_seconds": latent_s,
        "plain_gen_seconds": plain_s,
        "settings": {
            "batch_size": batch_size, "repeats": repeats, "num_latent_tokens": num_latents, "gen_tokens": gen_tokens,
            "seq_len_lavit": int(lavit_batch["input_ids"].shape[1]), "seq_len_sft": int(sft_batch["input_ids"].shape[1]),
            "image_tokens": int(lavit_batch["image_valid"].sum(1).max()), "model": BENCH_SPEC.__dict__,
            "family": family,
            "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        },
    }
