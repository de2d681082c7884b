"""Latent state interventions: exact when they change nothing, confined to latents 1..K−1 of the prompt
pass, invisible under masked mode (negative control), visible to the readout in forced mode (positive)."""

from contextlib import contextmanager, nullcontext

import pytest
import torch
from PIL import Image

from lavit.inference.generate import build_generation_inputs, generate_answers
from lavit.inference.interventions import (
    LatentStatePatch,
    LatentStateRecorder,
    donor_block,
    first_repeat_block,
    zero_block,
)
from lavit.models.attention import hidden_keys
from lavit.models.families import family_of
from tests.conftest import Tiny

# Rows 0 and 1 ask one question of two images (a swap pair); row 2 asks another. Three image sizes: three
# prompt lengths, so the batch is left-padded.
QUESTIONS = ["what color is the circle ?", "what color is the circle ?", "how many objects are there ?"]
K = 4


def images():
    return [Image.new("RGB", (112, 84), (200, 30, 30)), Image.new("RGB", (140, 140), (30, 200, 30)),
            Image.new("RGB", (84, 56), (30, 30, 200))]


def redrawn(family: str = "qwen2_5_vl", k: int = K) -> Tiny:
    """A tiny student whose text weights are re-drawn large (normal, std 0.15), so its outputs vary with the
    input: at the default init every row gives nearly the same logits and no intervention could show."""
    tiny = Tiny(k=k, family=family)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in tiny.model.model.language_model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.15)
    return tiny


def prompt_inputs(tiny: Tiny, mode: str = "forced") -> dict:
    return build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode=mode,
                                   system_prompt=None)


@torch.no_grad()
def readout_logits(tiny: Tiny, inputs: dict, factory=None, masked: bool = False) -> torch.Tensor:
    """The readout's logits [B, V] (the answer's first-token logits) of one prompt forward."""
    hide = hidden_keys(torch.isin(inputs["input_ids"], torch.tensor(tiny.latent_ids))) if masked else None
    with hide or nullcontext(), factory(inputs) if factory else nullcontext():
        return tiny.model(**inputs).logits[:, -1]


def recorded(tiny: Tiny, inputs: dict) -> torch.Tensor:
    recorder = LatentStateRecorder(tiny.model, tiny.latent_ids)
    readout_logits(tiny, inputs, recorder)
    return recorder.states  # [L, B, K+1, D]


def answers(tiny: Tiny, mode: str = "forced", intervention=None) -> list[str]:
    return generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode=mode,
                            max_new_tokens=3, min_new_tokens=3, intervention=intervention)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])  # Qwen3-VL: DeepStack adds to layer outputs
def test_own_recorded_states_reproduce_the_unmodified_run_bit_for_bit(family):
    tiny = redrawn(family)
    inputs = prompt_inputs(tiny)
    assert len(set(inputs["attention_mask"].sum(dim=1).tolist())) == 3  # three prompt lengths, left-padded
    recorder = LatentStateRecorder(tiny.model, tiny.latent_ids)
    reference = answers(tiny, intervention=recorder)
    states = recorder.states
    layers = len(family_of(tiny.model).decoder_layers(tiny.model))
    assert states.shape == (layers, 3, K + 1, tiny.model.config.text_config.hidden_size)
    assert not torch.equal(states[:, 0], states[:, 1])  # the rows' states differ: the patch below is no no-op
    own = LatentStatePatch(tiny.model, tiny.latent_ids, donor_block(states[:, :, 1:K]))
    assert answers(tiny, intervention=own) == reference
    assert torch.equal(readout_logits(tiny, inputs, own), readout_logits(tiny, inputs))


@contextmanager
def every_layer_output(model, seen: list):
    """Appends (layer, output) for every decoder layer call, prompt pass and decode steps."""
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: seen.append((i, out.clone())))
               for i, layer in enumerate(family_of(model).decoder_layers(model))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_patch_touches_only_latents_1_to_k_minus_1_of_the_prompt_pass():
    """Under masked mode nothing reads the block, so every other state of every pass must stay bit-identical
    while the block holds the replacement; in forced mode the positions before the block stay identical."""
    tiny = redrawn()
    seq_len = prompt_inputs(tiny)["input_ids"].shape[1]
    block = list(range(seq_len - K, seq_len - 1))
    others = [c for c in range(seq_len) if c not in block]

    def run(mode: str, patch: LatentStatePatch | None) -> list:
        seen: list = []

        @contextmanager
        def capture(inputs):
            with patch(inputs) if patch else nullcontext(), every_layer_output(tiny.model, seen):
                yield
        answers(tiny, mode, capture)
        return seen

    patch = LatentStatePatch(tiny.model, tiny.latent_ids, zero_block)
    for mode in ("masked", "forced"):
        plain, patched = run(mode, None), run(mode, patch)
        assert [i for i, _ in plain] == [i for i, _ in patched]
        prompt = [(p, q) for (_, p), (_, q) in zip(plain, patched) if p.shape[1] == seq_len]
        decode = [(p, q) for (_, p), (_, q) in zip(plain, patched) if p.shape[1] == 1]
        assert len(prompt) == len(family_of(tiny.model).decoder_layers(tiny.model)) and len(decode) > 0
        for p, q in prompt:
            assert torch.equal(q[:, block], torch.zeros_like(q[:, block]))
            assert not torch.equal(p[:, block], q[:, block])
            if mode == "masked":
                assert torch.equal(p[:, others], q[:, others])
            else:
                assert torch.equal(p[:, :block[0]], q[:, :block[0]])
        if mode == "masked":  # decode steps see no latent: untouched, and not patched themselves
            assert all(torch.equal(p, q) for p, q in decode)
        else:  # they read the zeroed block through the cache
            assert any(not torch.equal(p, q) for p, q in decode)


def replacements(states: torch.Tensor) -> dict:
    """The four audited replacements, for the rows of QUESTIONS: random = the next row's states (a derangement),
    swap = the other row of the pair 0 ↔ 1 (row 2 keeps a random donor: it has no pair in this batch)."""
    block = states[:, :, 1:K]  # [L, B, K−1, D]
    return {"zero": zero_block, "first_repeat": first_repeat_block,
            "random": donor_block(block[:, [1, 2, 0]]), "swap": donor_block(block[:, [1, 0, 2]])}


def assert_every_replacement_invisible(tiny: Tiny, states: torch.Tensor, answers_with, logits_with) -> None:
    """Negative control: under each of `replacements(states)` the answers `answers_with(patch)` and the readout's
    logits `logits_with(patch)` [B, V] are those of the unpatched run (`patch` None)."""
    reference_answers, reference_logits = answers_with(None), logits_with(None)
    for name, replace in replacements(states).items():
        patch = LatentStatePatch(tiny.model, tiny.latent_ids, replace)
        assert answers_with(patch) == reference_answers, name
        assert torch.equal(logits_with(patch), reference_logits), name


def assert_every_replacement_moves(tiny: Tiny, states: torch.Tensor, logits_with) -> None:
    """Positive control: each of `replacements(states)` moves the readout's logits `logits_with(patch)` [B, V] away
    from the unpatched run's (`patch` None) in every row it gives other states."""
    reference = logits_with(None)
    for name, replace in replacements(states).items():
        changed = logits_with(LatentStatePatch(tiny.model, tiny.latent_ids, replace))
        moved = (changed - reference).abs().amax(dim=1)  # [B]
        rows = [0, 1] if name == "swap" else [0, 1, 2]
        assert (moved[rows] > 1e-2).all(), (name, moved)
        if name == "swap":  # row 2 got its own states back
            assert moved[2] == 0


def test_negative_control_masked_latents_make_every_replacement_invisible():
    tiny = redrawn()
    inputs = prompt_inputs(tiny, "masked")
    states = recorded(tiny, prompt_inputs(tiny))
    assert_every_replacement_invisible(tiny, states, lambda patch: answers(tiny, "masked", patch),
                                       lambda patch: readout_logits(tiny, inputs, patch, masked=True))


def test_positive_control_the_readout_reads_the_replaced_block_in_forced_mode():
    tiny = redrawn()
    inputs = prompt_inputs(tiny)
    assert_every_replacement_moves(tiny, recorded(tiny, inputs), lambda patch: readout_logits(tiny, inputs, patch))


def test_refusals():
    hybrid = Tiny(family="qwen3_5")
    with pytest.raises(ValueError, match="recurrent state"):
        LatentStatePatch(hybrid.model, hybrid.latent_ids, zero_block)
    one = Tiny(k=1)
    with pytest.raises(ValueError, match="no latent block"):
        LatentStatePatch(one.model, one.latent_ids, zero_block)
    tiny = Tiny()
    patch = LatentStatePatch(tiny.model, tiny.latent_ids, zero_block)
    with pytest.raises(ValueError, match="end with the K latent tokens"):
        with patch(prompt_inputs(tiny, "natural")):
            pass
    wrong = LatentStatePatch(tiny.model, tiny.latent_ids, lambda layer, block: block[:, :1])
    with pytest.raises(ValueError, match="replacement states of shape"):
        readout_logits(tiny, prompt_inputs(tiny), wrong)
    with pytest.raises(RuntimeError, match="one prompt pass"):  # no pass ran: nothing would have been patched
        with patch(prompt_inputs(tiny)):
            pass
