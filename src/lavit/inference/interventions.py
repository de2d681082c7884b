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
* `LatentStatePatch` sets each layer's output at latents 1..K−1 to `replace(layer, block)`:
  `zero_block`, `first_repeat_block`, or `donor_block` (states recorded in another run).

Each is a factory `inputs -> context manager`, as `generate_answers(..., intervention=...)` takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lavit.models.families import family_of

# (decoder layer index, its output at latents 1..K−1 [B, K−1, D]) → the states to put there [B, K−1, D]
BlockReplacement = Callable[[int, torch.Tensor], torch.Tensor]


def check_state_interventions(model: nn.Module) -> None:
    """Refuse hybrid decoders: their linear-attention layers carry every token, latents included, forward in a
    recurrent state computed inside the layer, which overwriting a layer's output does not reach."""
    if family_of(model).is_hybrid(model.config.text_config):
        raise ValueError(f"latent state interventions cannot replace the latent block in a {model.config.model_type} "
                         "model: its linear-attention layers pass the latents on in their recurrent state, which no "
                         "layer-output hook reaches")


def latent_block_width(input_ids: torch.Tensor, latent_ids: list[int]) -> int:
    """K, after checking that every row of `input_ids` [B, S] ends with the K latent tokens in order (the forced
    and masked layouts, left-padded)."""
    k = len(latent_ids)
    if k < 1:
        raise ValueError("latent state interventions need the model's latent tokens")
    if input_ids.shape[1] <= k:
        raise ValueError(f"a prompt of {input_ids.shape[1]} columns cannot hold a prompt and {k} latent tokens")
    expected = torch.tensor(latent_ids, device=input_ids.device)
    if not (input_ids[:, -k:] == expected).all():
        raise ValueError("latent state interventions need prompts that end with the K latent tokens (latent mode "
                         "'forced' or 'masked', left-padded)")
    return k


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

    After a run `states` is [L, B, K+1, D]: column 0 the last prompt token before the block, 1..K−1 the
    audited block, K the readout.
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

        def keep(layer: int, hidden: torch.Tensor) -> None:
            per_layer[layer] = hidden[:, seq_len - k - 1:].detach().clone()  # [B, K+1, D]

        self.states = None
        with _prompt_pass_hooks(self.model, seq_len, keep):
            yield
        self.states = torch.stack([per_layer[i] for i in sorted(per_layer)])  # [L, B, K+1, D]


class LatentStatePatch:
    """In the prompt pass, replaces every decoder layer's output at latents 1..K−1 by `replace(layer, block)`;
    positions before the block, the readout and generated tokens are left alone."""

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

        def patch(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            current = hidden[:, block]  # [B, K−1, D]
            new = self.replace(layer, current)
            if new.shape != current.shape:
                raise ValueError(f"layer {layer}: replacement states of shape {tuple(new.shape)} for a latent block "
                                 f"of shape {tuple(current.shape)}")
            patched = hidden.clone()
            patched[:, block] = new.to(device=hidden.device, dtype=hidden.dtype)
            return patched

        with _prompt_pass_hooks(self.model, seq_len, patch):
            yield


def zero_block(layer: int, block: torch.Tensor) -> torch.Tensor:
    """Every latent of the block set to 0."""
    return torch.zeros_like(block)


def first_repeat_block(layer: int, block: torch.Tensor) -> torch.Tensor:
    """Latents 2..K−1 take latent 1's state of this layer (latent 1 precedes them, so it is this run's own)."""
    return block[:, :1].expand_as(block)


def donor_block(states: torch.Tensor) -> BlockReplacement:
    """The block's states from `states` [L, B, K−1, D]: each row gets the states recorded for its donor."""
    def replace(layer: int, block: torch.Tensor) -> torch.Tensor:
        return states[layer]
    return replace
