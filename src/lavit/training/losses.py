"""The LaViT objective (paper §4.2.2–4.2.3) as small pure functions, all computed in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
