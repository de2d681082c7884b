"""Pieces the Qwen-VL families share: the default system prompt, the tiny models' text config and token ids."""

from __future__ import annotations

QWEN_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def mrope_section(head_dim: int, rotary_fraction: float = 1.0) -> list[int]:
    """mRoPE splits the rotary frequencies (half the rotary dims) over (t, h, w); Qwen2.5-VL uses [16, 24, 24]."""
    half = int(head_dim * rotary_fraction) // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def text_config_kwargs(tokenizer, spec, *, interleaved_mrope: bool = False, rotary_fraction: float = 1.0) -> dict:
    """The text-decoder settings of a tiny model of any family, sized by `spec` (a `TinyModelSpec`)."""
    ids = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": mrope_section(spec.hidden_size // spec.num_attention_heads, rotary_fraction)}
    if interleaved_mrope:
        rope["mrope_interleaved"] = True
    if rotary_fraction != 1.0:
        rope["partial_rotary_factor"] = rotary_fraction
    return dict(vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=4096, rope_parameters=rope,
                bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                tie_word_embeddings=spec.tie_word_embeddings)


def token_ids(tokenizer) -> dict[str, int]:
    """The multimodal token ids every Qwen-VL config names."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
