"""Loading students and exporting trained ones as plain Hugging Face checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.continuous_latents import STOCK_REFUSAL, LatentFeedback, attach_latent_feedback
from lavit.models.families import DEFAULT_FAMILY, ModelFamily, family_named, family_of
from lavit.models.grid import set_pixel_limits
from lavit.models.latent_tokens import LATENT_TEMPLATE_FLAG
from lavit.models.lavit_student import LavitStudent, base_model
from lavit.models.tiny import STUDENT_SPEC, TEACHER_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer

LAVIT_META = "lavit.json"
# What a processor saves beside a checkpoint besides the tokenizer: a Trainer's `checkpoint-N` folder has none.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
TINY = "tiny"
TINY_TEACHER = "tiny-teacher"
TINY_SPECS = {TINY: STUDENT_SPEC, TINY_TEACHER: TEACHER_SPEC}


def tiny_name(name: str) -> tuple[str, str] | None:
    """('tiny' | 'tiny-teacher', family) for a built-in tiny model name ('tiny', 'tiny-teacher:qwen3_vl', ...)."""
    role, _, family = name.partition(":")
    if role not in TINY_SPECS:
        return None
    family_named(family or DEFAULT_FAMILY)  # an unknown family is an error here, not a missing directory later
    return role, family or DEFAULT_FAMILY


def default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing for training: the KV cache off, since checkpointed steps recompute.

    transformers 5.24 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old
    name warns); the lowest transformers the range admits (5.20) has only the old one.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False


def load_processor(name: str, *, processor_path: str = "", min_pixels: int | None = None,
                   max_pixels: int | None = None):
    """The processor of checkpoint `name`, or, with `processor_path`, the one saved there (image processor and chat
    template) with the checkpoint's own tokenizer when it has one (its latent tokens live there) — what a `Trainer`
    `checkpoint-N` folder, which saves no processor, needs. A local checkpoint without processor files and no
    `processor_path` is an error saying so, never a silent fallback to some base model's. `min_pixels` /
    `max_pixels` (0 or None: the saved ones) become the image processor's resize limits (`set_pixel_limits`)."""
    local = Path(name).is_dir()
    if not processor_path:
        if local and not any((Path(name) / f).is_file() for f in PROCESSOR_FILES[:2]):
            raise FileNotFoundError(f"{name} holds no processor ({' or '.join(PROCESSOR_FILES[:2])}; a Trainer "
                                    "checkpoint-N folder saves none): pass the folder or hub id of the processor it was "
                                    "trained with, e.g. --processor Qwen/Qwen2.5-VL-3B-Instruct (recorded with the run)")
        processor = AutoProcessor.from_pretrained(name)
    else:
        processor = AutoProcessor.from_pretrained(processor_path)
        if local and any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
            tokenizer = AutoTokenizer.from_pretrained(name)
            processor.tokenizer = tokenizer
            if tokenizer.chat_template and not processor.chat_template:
                processor.chat_template = tokenizer.chat_template
    set_pixel_limits(processor, min_pixels, max_pixels)
    return processor


def load_model_and_processor(name: str, *, dtype: torch.dtype | None = None, min_pixels: int | None = None,
                             max_pixels: int | None = None, seed: int = 0, processor_path: str = "",
                             **load_kwargs):
    """A Qwen-VL model of a supported family with its processor, text decoder on `lavit_sdpa`.

    `name` is a local directory or hub id, or 'tiny' / 'tiny-teacher' for the built-in random tiny
    student / teacher, optionally of another family ('tiny:qwen3_vl'). `processor_path`: see `load_processor`.
    Extra keyword arguments (e.g. `device_map`) go to `from_pretrained`. A student exported with continuous latents
    (its lavit.json) gets its design attached, so lavit's forward and generation run it as trained.
    """
    attn = {"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"}
    tiny = tiny_name(name)
    if processor_path and tiny:
        raise ValueError("processor_path is for checkpoint folders without a processor; a tiny model builds its own")
    if tiny:
        role, family = tiny
        processor = build_tiny_processor(build_tiny_tokenizer(), family=family, min_pixels=min_pixels,
                                         max_pixels=max_pixels)
        model = build_tiny_model(processor.tokenizer, TINY_SPECS[role], seed=seed, family=family,
                                 attn_implementation=attn)
        return model.to(dtype or torch.float32), processor
    family = family_of(AutoConfig.from_pretrained(name))  # an unsupported model fails here, before any weights load
    processor = load_processor(name, processor_path=processor_path, min_pixels=min_pixels, max_pixels=max_pixels)
    model = family.model_class.from_pretrained(name, dtype=dtype or default_dtype(), attn_implementation=attn,
                                               **load_kwargs)
    attach_latent_feedback(model, LatentFeedback.from_meta(read_lavit_meta(name)))
    return model, processor


def read_lavit_meta(directory: str | Path) -> dict:
    """`lavit.json` beside an exported student ({} for a plain model, a hub id or anything but a folder holding one):
    latent_tokens, method, system_prompt."""
    meta = Path(directory) / LAVIT_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def export_chat_template(template: str, latent_tokens: list[str], system_prompt: str,
                         family: ModelFamily | None = None, lavit_only: str = "") -> str:
    """The chat template a stock client (transformers pipeline, vLLM, lmms-eval's own models) should use.

    The trained system prompt becomes the default one (the family decides how: Qwen2/2.5-VL's template
    has a default to replace, Qwen3-VL's gets one), and the latent tokens follow the generation prompt
    unless the caller renders with `lavit_latents=false` (lavit does, placing latents per latent mode).
    `lavit_only`: the template raises this message unless lavit renders it (a student no stock client can run).
    """
    if system_prompt:
        if any(mark in system_prompt for mark in ("{{", "{%", "{#")):
            raise ValueError("the system prompt contains Jinja delimiters and cannot go into the chat template")
        template = (family or family_named(DEFAULT_FAMILY)).with_default_system_prompt(template, system_prompt)
    if latent_tokens:
        template += (f"{{%- if add_generation_prompt and ({LATENT_TEMPLATE_FLAG} is not defined or "
                     f"{LATENT_TEMPLATE_FLAG}) %}}{''.join(latent_tokens)}{{%- endif %}}")
    if lavit_only:
        if not latent_tokens or any(mark in lavit_only for mark in ("'", "{", "}")):
            raise ValueError("a lavit-only template needs latent tokens and a message without quotes or braces")
        template = (f"{{%- if {LATENT_TEMPLATE_FLAG} is not defined %}}{{{{ raise_exception('{lavit_only}') }}}}"
                    "{%- endif %}" + template)
    return template


def _drop_tied_copies(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A gathered state holds a tied weight twice (e.g. lm_head and embed_tokens of Qwen2.5-VL-3B, 1.2 GB in fp32)
    as separate tensors, which `save_pretrained` cannot recognise as one: keep the source only. Copies that
    differ mean training untied them, which the checkpoint's config would then hide on load: an error."""
    state = dict(state)
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in state and source in state:
            if not torch.equal(state[target], state[source]):
                raise ValueError(f"tied weights {target} and {source} differ in the gathered state")
            del state[target]
    return state


def export_student(student: LavitStudent, processor, directory: str | Path, meta: dict,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the student as a plain HF checkpoint + processor, the projection head and `lavit.json` beside it.

    LoRA adapters are merged first, so any tooling for the family can load the result; the chat template
    (`export_chat_template`) gives stock clients the latent tokens and the trained system prompt.
    `state_dict` is the student's full state gathered by a sharding engine (FSDP2, ZeRO-3; keys as in
    `student.state_dict()`): the weights are written from it, never read off the sharded module.
    Call on one process only.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = student.model
    if state_dict is not None:
        if hasattr(model, "merge_and_unload"):
            raise ValueError("exporting a LoRA student from a sharded run is not supported: train LoRA without "
                             "FSDP/ZeRO-3, or full-parameter with them")
        model_state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        head_state = {k.removeprefix("projection_head."): v for k, v in state_dict.items()
                      if k.startswith("projection_head.")}
        if len(model_state) + len(head_state) != len(state_dict):
            raise ValueError(f"unexpected keys in the gathered state: "
                             f"{sorted(k for k in state_dict if not k.startswith(('model.', 'projection_head.')))[:5]}")
        base_model(model).save_pretrained(directory, state_dict=_drop_tied_copies(base_model(model), model_state))
    else:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        base_model(model).save_pretrained(directory)
        head_state = None
    continuous = LatentFeedback.from_meta(meta) is not None  # stock clients would feed token embeddings instead
    template = export_chat_template(processor.chat_template, meta.get("latent_tokens") or [],
                                    meta.get("system_prompt") or "", family_of(base_model(model)),
                                    lavit_only=STOCK_REFUSAL if continuous else "")
    original = processor.chat_template, processor.tokenizer.chat_template
    processor.chat_template = processor.tokenizer.chat_template = template
    try:
        processor.save_pretrained(directory)
    finally:  # the caller's processor keeps its own template
        processor.chat_template, processor.tokenizer.chat_template = original
    if student.projection_head is not None:
        student.projection_head.save(directory, state_dict=head_state)
    (directory / LAVIT_META).write_text(json.dumps(meta, indent=2))
    return directory


def load_for_inference(name: str, *, dtype: str = "auto", device_map: str = "", min_pixels: int = 0,
                       max_pixels: int = 0, seed: int = 0, processor_path: str = ""):
    """`load_model_and_processor` for a no-grad worker: dtype by name ('auto' = bf16 on GPU, fp32 on CPU),
    either split by `device_map` or placed on this worker's device (LOCAL_RANK's GPU, else CPU)."""
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    kwargs = {"device_map": device_map} if device_map else {}
    model, processor = load_model_and_processor(name, dtype=torch_dtype, min_pixels=min_pixels or None,
                                                max_pixels=max_pixels or None, seed=seed,
                                                processor_path=processor_path, **kwargs)
    if not device_map:
        device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available()
                  else torch.device("cpu"))
        model = model.to(device)
    return model.eval(), processor
