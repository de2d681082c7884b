"""What lavit needs to know about a Qwen-VL family, in one place (DESIGN §2).

Every stage (gate, probes, losses, trainer, extraction, eval, export) reaches a model through a
`ModelFamily`: where its image tokens and merged grid come from, how to position a 4-D-masked
forward, which decoder layers are softmax attention, where the vision tower lives, the processor's
patch geometry and the chat layout. The family is chosen from `config.model_type`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SOFTMAX_LAYER_TYPES = ("full_attention",)
LINEAR_LAYER_TYPES = ("linear_attention",)


@dataclass(frozen=True)
class ModelFamily:
    """One Qwen-VL family as `transformers` implements it.

    The text decoder of every supported family sits at `model.model.language_model` with its layers in
    `.layers`, and the vision tower at `model.model.visual`; mRoPE
    positions come from `model.model.get_rope_index` given `mm_token_type_ids` and `image_grid_thw`.
    What differs is recorded here.
    """

    model_type: str  # config.model_type
    model_class: type  # the *ForConditionalGeneration class
    processor_class: type
    video_processor_class: type
    patch_size: int  # ViT patch side in pixels; one merged image token covers (patch_size · merge_size)² pixels
    default_system_prompt: str | None  # what the official chat template inserts when no system turn is given
    tiny_config: Callable  # (tokenizer, TinyModelSpec) → config of a small random model of this family
    mask_by_layer_type: bool = True  # the text model takes {layer type: mask}; False: one 4-D mask tensor
    merge_size: int = 2

    @property
    def pixels_per_token(self) -> int:
        """Pixels one merged image token covers (28² for Qwen2/2.5-VL, 32² for Qwen3-VL/3.5)."""
        return (self.patch_size * self.merge_size) ** 2

    # -- where things live ------------------------------------------------------------------------------
    @staticmethod
    def backbone(model: nn.Module) -> nn.Module:
        """The `*Model` under the LM head: vision tower + text decoder, returns final-norm states."""
        return model.model

    @staticmethod
    def decoder_layers(model: nn.Module) -> nn.ModuleList:
        return model.model.language_model.layers

    @staticmethod
    def vision_tower(model: nn.Module) -> nn.Module:
        return model.model.visual

    def shard_units(self, model: nn.Module) -> list[str]:
        """Class names of the blocks a sharding engine wraps one by one (FSDP's transformer-based wrap policy):
        the decoder layers and the vision blocks, read off the model, so one engine config serves every family."""
        blocks = [*self.decoder_layers(model), *self.vision_tower(model).blocks]
        return sorted({type(block).__name__ for block in blocks})

    # -- attention layers ----------------------------------------------------------------------------------
    @staticmethod
    def layer_types(text_config) -> list[str]:
        """Each decoder layer's attention type ('full_attention' throughout where the config names none)."""
        return list(getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers)

    def attention_layers(self, text_config) -> list[int]:
        """Decoder layers with softmax attention over keys: where A_traj (eq. 2), the student map (eq. 7) and
        the gate (eq. 4) live. Linear-attention layers (Qwen3.5's Gated DeltaNet) have no per-key weights."""
        types = self.layer_types(text_config)
        unknown = sorted(set(types) - set(SOFTMAX_LAYER_TYPES) - set(LINEAR_LAYER_TYPES))
        if unknown:
            raise ValueError(f"decoder layer types {unknown} are not supported (sliding-window attention would need "
                             "the window in the gated mask); supported: full_attention, linear_attention")
        return [i for i, t in enumerate(types) if t in SOFTMAX_LAYER_TYPES]

    def is_hybrid(self, text_config) -> bool:
        """True where some decoder layers are linear attention (the gate does not reach those)."""
        return any(t in LINEAR_LAYER_TYPES for t in self.layer_types(text_config))

    # -- a 4-D-masked forward ------------------------------------------------------------------------------
    @staticmethod
    def rope_positions(model: nn.Module, batch: dict) -> torch.Tensor:
        """mRoPE position ids [3, B, S] from the 2-D padding mask, as the model computes them itself; needed
        whenever the 2-D mask is replaced by a 4-D one (the model can no longer read padding off it)."""
        positions, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                                  image_grid_thw=batch["image_grid_thw"],
                                                  attention_mask=batch["attention_mask"])
        return positions

    def decoder_mask(self, text_config, mask_4d: torch.Tensor, attention_mask: torch.Tensor):
        """What to pass as the text model's `attention_mask` so softmax layers use `mask_4d` [B, 1, S, S];
        linear-attention layers keep the 2-D padding mask `attention_mask` [B, S] (they have no keys to bias)."""
        if not self.mask_by_layer_type:
            return mask_4d
        self.attention_layers(text_config)  # rejects layer types the gated mask cannot serve
        types = set(self.layer_types(text_config))
        return {t: (mask_4d if t in SOFTMAX_LAYER_TYPES else attention_mask) for t in types}

    # -- chat layout -------------------------------------------------------------------------------------
    def with_default_system_prompt(self, template: str, system_prompt: str) -> str:
        """`template` with `system_prompt` as the turn a client gets when it sends none."""
        if self.default_system_prompt is not None:
            if template.count(self.default_system_prompt) != 1:
                raise ValueError(f"cannot make {system_prompt!r} the default system prompt: the chat template does "
                                 f"not contain {self.model_type}'s default {self.default_system_prompt!r} exactly once")
            return template.replace(self.default_system_prompt, system_prompt)
        # This family's template writes a system turn only when one is sent: add one for when none is.
        return ("{%- if not messages or messages[0]['role'] != 'system' %}<|im_start|>system\n"
                f"{system_prompt}<|im_end|>\n{{% endif %}}" + template)
