"""φ_mlp (paper eq. 6): maps the last latent token's state into the teacher's semantic space."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

HEAD_WEIGHTS = "projection_head.safetensors"
HEAD_CONFIG = "projection_head.json"


class ProjectionHead(nn.Module):
    """D_student → D_student → D_teacher with GELU, computed in fp32 whatever the engine's precision policy.

    Its weights are fp32 master weights, but an engine may hand them to the forward in bf16 (FSDP2's
    `MixedPrecisionPolicy(param_dtype=bf16)` all-gathers them in bf16, DeepSpeed's bf16 mode casts the whole
    module), so the forward upcasts input *and* weights rather than trusting either dtype.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.net = nn.Sequential(nn.Linear(student_dim, student_dim), nn.GELU(), nn.Linear(student_dim, teacher_dim))

    def forward(self, latent_hidden: torch.Tensor) -> torch.Tensor:
        first, act, second = self.net
        # autocast off: under a bf16 run its matmuls would otherwise run in bf16
        with torch.autocast(latent_hidden.device.type, enabled=False):
            x = F.linear(latent_hidden.float(), first.weight.float(), first.bias.float())  # [B, D_student]
            return F.linear(act(x), second.weight.float(), second.bias.float())  # [B, D_teacher]

    def save(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Weights and dimensions into `directory`; `state_dict` (gathered from a sharded run) replaces our own."""
        directory = Path(directory)
        weights = self.state_dict() if state_dict is None else state_dict
        save_file({k: v.contiguous() for k, v in weights.items()}, directory / HEAD_WEIGHTS)
        (directory / HEAD_CONFIG).write_text(json.dumps({"student_dim": self.student_dim,
                                                          "teacher_dim": self.teacher_dim}))

    @classmethod
    def load(cls, directory: str | Path) -> "ProjectionHead":
        directory = Path(directory)
        dims = json.loads((directory / HEAD_CONFIG).read_text())
        head = cls(dims["student_dim"], dims["teacher_dim"])
        head.load_state_dict(load_file(directory / HEAD_WEIGHTS))
        return head
