"""Qwen2-VL: the first mRoPE family; 14-pixel patches, a ViT without windows, its width `embed_dim`."""

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLVideoProcessor

from lavit.models.families.base import ModelFamily
from lavit.models.families.layout import QWEN_DEFAULT_SYSTEM_PROMPT, text_config_kwargs, token_ids


def tiny_config(tokenizer, spec) -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config=text_config_kwargs(tokenizer, spec),
        vision_config=dict(depth=spec.vision_depth, embed_dim=spec.vision_hidden_size, hidden_size=spec.hidden_size,
                           mlp_ratio=2, num_heads=spec.vision_heads, patch_size=spec.patch_size or FAMILY.patch_size,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=spec.tie_word_embeddings, **token_ids(tokenizer))


FAMILY = ModelFamily(model_type="qwen2_vl", model_class=Qwen2VLForConditionalGeneration,
                     processor_class=Qwen2VLProcessor, video_processor_class=Qwen2VLVideoProcessor, patch_size=14,
                     default_system_prompt=QWEN_DEFAULT_SYSTEM_PROMPT, tiny_config=tiny_config)
