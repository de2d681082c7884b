"""A tiny checkpoint saved the way the authors' `training/src/train.py` saves LaViT-3B (Svardfox/LaViT@26bf182).

Their training adds `<lvr1>`…`<lvr4>` to Qwen2.5-VL's tokenizer as special tokens (ids 151 665–151 668), resizes
the embeddings to `len(tokenizer)` (151 669 rows: down from Qwen's 151 936), saves the model with its two LaViT heads
(`v_top_head.*`, `traj_head.*`) under `architectures: ["LaViTQwen2VL"]`, the Qwen base's generation config, and the
processor at min_pixels 200 704, max_pixels 4 194 304. Here: the real Qwen tokenizer (tests/models/qwen_real.py),
a tiny decoder and ViT, and heads of made-up widths (only their presence matters).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from lavit.models.tiny import TinyModelSpec, build_tiny_model

AUTHORS_TOKENS = ["<lvr1>", "<lvr2>", "<lvr3>", "<lvr4>"]
AUTHORS_MIN_PIXELS, AUTHORS_MAX_PIXELS = 200704, 4194304
# Qwen2.5-VL-*-Instruct's generation_config.json: sampling that is greedy in effect (top_k 1), repetition penalty 1.05.
QWEN_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                   "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
SPEC = TinyModelSpec(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
                     vision_hidden_size=32, vision_depth=1, vision_heads=2)


def qwen_real():
    """tests/models/qwen_real.py (skips the calling test without dashscope when used)."""
    if "qwen_real" not in sys.modules:
        spec = importlib.util.spec_from_file_location("qwen_real", Path(__file__).parents[1] / "models" / "qwen_real.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["qwen_real"] = module
        spec.loader.exec_module(module)
    return sys.modules["qwen_real"]


def save_authors_checkpoint(directory: Path, *, with_processor: bool = True, seed: int = 0) -> Path:
    """The checkpoint folder; `with_processor=False` leaves out the processor's files, as a Trainer `checkpoint-N`
    folder does (the tokenizer is saved: their Trainer is given it)."""
    real = qwen_real()
    tokenizer = real.build_qwen_tokenizer()
    tokenizer.add_tokens(AUTHORS_TOKENS, special_tokens=True)
    processor = real.build_qwen_processor(tokenizer, min_pixels=AUTHORS_MIN_PIXELS, max_pixels=AUTHORS_MAX_PIXELS)
    model = build_tiny_model(tokenizer, SPEC, seed=seed)  # len(tokenizer) embedding rows, as their resize leaves
    model.generation_config = GenerationConfig(**QWEN_GENERATION)
    model.save_pretrained(directory)
    weights = directory / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(seed)
    tensors["v_top_head.0.weight"] = torch.randn(96, SPEC.hidden_size, generator=generator)
    tensors["traj_head.query.weight"] = torch.randn(32, SPEC.hidden_size, generator=generator)
    save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["LaViTQwen2VL"]}, indent=2))
    if with_processor:
        processor.save_pretrained(directory)
    else:
        tokenizer.save_pretrained(directory)
    return directory
