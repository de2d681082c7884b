"""The supported Qwen-VL families, chosen from `config.model_type` (one module per family)."""

from __future__ import annotations

from lavit.models.families import qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl
from lavit.models.families.base import ModelFamily

FAMILIES: dict[str, ModelFamily] = {m.FAMILY.model_type: m.FAMILY for m in (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5)}
DEFAULT_FAMILY = "qwen2_5_vl"


def family_named(model_type: str) -> ModelFamily:
    """The family of a `config.model_type`; a clear error for any other model."""
    if model_type not in FAMILIES:
        raise ValueError(f"model type {model_type!r} is not supported by lavit; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def family_of(model_or_config) -> ModelFamily:
    """The family of a model (peft-wrapped or not) or of its config."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_named(getattr(config, "model_type", None))


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelFamily", "family_named", "family_of"]
