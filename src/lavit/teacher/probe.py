"""A_traj inside the attention call (eq. 2): the teacher's attention from chosen query tokens to the
image tokens, averaged over chosen layers, all heads and the chosen queries.

`TrajectoryProbe` is passed to the `lavit_sdpa` attention function as `lavit_probe`; each chosen layer
adds its head- and query-summed softmax rows into one [B, S] accumulator, so memory is
O(B·H·Q·S) for one layer at a time and the [layers, heads, S, S] tensor never exists.
"""

from __future__ import annotations

import re

import torch

from lavit.models.attention import attention_rows

QUERY_CHOICES = ("after_image", "question", "answer")


def parse_layers(spec: str, num_layers: int, attention_layers: list[int] | None = None) -> list[int]:
    """'all' | 'last:N' | 'first:N' | comma list '0,5,-1' → sorted decoder-layer indices.

    Only softmax-attention layers have maps: with `attention_layers` (a hybrid decoder's, e.g. Qwen3.5's
    every 4th layer), 'all', 'last:N' and 'first:N' count those layers, and an index must name one of them.
    """
    spec = spec.strip()
    usable = list(range(num_layers)) if attention_layers is None else sorted(attention_layers)
    if spec == "all":
        return usable
    match = re.fullmatch(r"(last|first):(\d+)", spec)
    if match:
        n = int(match.group(2))
        if not 0 < n <= len(usable):
            raise ValueError(f"layers '{spec}': N must be in 1..{len(usable)} (softmax-attention layers)")
        return usable[-n:] if match.group(1) == "last" else usable[:n]
    try:
        picked = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"layers must be 'all', 'last:N', 'first:N' or a comma list of indices, got {spec!r}") from None
    if not picked:
        raise ValueError("layers: empty selection")
    out = set()
    for i in picked:
        if not -num_layers <= i < num_layers:
            raise ValueError(f"layer index {i} out of range for a {num_layers}-layer decoder")
        if i % num_layers not in usable:
            raise ValueError(f"layer {i % num_layers} is a linear-attention layer (no attention map); softmax-attention "
                             f"layers are {usable}")
        out.add(i % num_layers)
    return sorted(out)


def query_mask(choice: str, image_mask: torch.Tensor, answer_mask: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """Which query rows are aggregated, [B, S] bool. `answer_mask` marks the answer's text tokens (not its
    end-of-turn token).

    after_image: every real token after the image (question, template tokens, answer) — eq. 2's default;
    answer: the queries that produce the answer's tokens (the position before each one, as generation pairs
    a token with the attention that produced it) — where the teacher looked while answering;
    question: the tokens after the image up to, not including, the query that produces the answer.
    """
    if choice not in QUERY_CHOICES:
        raise ValueError(f"queries must be one of {QUERY_CHOICES}, got {choice!r}")
    seq = image_mask.shape[1]
    positions = torch.arange(seq, device=image_mask.device)
    last_image = torch.where(image_mask, positions, -1).amax(dim=1, keepdim=True)  # [B, 1]
    after_image = (positions[None] > last_image) & attention_mask.bool()  # [B, S]
    if choice == "after_image":
        return after_image
    producers = torch.zeros_like(after_image)
    producers[:, :-1] = answer_mask[:, 1:].bool()  # [B, S]
    producers &= after_image
    if choice == "answer":
        return producers
    first_producer = torch.where(producers, positions, seq).amin(dim=1, keepdim=True)  # [B, 1]
    return after_image & (positions[None] < first_producer)


class TrajectoryProbe:
    """Accumulates Σ_layers Σ_heads Σ_queries P(query → key) per sample; `a_traj()` gives eq. 2's mean."""

    def __init__(self, queries: torch.Tensor, layers: list[int]):
        counts = queries.sum(dim=1)  # [B]
        if bool((counts == 0).any()):
            raise ValueError("a sample has no query tokens to aggregate")
        # Padded [B, Q] positions; invalid slots point at a real query and are zeroed after softmax.
        order = torch.sort(queries.int(), dim=1, descending=True, stable=True).indices
        q_max = int(counts.max())
        self.rows = order[:, :q_max]  # [B, Q]
        self.valid = torch.arange(q_max, device=queries.device)[None] < counts[:, None]  # [B, Q]
        self.rows = torch.where(self.valid, self.rows, self.rows[:, :1])
        self.counts = counts
        self.layers = set(layers)
        self.seen: set[int] = set()
        self.total: torch.Tensor | None = None  # [B, Q, S] fp32, summed over chosen layers and heads
        self.num_heads: int | None = None

    def record(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
               scaling: float, kv_groups: int) -> None:
        if layer_idx not in self.layers:
            return
        valid = self.valid.to(query.device)[:, None, :, None]  # [B, 1, Q, 1]
        summed = None  # [B, Q, S]: per query, summed over heads
        # One key/value head (and its query group) at a time bounds the extra memory to [B, G, Q, S].
        for kv in range(key.shape[1]):
            heads = slice(kv * kv_groups, (kv + 1) * kv_groups)
            mask = attention_mask
            if mask is not None and mask.dim() == 4 and mask.shape[1] > 1:  # a per-head mask
                mask = mask[:, heads]
            probs = attention_rows(query[:, heads], key[:, kv:kv + 1], mask, self.rows, scaling,
                                   kv_groups)  # [B, G, Q, S]
            part = torch.where(valid, probs, 0.0).sum(dim=1)  # [B, Q, S]
            summed = part if summed is None else summed + part
        if self.total is None:
            self.total = summed
        else:
            self.total = self.total + summed.to(self.total.device)
        self.seen.add(layer_idx)
        self.num_heads = query.shape[1]

    def per_query(self) -> torch.Tensor:
        """Each query's attention over all keys, averaged over the chosen layers and heads: [B, Q, S]
        (query slot q of sample b is position `rows[b, q]`; slots past `counts[b]` are zero)."""
        if self.seen != self.layers:
            missing = sorted(self.layers - self.seen)
            raise RuntimeError(f"trajectory probe never saw layers {missing}; the teacher's text model must run "
                               "with attn_implementation='lavit_sdpa'")
        return self.total / (len(self.layers) * self.num_heads)

    def a_traj(self) -> torch.Tensor:
        """Mean attention over the chosen layers, heads and queries, for every key position: [B, S]."""
        per_query = self.per_query()  # [B, Q, S]
        return per_query.sum(dim=1) / self.counts.to(per_query.device).float()[:, None]
