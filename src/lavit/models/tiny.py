"""Tiny, real-class Qwen2.5-VL models, tokenizer and processor, built offline from config.

Tests and the demo use these in place of downloaded checkpoints: the classes are the real
`Qwen2_5_VLForConditionalGeneration` / `Qwen2_5_VLProcessor`, only the sizes are small and the
tokenizer is word-level. Everything is deterministic given the seed and builds in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Qwen's control tokens, in Qwen's order; `<|image_pad|>` is the per-merged-patch placeholder.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The same message layout as Qwen2.5-VL's own template: system turn, user turn with the image
# placeholder before the text, then the assistant header.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the demo world and the tests speak; anything else maps to <unk>.
BASE_WORDS = (
    "system user assistant You you are a helpful expert multimodal large language model . , ? ! : "
    "what which where is the of in on at to and or color shape size object left right top bottom "
    "above below red green blue yellow white black purple orange circle square triangle small big "
    "large how many there one two three four five six seven eight nine zero yes no answer question "
    "image picture option A B C D E (A) (B) (C) (D) (a) (b) (c) (d) it this that near far closer "
    "farther depth count cat dog car tree sky"
).split()


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes for a tiny Qwen2.5-VL. Defaults give a student-shaped model (hidden 128)."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    patch_size: int = 14
    tie_word_embeddings: bool = True

    def mrope_section(self) -> list[int]:
        # mRoPE splits head_dim/2 rotary frequencies over (t, h, w); Qwen uses [16, 24, 24] of 64.
        half = self.hidden_size // self.num_attention_heads // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


TEACHER_SPEC = TinyModelSpec(hidden_size=192, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=384, tie_word_embeddings=False)
STUDENT_SPEC = TinyModelSpec()


def build_tiny_tokenizer(extra_words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Qwen's special tokens and chat template (offline)."""
    words = list(dict.fromkeys(BASE_WORDS + list(extra_words or [])))
    vocab = {"<unk>": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )
    tok.padding_side = "right"
    return tok


def build_tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None, *, patch_size: int = 14,
                         min_pixels: int = 4 * 28 * 28, max_pixels: int = 64 * 28 * 28) -> Qwen2_5_VLProcessor:
    """The real `Qwen2_5_VLProcessor` around the word-level tokenizer and a small-image processor."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )
    # The processor insists on a video processor; LaViT never feeds video, but it must be real.
    video_processor = Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec = STUDENT_SPEC) -> Qwen2_5_VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": spec.mrope_section()},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=spec.tie_word_embeddings,
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden_size,
            intermediate_size=2 * spec.vision_hidden_size,
            num_heads=spec.vision_heads,
            patch_size=spec.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=spec.hidden_size,
            window_size=4 * spec.patch_size,
            fullatt_block_indexes=[spec.vision_depth - 1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec = STUDENT_SPEC, *, seed: int = 0,
                     attn_implementation: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised tiny `Qwen2_5_VLForConditionalGeneration` (fp32, eval mode)."""
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, spec)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=attn_implementation,
                                                             dtype=torch.float32)
    return model.eval()
