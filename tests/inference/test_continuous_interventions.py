"""The audit's state interventions on a continuous-latent student: they reach the fed-back inputs as well as the layer
outputs, change nothing when the replacement is the run's own states (negative), are invisible when the latents are
masked (negative), and move the readout's logits on re-drawn weights (positive) — by either path alone."""

from contextlib import nullcontext

import pytest
import torch

from lavit.eval.audit import LoadedModel, audit_items, sample_items
from lavit.inference.generate import generate_answers
from lavit.inference.interventions import (
    LatentStatePatch,
    LatentStateRecorder,
    donor_block,
    fed_back_replaced,
    zero_block,
)
from lavit.models.attention import hidden_keys
from lavit.models.continuous_latents import (
    continuous_latent_states,
    latent_feedback_of,
    latent_feedback_prompt,
)
from lavit.models.families import family_of
from tests.eval.test_audit import write_samples
from tests.inference.test_continuous_generation import continuous_student, forced_inputs
from tests.inference.test_interventions import (
    QUESTIONS,
    assert_every_replacement_invisible,
    assert_every_replacement_moves,
    images,
    redrawn,
)

K = 4


@torch.no_grad()
def readout_logits(tiny, inputs: dict, factory=None, mode: str = "forced") -> torch.Tensor:
    """The readout's logits [B, V] of one prompt forward, run as generation runs the mode: forced feeds the latents
    back over the prompt first, masked hides them and feeds nothing back."""
    latents = torch.isin(inputs["input_ids"], torch.tensor(tiny.latent_ids))
    feed = latent_feedback_prompt(tiny.model, inputs, tiny.latent_ids) if mode == "forced" else nullcontext()
    hide = hidden_keys(latents) if mode == "masked" else nullcontext()
    with hide, feed, factory(inputs) if factory else nullcontext():
        return tiny.model(**inputs).logits[:, -1]


def recorded(tiny, inputs: dict, mode: str = "forced") -> torch.Tensor:
    recorder = LatentStateRecorder(tiny.model, tiny.latent_ids)
    readout_logits(tiny, inputs, recorder, mode)
    return recorder.states  # [L+1, B, K+1, D]


def answers(tiny, mode: str = "forced", intervention=None) -> list[str]:
    return generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode=mode,
                            max_new_tokens=3, min_new_tokens=3, intervention=intervention)


def test_the_recorder_keeps_the_fed_back_inputs_as_site_0():
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    states = recorded(tiny, inputs)
    layers = len(family_of(tiny.model).decoder_layers(tiny.model))
    assert states.shape == (layers + 1, 3, K + 1, 128)
    fed = states[0]  # [B, K+1, D]
    assert torch.equal(fed[:, 0], torch.zeros_like(fed[:, 0])) and torch.equal(fed[:, K], torch.zeros_like(fed[:, K]))
    target = latent_feedback_of(tiny.model).target_norm
    assert torch.allclose(fed[:, 1:K].norm(dim=-1), torch.full((3, K - 1), target), rtol=1e-5)
    # what latents 1..K−1 fed forward is their final state, as the audit's state reader gives it
    final = continuous_latent_states(tiny.model, inputs, tiny.latent_ids)  # [B, K, D]
    assert torch.allclose(latent_feedback_of(tiny.model).feed_back(final[:, :-1]), fed[:, 1:K], atol=1e-5)
    final_norm = family_of(tiny.model).backbone(tiny.model).language_model.norm
    assert torch.allclose(final_norm(states[-1, :, 1:]), final, atol=1e-5)  # the last layer's output, normed


def test_own_recorded_states_reproduce_the_unmodified_run_bit_for_bit():
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    recorder = LatentStateRecorder(tiny.model, tiny.latent_ids)
    reference = answers(tiny, intervention=recorder)
    states = recorder.states
    assert not torch.equal(states[0, 0], states[0, 1])  # the rows fed back different states
    own = LatentStatePatch(tiny.model, tiny.latent_ids, donor_block(states[:, :, 1:K]))
    assert answers(tiny, intervention=own) == reference
    assert torch.equal(readout_logits(tiny, inputs, own), readout_logits(tiny, inputs))
    assert torch.equal(readout_logits(tiny, inputs, fed_back_replaced(states[0, :, 1:K])), readout_logits(tiny, inputs))


def test_positive_control_every_replacement_moves_the_readout():
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    assert_every_replacement_moves(tiny, recorded(tiny, inputs), lambda patch: readout_logits(tiny, inputs, patch))


def test_both_paths_carry_the_block_and_the_patch_reaches_both():
    """Replacing only the fed-back inputs (site 0), or only the layer outputs, moves the readout: a patch on the
    layers alone, as for discrete latents, would leave the block's content in the readout's own input."""
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    reference = readout_logits(tiny, inputs)
    only_fed = LatentStatePatch(tiny.model, tiny.latent_ids, lambda site, block: block * 0 if site == 0 else block)
    only_layers = LatentStatePatch(tiny.model, tiny.latent_ids, lambda site, block: block * 0 if site > 0 else block)
    for patch in (only_fed, only_layers):
        assert ((readout_logits(tiny, inputs, patch) - reference).abs().amax(dim=1) > 1e-2).all()
    other = recorded(tiny, inputs)[0, [1, 2, 0], 1:K]  # the next row's fed-back inputs
    moved = (readout_logits(tiny, inputs, fed_back_replaced(other)) - reference).abs().amax(dim=1)
    assert (moved > 1e-2).all()


def test_negative_control_masked_latents_make_every_replacement_invisible():
    """Masked mode feeds nothing back (site 0 recorded as 0, left alone) and hides the layer outputs."""
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    states = recorded(tiny, inputs)
    assert torch.equal(recorded(tiny, inputs, "masked")[0], torch.zeros_like(states[0]))
    assert_every_replacement_invisible(tiny, states, lambda patch: answers(tiny, "masked", patch),
                                       lambda patch: readout_logits(tiny, inputs, patch, mode="masked"))


def test_refusals():
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    with pytest.raises(ValueError, match="fed-back inputs of shape"):
        readout_logits(tiny, inputs, fed_back_replaced(torch.zeros(3, K, 128)))
    with pytest.raises(RuntimeError, match="only a continuous student in forced mode"):
        readout_logits(tiny, inputs, fed_back_replaced(torch.zeros(3, K - 1, 128)), mode="masked")
    discrete = redrawn()
    with pytest.raises(RuntimeError, match="only a continuous student in forced mode"):
        generate_answers(discrete.model, discrete.processor, images(), QUESTIONS, latent_tokens=discrete.names,
                         max_new_tokens=1, intervention=fed_back_replaced(torch.zeros(3, K - 1, 128)))
    hybrid = continuous_student("qwen3_5")
    with pytest.raises(ValueError, match="recurrent state"):
        LatentStatePatch(hybrid.model, hybrid.latent_ids, zero_block)


def test_the_audit_runs_a_continuous_student_and_its_masked_run_is_a_negative_control(tmp_path):
    tiny = continuous_student()
    model = LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=2)
    path, root = write_samples(tmp_path)
    items = sample_items(path, root)
    assert model.describe()["latent_design"] == "continuous"  # the design is recorded, as GenerativeModel does
    assert "latent_design" not in LoadedModel(redrawn().model, tiny.processor, tiny.names).describe()
    table = {r["intervention"]: r for r in audit_items(model, items, batch_size=4)["table"]}
    assert list(table) == ["forced", "none", "masked", "zero", "first_repeat", "random", "swap"]
    assert all(r["applicable"] for r in table.values())
    assert max(table[name]["flip_rate"] for name in ("zero", "random", "swap")) > 0  # the answers read the block
    hidden = audit_items(model, items, batch_size=4, hide_latents=True,
                         interventions=["zero", "first_repeat", "random", "swap"])
    assert all(r["flip_rate"] == 0 for r in hidden["table"] if r["intervention"] != "forced")
    backbone = family_of(tiny.model).backbone(tiny.model)
    assert "get_image_features" not in vars(backbone) and "get_image_features" not in vars(tiny.model)
