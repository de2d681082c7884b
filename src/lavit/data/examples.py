"""One training example: `[I, X_q, V, X_ans]` token ids, labels on V and X_ans, and where everything is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lavit.data.samples import to_rgb
from lavit.data.targets import build_traj_target
from lavit.models.latent_tokens import LATENT_TEMPLATE_FLAG

IGNORE_INDEX = -100

# Paper appendix C.3.
LAVIT_SYSTEM_PROMPT = (
    "You are an expert multimodal large language model. You process visual information through specialized "
    "latent tokens to ensure precise alignment between visual perception and textual reasoning."
)


class LayoutError(ValueError):
    """A sequence whose image tokens or latent tokens are not where an `[I, X_q, V, X_ans]` layout needs them."""


@dataclass
class TrainingSample:
    """A sample with its (optional) teacher signals, as read from the LaViT-SFT set."""

    id: str
    image: Image.Image
    question: str
    answer: str
    v_sem: np.ndarray | None = None  # [D_teacher]
    a_traj: np.ndarray | None = None  # raw teacher map, flattened (t, h, w)
    a_traj_grid: tuple[int, int, int] | None = None  # merged-token grid of a_traj



def prompt_messages(question: str, system_prompt: str | None, num_images: int = 1) -> list[dict]:
    """One user turn: the images (in order) then the question, as Qwen2.5-VL's template lays them out."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = [{"type": "image"}] * num_images
    messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
    return messages


def render_prompt(processor, question: str, system_prompt: str | None, num_images: int = 1) -> str:
    """The chat-template text up to and including the generation prompt, without any latent tokens."""
    # Only an exported student's template reads the flag; other models' processors would log it as unused.
    flag = {LATENT_TEMPLATE_FLAG: False} if LATENT_TEMPLATE_FLAG in (processor.chat_template or "") else {}
    return processor.apply_chat_template(prompt_messages(question, system_prompt, num_images),
                                         add_generation_prompt=True, tokenize=False, **flag)


def locate_layout(input_ids: torch.Tensor, image_token_id: int, latent_ids: list[int],
                  sample_id: str = "?") -> tuple[torch.Tensor, torch.Tensor]:
    """Image-token positions [N] and latent positions [K] of one sequence, checked.

    Image tokens must exist and form one contiguous run; the latent tokens must each appear exactly
    once, in order `<lvr_1> … <lvr_K>`, contiguous, after the image.
    """
    image_pos = (input_ids == image_token_id).nonzero().flatten()
    if image_pos.numel() == 0:
        raise LayoutError(f"sample {sample_id}: no image tokens (id {image_token_id}) in the sequence")
    if (image_pos[-1] - image_pos[0] + 1) != image_pos.numel():
        raise LayoutError(f"sample {sample_id}: image tokens are not one contiguous block")
    if not latent_ids:
        return image_pos, image_pos.new_zeros(0)
    found = []
    for tid in latent_ids:
        where = (input_ids == tid).nonzero().flatten()
        if where.numel() != 1:
            raise LayoutError(f"sample {sample_id}: latent token id {tid} appears {where.numel()} times, expected once")
        found.append(where[0])
    latent_pos = torch.stack(found)
    if not bool((latent_pos.diff() == 1).all()):
        raise LayoutError(f"sample {sample_id}: latent tokens are not contiguous and in order: positions {latent_pos.tolist()}")
    if latent_pos[0] <= image_pos[-1]:
        raise LayoutError(f"sample {sample_id}: latent tokens come before the end of the image")
    return image_pos, latent_pos


def continuation_ids(tokenizer, latent_tokens: list[str], answers: list[str]) -> list[list[int]]:
    """Per answer, the token ids that follow the prompt, all of them labelled: `[V, X_ans, <|im_end|>]` (the latent
    tokens, one id each, then the answer and the end-of-turn token)."""
    prefix = "".join(latent_tokens)
    return tokenizer([prefix + answer + tokenizer.eos_token for answer in answers],
                     add_special_tokens=False)["input_ids"]


def build_example(processor, sample: TrainingSample, latent_tokens: list[str], *, system_prompt: str | None,
                  top_k: int = 8) -> dict:
    """Tokenise `sample` as `[system, I, X_q, assistant:, V, X_ans, <|im_end|>]` (K = 0 gives Naive-SFT).

    Labels cover the latent tokens and the answer (with its end-of-turn token); the teacher map, if
    present, is turned into a distribution on this student's image grid.
    """
    tokenizer = processor.tokenizer
    prompt = render_prompt(processor, sample.question, system_prompt)
    enc = processor(text=[prompt], images=[to_rgb(sample.image)], return_tensors="pt")
    prompt_ids = enc["input_ids"][0]
    cont_ids = torch.tensor(continuation_ids(tokenizer, latent_tokens, [sample.answer])[0], dtype=torch.long)
    input_ids = torch.cat([prompt_ids, cont_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), cont_ids])
    mm_types = torch.cat([enc["mm_token_type_ids"][0], torch.zeros_like(cont_ids)])

    latent_ids = tokenizer.convert_tokens_to_ids(latent_tokens)
    image_pos, latent_pos = locate_layout(input_ids, processor.image_token_id, latent_ids, sample.id)
    grid_thw = enc["image_grid_thw"][0]  # [3], in patches
    merge = processor.image_processor.merge_size
    student_grid = (int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
    if image_pos.numel() != student_grid[0] * student_grid[1] * student_grid[2]:
        raise LayoutError(f"sample {sample.id}: {image_pos.numel()} image tokens for a {student_grid} grid")

    example = {
        "id": sample.id,
        "input_ids": input_ids,
        "labels": labels,
        "mm_token_type_ids": mm_types,
        "pixel_values": enc["pixel_values"],  # [patches, C*T*P*P]
        "image_grid_thw": enc["image_grid_thw"],  # [1, 3]
        "image_positions": image_pos,
        "latent_positions": latent_pos,
    }
    if sample.v_sem is not None:
        v_sem = torch.as_tensor(np.asarray(sample.v_sem, dtype=np.float32))
        if v_sem.ndim != 1 or not torch.isfinite(v_sem).all():
            raise ValueError(f"sample {sample.id}: V_sem must be a finite 1-D vector, got shape {tuple(v_sem.shape)}")
        example["v_sem"] = v_sem
    if sample.a_traj is not None:
        if sample.a_traj_grid is None:
            raise ValueError(f"sample {sample.id}: A_traj given without its grid")
        try:
            example["traj_target"] = build_traj_target(sample.a_traj, sample.a_traj_grid, student_grid, top_k)
        except ValueError as err:
            raise type(err)(f"sample {sample.id}: {err}") from err
    return example
