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
from dataclasses import dataclass
from typing import Literal

import torch

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
