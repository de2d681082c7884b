"""Qwen3-VL: 16-pixel patches, DeepStack (ViT features added to the first decoder layers' states at the
image tokens), interleaved mRoPE, q/k norms. Its text model takes one 4-D mask, not a per-layer-type map,
and its chat template writes no system turn unless one is sent."""

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

from lavit.models.families.base import ModelFamily
from lavit.models.families.layout import text_config_kwargs, token_ids


def vision_config(spec, patch_size: int) -> dict:
    side = 8  # learnt position-embedding grid (interpolated to each image's patch grid, as in Qwen3-VL)
    return dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden_size,
                intermediate_size=2 * spec.vision_hidden_size, num_heads=spec.vision_heads,
                patch_size=spec.patch_size or patch_size, spatial_merge_size=2, temporal_patch_size=2,
                out_hidden_size=spec.hidden_size, num_position_embeddings=side * side)


def tiny_config(tokenizer, spec) -> Qwen3VLConfig:
    # head_dim set explicitly: Qwen3VLTextConfig's default (128) would not be hidden / heads, which mrope_section is
    # sized for (vLLM refuses the mismatch; transformers would silently rotate the extra dims by time alone)
    text = text_config_kwargs(tokenizer, spec, interleaved_mrope=True) | {
        "head_dim": spec.hidden_size // spec.num_attention_heads}
    return Qwen3VLConfig(
        text_config=text,
        # one DeepStack level, fed to decoder layer 0 (Qwen3-VL-8B: ViT layers 8, 16, 24 → decoder layers 0-2)
        vision_config={**vision_config(spec, FAMILY.patch_size), "deepstack_visual_indexes": [0]},
        tie_word_embeddings=spec.tie_word_embeddings, **token_ids(tokenizer))


FAMILY = ModelFamily(model_type="qwen3_vl", model_class=Qwen3VLForConditionalGeneration,
                     processor_class=Qwen3VLProcessor, video_processor_class=Qwen3VLVideoProcessor, patch_size=16,
                     default_system_prompt=None, tiny_config=tiny_config, mask_by_layer_type=False)
