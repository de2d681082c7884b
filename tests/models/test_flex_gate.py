"""The training gate on FlexAttention (`gate_attention=flex`) equals the dense-mask gate: the gate itself against
`build_gated_attention_mask`, and the student of every family — outputs, probe maps (latent rows, the gated
readout's row, any rows `attention_from` asks for) and the gradients of every parameter — at a small γ and at γ = 0.
A new γ is new data for the compiled kernel, not a recompile.

torch's FlexAttention refuses a backward on a CPU (`_validate_device`); the gradient tests lift that one check to
run torch's reference backward of the same score_mod and block mask (on CUDA the compiled kernel's backward runs
instead, checked by `lavit bench gpu`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.attention.flex_attention import flex_attention

from lavit.data.collator import LavitCollator
from lavit.models.attention import attention_rows, flex_gate_chosen
from lavit.models.gating import build_flex_gate, build_gated_attention_mask
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.losses import concept_loss, ntp_loss, total_loss, traj_loss
from lavit.training.train import build_student
from tests.conftest import TEACHER_DIM, Tiny

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """Lift torch's 'no FlexAttention backward on CPU' check so that its reference backward runs here."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda query, key, value: None)


def hand_made_gate():
    """Two right-padded sequences of 40 positions: image keys 3..9, gated queries from 20 (real ones only)."""
    bsz, seq = 2, 40
    attention_mask = torch.ones(bsz, seq, dtype=torch.long)
    attention_mask[1, 31:] = 0
    image = torch.zeros(bsz, seq, dtype=torch.bool)
    image[:, 3:10] = True
    gated = torch.zeros(bsz, seq, dtype=torch.bool)
    gated[:, 20:] = True
    gated &= attention_mask.bool()
    return attention_mask, image, gated


@pytest.mark.parametrize("gamma", [1e-3, 0.37, 0.0])
def test_the_flex_gate_is_the_dense_gate(gamma, flex_backward_on_cpu):
    attention_mask, image, gated = hand_made_gate()
    dense = build_gated_attention_mask(attention_mask, image, gated, gamma, torch.float32)  # [B, 1, S, S]
    gate = build_flex_gate(attention_mask, image, gated, gamma)
    # the probes' rows: every row of the dense mask, exactly
    rows = torch.arange(40).expand(2, 40)
    assert torch.equal(gate.mask_rows(rows), dense)
    # the attention itself, forward and backward, grouped-query heads (4 over 2)
    q, k, v = (torch.randn(2, h, 40, 16, requires_grad=True) for h in (4, 2, 2))
    flex_out = flex_attention(q, k, v, score_mod=gate.score_mod, block_mask=gate.block_mask, enable_gqa=True)
    sdpa_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
    weights = torch.randn_like(sdpa_out)
    flex_grads = torch.autograd.grad((flex_out * weights).sum(), (q, k, v))
    sdpa_grads = torch.autograd.grad((sdpa_out * weights).sum(), (q, k, v))
    real = attention_mask.bool()
    torch.testing.assert_close(flex_out.transpose(1, 2)[real], sdpa_out.transpose(1, 2)[real], rtol=1e-5, atol=1e-6)
    for flex_grad, sdpa_grad in zip(flex_grads, sdpa_grads):
        torch.testing.assert_close(flex_grad, sdpa_grad, rtol=1e-5, atol=1e-6)
    # attention_rows on the gate reads the same rows as on the dense mask
    rows = torch.tensor([[5, 25, 39], [5, 25, 30]])
    with torch.no_grad():
        assert torch.equal(attention_rows(q, k, gate, rows, 0.25, 2), attention_rows(q, k, dense, rows, 0.25, 2))
    if gamma == 0.0:  # blocked like padding: no gated query puts any weight on an image key
        probs = attention_rows(q, k, gate, torch.tensor([[25, 39], [25, 30]]), 0.25, 2)  # [B, H, 2, S]
        assert probs[..., 3:10].abs().max() == 0


def test_a_new_gamma_or_batch_is_not_a_recompile():
    """γ, the masks and the padding are tensors the score_mod and mask_mod close over: Dynamo takes them as graph
    inputs, so only a new shape compiles again."""
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(flex_attention, backend=counter)
    q, k, v = torch.randn(2, 4, 40, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    attention_mask, image, gated = hand_made_gate()
    outputs = []
    for gamma in (1e-6, 0.2, 0.0, 0.9):
        gate = build_flex_gate(attention_mask, image, gated, gamma)
        outputs.append(compiled(q, k, v, score_mod=gate.score_mod, block_mask=gate.block_mask, enable_gqa=True))
    attention_mask[0, 35:] = 0
    gate = build_flex_gate(attention_mask, image, gated & attention_mask.bool(), 0.5)
    compiled(q, k, v, score_mod=gate.score_mod, block_mask=gate.block_mask, enable_gqa=True)
    assert counter.frame_count == 1
    assert not torch.equal(outputs[0], outputs[1])  # the captured γ is read, not a value frozen at the first call


def run_student(student: LavitStudent, batch: dict, mode: str, gamma: float):
    """Hidden states, maps and every parameter's gradient of one LaViT step's loss."""
    student.gate_attention, student.gamma = mode, gamma
    student.zero_grad(set_to_none=True)
    out = student(batch)
    loss = total_loss(ntp_loss(out.ntp_logits, out.ntp_targets), concept_loss(out.concept_pred, batch["v_sem"]),
                      traj_loss(out.student_traj, batch["traj_target"]))
    (loss - out.readout_latent_mass.log().mean()).backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    answer_rows = batch["attention_mask"].sum(1, keepdim=True) - torch.tensor([[3, 1]])  # [B, 2]: gated queries
    maps, _ = student.attention_from(batch, answer_rows)  # [B, 2, S]
    return out.hidden_states.detach(), out.student_traj.detach(), out.readout_latent_mass.detach(), maps, grads


@pytest.mark.parametrize("gamma", [1e-3, 0.0])
def test_the_student_on_flex_equals_the_student_on_the_dense_mask(tiny, gamma, flex_backward_on_cpu):
    """Every family, a padded batch with a gated readout (so the latent map's last row and the answer rows
    carry ln γ): Qwen3.5's linear-attention layers take the 2-D mask either way."""
    batch = LavitCollator(tiny.tokenizer.pad_token_id, gate_question_tokens=True, gate_readout=True)(tiny.examples())
    assert not batch["attention_mask"].all()
    student = LavitStudent(tiny.model, tiny.latent_ids, ProjectionHead(128, TEACHER_DIM), gate_readout=True,
                           readout_mass=True)
    dense = run_student(student, batch, "dense", gamma)
    flex = run_student(student, batch, "flex", gamma)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(flex[0][real], dense[0][real], rtol=1e-5, atol=1e-5)
    for flex_map, dense_map in zip(flex[1:4], dense[1:4]):
        torch.testing.assert_close(flex_map, dense_map, rtol=1e-5, atol=1e-6)
    assert flex[4].keys() == dense[4].keys()
    # per parameter, relative to the gradient's norm: single entries of a summed gradient (an embedding row used by
    # many positions) cancel to values far below the tensor's scale, where fp32 rounding is relatively large
    errors = {name: ((flex[4][name] - grad).norm() / grad.norm()).item() for name, grad in dense[4].items()}
    assert max(errors.values()) < 1e-5, errors
    if gamma == 0.0:  # the gated rows see no image
        assert dense[3][..., batch["image_mask"][0]].abs().max() < 1e-30


def test_gate_attention_is_chosen_per_device_and_refused_where_it_cannot_work():
    assert [flex_gate_chosen(c, torch.device("cpu")) for c in ("auto", "dense", "flex")] == [False, False, True]
    assert [flex_gate_chosen(c, torch.device("cuda")) for c in ("auto", "dense", "flex")] == [True, False, True]
    with pytest.raises(ValueError, match="gate attention must be one of"):
        flex_gate_chosen("sdpa", torch.device("cpu"))
    with pytest.raises(ValueError, match="gate_attention must be auto, dense or flex"):
        LavitTrainConfig(gate_attention="fast")


def test_lavit_train_hands_the_choice_to_its_student_and_refuses_flex_without_cuda(monkeypatch):
    student, _, _ = build_student(LavitTrainConfig(gate_attention="dense"), teacher_dim=TEACHER_DIM)
    assert student.gate_attention == "dense"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gate_attention=flex needs a CUDA device"):
        build_student(LavitTrainConfig(gate_attention="flex"), teacher_dim=TEACHER_DIM)


def test_flex_gate_needs_the_lavit_attention_function():
    """A text model on plain SDPA would drop the gate (an unknown kwarg) without a word: refused instead."""
    tiny = Tiny(k=4)
    batch = tiny.batch()
    tiny.model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    student = LavitStudent(tiny.model, tiny.latent_ids, trajectory_loss=False)
    student.gate_attention, student.gamma = "flex", 1e-3
    with pytest.raises(ValueError, match="needs the text model on 'lavit_sdpa'"), torch.no_grad():
        student(batch)
