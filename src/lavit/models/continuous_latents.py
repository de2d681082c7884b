"""Continuous latents (`latent_design=continuous`, beyond the paper): latent i+1's input embedding is latent i's
final hidden state, as in Coconut, LVR and Monet.

Latent 1 keeps its learned token embedding (`<lvr_1>`, a boundary marker); latents 2..K take as input embedding
the final-norm state (what the text model's `last_hidden_state` gives) of the latent before them, optionally
rescaled to the norm of the input embeddings (GAP, arXiv 2605.12374: fed-back states are hundreds of times larger
in norm than input embeddings, and matching the norm alone helps). The token ids stay `<lvr_2>..<lvr_K>`, so every
family keeps its input_ids path (Qwen-VL scatters image features by input_ids; mRoPE positions unchanged): the
substitution is a forward hook on the text model's input-embedding module.

Decoding is causal, so latent j's state depends only on positions <= j: with pass 0 run on the token embeddings,
pass p (each pass substituting the states of the pass before) has exact inputs for latents 1..p+1. K−1 passes give
exact inputs for every latent, and one more pass over the sequence with those inputs is the final pass that
training reads (gate, probe, concept head, text loss) and that generation's prefill is (`latent_feedback_prompt`).
Training backpropagates through all passes (as Coconut does). The passes share one run of the vision tower
(`shared_image_features`); at K = 4 a training step costs 3.2–3.8 discrete ones (`lavit bench train`). Natural-mode
decoding feeds back step by step (`stepwise_latent_feedback`).

The design travels with the loaded Hugging Face model (`attach_latent_feedback` / `latent_feedback_of`): the
trainer's student sets it from its settings, the loaders from the checkpoint's lavit.json, and lavit's
generation, the audit's interventions and the student's forward read it from there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lavit.models.families import family_of

LatentDesign = Literal["discrete", "continuous"]
NormMatch = Literal["none", "embedding_table"]
LATENT_DESIGNS = ("discrete", "continuous")
NORM_MATCHES = ("none", "embedding_table")
# Where a loaded model carries its design: an attribute of the `*ForConditionalGeneration`, never saved with it.
_ATTRIBUTE = "lavit_latent_feedback"
# What stock clients are told: a continuous student's export renders only with lavit's template flag set.
STOCK_REFUSAL = ("this LaViT student feeds the final hidden state of each latent back as the input embedding of the "
                 "next (continuous latents): only lavit generation runs it (lavit eval, lavit audit)")
# (fed-back inputs of latents 2..K [B, K−1, D]) → what to feed instead; the audit's interventions set one.
_FED_BACK_EDIT: ContextVar[Callable[[torch.Tensor], torch.Tensor] | None] = ContextVar("lavit_fed_back_edit",
                                                                                      default=None)


@dataclass(frozen=True)
class LatentFeedback:
    """How a latent's final state becomes the next latent's input embedding.

    `norm_match='none'`: the state as it is. `'embedding_table'`: every fed-back vector rescaled to L2 norm
    `target_norm`, the mean norm of the student's input-embedding rows (its tokenizer's tokens, latents excluded)
    when training started; fixed for the run and recorded in lavit.json, so inference scales exactly as training did.
    """

    norm_match: NormMatch = "none"
    target_norm: float | None = None

    def __post_init__(self) -> None:
        if self.norm_match not in NORM_MATCHES:
            raise ValueError(f"latent norm match must be one of {NORM_MATCHES}, got {self.norm_match!r}")
        if (self.norm_match == "embedding_table") != (self.target_norm is not None):
            raise ValueError("norm_match='embedding_table' needs its target_norm, and only it has one")
        if self.target_norm is not None and not self.target_norm > 0:
            raise ValueError(f"the fed-back states' target norm must be > 0, got {self.target_norm}")

    def feed_back(self, states: torch.Tensor) -> torch.Tensor:
        """The input embeddings [..., D] that final states [..., D] become."""
        if self.target_norm is None:
            return states
        return states * (self.target_norm / states.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def to_meta(self) -> dict:
        """lavit.json's record of the design (`from_meta` reads it back)."""
        return {"latent_design": "continuous",
                "latent_feedback": {"state": "final_norm", "norm_match": self.norm_match,
                                    "target_norm": self.target_norm}}

    @classmethod
    def from_meta(cls, meta: dict) -> LatentFeedback | None:
        """The design a checkpoint's lavit.json records: None for discrete latents (or none recorded)."""
        design = meta.get("latent_design", "discrete")
        if design not in LATENT_DESIGNS:
            raise ValueError(f"lavit.json names latent design {design!r}; lavit knows {', '.join(LATENT_DESIGNS)}")
        if design == "discrete":
            return None
        record = meta.get("latent_feedback")
        if not isinstance(record, dict) or "norm_match" not in record:
            raise ValueError("lavit.json names continuous latents but no latent_feedback {norm_match, target_norm}")
        return cls(record["norm_match"], record.get("target_norm"))


def embedding_table_norm(embeddings: torch.Tensor, vocab_size: int, exclude_ids: list[int]) -> float:
    """Mean L2 norm of the rows [0, vocab_size) of an input-embedding matrix [V, D], rows `exclude_ids` left out
    (the freshly added latent tokens; spare rows past the tokenizer are never real tokens)."""
    keep = torch.ones(vocab_size, dtype=torch.bool, device=embeddings.device)
    keep[[i for i in exclude_ids if i < vocab_size]] = False
    return float(embeddings[:vocab_size][keep].detach().float().norm(dim=-1).mean())


def latent_feedback_for(model: nn.Module, norm_match: NormMatch, vocab_size: int,
                        latent_ids: list[int]) -> LatentFeedback:
    """The design of a student starting from `model` (its target norm measured now, when norm matched)."""
    if norm_match == "none":
        return LatentFeedback("none")
    table = model.get_input_embeddings().weight  # [V, D]
    return LatentFeedback(norm_match, embedding_table_norm(table, vocab_size, latent_ids))


def _hf(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attach_latent_feedback(model: nn.Module, feedback: LatentFeedback | None) -> None:
    """Make `feedback` (None: discrete latents) the design every lavit forward and generation of `model` runs."""
    setattr(_hf(model), _ATTRIBUTE, feedback)


def latent_feedback_of(model: nn.Module) -> LatentFeedback | None:
    """The continuous-latent design attached to `model`, None for discrete latents (or none)."""
    return getattr(_hf(model), _ATTRIBUTE, None)


@contextmanager
def editing_fed_back(edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within this block, the inputs fed back to latents 2..K [B, K−1, D] in a substituted pass are `edit(them)`
    (the audit records or replaces them). Passes without feedback never call it."""
    token = _FED_BACK_EDIT.set(edit)
    try:
        yield
    finally:
        _FED_BACK_EDIT.reset(token)


def _rows(positions: torch.Tensor) -> torch.Tensor:
    return torch.arange(positions.shape[0], device=positions.device)[:, None].expand_as(positions)  # [B, K']


@contextmanager
def substituted_latent_inputs(model: nn.Module, positions: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Within this block, the one pass over `positions`' sequence (input-embedding output [B, S, D] with S past
    every position) has its input embeddings at `positions` [B, K−1] set to `values` [B, K−1, D] (differentiably;
    through `editing_fed_back`'s edit when one is set). Calls over other lengths (decode steps) are left alone;
    exactly one substituted pass must run."""
    seq_len = int(positions.max()) + 1
    fired = []

    def hook(module, args, output):
        if output.shape[1] < seq_len:
            return None  # a decode step, whose latents are in the cache already
        fired.append(output.shape[1])
        edit = _FED_BACK_EDIT.get()
        fed = edit(values) if edit is not None else values
        if fed.shape != values.shape:
            raise ValueError(f"fed-back inputs of shape {tuple(fed.shape)} for latents of shape {tuple(values.shape)}")
        return output.index_put((_rows(positions), positions.to(output.device)), fed.to(output.device, output.dtype))

    handle = _hf(model).get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if len(fired) != 1:
        raise RuntimeError(f"expected one pass over the latent block with fed-back inputs, saw {len(fired)}")


@contextmanager
def shared_image_features(model: nn.Module) -> Iterator[None]:
    """Within this block the backbone computes each pixel tensor's image features once: passes over the same inputs
    share its images (the K passes over one sequence, the audit's interventions on one batch), so the vision tower
    runs once rather than once per pass (about half a toy student's forward). The `*ForConditionalGeneration`'s
    `get_image_features` calls the backbone's (every supported family, transformers 5.20 to 5.24), so the cache
    serves both. If the tower trains, the reused features' gradients sum over the passes, as separate computations'
    would."""
    backbone = family_of(_hf(model)).backbone(_hf(model))
    shadowed = backbone.__dict__.get("get_image_features")  # an enclosing block's cache (the audit's)
    compute = backbone.get_image_features
    cache: dict[tuple, object] = {}

    @functools.wraps(compute)  # callers read its signature to choose the kwargs they pass
    def features(pixel_values, *args, **kwargs):
        key = (pixel_values.data_ptr(), tuple(pixel_values.shape))
        if key not in cache:
            cache[key] = compute(pixel_values, *args, **kwargs)
        return cache[key]

    backbone.get_image_features = features  # an instance attribute shadows the method
    try:
        yield
    finally:
        if shadowed is None:
            del backbone.get_image_features
        else:
            backbone.get_image_features = shadowed


def fed_back_inputs(model: nn.Module, decode: Callable[[], torch.Tensor], latent_positions: torch.Tensor,
                    feedback: LatentFeedback) -> torch.Tensor:
    """The exact inputs of latents 2..K [B, K−1, D], from K−1 passes of `decode()` (final-norm states [B, S, D] of
    the sequence, which holds the K latents at `latent_positions` [B, K]): pass 0 on the token embeddings, each
    later pass on the states of the pass before."""
    k = latent_positions.shape[1]
    if k < 2:
        raise ValueError(f"continuous latents need K >= 2 (latent 1 feeds latent 2), got K = {k}")
    rows = _rows(latent_positions[:, :-1])
    fed = None
    for _ in range(k - 1):
        if fed is None:
            hidden = decode()  # [B, S, D]
        else:
            with substituted_latent_inputs(model, latent_positions[:, 1:], fed):
                hidden = decode()
        fed = feedback.feed_back(hidden[rows, latent_positions[:, :-1]])  # [B, K−1, D]
    return fed


def decode_with_feedback(model: nn.Module, decode: Callable[[bool], torch.Tensor], latent_positions: torch.Tensor,
                         feedback: LatentFeedback) -> torch.Tensor:
    """The final pass's states [B, S, D]: K−1 feedback passes of `decode(False)`, then `decode(True)` with every
    latent's exact input (the pass whose attention the caller probes)."""
    with shared_image_features(model):
        fed = fed_back_inputs(model, lambda: decode(False), latent_positions, feedback)
        with substituted_latent_inputs(model, latent_positions[:, 1:], fed):
            return decode(True)


def prompt_latent_positions(input_ids: torch.Tensor, latent_ids: list[int]) -> torch.Tensor:
    """Positions [B, K] of the latent block of prompts that all end with `<lvr_1>..<lvr_K>` (forced mode, left-padded);
    an error for any other prompt."""
    k = len(latent_ids)
    if input_ids.shape[1] <= k or not (input_ids[:, -k:] == torch.tensor(latent_ids, device=input_ids.device)).all():
        raise ValueError(f"continuous latents are fed back over prompts that end with the {k} latent tokens in order "
                         "(forced mode, left-padded)")
    seq_len = input_ids.shape[1]
    return torch.arange(seq_len - k, seq_len, device=input_ids.device).expand(input_ids.shape[0], k)  # [B, K]


@contextmanager
def latent_feedback_prompt(model: nn.Module, inputs: dict, latent_ids: list[int]) -> Iterator[None]:
    """For model inputs whose prompts end with the K latents: runs the K−1 feedback passes now, then, within the
    block, substitutes their result in the next pass over the prompt (a forward, or `generate`'s prefill)."""
    feedback = latent_feedback_of(model)
    if feedback is None:
        raise ValueError("this model has discrete latents: nothing to feed back")
    positions = prompt_latent_positions(inputs["input_ids"], latent_ids)
    backbone = family_of(_hf(model)).backbone(_hf(model))
    with shared_image_features(model):
        with torch.no_grad():
            fed = fed_back_inputs(model, lambda: backbone(**inputs, use_cache=False).last_hidden_state, positions,
                                  feedback)
        with substituted_latent_inputs(model, positions[:, 1:], fed):
            yield


@torch.no_grad()
def continuous_latent_states(model: nn.Module, inputs: dict, latent_ids: list[int]) -> torch.Tensor:
    """A continuous student's final-norm states [B, K, D] at latents 1..K of forced prompts (the final pass); latents
    1..K−1's, through `LatentFeedback.feed_back`, are the inputs of latents 2..K."""
    k = len(latent_ids)
    backbone = family_of(_hf(model)).backbone(_hf(model))
    with latent_feedback_prompt(model, inputs, latent_ids):
        return backbone(**inputs, use_cache=False).last_hidden_state[:, -k:]


@contextmanager
def stepwise_latent_feedback(model: nn.Module, latent_ids: list[int]) -> Iterator[None]:
    """Within this block, token-by-token decoding (natural mode) feeds latents back: a decode step whose input token
    is `<lvr_j>` (j >= 2) right after `<lvr_{j−1}>` takes as input embedding the fed-back final state of the step
    before. Prompts holding latents 2..K are refused (they need the passes of `latent_feedback_prompt`)."""
    feedback = latent_feedback_of(model)
    if feedback is None:
        raise ValueError("this model has discrete latents: nothing to feed back")
    hf = _hf(model)
    ids = torch.tensor(latent_ids)
    last: dict[str, torch.Tensor] = {}  # "token": [B] the previous input token, "state": [B, D] its final state

    def embed_hook(module, args, output):
        input_ids = args[0]  # [B, T]
        follows = ids[1:].to(input_ids.device)
        if input_ids.shape[1] > 1:  # the prefill
            if torch.isin(input_ids, follows).any():
                raise ValueError("a prompt holding latents 2..K needs its feedback passes (forced mode), not "
                                 "step-by-step feedback")
            last["token"] = input_ids[:, -1]
            return None
        token = input_ids[:, 0]  # [B]
        previous = torch.full_like(token, -1)
        for j in range(1, len(latent_ids)):  # <lvr_{j+1}> right after <lvr_j>
            previous = torch.where(token == latent_ids[j], latent_ids[j - 1], previous)
        take = (previous == last["token"]) & (previous >= 0)  # [B]
        last["token"] = token
        if not take.any():
            return None
        fed = feedback.feed_back(last["state"]).to(output.device, output.dtype)  # [B, D]
        return torch.where(take[:, None, None], fed[:, None], output)

    def norm_hook(module, args, output):
        last["state"] = output[:, -1]  # [B, D]: the final-norm state of each row's newest position

    text_model = family_of(hf).backbone(hf).language_model
    handles = [hf.get_input_embeddings().register_forward_hook(embed_hook),
               text_model.norm.register_forward_hook(norm_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
