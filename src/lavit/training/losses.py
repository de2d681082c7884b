"""The LaViT objective (paper §4.2.2–4.2.3) as small pure functions, all computed in fp32, and the distillation
baselines' term: the teacher's next-token distribution, from its stored top-k, matched by a generalised JSD."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Where the teacher's stored top-k holds (to fp32 rounding) all its mass but the student still has tokens outside
# it, the teacher's `rest` probability is floored here: a reverse KL would otherwise be infinite on rounding alone.
REST_FLOOR = 1e-12


def ntp_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_ntp: mean next-token cross-entropy over the labelled tokens (latents + answer). logits [N, V]."""
    if targets.numel() == 0:
        raise ValueError("no labelled tokens in the batch: L_ntp is undefined")
    return F.cross_entropy(logits.float(), targets)


def concept_loss(pred: torch.Tensor, v_sem: torch.Tensor) -> torch.Tensor:
    """L_concept (eq. 6): 1 - mean_i CosSim(φ_mlp(h_z^(i)), V_sem^(i)). Both [B, D_teacher]."""
    if pred.shape != v_sem.shape:
        raise ValueError(f"projection head gives {tuple(pred.shape)} but V_sem targets are {tuple(v_sem.shape)}: "
                         "the teacher dimension does not match the head")
    return 1.0 - F.cosine_similarity(pred.float(), v_sem.float(), dim=-1).mean()


def traj_loss(student: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L_traj (eq. 7): (1/B) Σ_i Σ_j KL(A_traj^(i,j) ‖ A_student^(i,j)).

    student [B, K, N]: each latent token's distribution over image tokens. target [B, N] (one map
    per sample, shared by the K latent tokens) or [B, K, N]. Zero target entries (Top-K
    sparsification, padding) contribute nothing (0 · log 0 = 0).
    """
    if target.dim() == 2 and target.shape == (student.shape[0], student.shape[2]):
        target = target[:, None, :].expand_as(student)
    if target.shape != student.shape:
        raise ValueError(f"trajectory target {tuple(target.shape)} does not match the student map {tuple(student.shape)}")
    target = target.float()
    log_ratio = torch.log(target.clamp_min(eps)) - torch.log(student.float().clamp_min(eps))
    kl = torch.where(target > 0, target * log_ratio, torch.zeros_like(target))  # [B, K, N]
    return kl.sum(dim=(1, 2)).mean()


def read_loss(readout_latent_mass: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L_read (beyond the paper): -(1/B) Σ_i log m_i, with m_i the attention mass the readout (the last latent,
    which predicts the answer's first token) puts on latents 1..K-1, averaged over layers and heads. [B]."""
    return -torch.log(readout_latent_mass.float().clamp_min(eps)).mean()


def total_loss(ntp: torch.Tensor, concept: torch.Tensor | None, traj: torch.Tensor | None,
               lam: float = 0.3, read: torch.Tensor | None = None, read_weight: float = 0.0) -> torch.Tensor:
    """L_total (eq. 9) = L_ntp + λ (L_concept + L_traj) [+ w_read L_read]; a switched-off term counts as absent."""
    total = ntp
    for term in (concept, traj):
        if term is not None:
            total = total + lam * term
    if read is not None:
        total = total + read_weight * read
    return total


@dataclass(frozen=True)
class KdObjective:
    """The distillation term's settings: β of the generalised JSD (0 = forward KL, 1 = reverse KL), the temperature
    τ the teacher's log-probabilities were stored at, and the weight of cross-entropy kept on the answer tokens."""

    beta: float
    temperature: float
    ce_weight: float


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, which gradient checks need)."""
    return x if x.dtype == torch.float64 else x.float()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate at both ends (Mächler 2012): log(−expm1 x) near 0, log1p(−eˣ) below
    −ln 2."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_partition(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher p and student q on the partition {the teacher's top-k tokens…, rest} of the student's vocabulary.

    student_logits [N, V]; ids [N, k]: the student ids of the teacher's top-k tokens, −1 where a token has none
    (its mass joins the rest); teacher_logprobs [N, k]: log p at temperature τ. q = softmax(z / τ).
    p_rest = 1 − Σ_mapped p_j (floored at REST_FLOOR), q_rest = the student's mass off the mapped ids, computed as a
    log-sum-exp over them, so exact as q_rest → 0. Returns log p, log q [N, k+1] (slot k: rest) and valid [N, k+1]:
    unmapped slots, and the rest slot where the mapped ids cover the whole vocabulary, are invalid (value 0).
    """
    z = _fp32(student_logits)  # [N, V]
    if temperature != 1.0:  # at τ = 1 the division would only make another [N, V] fp32 copy
        z = z / temperature
    lse = z.logsumexp(dim=-1)  # [N]
    mapped = ids >= 0  # [N, k]
    index = ids.clamp_min(0)  # [N, k]
    log_q_top = z.gather(1, index) - lse[:, None]  # [N, k]
    in_top = torch.zeros(z.shape, dtype=torch.bool, device=z.device)  # [N, V]
    rows, slots = mapped.nonzero(as_tuple=True)
    in_top[rows, ids[rows, slots]] = True
    has_rest = ~in_top.all(dim=-1)  # [N]
    # a row with no rest keeps its logits (a finite placeholder, dropped below): a log-sum-exp over only −inf has a
    # NaN gradient
    off_top = z.masked_fill(in_top & has_rest[:, None], float("-inf"))  # [N, V]
    log_q_rest = off_top.logsumexp(dim=-1) - lse  # [N]
    t = _fp32(teacher_logprobs)  # [N, k]
    log_p_rest = log1mexp(t.masked_fill(~mapped, float("-inf")).logsumexp(dim=-1)).clamp_min(math.log(REST_FLOOR))
    valid = torch.cat([mapped, has_rest[:, None]], dim=-1)  # [N, k+1]
    log_p = torch.cat([t, log_p_rest[:, None]], dim=-1).masked_fill(~valid, 0.0)  # [N, k+1]
    log_q = torch.cat([log_q_top, log_q_rest[:, None]], dim=-1).masked_fill(~valid, 0.0)  # [N, k+1]
    return log_p, log_q, valid


def partition_kl(log_a: torch.Tensor, log_b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ_i a_i (log a_i − log b_i) over the valid slots, per row: [N, S] → [N]."""
    return torch.where(valid, log_a.exp() * (log_a - log_b), torch.zeros_like(log_a)).sum(dim=-1)


def generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD (GKD, Agarwal et al. 2024, eq. 1) between teacher p and student q, per row [N]:
    β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q; as in TRL, β = 0 is forward KL(p ‖ q) and β = 1
    reverse KL(q ‖ p) (the limits of JSD(β)/β and JSD(β)/(1 − β))."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return partition_kl(log_p, log_q, valid)
    if beta == 1.0:
        return partition_kl(log_q, log_p, valid)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))  # [N, S]
    return beta * partition_kl(log_p, log_m, valid) + (1 - beta) * partition_kl(log_q, log_m, valid)


def kd_divergence(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                  beta: float, temperature: float = 1.0) -> torch.Tensor:
    """The distillation term per answer position [N]: `generalized_jsd` on the top-k partition (`topk_partition`).
    A coarse-grained divergence: by the data-processing inequality at most the full-vocabulary one, equal to it
    when the top-k covers the vocabulary."""
    return generalized_jsd(*topk_partition(student_logits, ids, teacher_logprobs, temperature), beta)


def kd_ntp_loss(logits: torch.Tensor, targets: torch.Tensor, answer: torch.Tensor, kd_ids: torch.Tensor,
                kd_logprobs: torch.Tensor, kd: KdObjective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_ntp with the answer's targets distilled: (1/N) [Σ_latents CE_t + Σ_answer (D_t + w CE_t)] over the N
    labelled tokens (eq. 9's L_ntp when every D_t = 0 and w = 1). Latent tokens keep their cross-entropy: they are
    the student's own tokens, the teacher has no distribution over them.

    logits [N, V], targets [N]; answer [N] bool (the positions that predict answer tokens or end-of-turn);
    kd_ids, kd_logprobs [N_answer, k] in the order of those positions. Returns (the loss, mean D over the answer
    positions, mean CE over all labelled tokens)."""
    if targets.numel() == 0:
        raise ValueError("no labelled tokens in the batch: L_ntp is undefined")
    if int(answer.sum()) != kd_ids.shape[0]:
        raise ValueError(f"{int(answer.sum())} answer positions but {kd_ids.shape[0]} teacher distributions: the "
                         "distillation targets are not aligned with the labels")
    logits = _fp32(logits)  # once, for the cross-entropy and the divergence
    ce = F.cross_entropy(logits, targets, reduction="none")  # [N]
    divergence = kd_divergence(logits[answer], kd_ids, kd_logprobs, kd.beta, kd.temperature)  # [N_answer]
    total = ce[~answer].sum() + (divergence + kd.ce_weight * ce[answer]).sum()
    return total / targets.numel(), divergence.mean(), ce.mean()
