"""The student's forward: γ = 1 is the plain model, the gate is causal and effective, the latent
probe equals eager attention, and every loss reaches the parameters it should."""

import pytest
import torch

from lavit.data.collator import LavitCollator
from lavit.models.gating import gated_query_mask
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.training.losses import concept_loss, ntp_loss, traj_loss
from tests.conftest import TEACHER_DIM, Tiny

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def student_of(tiny, head=True):
    return LavitStudent(tiny.model, tiny.latent_ids, ProjectionHead(128, TEACHER_DIM) if head else None)


def test_gamma_one_is_the_plain_model_bit_for_bit(tiny):
    batch = tiny.batch()
    student = student_of(tiny)
    student.gamma = 1.0
    with torch.no_grad():
        out = student(batch)
        tiny.model.set_attn_implementation("sdpa")
        plain = tiny.model(**{k: batch[k] for k in MODEL_INPUTS})
    assert torch.equal(tiny.model.lm_head(out.hidden_states), plain.logits)


def test_gamma_just_below_one_matches_the_plain_model(tiny):
    """The gated path builds mRoPE positions and the 4-D mask itself (per family: a mask per layer type, or one
    tensor); with ln γ ≈ -1e-7 it must agree with the model's own 2-D-mask forward on a padded batch."""
    batch = tiny.batch()
    assert not batch["attention_mask"].all()
    student = student_of(tiny)
    with torch.no_grad():
        student.gamma = 1.0
        plain = student(batch).hidden_states
        student.gamma = 1.0 - 1e-7
        gated = student(batch).hidden_states
    real = batch["attention_mask"].bool()
    assert torch.allclose(gated[real], plain[real], atol=1e-4)


def test_gate_is_causal(tiny):
    """Changing a later token never changes an earlier logit, with the gate closed."""
    batch = tiny.batch()
    student = student_of(tiny)
    student.gamma = 1e-6
    with torch.no_grad():
        before = student(batch).hidden_states
        changed = dict(batch, input_ids=batch["input_ids"].clone())
        last_real = batch["attention_mask"].sum(1) - 1
        for b, t in enumerate(last_real.tolist()):
            changed["input_ids"][b, t - 1] = tiny.tokenizer.convert_tokens_to_ids("blue")
        after = student(changed).hidden_states
    for b, t in enumerate(last_real.tolist()):
        assert torch.equal(before[b, : t - 1], after[b, : t - 1])
        assert not torch.equal(before[b, t - 1:t + 1], after[b, t - 1:t + 1])


@pytest.mark.parametrize("gate_question_tokens", [True, False])
def test_closed_gate_starves_answers_of_the_image_but_not_latents(tiny, gate_question_tokens):
    batch = tiny.batch(gate_question_tokens=gate_question_tokens)
    open_attn = tiny.eager_attentions(batch, 1.0)
    closed_attn = tiny.eager_attentions(batch, 1e-6)
    image = batch["image_mask"][:, None, None, :].float()  # [B, 1, 1, S]
    gated = batch["gate_query_mask"]
    latent = batch["latent_mask"]
    for layer, (opened, closed) in enumerate(zip(open_attn, closed_attn)):
        mass_open = (opened * image).sum(-1).mean(1)  # [B, S] attention mass on image keys
        mass_closed = (closed * image).sum(-1).mean(1)
        assert mass_open[gated].min() > 1e-3
        assert mass_closed[gated].max() < 1e-4
        if layer == 0 or not gate_question_tokens:
            # latents only read ungated states here, so their rows are exactly those of the open model
            rows = latent[:, None, :, None].expand_as(opened)
            assert torch.allclose(opened[rows], closed[rows], atol=1e-6)


def test_closed_gate_cuts_answers_off_the_image_except_through_linear_attention(tiny):
    """γ = 0 (the hard gate's first phase), no latents: the gated tokens' states cannot depend on the pixels —
    unless linear-attention layers (Qwen3.5) carry the image in their recurrent state, which no mask reaches."""
    plain = Tiny(k=0, family=tiny.family)
    batch = plain.batch()
    # the collator gates nothing without latents (Naive-SFT); gate every token after the image here
    batch["gate_query_mask"] = gated_query_mask(batch["image_mask"], batch["latent_mask"], batch["attention_mask"])
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    student = LavitStudent(plain.model, [], None, trajectory_loss=False)
    student.gamma = 0.0
    with torch.no_grad():
        states, changed = student(batch).hidden_states, student(other).hidden_states
    gated = batch["gate_query_mask"]  # [B, S]
    assert gated.sum() > 0
    moved = (states - changed).abs().amax(-1)[gated]  # [N_gated]
    if student.family.is_hybrid(plain.model.config.text_config):
        assert moved.min() > 1e-4  # the gate reaches the softmax layers only (families/qwen3_5.py)
    else:
        assert moved.max() == 0
    student.gamma = 1.0
    with torch.no_grad():
        assert (student(batch).hidden_states - student(other).hidden_states).abs().amax(-1)[gated].min() > 1e-4


@pytest.mark.parametrize("gamma", [1.0, 1e-6])
def test_probe_equals_eager_reference(tiny, gamma):
    batch = tiny.batch()
    assert not batch["attention_mask"].all()  # padded: the two samples differ in length
    student = student_of(tiny)
    student.gamma = gamma
    with torch.no_grad():
        probed = student(batch).student_traj  # [B, K, N]
    attn = torch.stack(tiny.eager_attentions(batch, gamma)).mean(dim=(0, 2))  # [B, S, S] mean over layers, heads
    for b in range(2):
        rows = attn[b][batch["latent_positions"][b]]  # [K, S]
        n = int(batch["image_valid"][b].sum())
        on_image = rows[:, batch["image_index"][b, :n]]
        expected = on_image / on_image.sum(-1, keepdim=True)
        assert torch.allclose(probed[b, :, :n], expected, atol=1e-5)
        assert probed[b, :, n:].abs().sum() == 0
    # batched equals unbatched
    single = LavitCollator(tiny.tokenizer.pad_token_id)(tiny.examples()[1:])
    with torch.no_grad():
        alone = student(single).student_traj[0]
    n = int(batch["image_valid"][1].sum())
    assert torch.allclose(alone, probed[1, :, :n], atol=1e-5)


def test_losses_reach_the_right_parameters(tiny):
    batch = tiny.batch()
    student = student_of(tiny)
    student.gamma = 1e-6
    layers = student.family.decoder_layers(tiny.model)
    first, last = layers[student.attention_layers[0]], layers[student.attention_layers[-1]]  # softmax layers
    head = student.projection_head

    def grads(loss_of):
        student.zero_grad(set_to_none=True)
        loss_of(student(batch)).backward()
        return {
            "q_proj": first.self_attn.q_proj.weight.grad,
            "k_proj": last.self_attn.k_proj.weight.grad,
            "head": head.net[0].weight.grad,
            "embed": tiny.model.get_input_embeddings().weight.grad,
        }

    traj = grads(lambda o: traj_loss(o.student_traj, batch["traj_target"]))
    assert traj["q_proj"].abs().sum() > 0 and traj["k_proj"].abs().sum() > 0
    assert traj["head"] is None  # the trajectory loss does not touch φ_mlp
    concept = grads(lambda o: concept_loss(o.concept_pred, batch["v_sem"]))
    assert concept["head"].abs().sum() > 0 and concept["q_proj"].abs().sum() > 0
    latent_rows = concept["embed"][tiny.latent_ids]
    assert latent_rows.abs().sum() > 0  # latent token embeddings learn
    ntp = grads(lambda o: ntp_loss(o.ntp_logits, o.ntp_targets))
    assert ntp["q_proj"].abs().sum() > 0 and ntp["head"] is None


def test_probe_without_lavit_attention_is_an_error(tiny):
    batch = tiny.batch()
    tiny.model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="lavit_sdpa"):
        student_of(tiny)(batch)


def test_ntp_labels_cover_latents_and_answer(tiny):
    batch = tiny.batch()
    student = student_of(tiny)
    with torch.no_grad():
        out = student(batch)
    labelled = batch["labels"][batch["labels"] != -100]
    assert torch.equal(out.ntp_targets, labelled)
    assert out.ntp_logits.shape == (labelled.numel(), tiny.model.config.text_config.vocab_size)


def test_gated_readout_maps_latents_before_it_and_measures_its_reading(tiny):
    """gate_readout: the last latent is gated (the answer's side), L_traj's map covers latents 1..K-1, and the
    readout's attention mass on them equals the eager reference, averaged over softmax layers and heads."""
    batch = LavitCollator(tiny.tokenizer.pad_token_id, True, True)(tiny.examples())
    readout = batch["latent_positions"][:, -1]
    assert batch["gate_query_mask"][torch.arange(2), readout].all()
    assert not batch["gate_query_mask"][torch.arange(2)[:, None], batch["latent_positions"][:, :-1]].any()
    student = LavitStudent(tiny.model, tiny.latent_ids, None, gate_readout=True, readout_mass=True)
    student.gamma = 1e-6
    with torch.no_grad():
        out = student(batch)
    attn = torch.stack(tiny.eager_attentions(batch, 1e-6)).mean(dim=(0, 2))  # [B, S, S] over softmax layers, heads
    k = len(tiny.latent_ids)
    assert out.student_traj.shape[1] == k - 1
    for b in range(2):
        rows = attn[b][batch["latent_positions"][b]]  # [K, S]
        n = int(batch["image_valid"][b].sum())
        on_image = rows[:k - 1, batch["image_index"][b, :n]]
        assert torch.allclose(out.student_traj[b, :, :n], on_image / on_image.sum(-1, keepdim=True), atol=1e-5)
        mass = rows[-1, batch["latent_positions"][b, :-1]].sum()
        assert out.readout_latent_mass[b] == pytest.approx(float(mass), abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 latent tokens"):
        LavitStudent(tiny.model, tiny.latent_ids[:1], None, gate_readout=True)
