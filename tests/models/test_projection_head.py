"""φ_mlp (eq. 6) computes in fp32 under every engine's dtype contract: fp32 weights (DDP, autocast), bf16 weights
handed over by FSDP2's `param_dtype=bf16` all-gather, and the whole module cast to bf16 (DeepSpeed bf16)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lavit.models.projection_head import ProjectionHead


def reference(head: ProjectionHead, x: torch.Tensor) -> torch.Tensor:
    """The head by hand in fp64, from whatever its weights hold now."""
    w1, b1, w2, b2 = (p.detach().double() for p in (head.net[0].weight, head.net[0].bias,
                                                    head.net[2].weight, head.net[2].bias))
    return F.gelu(x.double() @ w1.T + b1) @ w2.T + b2


@pytest.mark.parametrize("weights, inputs, autocast", [
    (torch.float32, torch.float32, False),
    (torch.float32, torch.bfloat16, True),   # DDP under bf16 autocast: bf16 states, fp32 weights
    (torch.bfloat16, torch.bfloat16, False),  # FSDP2 bf16 policy / DeepSpeed bf16: the engine's bf16 weights
    (torch.bfloat16, torch.bfloat16, True),
])
def test_head_computes_in_fp32_whatever_the_engine_hands_it(weights, inputs, autocast):
    torch.manual_seed(0)
    head = ProjectionHead(16, 24).to(weights)
    x = torch.randn(3, 16).to(inputs).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = head(x)  # [3, 24]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(head, x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    for p in head.parameters():
        assert p.grad is not None and p.grad.dtype == weights and p.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bf16_weights_give_the_fp32_heads_output_up_to_their_rounding():
    torch.manual_seed(0)
    head = ProjectionHead(16, 24)
    x = torch.randn(3, 16)
    cast = copy.deepcopy(head).to(torch.bfloat16)
    # the only difference is the weights' bf16 rounding: no bf16 arithmetic inside
    torch.testing.assert_close(cast(x).double(), reference(cast, x), rtol=1e-6, atol=1e-6)
    assert (cast(x) - head(x)).abs().max() < 0.05
