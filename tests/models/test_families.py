"""The model-family interface: every supported family is found from its config, describes its layers, mask,
patch geometry and chat layout; anything else is a clear error."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig

from lavit.models.checkpoint import load_model_and_processor, tiny_name
from lavit.models.families import DEFAULT_FAMILY, FAMILIES, family_named, family_of
from lavit.models.tiny import STUDENT_SPEC, TEACHER_SPEC, build_tiny_tokenizer

PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_5": 16}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_is_found_from_its_config_and_describes_its_model(name):
    model, processor = load_model_and_processor(f"tiny:{name}")
    family = family_of(model)
    assert family is family_named(name) and type(model) is family.model_class
    assert type(processor) is family.processor_class
    assert family.patch_size == PATCH[name] == processor.image_processor.patch_size
    assert family.pixels_per_token == (2 * PATCH[name]) ** 2
    assert family.decoder_layers(model) is model.model.language_model.layers
    assert family.vision_tower(model) is model.model.visual
    layers = family.attention_layers(model.config.text_config)
    assert layers == ([1] if name == "qwen3_5" else [0, 1])  # Qwen3.5: linear, then softmax attention
    mask_4d, mask_2d = torch.zeros(1, 1, 3, 3), torch.ones(1, 3, dtype=torch.long)
    packed = family.decoder_mask(model.config.text_config, mask_4d, mask_2d)
    if name == "qwen3_vl":
        assert packed is mask_4d  # its text model takes one mask tensor
    else:
        assert packed["full_attention"] is mask_4d
        assert packed.get("linear_attention", mask_2d) is mask_2d  # linear layers keep the padding mask
    # the chat layout: Qwen2/2.5-VL's template adds a default system turn, Qwen3-VL/3.5's does not
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system") == (family.default_system_prompt is not None)


def test_an_unsupported_model_is_a_clear_error_naming_the_supported_ones(tmp_path):
    supported = "'llava' is not supported by lavit; supported: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5"
    with pytest.raises(ValueError, match=supported):
        family_named("llava")
    LlavaConfig().save_pretrained(tmp_path / "llava")
    with pytest.raises(ValueError, match="'llava' is not supported"):
        load_model_and_processor(str(tmp_path / "llava"))
    with pytest.raises(ValueError, match="'llava' is not supported"):
        tiny_name("tiny:llava")


def test_tiny_names():
    assert tiny_name("tiny") == ("tiny", DEFAULT_FAMILY)
    assert tiny_name("tiny-teacher:qwen3_vl") == ("tiny-teacher", "qwen3_vl")
    assert tiny_name("Qwen/Qwen2.5-VL-3B-Instruct") is None and tiny_name("tinyllama/x") is None


def test_sliding_window_layers_are_refused_where_the_gated_mask_would_drop_the_window():
    config = family_named("qwen2_5_vl").tiny_config(build_tiny_tokenizer(), STUDENT_SPEC).text_config
    config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match="sliding_attention"):
        family_named("qwen2_5_vl").attention_layers(config)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_configs_follow_the_spec(name):
    config = family_named(name).tiny_config(build_tiny_tokenizer(), TEACHER_SPEC)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (192, 3, 4)
    assert config.model_type == name and not config.tie_word_embeddings
    # every head is hidden / heads wide, and mRoPE's (t, h, w) sections cover exactly its rotary frequencies (a
    # config default, e.g. Qwen3-VL's head_dim 128, would leave dims rotated by time alone; vLLM refuses it)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert head_dim * text.num_attention_heads == text.hidden_size
    rope = text.rope_parameters
    rotary = int(head_dim * rope.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", 1.0)))
    assert sum(rope["mrope_section"]) == rotary // 2
