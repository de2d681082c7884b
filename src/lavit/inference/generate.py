"""Answer generation for LaViT students and plain models (DESIGN §2, inference modes).

* `forced` (default): the K latent tokens are appended after the generation prompt, then the
  answer is generated — exactly K latents, as in training.
* `natural`: the prompt alone; the model emits its latent tokens (or not) itself.
* `masked`: as `forced`, but no token may attend to another latent token (positions are kept;
  each latent sees only the prompt and itself): the "w/o latent tokens" ablation of Table 3.
* `none`: no latent tokens at all (plain models, Naive-SFT); given a student's latent tokens, none is
  generated either (their logits are suppressed).

Returned texts never contain the latent tokens, unless asked for the raw answer (`keep_special_tokens`: special
and latent tokens kept, cut after the first eos, as an evaluator decoding with `skip_special_tokens=False` one item
at a time sees it). Decoding is greedy with whatever `model.generation_config` holds (an engine puts the resolved
settings there: `lavit.inference.decoding`). No gating bias is used at inference, unless the student
was trained to a final γ below 1 (`gate=InferenceGate(...)`, from its lavit.json): then the gated queries
keep ln γ on image keys, as in training — a student stock clients cannot serve.

A student with continuous latents (`lavit.models.continuous_latents`, attached to the model by its loader) is run
as trained, and no stock client can run it: in `forced` mode the K−1 feedback passes run over the prompt first and
the prefill feeds their states to latents 2..K; in `natural` mode, once the model writes `<lvr_1>`, the rest of the
block is forced (`<lvr_2>..<lvr_K>`, as in training) and each fed back step by step; `masked` feeds nothing back
(each latent keeps its token embedding and sees only the prompt and itself, so no latent content reaches the
answer, as for discrete latents); `none` as for any model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Literal

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from lavit.data.examples import render_prompt
from lavit.data.samples import to_rgb
from lavit.inference.decoding import trim_after_eos
from lavit.models.attention import LAVIT_ATTENTION, gated_image_keys, hidden_keys
from lavit.models.continuous_latents import latent_feedback_of, latent_feedback_prompt, stepwise_latent_feedback
from lavit.models.families import family_of
from lavit.models.gating import InferenceGate, gated_query_mask

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


class ForceLatentBlock(LogitsProcessor):
    """Once a row has written `<lvr_1>..<lvr_j>` (j < K), its next token is `<lvr_{j+1}>`: a continuous student's
    latent block is always whole, as in training (its latents 1..K−1 were never trained to predict a token)."""

    def __init__(self, latent_ids: list[int]):
        self.latent_ids = list(latent_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = scores.clone()
        for j in range(1, len(self.latent_ids)):  # rows ending with <lvr_1>..<lvr_j> take <lvr_{j+1}>
            if input_ids.shape[1] < j:
                break
            block = torch.tensor(self.latent_ids[:j], device=input_ids.device)
            rows = (input_ids[:, -j:] == block).all(dim=1)  # [B]
            forced[rows] = float("-inf")
            forced[rows, self.latent_ids[j]] = 0.0
        return forced


@torch.no_grad()
def generate_answers(model, processor, images: ImagesPerQuestion, questions: list[str], *,
                     latent_tokens: list[str], mode: LatentMode = "forced", system_prompt: str | None = None,
                     max_new_tokens: int = 32, min_new_tokens: int = 0, gate: InferenceGate | None = None,
                     intervention: Callable[[dict], AbstractContextManager] | None = None,
                     inputs: dict | None = None, keep_special_tokens: bool = False) -> list[str]:
    """Greedy answers for a batch, latent tokens stripped (or, with `keep_special_tokens`, the raw answers: see the
    module docstring). `intervention(inputs)`, given the batch's model inputs, is a context entered around `generate`
    (`lavit.inference.interventions`: the latent-usage audit). `inputs`: this batch's `build_generation_inputs` for
    this mode, built once by a caller asking it several times."""
    if inputs is None:
        inputs = build_generation_inputs(processor, images, questions, latent_tokens=latent_tokens, mode=mode,
                                         system_prompt=system_prompt)
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    tokenizer = processor.tokenizer
    if (mode == "masked" or gate is not None) and model.config.text_config._attn_implementation != LAVIT_ATTENTION:
        raise ValueError(f"latent mode 'masked' and an inference gate need the text model on "
                         f"attn_implementation='{LAVIT_ATTENTION}'")
    if mode == "masked" and family_of(model).is_hybrid(model.config.text_config):
        raise ValueError(f"latent mode 'masked' cannot hide the latents in a {model.config.model_type} model: its "
                         "linear-attention layers pass them on in their recurrent state, which no mask reaches")
    if gate is not None and mode == "natural":
        raise ValueError("a student with an inference gate is run with its latent block given (forced, masked) or "
                         "absent (none): in natural mode the gate would also cover the latents it generates")
    latent_ids = tokenizer.convert_tokens_to_ids(latent_tokens)
    latent_mask = torch.isin(inputs["input_ids"], torch.tensor(latent_ids, device=model.device,
                                                               dtype=torch.long))  # [B, S]
    feedback = latent_feedback_of(model)
    stack = ExitStack()
    if gate is not None:
        image_keys = inputs["input_ids"] == model.config.image_token_id  # [B, S]
        gated = gated_query_mask(image_keys, latent_mask, inputs["attention_mask"], gate.question_tokens,
                                 gate.readout)  # [B, S]
        stack.enter_context(gated_image_keys(image_keys, gated, gate.gamma))
    if mode == "masked":
        stack.enter_context(hidden_keys(latent_mask))
    with stack:
        processors = LogitsProcessorList()
        if feedback is not None and mode == "forced":  # under the gate: every feedback pass runs as the prefill will
            stack.enter_context(latent_feedback_prompt(model, inputs, latent_ids))
        elif feedback is not None and mode == "natural":
            stack.enter_context(stepwise_latent_feedback(model, latent_ids))
            processors.append(ForceLatentBlock(latent_ids))
        if intervention is not None:  # inside: a refused batch leaves no attention context set
            stack.enter_context(intervention(inputs))
        # `none` with a student's latent tokens named: none in the prompt and none generated (a student trained
        # with its latents would otherwise write them itself, spending the answer's token budget)
        suppress = {"suppress_tokens": latent_ids} if mode == "none" and latent_tokens else {}
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             logits_processor=processors, **suppress)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]  # [B, T]
    if keep_special_tokens:
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        return [tokenizer.decode(trim_after_eos(row.tolist(), eos_ids), skip_special_tokens=False)
                for row in new_tokens]
    drop = torch.tensor(latent_ids, device=new_tokens.device, dtype=torch.long)
    return [tokenizer.decode(row[~torch.isin(row, drop)], skip_special_tokens=True).strip() for row in new_tokens]
