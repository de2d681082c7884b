"""Hooks and decoding for the audit's 2026 diagnostics (docs/audit.md, "Diagnostics (2026)").

* `LatentNormRecorder` — in the prompt pass, the L2 norm of what enters the text decoder at every position (a
  forward pre-hook on its first layer: the token embeddings with the image features scattered in, and for a student
  that feeds states back into its latents, those states) and of the final hidden states at the K latents (the text
  model's `last_hidden_state`, after its final norm: what a continuous design feeds back). Norms, not states, are
  kept: a [B, S] row per pass rather than [B, S, D].
* `natural_generation` — greedy natural-mode decoding (the prompt without latents) that returns the generated token
  ids, so the emission rate counts latent ids rather than decoded text; a student's inference gate is applied as in
  training, query by query: generated latents see the image, every other generated token (and with
  `gate.readout` the K-th latent) does not. A continuous student is decoded as `generate_answers` decodes it in
  natural mode: its states fed back step by step, its block completed once `<lvr_1>` is written.
* `chain` — several intervention factories (`inputs -> context manager`) entered around one generation.

Like `lavit.inference.interventions` these act on the passes whose sequence is the whole prompt; a design that runs
the prompt several times (feedback passes) is recorded in its last pass, the one generation continues from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch
from torch import nn
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from lavit.inference.generate import ForceLatentBlock
from lavit.inference.interventions import latent_block_width
from lavit.models.attention import LAVIT_ATTENTION, gated_image_keys
from lavit.models.continuous_latents import latent_feedback_of, stepwise_latent_feedback
from lavit.models.families import family_of
from lavit.models.gating import InferenceGate, gated_query_mask

Intervention = Callable[[dict], AbstractContextManager]


def chain(*factories: Intervention | None) -> Intervention:
    """One intervention factory entering each of `factories` (None entries left out) in order."""
    chosen = [f for f in factories if f is not None]

    @contextmanager
    def entered(inputs: dict) -> Iterator[None]:
        with ExitStack() as stack:
            for factory in chosen:
                stack.enter_context(factory(inputs))
            yield
    return entered


class LatentNormRecorder:
    """Records, in the prompt pass, ‖x_t‖ of the first decoder layer's input at every position and ‖h‖ of the text
    model's final hidden states (after the final norm) at the K latents.

    After a run `input_norms` is [B, S] and `final_norms` [B, K], both float32 on the CPU, and `text_tokens` [B, S]
    (bool, CPU) marks the prompt's text tokens, real (unpadded) and neither an image or video placeholder nor a latent:
    the positions whose input norms are the text embeddings' (the audit's norm ratio). The prompt's layout is the
    forced one (`latent_block_width`: every row ends with the K latents, left-padded).
    """

    def __init__(self, model: nn.Module, latent_ids: list[int]):
        self.model = model
        self.latent_ids = list(latent_ids)
        self.input_norms: torch.Tensor | None = None
        self.final_norms: torch.Tensor | None = None
        self.text_tokens: torch.Tensor | None = None

    @contextmanager
    def __call__(self, inputs: dict) -> Iterator[None]:
        k = latent_block_width(inputs["input_ids"], self.latent_ids)
        ids, config = inputs["input_ids"], self.model.config
        seq_len = ids.shape[1]
        placeholders = [t for t in (config.image_token_id, getattr(config, "video_token_id", None)) if t is not None]
        not_text = torch.tensor([*placeholders, *self.latent_ids], device=ids.device)
        text = (inputs["attention_mask"].bool() & ~torch.isin(ids, not_text)).cpu()  # [B, S]
        family = family_of(self.model)
        first = family.decoder_layers(self.model)[0]
        text_model = family.backbone(self.model).language_model
        seen: dict[str, torch.Tensor] = {}

        def before_first_layer(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]  # [B, S, D]
            if hidden.shape[1] == seq_len:  # decode steps (one column) read the prompt through the cache
                seen["input"] = hidden.detach().float().norm(dim=-1).cpu()  # [B, S]

        def after_text_model(module, args, output):
            hidden = output.last_hidden_state  # [B, S, D], after the final norm
            if hidden.shape[1] == seq_len:
                seen["final"] = hidden[:, seq_len - k:].detach().float().norm(dim=-1).cpu()  # [B, K]

        self.input_norms = self.final_norms = self.text_tokens = None
        handles = [first.register_forward_pre_hook(before_first_layer, with_kwargs=True),
                   text_model.register_forward_hook(after_text_model)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        if set(seen) != {"input", "final"}:
            raise RuntimeError(f"no pass over the {seq_len}-column prompt reached the text decoder")
        self.input_norms, self.final_norms, self.text_tokens = seen["input"], seen["final"], text


class _GateGeneratedTokens(StoppingCriteria):
    """Marks each newly generated token as a gated query or not, in `gated` [B, S + T] (shared with the attention
    context), before the step that feeds it: transformers calls stopping criteria after appending a token and
    before the next forward. Never stops anything."""

    def __init__(self, gated: torch.Tensor, latent_ids: torch.Tensor, readout_id: int | None):
        self.gated = gated
        self.latent_ids = latent_ids
        self.readout_id = readout_id

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        newest = input_ids[:, -1]  # [B]
        gated = ~torch.isin(newest, self.latent_ids)
        if self.readout_id is not None:
            gated |= newest == self.readout_id
        self.gated[:, input_ids.shape[1] - 1] = gated
        return torch.zeros_like(newest, dtype=torch.bool)


def natural_gated_queries(inputs: dict, image_token_id: int, gate: InferenceGate, total: int) -> torch.Tensor:
    """The gate's query mask [B, total] for a natural-mode prompt (no latents in it) followed by generated tokens:
    prompt tokens after the image are gated with `gate.question_tokens` (none otherwise: the latents the model may
    write come after the whole prompt), generated positions start gated and are set as they are generated."""
    input_ids, attention = inputs["input_ids"], inputs["attention_mask"]  # [B, S]
    no_latents = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt = (gated_query_mask(input_ids == image_token_id, no_latents, attention, True, False)
              if gate.question_tokens else no_latents)  # [B, S]
    return torch.cat([prompt, prompt.new_ones(prompt.shape[0], total - prompt.shape[1])], dim=1)  # [B, total]


@torch.no_grad()
def natural_generation(model, tokenizer, inputs: dict, *, latent_ids: list[int], max_new_tokens: int,
                       gate: InferenceGate | None = None) -> torch.Tensor:
    """Greedy natural-mode continuations [B, T] of `inputs` (`build_generation_inputs(..., mode='natural')`), the
    generated token ids as `generate` returns them (padded after a row's eos).

    With an inference gate the student's queries are gated as training gated them (`gated_query_mask`): the prompt's
    tokens after the image (with `question_tokens`), and of the generated tokens every one that is not a latent, plus
    the K-th latent (the readout) with `gate.readout`; the latents the model writes see the image. A continuous
    student feeds its latents back step by step and writes its block whole once it starts it (`ForceLatentBlock`).
    """
    if gate is not None and model.config.text_config._attn_implementation != LAVIT_ATTENTION:
        raise ValueError(f"an inference gate needs the text model on attn_implementation='{LAVIT_ATTENTION}'")
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    prompt_len = inputs["input_ids"].shape[1]
    stack, criteria, processors = ExitStack(), StoppingCriteriaList(), LogitsProcessorList()
    if latent_feedback_of(model) is not None:
        stack.enter_context(stepwise_latent_feedback(model, latent_ids))
        processors.append(ForceLatentBlock(latent_ids))
    if gate is not None:
        gated = natural_gated_queries(inputs, model.config.image_token_id, gate, prompt_len + max_new_tokens)
        criteria.append(_GateGeneratedTokens(gated, torch.tensor(latent_ids, device=model.device),
                                             latent_ids[-1] if gate.readout else None))
        stack.enter_context(gated_image_keys(inputs["input_ids"] == model.config.image_token_id, gated, gate.gamma))
    with stack:
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, stopping_criteria=criteria,
                             logits_processor=processors, pad_token_id=tokenizer.pad_token_id)
    return out[:, prompt_len:]  # [B, T]
