"""Qwen2.5-VL (the paper's pair: 32B teacher, 3B student): 14-pixel patches, windowed ViT, mRoPE."""

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLVideoProcessor,
)

from lavit.models.families.base import ModelFamily
from lavit.models.families.layout import QWEN_DEFAULT_SYSTEM_PROMPT, text_config_kwargs, token_ids


def tiny_config(tokenizer, spec) -> Qwen2_5_VLConfig:
    patch = spec.patch_size or FAMILY.patch_size
    return Qwen2_5_VLConfig(
        text_config=text_config_kwargs(tokenizer, spec),
        vision_config=dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden_size,
                           intermediate_size=2 * spec.vision_hidden_size, num_heads=spec.vision_heads,
                           patch_size=patch, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=spec.hidden_size, window_size=4 * patch,
                           fullatt_block_indexes=[spec.vision_depth - 1]),
        tie_word_embeddings=spec.tie_word_embeddings, **token_ids(tokenizer))


FAMILY = ModelFamily(model_type="qwen2_5_vl", model_class=Qwen2_5_VLForConditionalGeneration,
                     processor_class=Qwen2_5_VLProcessor, video_processor_class=Qwen2VLVideoProcessor, patch_size=14,
                     default_system_prompt=QWEN_DEFAULT_SYSTEM_PROMPT, tiny_config=tiny_config)
