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
* `lavit_gate=FlexGate(...)`: the training gate (eq. 4) on FlexAttention instead of a dense 4-D float mask
  (`GATE_ATTENTION`, `flex_gate_chosen`): the layer ignores the model's own mask and runs `flex_attention` with
  causal + padding as the gate's block mask and ln γ as its `score_mod`; probes read the gate's mask rows. On
  CUDA through `torch.compile` (a fused kernel); elsewhere FlexAttention's eager reference, which forms the
  scores in full and, in torch, has no backward on a CPU (a CPU trains on the dense mask).

Without these kwargs the function *is* `sdpa_attention_forward`, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Literal, Protocol, get_args

import torch
from torch.nn.attention.flex_attention import flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lavit.models.gating import FlexGate

LAVIT_ATTENTION = "lavit_sdpa"
# How the training gate reaches the softmax layers: `dense`, an additive [B, 1, S, S] float mask through SDPA (which
# then cannot use its flash kernel); `flex`, FlexAttention with a block mask and a score_mod (`FlexGate`); `auto`,
# flex on CUDA and dense elsewhere (torch's FlexAttention has no backward on a CPU).
GateAttention = Literal["auto", "dense", "flex"]
GATE_ATTENTION = get_args(GateAttention)
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
    def record(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor,
               attention_mask: torch.Tensor | FlexGate | None, scaling: float, kv_groups: int) -> None: ...


class LatentAttentionProbe:
    """Collects the attention rows of chosen query positions (the latent tokens for eq. 7), one [B, K, S]
    head-sum per decoder layer.

    Keyed by layer index so a gradient-checkpointing recompute overwrites rather than duplicates.
    """

    def __init__(self, latent_positions: torch.Tensor):
        self.latent_positions = latent_positions  # [B, K]
        self.head_sums: dict[int, torch.Tensor] = {}
        self.num_heads: int | None = None

    def record(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor,
               attention_mask: torch.Tensor | FlexGate | None, scaling: float, kv_groups: int) -> None:
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


def attention_rows(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | FlexGate | None,
                   rows: torch.Tensor, scaling: float, kv_groups: int) -> torch.Tensor:
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


def _rows_of_mask(attention_mask: torch.Tensor | FlexGate | None, rows: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Additive fp32 mask rows [B, 1|H, R, S] for the given query positions."""
    if isinstance(attention_mask, FlexGate):
        return attention_mask.mask_rows(rows)
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


def flex_gate_chosen(choice: GateAttention, device: torch.device) -> bool:
    """Whether the training gate runs on FlexAttention (`GateAttention`) for a forward on `device`."""
    if choice not in GATE_ATTENTION:
        raise ValueError(f"gate attention must be one of {', '.join(GATE_ATTENTION)}, got {choice!r}")
    return choice == "flex" or (choice == "auto" and torch.device(device).type == "cuda")


@cache
def _compiled_flex_attention():
    """FlexAttention compiled once per process: Dynamo then specialises per shape and dtype, and the gate's tensors
    (γ, the masks) are inputs of the compiled graph, never constants baked into it."""
    return torch.compile(flex_attention)


def _flex_gated_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          gate: FlexGate, probe: AttentionProbe | None, **kwargs) -> tuple[torch.Tensor, None]:
    """One softmax layer under the training gate on FlexAttention: [B, S, H, d] as `sdpa_attention_forward`."""
    if _HIDDEN_KEYS.get() is not None or _IMAGE_GATE.get() is not None:
        raise ValueError("the training gate (lavit_gate) cannot be combined with the inference contexts hidden_keys "
                         "or gated_image_keys")
    if kwargs.get("dropout", 0.0) > 0.0:
        raise ValueError("FlexAttention has no attention dropout: the gated forward on flex needs attention_dropout=0 "
                         "(as every Qwen-VL config has it), or gate attention 'dense'")
    if gate.key_valid.device != query.device:
        raise ValueError(f"the training gate is on {gate.key_valid.device}, this layer on {query.device}: the gate on "
                         "FlexAttention needs the batch on the device of every decoder layer (one device per process)")
    if query.shape[2] != key.shape[2] or key.shape[2] != gate.key_valid.shape[1]:
        raise ValueError(f"the training gate covers {gate.key_valid.shape[1]} positions, the layer has "
                         f"{query.shape[2]} queries over {key.shape[2]} keys: it needs a full (uncached) forward")
    scaling = kwargs.get("scaling") or module.scaling
    if probe is not None:
        probe.record(module.layer_idx, query, key, gate, scaling, getattr(module, "num_key_value_groups", 1))
    attend = _compiled_flex_attention() if query.is_cuda else flex_attention
    out = attend(query, key, value, score_mod=gate.score_mod, block_mask=gate.block_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])  # [B, H, S, d]
    return out.transpose(1, 2).contiguous(), None  # [B, S, H, d]


def lavit_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, *, lavit_probe: AttentionProbe | None = None,
                         lavit_gate: FlexGate | None = None, **kwargs):
    if lavit_gate is not None:  # the model's own (causal + padding) mask is the gate's block mask here
        return _flex_gated_attention(module, query, key, value, lavit_gate, lavit_probe, **kwargs)
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
