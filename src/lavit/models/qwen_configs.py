"""The real Qwen2.5-VL architectures (3B, 7B, 32B Instruct) as `Qwen2_5_VLConfig`s, optionally cut in depth.

Every number is the checkpoint's own `config.json` (Qwen/Qwen2.5-VL-{3B,7B,32B}-Instruct). Tests and the
bench use `qwen_config(name, text_layers=..., vision_layers=...)` to build a real-width model that fits
on a CPU: only the number of decoder layers and vision blocks is cut, every width, head count, vocabulary
size, mRoPE split and token id stays the checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2_5_VLConfig

# Shared by the whole family (config.json of every Qwen2.5-VL-*-Instruct).
ROPE_THETA = 1_000_000.0
MROPE_SECTION = [16, 24, 24]  # (t, h, w) split of the head_dim/2 = 64 rotary frequencies
RMS_NORM_EPS = 1e-6
MAX_POSITION_EMBEDDINGS = 128_000

# Token ids the model config refers to; the same ids as the tokenizer's added tokens.
BOS_TOKEN_ID = 151643  # <|endoftext|>
EOS_TOKEN_ID = 151645  # <|im_end|>
VISION_START_TOKEN_ID = 151652  # <|vision_start|>
VISION_END_TOKEN_ID = 151653  # <|vision_end|>
IMAGE_TOKEN_ID = 151655  # <|image_pad|>
VIDEO_TOKEN_ID = 151656  # <|video_pad|>

# The vision tower: the same 32-block, 1280-wide ViT for every size (only its MLP width and the merger's
# output, the LLM width, differ). Window attention except the full-attention blocks.
VISION_DEPTH = 32
VISION_HIDDEN_SIZE = 1280
VISION_NUM_HEADS = 16
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
WINDOW_SIZE = 112
FULLATT_BLOCK_INDEXES = (7, 15, 23, 31)
TOKENS_PER_SECOND = 2


@dataclass(frozen=True)
class QwenVLSpec:
    """The size-specific numbers of one Qwen2.5-VL-*-Instruct checkpoint."""

    hub_id: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int  # embedding rows: more than the tokenizer's 151 665 tokens (spare rows)
    tie_word_embeddings: bool
    vision_intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


QWEN_SPECS = {
    "qwen2.5-vl-3b": QwenVLSpec("Qwen/Qwen2.5-VL-3B-Instruct", hidden_size=2048, intermediate_size=11008,
                                num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                vocab_size=151_936, tie_word_embeddings=True, vision_intermediate_size=3420),
    "qwen2.5-vl-7b": QwenVLSpec("Qwen/Qwen2.5-VL-7B-Instruct", hidden_size=3584, intermediate_size=18944,
                                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                vocab_size=152_064, tie_word_embeddings=False, vision_intermediate_size=3420),
    "qwen2.5-vl-32b": QwenVLSpec("Qwen/Qwen2.5-VL-32B-Instruct", hidden_size=5120, intermediate_size=27648,
                                 num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                                 vocab_size=152_064, tie_word_embeddings=False, vision_intermediate_size=3456),
}


def qwen_spec(name: str) -> QwenVLSpec:
    """The spec for 'qwen2.5-vl-3b', 'qwen2.5-vl-7b' or 'qwen2.5-vl-32b'."""
    if name not in QWEN_SPECS:
        raise ValueError(f"unknown Qwen2.5-VL config {name!r}; choose from {sorted(QWEN_SPECS)}")
    return QWEN_SPECS[name]


def cut_fullatt_blocks(depth: int) -> list[int]:
    """Full-attention block indexes of a tower cut to `depth` blocks.

    The real indexes below `depth` are kept, and the last kept block always attends fully, as the real
    tower's last block (31) does, so a cut tower still mixes information across windows before the merger.
    """
    kept = [i for i in FULLATT_BLOCK_INDEXES if i < depth]
    return kept if depth - 1 in kept else kept + [depth - 1]


def _check_layers(what: str, value: int, real: int) -> int:
    if not 1 <= value <= real:
        raise ValueError(f"{what} must be between 1 and {real}, got {value}")
    return value


def qwen_config(name: str, *, text_layers: int | None = None, vision_layers: int | None = None) -> Qwen2_5_VLConfig:
    """A real `Qwen2_5_VLConfig` for `name`, its decoder cut to `text_layers` and its ViT to `vision_layers`
    blocks (None = the checkpoint's depth). Widths, heads, vocabulary and token ids are never changed."""
    spec = qwen_spec(name)
    text_layers = _check_layers("text_layers", spec.num_hidden_layers if text_layers is None else text_layers,
                                spec.num_hidden_layers)
    depth = _check_layers("vision_layers", VISION_DEPTH if vision_layers is None else vision_layers, VISION_DEPTH)
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=text_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            hidden_act="silu",
            max_position_embeddings=MAX_POSITION_EMBEDDINGS,
            rms_norm_eps=RMS_NORM_EPS,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(MROPE_SECTION)},
            bos_token_id=BOS_TOKEN_ID,
            eos_token_id=EOS_TOKEN_ID,
            tie_word_embeddings=spec.tie_word_embeddings,
        ),
        vision_config=dict(
            depth=depth,
            hidden_size=VISION_HIDDEN_SIZE,
            hidden_act="silu",
            intermediate_size=spec.vision_intermediate_size,
            num_heads=VISION_NUM_HEADS,
            in_channels=3,
            patch_size=PATCH_SIZE,
            spatial_merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            window_size=WINDOW_SIZE,
            out_hidden_size=spec.hidden_size,
            fullatt_block_indexes=cut_fullatt_blocks(depth),
            tokens_per_second=TOKENS_PER_SECOND,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
