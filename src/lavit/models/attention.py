"""`lavit_sdpa`: transformers' SDPA attention plus two LaViT extras, registered with
`AttentionInterface` so the real Qwen-VL decoders call it (their softmax-attention layers; the
linear-attention layers of hybrid decoders have no attention function to route).

* `lavit_probe=...`: an object with `record(layer_idx, query, key, attention_mask, scaling,
  kv_groups)`, called once per decoder layer before SDPA. `LatentAttentionProbe` keeps the latent
  queries' softmax rows (the student map of eq. 7, with gradients); the teacher's
  `TrajectoryProbe` aggregates A_traj (eq. 2). Both use `attention_rows`, which forms only the
  chosen rows, never the [B, H, S, S] attention matrix.
* `hidden_keys(mask)` context ([B, S] bool): keys no other query may attend to (inference mode
  `masked`, the "w/o latent tokens" row of Table 3).
* `gated_image_keys(image, gated, gamma)` context: the sensory gate at inference for a student trained
  with a final γ below 1 — gated queries of the prompt, and every generated token, get ln γ on their
  logits to image keys (γ = 0 blocks them).
  Contexts rather than kwargs because `generate` rejects model kwargs it does not know.

Without these kwargs the function *is* `sdpa_attention_forward`, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

LAVIT_ATTENTION = "lavit_sdpa"
_HIDDEN_KEYS: ContextVar[torch.Tensor | None] = ContextVar("lavit_hidden_keys", default=None)
_IMAGE_GATE: ContextVar[tuple[torch.Tensor, torch.Tensor, float] | None] = ContextVar("lavit_image_gate", default=None)


@contextmanager
def hidden_keys(mask: torch.Tensor) -> Iterator[None]:
    """Within this block, `lavit_sdpa` hides the keys marked in `mask` [B, S_prompt] from other queries."""
    token = _HIDDEN_KEYS.set(mask)
    try:
        yield
    finally:
        _HIDDEN_KEYS.reset(token)


@contextmanager
def gated_image_keys(image_keys: torch.Tensor, gated_queries: torch.Tensor, gamma: float) -> Iterator[None]:
    """Within this block, `lavit_sdpa` adds ln γ to the logits of `gated_queries` [B, S_prompt] (and of every
    token generated after the prompt) on `image_keys` [B, S_prompt]."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"an inference gate needs 0 <= γ < 1, got {gamma}")
    token = _IMAGE_GATE.set((image_keys, gated_queries, gamma))
    try:
        yield
    finally:
        _IMAGE_GATE.reset(token)


class AttentionProbe(Protocol):
    def record(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
               scaling: float, kv_groups: int) -> None: ...


class LatentAttentionProbe:
    """Collects the attention rows of chosen query positions (the latent tokens for eq. 7), one [B, K, S]
    head-sum per decoder layer.

    Keyed by layer index so a gradient-checkpointing recompute overwrites rather than duplicates.
    """

    def __init__(self, latent_positions: torch.Tensor):
        self.latent_positions = latent_positions  # [B, K]
        self.head_sums: dict[int, torch.Tensor] = {}
        self.num_heads: int | None = None

    def record(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
               scaling: float, kv_groups: int) -> None:
        probs = attention_rows(query, key, attention_mask, self.latent_positions, scaling, kv_groups)  # [B, H, K, S]
        self.head_sums[layer_idx] = probs.sum(dim=1)  # [B, K, S]
        self.num_heads = query.shape[1]

    def mean_map(self, layers: list[int]) -> torch.Tensor:
        """Attention of each latent query over all keys, averaged over the softmax-attention `layers` and
        heads: [B, K, S]."""
        if sorted(self.head_sums) != sorted(layers):
            raise RuntimeError(
                f"latent attention probe saw decoder layers {sorted(self.head_sums)}, expected {sorted(layers)}; the "
                f"text model must run with attn_implementation='{LAVIT_ATTENTION}'"
            )
        total = torch.stack([self.head_sums[i] for i in sorted(self.head_sums)]).sum(dim=0)  # [B, K, S]
        return total / (len(layers) * self.num_heads)


def attention_rows(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, rows: torch.Tensor,
                   scaling: float, kv_groups: int) -> torch.Tensor:
    """fp32 softmax attention probabilities of the query positions `rows` [B, R] over all keys: [B, H, R, S].

    Only these R rows are formed, never [B, H, S, S]. Grouped-query keys are shared by reshaping the
    queries rather than repeating the keys, so no [B, H, S, d] copy is made either.
    """
    bsz, heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    if q_len != kv_len:
        raise ValueError("attention rows need a full (uncached) forward pass")
    rows = rows.to(query.device)
    r = rows.shape[1]
    index = rows[:, None, :, None].expand(bsz, heads, r, head_dim)
    q_rows = query.gather(2, index).float()  # [B, H, R, d]
    q_rows = q_rows.reshape(bsz, heads // kv_groups, kv_groups * r, head_dim)  # [B, KVH, G*R, d]
    scores = torch.matmul(q_rows, key.float().transpose(-1, -2)) * scaling  # [B, KVH, G*R, S]
    scores = scores.view(bsz, heads, r, kv_len)  # [B, H, R, S]
    scores = scores + _rows_of_mask(attention_mask, rows, kv_len)  # [B, 1|H, R, S]
    return scores.softmax(dim=-1)


def _rows_of_mask(attention_mask: torch.Tensor | None, rows: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Additive fp32 mask rows [B, 1|H, R, S] for the given query positions."""
    bsz = rows.shape[0]
    if attention_mask is None:  # SDPA's is_causal shortcut: rebuild causality for these rows
        keys = torch.arange(kv_len, device=rows.device)
        allowed = keys[None, None, :] <= rows[:, :, None]  # [B, R, S]
        return torch.where(allowed, 0.0, float("-inf"))[:, None]
    mask = attention_mask.expand(bsz, -1, -1, -1)  # [B, 1|H, S, S]
    index = rows[:, None, :, None].expand(bsz, mask.shape[1], rows.shape[1], kv_len).to(mask.device)
    picked = mask.gather(2, index)  # [B, 1|H, R, S]
    if picked.dtype == torch.bool:
        return torch.where(picked, 0.0, float("-inf"))
    return picked.float()


def _causal(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device) -> torch.Tensor:
    """The model's mask, or (SDPA's is_causal shortcut) the causal one it stands for: [B|1, 1, Q, KV]."""
    if attention_mask is not None:
        return attention_mask
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    return (q_pos[:, None] >= torch.arange(kv_len, device=device)[None, :])[None, None]


def _pad_to(mask: torch.Tensor, length: int, value: bool) -> torch.Tensor:
    """A [B, S_prompt] bool mask extended (tokens generated after the prompt) or cut to `length` positions."""
    if mask.shape[1] < length:
        mask = torch.cat([mask, mask.new_full((mask.shape[0], length - mask.shape[1]), value)], dim=1)
    return mask[:, :length]


def _hide_keys(attention_mask: torch.Tensor | None, hidden_keys: torch.Tensor, q_len: int, kv_len: int,
               dtype: torch.dtype) -> torch.Tensor:
    """Combine the model's mask with 'no query sees a hidden key, except the hidden token itself'.

    So each latent token reads only the prompt and itself, and nothing after it reads any latent:
    the answer's first token is read off the last latent's state, which then carries no other latent.
    """
    device = hidden_keys.device
    hidden_keys = _pad_to(hidden_keys, kv_len, False)  # [B, KV]: tokens generated after the prompt are never hidden
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)  # queries are the last q_len positions
    kv_pos = torch.arange(kv_len, device=device)
    block = hidden_keys[:, None, None, :] & (q_pos[:, None] != kv_pos[None, :])[None, None]  # [B, 1, Q, KV]
    attention_mask = _causal(attention_mask, q_len, kv_len, device)
    if attention_mask.dtype == torch.bool:
        return attention_mask & ~block
    return attention_mask.masked_fill(block, torch.finfo(dtype).min)


def _gate_image_keys(attention_mask: torch.Tensor | None, gate: tuple[torch.Tensor, torch.Tensor, float],
                     q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """The model's mask plus ln γ on (gated query, image key); generated tokens are gated, never image keys."""
    image_keys, gated_queries, gamma = gate
    device = image_keys.device
    image = _pad_to(image_keys, kv_len, False)  # [B, KV]
    gated = _pad_to(gated_queries, kv_len, True)[:, kv_len - q_len:]  # [B, Q]
    pairs = gated[:, None, :, None] & image[:, None, None, :]  # [B, 1, Q, KV]
    mask = _causal(attention_mask, q_len, kv_len, device)
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    gated_mask = mask + math.log(gamma) if gamma > 0.0 else torch.finfo(mask.dtype).min  # γ = 0 blocks, as padding
    return torch.where(pairs, gated_mask, mask)


def lavit_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, *, lavit_probe: AttentionProbe | None = None,
                         **kwargs):
    hidden = _HIDDEN_KEYS.get()
    if hidden is not None:
        attention_mask = _hide_keys(attention_mask, hidden, query.shape[2], key.shape[2], query.dtype)
    gate = _IMAGE_GATE.get()
    if gate is not None:
        attention_mask = _gate_image_keys(attention_mask, gate, query.shape[2], key.shape[2], query.dtype)
    if lavit_probe is not None:
        scaling = kwargs.get("scaling") or module.scaling
        lavit_probe.record(module.layer_idx, query, key, attention_mask, scaling,
                           getattr(module, "num_key_value_groups", 1))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(LAVIT_ATTENTION, lavit_sdpa_attention)
AttentionMaskInterface.register(LAVIT_ATTENTION, sdpa_mask)


def use_lavit_attention(model: torch.nn.Module) -> None:
    """Route the text decoder through `lavit_sdpa`; the vision tower stays on plain SDPA."""
    model.set_attn_implementation({"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
