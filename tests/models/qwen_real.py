"""The real Qwen2.5-VL tokenizer and processor, built offline for tests.

Qwen's byte-level BPE ships on PyPI inside `dashscope` as `dashscope/resources/qwen.tiktoken`: 151 643
base64 tokens with their ranks, the same vocabulary (and the same pre-tokenisation regex) as Qwen2,
Qwen2.5 and Qwen2.5-VL. transformers' `TikTokenConverter` derives the vocab and merges from the ranks;
`Qwen2Tokenizer` adds Qwen2's NFC normaliser, split regex and byte-level decoder; the 22 added tokens,
eos/pad, the extra special tokens and the chat template are those of Qwen2.5-VL-*-Instruct
(`tokenizer_config.json`, `chat_template.json`), and the image processor uses the checkpoints'
`preprocessor_config.json` values. `dashscope` is a test-only dependency; every builder skips the
calling test when it is missing.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources

import pytest
from tokenizers import AddedToken
from transformers import (
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

NUM_BPE_RANKS = 151_643
# Qwen2.5-VL's added tokens in id order from 151 643, with tokenizer_config.json's `special` flag: the
# tool-call and fill-in-the-middle tokens are plain added tokens (decode keeps them with skip_special_tokens).
QWEN_ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# tokenizer_config.json's `additional_special_tokens` (eos and pad are named separately).
QWEN_EXTRA_SPECIAL_TOKENS = [name for name, _ in QWEN_ADDED_TOKENS[1:14]]
QWEN_EOS, QWEN_PAD = "<|im_end|>", "<|endoftext|>"
QWEN_MODEL_MAX_LENGTH = 131_072

# Qwen2.5-VL-*-Instruct's chat_template.json, verbatim.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# preprocessor_config.json of the Instruct checkpoints (OpenAI-CLIP mean/std).
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12_845_056
QWEN_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def qwen_tiktoken_path() -> str:
    """Path of dashscope's copy of Qwen's BPE ranks; skips the calling test without dashscope."""
    pytest.importorskip("dashscope")
    path = importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed dashscope package")
    return str(path)


def read_bpe_ranks(path: str) -> dict[bytes, int]:
    """tiktoken's file format: one `base64(token) rank` pair per line."""
    with open(path, "rb") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}


class _QwenTikTokenConverter(TikTokenConverter):
    """transformers' tiktoken → byte-level BPE conversion, reading the ranks straight from the file
    (tiktoken's own loader would also copy the file into a cache directory under /tmp)."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_bpe_ranks(tiktoken_url)


@functools.cache
def _qwen_vocab_and_merges(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab (token string → rank) and merges; cached because conversion takes a few seconds."""
    vocab, merges = _QwenTikTokenConverter(vocab_file=path, pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(path)
    if len(vocab) != NUM_BPE_RANKS:
        raise ValueError(f"{path} holds {len(vocab)} BPE ranks, expected Qwen's {NUM_BPE_RANKS}")
    return vocab, merges


def build_qwen_tokenizer() -> Qwen2TokenizerFast:
    """A fresh Qwen2.5-VL-Instruct tokenizer (callers may add tokens to it; the conversion is shared)."""
    vocab, merges = _qwen_vocab_and_merges(qwen_tiktoken_path())
    added = {NUM_BPE_RANKS + i: AddedToken(name, special=special, normalized=False)
             for i, (name, special) in enumerate(QWEN_ADDED_TOKENS)}
    return Qwen2TokenizerFast(
        vocab=dict(vocab), merges=list(merges), unk_token=None, bos_token=None, eos_token=QWEN_EOS,
        pad_token=QWEN_PAD, added_tokens_decoder=added, extra_special_tokens=QWEN_EXTRA_SPECIAL_TOKENS,
        errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False,
        model_max_length=QWEN_MODEL_MAX_LENGTH, chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_qwen_processor(tokenizer: Qwen2TokenizerFast | None = None, *, min_pixels: int = QWEN_MIN_PIXELS,
                         max_pixels: int = QWEN_MAX_PIXELS) -> Qwen2_5_VLProcessor:
    """The real `Qwen2_5_VLProcessor`: Qwen's tokenizer and image processor (patch 14, merge 2, temporal 2).

    Qwen2.5-VL checkpoints use `Qwen2VLImageProcessor` (there is no Qwen2.5-specific image processor).
    """
    tokenizer = tokenizer or build_qwen_tokenizer()
    geometry = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "image_mean": QWEN_IMAGE_MEAN,
                "image_std": QWEN_IMAGE_STD}
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **geometry)
    # The processor insists on a video processor; LaViT never feeds video, but it must be real.
    video_processor = Qwen2VLVideoProcessor(**geometry)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=QWEN_CHAT_TEMPLATE)
