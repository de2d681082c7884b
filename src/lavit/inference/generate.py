"""Answer generation for LaViT students and plain models (DESIGN §2, inference modes).

* `forced` (default): the K latent tokens are appended after the generation prompt, then the
  answer is generated — exactly K latents, as in training.
* `natural`: the prompt alone; the model emits its latent tokens (or not) itself.
* `masked`: as `forced`, but no token may attend to another latent token (positions are kept;
  each latent sees only the prompt and itself): the "w/o latent tokens" ablation of Table 3.
* `none`: no latent tokens at all (plain models, Naive-SFT).

Returned texts never contain the latent tokens. No gating bias is used at inference.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
from PIL import Image

from lavit.data.examples import render_prompt
from lavit.data.samples import to_rgb
from lavit.models.attention import LAVIT_ATTENTION, hidden_keys
from lavit.models.families import family_of

LatentMode = Literal["forced", "natural", "masked", "none"]
LATENT_MODES = ("forced", "natural", "masked", "none")


ImagesPerQuestion = list[Image.Image] | list[list[Image.Image]] | None


def build_generation_inputs(processor, images: ImagesPerQuestion, questions: list[str], *,
                            latent_tokens: list[str], mode: LatentMode, system_prompt: str | None) -> dict:
    """Left-padded batch of prompts (+ latent tokens for `forced`/`masked`) ready for `generate`.

    `images` holds one image or a list of images per question (multi-image items such as BLINK's);
    `images=None` asks the questions without any image (the text-only model of the difficulty filter).
    """
    if mode not in LATENT_MODES:
        raise ValueError(f"latent mode must be one of {LATENT_MODES}, got {mode!r}")
    if mode in ("forced", "masked", "natural") and not latent_tokens:
        raise ValueError(f"latent mode {mode!r} needs the model's latent tokens; use mode='none' for a plain model")
    if images is None:
        per_question: list[list[Image.Image]] = [[] for _ in questions]
    else:
        per_question = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
        if len(per_question) != len(questions):
            raise ValueError(f"{len(per_question)} image sets for {len(questions)} questions")
    suffix = "".join(latent_tokens) if mode in ("forced", "masked") else ""
    texts = [render_prompt(processor, q, system_prompt, num_images=len(ims)) + suffix
             for q, ims in zip(questions, per_question)]
    flat = [to_rgb(im) for ims in per_question for im in ims]  # in-memory images decode as files do
    pixels = {"images": flat} if flat else {}
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    try:
        inputs = processor(text=texts, padding=True, return_tensors="pt", **pixels)
    finally:
        tokenizer.padding_side = side
    return dict(inputs)


@torch.no_grad()
def generate_answers(model, processor, images: ImagesPerQuestion, questions: list[str], *,
                     latent_tokens: list[str], mode: LatentMode = "forced", system_prompt: str | None = None,
                     max_new_tokens: int = 32, min_new_tokens: int = 0) -> list[str]:
    """Greedy answers for a batch, latent tokens stripped."""
    inputs = build_generation_inputs(processor, images, questions, latent_tokens=latent_tokens, mode=mode,
                                     system_prompt=system_prompt)
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    tokenizer = processor.tokenizer
    context = nullcontext()
    if mode == "masked":
        if model.config.text_config._attn_implementation != LAVIT_ATTENTION:
            raise ValueError(f"latent mode 'masked' needs the text model on attn_implementation='{LAVIT_ATTENTION}'")
        if family_of(model).is_hybrid(model.config.text_config):
            raise ValueError(f"latent mode 'masked' cannot hide the latents in a {model.config.model_type} model: its "
                             "linear-attention layers pass them on in their recurrent state, which no mask reaches")
        latent_ids = torch.tensor(tokenizer.convert_tokens_to_ids(latent_tokens), device=model.device)
        context = hidden_keys(torch.isin(inputs["input_ids"], latent_ids))  # [B, S]
    with context:
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, pad_token_id=tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]  # [B, T]
    drop = torch.tensor(tokenizer.convert_tokens_to_ids(latent_tokens), device=new_tokens.device) \
        if latent_tokens else new_tokens.new_zeros(0)
    return [tokenizer.decode(row[~torch.isin(row, drop)], skip_special_tokens=True).strip() for row in new_tokens]
