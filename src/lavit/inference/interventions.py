"""Interventions on the latent block's hidden states: the mechanism of the latent-usage audit (docs/audit.md).

In forced (and masked) mode `build_generation_inputs` left-pads, so every prompt row ends with the K
latent tokens: columns S−K … S−1 of a prompt of S columns. The last latent is the readout: the answer's
first token is predicted from its output state, so overwriting it would replace the answer rather than
what the answer reads. The audited block is latents 1..K−1 (columns S−K … S−2); the readout and
everything after it are never overwritten, they read the block's (possibly replaced) states.

Both tools are forward hooks on the text decoder's layers that act only in the pass whose sequence is
the prompt (the prefill of `generate`, or a plain forward of the prompt); decode steps are untouched
and see the block through the KV cache the prefill filled. Acting on layer outputs, not on attention,
they compose with every attention context (`hidden_keys` of masked mode, a gate, a probe).

* `LatentStateRecorder` keeps each layer's output at the last prompt token and the K latents.
* `LatentStatePatch` sets each layer's output at latents 1..K−1 to `replace(site, block)`:
  `zero_block`, `first_repeat_block`, or `donor_block` (states recorded in another run).

Continuous latents (`lavit.models.continuous_latents`): the block's content also travels in the input embeddings
fed back to latents 2..K (the readout's own input is latent K−1's state). So for such a student the *sites* are,
first, those fed-back inputs (site 0), then the L decoder layers' outputs (sites 1..L): the recorder keeps
[L+1, B, K+1, D], site 0 holding at columns 1..K−1 the inputs fed to latents 2..K, by the latent that fed them
(columns 0 and K, which feed no latent, are 0), and the patch replaces those inputs by `replace(0, them)` as well as
the layer outputs. Everything the readout gets from latents 1..K−1 — by attention and by feedback — is replaced, so
the audit asks the same question of both designs. A pass that feeds nothing back (masked mode) leaves site 0 alone
(and recorded as 0). For discrete latents the sites are the L layers.

Each is a factory `inputs -> context manager`, as `generate_answers(..., intervention=...)` takes it.
`fed_back_replaced(values)` is one more: the continuous student's fed-back inputs set to `values` [B, K−1, D].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn

from lavit.models.continuous_latents import (
    editing_fed_back,
    latent_feedback_of,
    prompt_latent_positions,
)
from lavit.models.families import family_of

# (site: a decoder layer, or for continuous latents first the fed-back inputs; its block [B, K−1, D]) → the states
# to put there [B, K−1, D]
BlockReplacement = Callable[[int, torch.Tensor], torch.Tensor]


def site_offset(model: nn.Module) -> int:
    """How many sites come before the decoder layers: 1 (the fed-back inputs) for continuous latents, else 0."""
    return 0 if latent_feedback_of(model) is None else 1


def check_state_interventions(model: nn.Module) -> None:
    """Refuse hybrid decoders: their linear-attention layers carry every token, latents included, forward in a
    recurrent state computed inside the layer, which overwriting a layer's output does not reach."""
    if family_of(model).is_hybrid(model.config.text_config):
        raise ValueError(f"latent state interventions cannot replace the latent block in a {model.config.model_type} "
                         "model: its linear-attention layers pass the latents on in their recurrent state, which no "
                         "layer-output hook reaches")


def latent_block_width(input_ids: torch.Tensor, latent_ids: list[int]) -> int:
    """K, after checking (`prompt_latent_positions`) that every row of `input_ids` [B, S] ends with the K latent
    tokens in order (the forced and masked layouts, left-padded)."""
    if not latent_ids:
        raise ValueError("latent state interventions need the model's latent tokens")
    try:
        prompt_latent_positions(input_ids, latent_ids)
    except ValueError as err:
        raise ValueError("latent state interventions need prompts that end with the K latent tokens (latent mode "
                         "'forced' or 'masked', left-padded)") from err
    return len(latent_ids)


def _layer_outputs(output) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):  # transformers 5 decoder layers return the hidden states alone
        raise TypeError(f"decoder layers return {type(output).__name__}, expected the hidden-states tensor")
    return output


@contextmanager
def _prompt_pass_hooks(model: nn.Module, seq_len: int,
                       act: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """`act(layer, output [B, S, D])` on every decoder layer's output in passes over `seq_len` columns (the prompt);
    checks on exit that exactly one such pass ran, so a prefill split into chunks cannot go unpatched."""
    layers = family_of(model).decoder_layers(model)
    fired = [0] * len(layers)

    def hook_for(index: int):
        def hook(module, args, output):
            hidden = _layer_outputs(output)
            if hidden.shape[1] != seq_len:  # a decode step: its latents are in the cache already
                return None
            fired[index] += 1
            return act(index, hidden)
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if fired != [1] * len(layers):
        raise RuntimeError(f"expected one prompt pass of {seq_len} columns through each of the {len(layers)} decoder "
                           f"layers, saw {fired}")


class LatentStateRecorder:
    """Records, in the prompt pass, every decoder layer's output at the last prompt token and the K latents.

    After a run `states` is [sites, B, K+1, D] (sites: the L layers, after the fed-back inputs for continuous
    latents; see the module docstring): column 0 the last prompt token before the block, 1..K−1 the audited
    block, K the readout.
    """

    def __init__(self, model: nn.Module, latent_ids: list[int]):
        self.model = model
        self.latent_ids = list(latent_ids)
        self.states: torch.Tensor | None = None

    @contextmanager
    def __call__(self, inputs: dict) -> Iterator[None]:
        k = latent_block_width(inputs["input_ids"], self.latent_ids)
        seq_len = inputs["input_ids"].shape[1]
        per_layer: dict[int, torch.Tensor] = {}

        offset = site_offset(self.model)

        def keep(layer: int, hidden: torch.Tensor) -> None:
            per_layer[layer + offset] = hidden[:, seq_len - k - 1:].detach().clone()  # [B, K+1, D]

        def keep_fed(fed: torch.Tensor) -> torch.Tensor:  # [B, K−1, D]: the inputs of latents 2..K
            per_layer[0] = torch.cat([torch.zeros_like(fed[:, :1]), fed.detach(), torch.zeros_like(fed[:, :1])],
                                     dim=1)  # [B, K+1, D], by the latent that fed them
            return fed

        self.states = None
        with _prompt_pass_hooks(self.model, seq_len, keep), editing_fed_back(keep_fed):
            yield
        if offset and 0 not in per_layer:  # nothing was fed back (masked mode)
            per_layer[0] = torch.zeros_like(per_layer[1])
        self.states = torch.stack([per_layer[i] for i in sorted(per_layer)])  # [sites, B, K+1, D]


class LatentStatePatch:
    """In the prompt pass, replaces every decoder layer's output at latents 1..K−1 by `replace(site, block)`, and
    for continuous latents the inputs fed back to latents 2..K by `replace(0, them)`; the positions before the block,
    the readout's layer outputs and generated tokens are left alone."""

    def __init__(self, model: nn.Module, latent_ids: list[int], replace: BlockReplacement):
        check_state_interventions(model)
        if len(latent_ids) < 2:
            raise ValueError(f"with K = {len(latent_ids)} latent token there is no latent block to replace: the only "
                             "latent is the readout, whose state is the answer's first logits")
        self.model = model
        self.latent_ids = list(latent_ids)
        self.replace = replace

    @contextmanager
    def __call__(self, inputs: dict) -> Iterator[None]:
        k = latent_block_width(inputs["input_ids"], self.latent_ids)
        seq_len = inputs["input_ids"].shape[1]
        block = slice(seq_len - k, seq_len - 1)
        offset = site_offset(self.model)

        def replaced(site: int, current: torch.Tensor) -> torch.Tensor:  # [B, K−1, D]
            new = self.replace(site, current)
            if new.shape != current.shape:
                raise ValueError(f"site {site}: replacement states of shape {tuple(new.shape)} for a latent block "
                                 f"of shape {tuple(current.shape)}")
            return new.to(device=current.device, dtype=current.dtype)

        def patch(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            patched = hidden.clone()
            patched[:, block] = replaced(layer + offset, hidden[:, block])
            return patched

        with _prompt_pass_hooks(self.model, seq_len, patch), editing_fed_back(lambda fed: replaced(0, fed)):
            yield


def zero_block(layer: int, block: torch.Tensor) -> torch.Tensor:
    """Every latent of the block set to 0."""
    return torch.zeros_like(block)


def first_repeat_block(layer: int, block: torch.Tensor) -> torch.Tensor:
    """Latents 2..K−1 take latent 1's state of this layer (latent 1 precedes them, so it is this run's own)."""
    return block[:, :1].expand_as(block)


def donor_block(states: torch.Tensor) -> BlockReplacement:
    """The block's states from `states` [sites, B, K−1, D]: each row gets the states recorded for its donor."""
    def replace(site: int, block: torch.Tensor) -> torch.Tensor:
        return states[site]
    return replace


def fed_back_replaced(values: torch.Tensor) -> Callable[[dict], AbstractContextManager]:
    """An intervention for a continuous student: the inputs fed back to latents 2..K in the prompt pass set to
    `values` [B, K−1, D] (e.g. states computed on another image), the layers left to compute from them."""
    @contextmanager
    def intervene(inputs: dict) -> Iterator[None]:
        calls = []

        def edit(fed: torch.Tensor) -> torch.Tensor:
            if values.shape != fed.shape:
                raise ValueError(f"fed-back inputs of shape {tuple(values.shape)} for latents of shape "
                                 f"{tuple(fed.shape)}")
            calls.append(fed)
            return values.to(device=fed.device, dtype=fed.dtype)
        with editing_fed_back(edit):
            yield
        if len(calls) != 1:
            raise RuntimeError(f"expected one prompt pass feeding latents back, saw {len(calls)}: only a continuous "
                               "student in forced mode feeds latents back")
    return intervene
