"""Tiny models for the vLLM tests: re-drawn weights (answers vary with image and question), exported as stock
clients load them."""

from __future__ import annotations

import torch

from lavit.data.examples import LAVIT_SYSTEM_PROMPT
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.checkpoint import export_student
from lavit.models.families import family_named
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.tiny import STUDENT_SPEC, TEACHER_SPEC, build_tiny_processor, build_tiny_tokenizer

# Engine settings for this CPU: fp32 (exact), a short context, eager execution (start-up in seconds).
VLLM_ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True}


def build_redrawn(family: str, spec=STUDENT_SPEC, seed: int = 5, qwen_tokenizer: bool = False):
    """A tiny model of `family` (text decoder on lavit_sdpa) whose language-model weights are re-drawn large
    (normal, std 0.15, seeded): at the builders' default init every answer is one token repeated, and an
    identity of two engines would show nothing. `qwen_tokenizer`: the real Qwen2.5-VL BPE tokenizer (offline,
    tests/models/qwen_real.py) instead of the word-level one."""
    if qwen_tokenizer:
        from tests.models.qwen_real import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    else:
        tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(tokenizer, family=family)
    fam = family_named(family)
    config = fam.tiny_config(processor.tokenizer, spec)
    torch.manual_seed(seed)
    model = fam.model_class._from_config(config, dtype=torch.float32,
                                         attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.15)
    return model.eval(), processor


def export_redrawn_student(directory, family: str = "qwen2_5_vl", seed: int = 5,
                           qwen_tokenizer: bool = False) -> list[str]:
    """Export a re-drawn tiny student with 4 latent tokens and the LaViT system prompt; returns the latent names."""
    model, processor = build_redrawn(family, seed=seed, qwen_tokenizer=qwen_tokenizer)
    names = latent_token_names(4)
    ids = add_latent_tokens(processor.tokenizer, model, names)
    export_student(LavitStudent(model, ids), processor, directory,
                   {"latent_tokens": names, "method": "lavit", "system_prompt": LAVIT_SYSTEM_PROMPT})
    return names


def save_redrawn_teacher(directory, family: str = "qwen2_5_vl", seed: int = 6):
    """A re-drawn tiny teacher (no latent tokens) saved as a plain checkpoint."""
    model, processor = build_redrawn(family, spec=TEACHER_SPEC, seed=seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


AUTHORS_TOKENS = ["<lvr1>", "<lvr2>", "<lvr3>", "<lvr4>"]


def save_authors_style(directory, *, with_processor: bool = True, repetition_penalty: float = 1.3, seed: int = 7):
    """A re-drawn tiny Qwen2.5-VL saved as the authors' training saves LaViT-3B (tests/eval/authors_checkpoint.py):
    `<lvr1>`…`<lvr4>` special tokens, `len(tokenizer)` embedding rows, extra `v_top_head.*` / `traj_head.*` tensors,
    `architectures: ["LaViTQwen2VL"]`, a Qwen-style generation config (sampling greedy in effect, with a repetition
    penalty large enough to change these answers); without the processor's files when `with_processor` is false."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    from transformers import GenerationConfig

    model, processor = build_redrawn("qwen2_5_vl", seed=seed)
    processor.tokenizer.add_tokens(AUTHORS_TOKENS, special_tokens=True)
    model.resize_token_embeddings(len(processor.tokenizer))
    eos = processor.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config = GenerationConfig(do_sample=True, top_k=1, top_p=0.001, temperature=0.1, eos_token_id=eos,
                                               repetition_penalty=repetition_penalty, pad_token_id=eos[1])
    directory = Path(directory)
    model.save_pretrained(directory)
    weights = directory / "model.safetensors"
    tensors = load_file(weights)
    tensors["v_top_head.0.weight"] = torch.randn(8, 4)
    tensors["traj_head.query.weight"] = torch.randn(4, 8)
    save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["LaViTQwen2VL"]}))
    if with_processor:
        processor.save_pretrained(directory)
    else:
        processor.tokenizer.save_pretrained(directory)
    return processor
