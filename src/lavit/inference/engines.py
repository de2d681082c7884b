"""Generation engines: one interface for every greedy answer lavit asks for (DESIGN §2, generation engines).

Teacher answers (`lavit extract`), text-only answers and the model judge (`lavit filter`) and benchmark answers
(`lavit eval`) call `engine.generate(images, questions, latent_tokens=..., mode=..., ...)` on one of:

* `TransformersEngine` (`engine=transformers`, the default): transformers' `generate` through `generate_answers`,
  with every latent mode and the inference gate.
* `VllmEngine` (`engine=vllm`): vLLM's offline `LLM` on the checkpoint's directory, greedy, tensor parallel within
  this worker (data parallel across `--shard`s as before). It gets the very prompt text transformers gets (the
  chat template without latents, then the K latent tokens for `forced`), and every prompt's token ids as vLLM
  tokenised them are checked against transformers' before an answer is accepted, so the two engines answer from
  identical inputs. What needs lavit's own attention function — `masked`, an inference gate, audit
  interventions — is refused, as is suppressing a student's latents in mode `none`, and so is a student with
  continuous latents (its lavit.json `latent_design`), whose latents take fed-back hidden states as inputs. A
  checkpoint vLLM cannot read as it is — an `architectures` it does not know (the authors' `LaViTQwen2VL`),
  tensors outside the model (their `v_top_head.*`, `traj_head.*`), no processor files (`processor=` another
  folder's) — is served from a temporary overlay folder: links to its files, the config's architecture
  overridden, only the shards holding extra tensors rewritten without them, the processor's files copied in.

Both engines decode with the settings `lavit.inference.decoding.resolve_decoding` resolves for the checkpoint
(`decoding`: plain greedy by default, or the checkpoint's generation config), so their greedy answers agree.
vllm is imported only when a `VllmEngine` is built: lavit runs without it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import GenerationConfig

from lavit.console import MissingDependency
from lavit.data.examples import render_prompt
from lavit.data.samples import to_rgb
from lavit.inference.decoding import (
    resolve_decoding,
    transformers_generation_config,
    trim_after_eos,
    vllm_generation_config,
    vllm_sampling_kwargs,
)
from lavit.inference.generate import LATENT_MODES, ImagesPerQuestion, LatentMode, generate_answers
from lavit.models.checkpoint import (
    PROCESSOR_FILES,
    load_for_inference,
    load_model_and_processor,
    load_processor,
    read_lavit_meta,
    tiny_name,
)
from lavit.models.continuous_latents import LatentFeedback
from lavit.models.families import family_of
from lavit.models.gating import InferenceGate

ENGINES = ("transformers", "vllm")
# Families whose tiny models vLLM's CPU build runs token for token as transformers
# (tests/vllm_tests/test_vllm_engine.py).
VLLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# The tensor-name prefixes vLLM's Qwen-VL models load (their `hf_to_vllm_mapper`); any other tensor stops its loader.
VLLM_WEIGHT_PREFIXES = ("model.", "visual.", "lm_head.")
VLLM_INSTALL_HINT = ("engine=vllm needs the vllm package: on a GPU machine `pip install vllm` (docs/install.md); on a "
                     "CPU `make test-vllm` builds .venv-vllm with the tested CPU build")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def import_vllm():
    """The vllm module, or an ImportError saying how to install it."""
    # vLLM logs to stdout unless told otherwise; lavit's commands print their results there as JSON
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as err:
        raise MissingDependency(f"{VLLM_INSTALL_HINT} ({err})") from err
    if getattr(vllm, "__file__", None) is None:  # a folder named vllm on sys.path, not the package
        raise MissingDependency(f"{VLLM_INSTALL_HINT} (`import vllm` found only the namespace {list(vllm.__path__)})")
    return vllm


def _per_question(images: ImagesPerQuestion, questions: list[str]) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in questions]
    per_question = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
    if len(per_question) != len(questions):
        raise ValueError(f"{len(per_question)} image sets for {len(questions)} questions")
    return [[to_rgb(im) for im in ims] for ims in per_question]  # in-memory images decode as files do


def check_vllm_mode(mode: str, latent_tokens: list[str]) -> None:
    """Refuse a latent mode vLLM cannot run as transformers does (per call, and in `build_engine` before vLLM starts
    when the caller knows its mode)."""
    if mode not in LATENT_MODES:
        raise ValueError(f"latent mode must be one of {LATENT_MODES}, got {mode!r}")
    if mode == "masked":
        raise ValueError("latent mode 'masked' hides the latents with lavit's own attention function, which vLLM "
                         "does not run: use engine=transformers")
    if mode in ("forced", "natural") and not latent_tokens:
        raise ValueError(f"latent mode {mode!r} needs the model's latent tokens; use mode='none' for a plain model")
    if mode == "none" and latent_tokens:
        raise ValueError("mode 'none' with a student's latent tokens suppresses them in transformers' generate; "
                         "vLLM is not asked to: use engine=transformers")


class TransformersEngine:
    """transformers' `generate` on a loaded model (`generate_answers`): every latent mode, the inference gate.

    `decoding` (`resolve_decoding`'s keywords) is resolved against the model's generation config and put in its
    place, so `generate` applies exactly those settings."""

    name = "transformers"

    def __init__(self, model, processor, *, gate: InferenceGate | None = None, decoding: dict | None = None):
        self.model, self.processor, self.gate = model, processor, gate
        tokenizer = processor.tokenizer
        self.decoding = resolve_decoding(model.generation_config, tokenizer.eos_token_id, **(decoding or {}))
        model.generation_config = transformers_generation_config(
            self.decoding, pad_token_id=tokenizer.pad_token_id, bos_token_id=model.generation_config.bos_token_id)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def generate(self, images: ImagesPerQuestion, questions: list[str], *, latent_tokens: list[str],
                 mode: LatentMode = "forced", system_prompt: str | None = None, max_new_tokens: int = 32,
                 min_new_tokens: int = 0, keep_special_tokens: bool = False) -> list[str]:
        return generate_answers(self.model, self.processor, images, questions, latent_tokens=latent_tokens, mode=mode,
                                system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, gate=self.gate,
                                keep_special_tokens=keep_special_tokens)

    def close(self) -> None:
        """Drop the model so a later engine can have its memory (the phases of `lavit extract engine=vllm`)."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _extra_tensors(directory: Path) -> dict[str, list[str]]:
    """{shard file: names of its tensors vLLM's loader does not know} for a checkpoint's safetensors shards."""
    from safetensors import safe_open

    extra = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            names = [k for k in f.keys() if not k.startswith(VLLM_WEIGHT_PREFIXES)]
        if names:
            extra[shard.name] = names
    return extra


def vllm_checkpoint(directory: Path, model_class: str, processor_path: str, tmp: Path) -> tuple[Path, dict]:
    """(the folder vLLM should load, its hf_overrides): `directory` itself when vLLM reads it as it is, else an
    overlay in `tmp` (see the module docstring). The overlay costs only the rewritten shards' size."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    overrides = {} if config.get("architectures") == [model_class] else {"architectures": [model_class]}
    extra = _extra_tensors(directory)
    if not extra and not processor_path:
        return directory, overrides
    from safetensors import safe_open
    from safetensors.torch import save_file

    replaced = set(extra) | ({"model.safetensors.index.json"} if extra else set())
    replaced |= set(PROCESSOR_FILES) if processor_path else set()
    for entry in directory.iterdir():
        if entry.name not in replaced:
            (tmp / entry.name).symlink_to(entry.resolve())
    for name, drop in extra.items():
        with safe_open(str(directory / name), "pt") as f:
            save_file({k: f.get_tensor(k) for k in f.keys() if k not in drop}, str(tmp / name), metadata={"format": "pt"})
    index = directory / "model.safetensors.index.json"
    if extra and index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        dropped = {k for names in extra.values() for k in names}
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k not in dropped}
        (tmp / index.name).write_text(json.dumps(data, indent=2), encoding="utf-8")
    if processor_path:
        for name in PROCESSOR_FILES:
            if (Path(processor_path) / name).is_file():
                shutil.copy(Path(processor_path) / name, tmp / name)
    return tmp, overrides


class VllmEngine:
    """vLLM's offline engine on a checkpoint directory (or a built-in tiny model, saved to a temporary one).

    `dtype` 'auto' is bfloat16 on a GPU and float32 otherwise, as for transformers; `max_model_len` 0 keeps the
    model's own; `max_images` is the most images one prompt holds (BLINK: 4; text-only: 0); `min_pixels` /
    `max_pixels` (0 = the checkpoint processor's) resize images as transformers' processor does. `enforce_eager`
    skips CUDA graphs and torch.compile (start-up in seconds instead of a minute: tests, small runs). `processor`
    names a folder to take the image processor and chat template from (the checkpoint has none); `decoding` as for
    `TransformersEngine`: vLLM gets the resolved repetition penalty, and a generation config of its own holding the
    resolved eos ids.
    """

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "auto", seed: int = 0, tensor_parallel_size: int = 1,
                 max_model_len: int = 0, max_images: int = 1, min_pixels: int = 0, max_pixels: int = 0,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, processor: str = "",
                 decoding: dict | None = None):
        if LatentFeedback.from_meta(read_lavit_meta(model)) is not None:
            raise ValueError(f"{model} has continuous latents (lavit.json latent_design): each latent's input "
                             "embedding is the previous latent's final hidden state, which vLLM does not feed back; "
                             "use engine=transformers")
        vllm = import_vllm()
        from transformers import AutoConfig

        self._tmp = tempfile.TemporaryDirectory(prefix="lavit-vllm-")
        tmp = Path(self._tmp.name)
        if tiny_name(model):  # vLLM loads from disk: write the seeded tiny model out once
            built, built_processor = load_model_and_processor(model, seed=seed)
            directory = tmp / "model"
            built.save_pretrained(directory)
            built_processor.save_pretrained(directory)
        else:
            directory = Path(model).resolve() if Path(model).exists() else Path(model)
        family = family_of(AutoConfig.from_pretrained(directory))  # an unsupported model fails here
        if family.model_type not in VLLM_FAMILIES:
            raise ValueError(f"engine=vllm: {family.model_type} models are not run by vLLM here (tested families: "
                             f"{', '.join(VLLM_FAMILIES)}); use engine=transformers")
        self.dtype = dtype if dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        # renders prompts, checks and decodes ids
        self.processor = load_processor(str(directory), processor_path=processor, min_pixels=min_pixels,
                                        max_pixels=max_pixels)
        try:
            checkpoint_config = GenerationConfig.from_pretrained(directory)
        except OSError:  # no generation_config.json: transformers' defaults, as `from_pretrained` gives the model
            checkpoint_config = GenerationConfig()
        self.decoding = resolve_decoding(checkpoint_config, self.processor.tokenizer.eos_token_id, **(decoding or {}))
        (tmp / "overlay").mkdir()
        served, overrides = vllm_checkpoint(directory, family.model_class.__name__, processor, tmp / "overlay")
        config_dir = tmp / "generation"
        config_dir.mkdir()
        (config_dir / "generation_config.json").write_text(json.dumps(vllm_generation_config(self.decoding)))
        self.model_name = model
        self.llm = vllm.LLM(model=str(served), tokenizer=str(served), dtype=self.dtype, seed=seed,
                            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len or None,
                            limit_mm_per_prompt={"image": max_images, "video": 0},
                            mm_processor_kwargs=pixels or None, gpu_memory_utilization=gpu_memory_utilization,
                            enforce_eager=enforce_eager, hf_overrides=overrides or None,
                            generation_config=str(config_dir))
        self._sampling = vllm.SamplingParams

    def generate_token_ids(self, images: ImagesPerQuestion, questions: list[str], *, latent_tokens: list[str],
                           mode: LatentMode = "forced", system_prompt: str | None = None, max_new_tokens: int = 32,
                           min_new_tokens: int = 0) -> list[list[int]]:
        """Greedy new token ids per question (latents included, as generated), after checking vLLM's prompt ids."""
        check_vllm_mode(mode, latent_tokens)
        per_question = _per_question(images, questions)
        suffix = "".join(latent_tokens) if mode == "forced" else ""
        texts = [render_prompt(self.processor, q, system_prompt, num_images=len(ims)) + suffix
                 for q, ims in zip(questions, per_question)]
        prompts = [{"prompt": text, **({"multi_modal_data": {"image": ims}} if ims else {})}
                   for text, ims in zip(texts, per_question)]
        params = self._sampling(**vllm_sampling_kwargs(self.decoding), max_tokens=max_new_tokens,
                                min_tokens=min_new_tokens, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        for i, (out, text, ims) in enumerate(zip(outputs, texts, per_question)):
            expected = self.processor(text=[text], images=ims or None, return_tensors="pt")["input_ids"][0].tolist()
            got = list(out.prompt_token_ids)
            if got != expected:
                first = next((p for p, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                raise ValueError(f"vLLM tokenised prompt {i} differently from transformers ({len(got)} vs "
                                 f"{len(expected)} ids, first difference at position {first}): its answers would "
                                 "not be transformers'; check the processor's pixel limits and chat template")
        return [list(out.outputs[0].token_ids) for out in outputs]

    def generate(self, images: ImagesPerQuestion, questions: list[str], *, latent_tokens: list[str],
                 mode: LatentMode = "forced", system_prompt: str | None = None, max_new_tokens: int = 32,
                 min_new_tokens: int = 0, keep_special_tokens: bool = False) -> list[str]:
        """Greedy answers, latent tokens stripped (or raw) and decoded exactly as `generate_answers` decodes."""
        rows = self.generate_token_ids(images, questions, latent_tokens=latent_tokens, mode=mode,
                                       system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                                       min_new_tokens=min_new_tokens)
        tokenizer = self.processor.tokenizer
        if keep_special_tokens:
            return [tokenizer.decode(trim_after_eos(row, self.decoding["eos_token_id"]), skip_special_tokens=False)
                    for row in rows]
        drop = set(tokenizer.convert_tokens_to_ids(latent_tokens)) if latent_tokens else set()
        return [tokenizer.decode([t for t in row if t not in drop], skip_special_tokens=True).strip() for row in rows]

    def close(self) -> None:
        """Shut the engine down (its processes and memory), so the next phase can load the model in transformers."""
        if getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def build_engine(engine: str, name: str, *, dtype: str = "auto", device_map: str = "", seed: int = 0,
                 min_pixels: int = 0, max_pixels: int = 0, gate: InferenceGate | None = None,
                 max_images: int = 1, tensor_parallel_size: int = 1, max_model_len: int = 0,
                 enforce_eager: bool = False, mode: LatentMode | None = None, latent_tokens: list[str] | None = None,
                 processor: str = "", decoding: dict | None = None):
    """`TransformersEngine` on `load_for_inference(name, ...)` or `VllmEngine(name, ...)`; `device_map` is
    transformers' and the vLLM options vLLM's (each refused where it means nothing). `mode` (with the model's
    `latent_tokens`), when the caller will ask only that mode: one vLLM cannot run is refused before it starts.
    `processor`: a folder to take the processor from (the checkpoint has none); `decoding`: `resolve_decoding`'s
    keywords (default: plain greedy)."""
    check_engine(engine)
    if engine == "transformers":
        if tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size is vLLM's; transformers splits a model with device_map=auto")
        model, loaded = load_for_inference(name, dtype=dtype, device_map=device_map, seed=seed,
                                           min_pixels=min_pixels, max_pixels=max_pixels, processor_path=processor)
        return TransformersEngine(model, loaded, gate=gate, decoding=decoding)
    if mode is not None:
        check_vllm_mode(mode, latent_tokens or [])
    if device_map:
        raise ValueError("device_map is transformers'; vLLM splits a model over GPUs with tensor_parallel_size")
    if gate is not None:
        raise ValueError("this student keeps an inference gate (lavit.json inference_gate: γ < 1 on image keys), an "
                         "attention bias only lavit's attention function applies: use engine=transformers")
    return VllmEngine(name, dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size,
                      max_model_len=max_model_len, max_images=max_images, min_pixels=min_pixels,
                      max_pixels=max_pixels, enforce_eager=enforce_eager, processor=processor, decoding=decoding)
