"""Tiny, real-class Qwen-VL models, tokenizer and processor, built offline from config, for every family.

Tests and the demo use these in place of downloaded checkpoints: the classes are the real
`*ForConditionalGeneration` / `*Processor` of the family (`lavit.models.families`), only the sizes are
small and the tokenizer is word-level. Everything is deterministic given the seed and builds in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor

from lavit.models.families import DEFAULT_FAMILY, family_named
from lavit.models.families.layout import QWEN_DEFAULT_SYSTEM_PROMPT
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

# The message layout of the families' own templates: user turn with the image placeholder before the text,
# then the assistant header. Qwen2/2.5-VL insert a default system turn when none is sent; Qwen3-VL/3.5 do not.
_MESSAGES = (
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + QWEN_DEFAULT_SYSTEM_PROMPT
    + "<|im_end|>\n{% endif %}" + _MESSAGES + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE_NO_DEFAULT_SYSTEM = (
    "{% for message in messages %}" + _MESSAGES + "{% endfor %}"
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
    """Sizes for a tiny Qwen-VL of any family. Defaults give a student-shaped model (hidden 128)."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    patch_size: int | None = None  # None: the family's (14 for Qwen2/2.5-VL, 16 for Qwen3-VL/3.5)
    tie_word_embeddings: bool = True


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


def build_tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None, *, family: str = DEFAULT_FAMILY,
                         min_pixels: int | None = None, max_pixels: int | None = None, patch_size: int | None = None):
    """The family's real processor around the word-level tokenizer and a small-image processor
    (default limits: 4 to 64 merged image tokens)."""
    fam = family_named(family)
    patch = patch_size or fam.patch_size
    unit = (patch * fam.merge_size) ** 2
    tokenizer = tokenizer or build_tiny_tokenizer()
    template = CHAT_TEMPLATE if fam.default_system_prompt else CHAT_TEMPLATE_NO_DEFAULT_SYSTEM
    tokenizer.chat_template = template
    image_processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=fam.merge_size, temporal_patch_size=2,
                                            min_pixels=min_pixels or 4 * unit, max_pixels=max_pixels or 64 * unit)
    # The processor insists on a video processor; LaViT never feeds video, but it must be real.
    video_processor = fam.video_processor_class(patch_size=patch, merge_size=fam.merge_size, temporal_patch_size=2)
    return fam.processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                               chat_template=template)


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec = STUDENT_SPEC, *, seed: int = 0,
                     family: str = DEFAULT_FAMILY, attn_implementation: str | dict = "sdpa"):
    """A randomly initialised tiny model of `family` (fp32, eval mode)."""
    torch.manual_seed(seed)
    fam = family_named(family)
    model = fam.model_class._from_config(fam.tiny_config(tokenizer, spec), attn_implementation=attn_implementation,
                                         dtype=torch.float32)
    return model.eval()
