"""Curriculum sensory gating (paper §4.2.1, eq. 4–5).

During training, gated queries (answer tokens, and by default the question tokens between the
image and the latent block) get an additive bias ln γ(t) on their attention logits to image keys.
Latent tokens always see the image, except, on request, the last one: the *readout*, whose output
predicts the answer's first token. With a one-token answer (an option letter, a toy-world word) the
paper's gate never reaches the prediction itself, only the answer token's own query, which predicts
what follows; `gate_readout` closes that gap. γ = 1 means *no bias at all*: the model is then run
exactly as a plain model, so there is no train/inference shift. A final γ below 1 (a bottleneck
beyond the paper) keeps the bias at inference, which only lavit's own generation applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

GateVariant = Literal["cosine", "hard", "none"]


@dataclass(frozen=True)
class InferenceGate:
    """The gate a student trained to a final γ below 1 keeps at inference (its lavit.json `inference_gate`)."""

    gamma: float
    question_tokens: bool = True
    readout: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"an inference gate needs 0 <= γ < 1 (γ = 1 is no gate), got {self.gamma}")

    @classmethod
    def from_meta(cls, meta: dict) -> InferenceGate | None:
        """The gate a checkpoint's lavit.json asks for, or None (a plain, stock-servable checkpoint)."""
        record = meta.get("inference_gate")
        return None if not record else cls(float(record["gamma"]), bool(record.get("question_tokens", True)),
                                           bool(record.get("readout", False)))


@dataclass(frozen=True)
class GateSchedule:
    """γ(t) for the three variants of the paper's ablations.

    cosine (default, eq. 5): γ = ε + (γ_f-ε)/2 · (1 - cos(π t / T_w)) for t < T_w, else γ_f.
    hard ("w/o curriculum gate"): γ = 0 for t < T_w, else γ_f.
    none ("single stage"): γ ≡ γ_f.
    γ_f (`final`) is 1 in the paper: the gate opens fully.
    """

    variant: GateVariant = "cosine"
    epsilon: float = 1e-6
    warmup_steps: int = 400
    final: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in ("cosine", "hard", "none"):
            raise ValueError(f"gate variant must be cosine, hard or none, got {self.variant!r}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"gate epsilon must be in (0, 1), got {self.epsilon}")
        if self.warmup_steps < 0:
            raise ValueError(f"gate warmup steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"final gate γ must be in [0, 1], got {self.final}")

    def gamma(self, step: int) -> float:
        if self.variant == "none" or step >= self.warmup_steps:
            return self.final
        if self.variant == "hard":
            return 0.0
        return self.epsilon + (self.final - self.epsilon) / 2.0 * (1.0 - math.cos(math.pi * step / self.warmup_steps))


def gated_query_mask(image_mask: torch.Tensor, latent_mask: torch.Tensor, attention_mask: torch.Tensor,
                     gate_question_tokens: bool = True, gate_readout: bool = False) -> torch.Tensor:
    """Which query positions the gate applies to. All inputs and the result are [B, S] bools.

    Gated: real tokens after the last image token that are not latent tokens; with
    `gate_question_tokens=False`, only tokens after the last latent token (the answer); with
    `gate_readout`, also the last latent token (the readout, which predicts the answer's first token).
    """
    positions = torch.arange(image_mask.shape[1], device=image_mask.device)  # [S]
    last_image = torch.where(image_mask, positions, -1).amax(dim=1, keepdim=True)  # [B, 1]
    last_latent = torch.where(latent_mask, positions, -1).amax(dim=1, keepdim=True)  # [B, 1]
    start = last_image if gate_question_tokens else last_latent
    gated = (positions > start) & ~latent_mask
    if gate_readout:
        gated |= (positions == last_latent) & (last_latent >= 0)
    return gated & attention_mask.bool()


def build_gated_attention_mask(attention_mask: torch.Tensor, image_mask: torch.Tensor,
                               gate_query_mask: torch.Tensor, gamma: float, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask [B, 1, S, S]: causal + padding blocked, ln γ on (gated query, image key).

    γ = 0 (the `hard` variant's first phase) blocks those entries like padding does.
    """
    bsz, seq = attention_mask.shape
    device = attention_mask.device
    blocked = torch.finfo(dtype).min
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()  # [S, S]
    allowed = causal[None] & attention_mask.bool()[:, None, :]  # [B, S, S]
    bias = math.log(gamma) if gamma > 0.0 else blocked
    gate = gate_query_mask[:, :, None] & image_mask[:, None, :]  # [B, S, S]
    mask = torch.zeros(bsz, seq, seq, dtype=dtype, device=device)  # [B, S, S]
    mask.masked_fill_(gate, bias)
    mask.masked_fill_(~allowed, blocked)
    return mask[:, None]  # [B, 1, S, S]


@dataclass(frozen=True)
class FlexGate:
    """The training gate of `build_gated_attention_mask` in the form FlexAttention takes (eq. 4, DESIGN §2): causal +
    key padding as a block mask (whole blocks above the diagonal or in the padding are skipped), ln γ on (gated
    query, image key) as a `score_mod` closure over tensors, γ among them, so that a new γ each step (or a new
    batch) is new data for the compiled kernel, never a new kernel. No [B, 1, S, S] tensor is formed."""

    block_mask: BlockMask
    score_mod: Callable  # (score, b, h, q_idx, kv_idx) → score, eq. 4
    gated_queries: torch.Tensor  # [B, S] bool
    image_keys: torch.Tensor  # [B, S] bool
    key_valid: torch.Tensor  # [B, S] bool: real (unpadded) tokens
    log_gamma: torch.Tensor  # [] fp32: ln γ, or the fp32 minimum at γ = 0 (blocked like padding)

    def mask_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The additive fp32 mask rows [B, 1, R, S] of the query positions `rows` [B, R]: those rows of
        `build_gated_attention_mask` in fp32, for the probes (which form only these rows)."""
        keys = torch.arange(self.key_valid.shape[1], device=rows.device)  # [S]
        allowed = (keys[None, None, :] <= rows[:, :, None]) & self.key_valid[:, None, :]  # [B, R, S]
        gate = self.gated_queries.gather(1, rows)[:, :, None] & self.image_keys[:, None, :]  # [B, R, S]
        bias = torch.where(gate, self.log_gamma, 0.0)  # [B, R, S]
        return torch.where(allowed, bias, torch.finfo(torch.float32).min)[:, None]  # [B, 1, R, S]


def build_flex_gate(attention_mask: torch.Tensor, image_mask: torch.Tensor, gate_query_mask: torch.Tensor,
                    gamma: float) -> FlexGate:
    """The gate of `build_gated_attention_mask(attention_mask, image_mask, gate_query_mask, gamma, ...)` for
    FlexAttention (inputs [B, S]). On CUDA the block mask is built by a compiled kernel, as FlexAttention's docs
    advise for long sequences; elsewhere eagerly (forming [B, S, S] booleans once)."""
    bsz, seq = attention_mask.shape
    device = attention_mask.device
    key_valid = attention_mask.bool()
    gated, image = gate_query_mask.to(device), image_mask.to(device)
    log_gamma = torch.tensor(math.log(gamma) if gamma > 0.0 else torch.finfo(torch.float32).min,
                             dtype=torch.float32, device=device)

    def causal_and_unpadded(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & key_valid[b, kv_idx]

    def gate_score(score, b, h, q_idx, kv_idx):
        return torch.where(gated[b, q_idx] & image[b, kv_idx], score + log_gamma, score)

    block_mask = create_block_mask(causal_and_unpadded, bsz, None, seq, seq, device=device,
                                   _compile=device.type == "cuda")
    return FlexGate(block_mask, gate_score, gated, image, key_valid, log_gamma)
