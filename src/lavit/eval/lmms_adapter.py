"""lmms-eval requests → LaViT generation, without importing lmms-eval (so it is testable without it).

`lavit.eval.lmms_plugin.LavitLmms` is the lmms-eval model class; this module holds what it does:
parse `--model_args`, group requests by generation settings, run batched latent-token generation,
and cut each answer at the task's stop strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lavit.eval.models import GenerativeModel

_TRUE = {"true", "1", "yes"}


@dataclass
class Request:
    context: str  # the task's prompt text
    images: list  # PIL images for this request (lmms-eval's doc_to_visual)
    gen_kwargs: dict  # max_new_tokens, until, temperature, do_sample, ...


def parse_model_args(pretrained: str, *, latent_mode: str | None = None, latent_tokens: str = "",
                     batch_size: int | str = 8, max_new_tokens: int | str | None = None,
                     system_prompt: str | None = None,
                     dtype: str = "auto", device_map: str = "", device: str | None = None,
                     max_batch_size: int | str | None = None, protocol: str = "lavit", processor: str = "",
                     **unknown) -> dict:
    """`--model_args pretrained=DIR,latent_mode=masked,latent_tokens=<lvr1>|<lvr2>,batch_size=8`.

    Token lists are '|'-separated because lmms-eval splits model_args on commas. `device` and
    `max_batch_size` are what lmms-eval's own `--device`/`--max_batch_size` pass; `device` places the
    model on one device unless `device_map` is given (one process; see `process_placement`). `protocol` sets the
    model side of `lavit.eval.protocols` (lmms-eval's tasks bring their own prompts and scoring): `lavit` (the
    default: lavit's latent mode, greedy decoding, training resolution) or `lmms-eval` (as lmms-eval's own
    `qwen2_5_vl` model: its resolution, image resize, the checkpoint's generation config, the template's latents);
    `processor` a folder to take the processor from.
    """
    if unknown:
        raise ValueError(f"unknown lavit model_args {sorted(unknown)}; known: pretrained, latent_mode, latent_tokens, "
                         "batch_size, max_new_tokens, system_prompt, dtype, device_map, device, protocol, processor")
    if str(batch_size).startswith("auto"):
        raise ValueError("lavit needs a fixed batch_size (lmms-eval's 'auto' batch sizing is not supported)")
    tokens = [t for t in str(latent_tokens).split("|") if t] or None
    return {"name": str(pretrained), "latent_tokens": tokens, "mode": latent_mode or None,
            "system_prompt": system_prompt, "max_new_tokens": int(max_new_tokens) if max_new_tokens else None, "dtype": dtype,
            "device_map": device_map, "device": device, "batch_size": int(batch_size), "protocol": protocol,
            "processor": processor}


def process_placement(device: str | None, device_map: str) -> dict:
    """This lmms-eval process's rank and world size (from torchrun's / accelerate's environment) and the
    `device_map` to load with.

    One process: the model goes where `device_map` or lmms-eval's `--device` says. Several processes
    (`accelerate launch -m lmms_eval` / `torchrun`): like lmms-eval's built-in models, each process holds a
    whole model on its own GPU (LOCAL_RANK; CPU without CUDA) and lmms-eval hands each rank its share of
    the documents; a `device_map` splitting one model over GPUs cannot be combined with that.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return {"rank": 0, "world_size": 1, "device_map": device_map or (device or "")}
    if device_map:
        raise ValueError(f"device_map={device_map!r} splits one model over several GPUs, but this is a "
                         f"{world_size}-process data-parallel run where each process holds a whole model on its own "
                         "GPU; drop device_map, or run a single process")
    return {"rank": int(os.environ.get("RANK", "0")), "world_size": world_size, "device_map": ""}


def process_device(model: GenerativeModel) -> torch.device:
    """The device a loaded model answers on (what lmms-eval's collectives put their tensors on)."""
    return next(model.model.parameters()).device


def cut_at_stop(text: str, until: list[str] | str | None) -> str:
    """The answer up to the first stop string (lmms-eval's `until`)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


class LmmsGenerator:
    """Answers lmms-eval generate_until requests with a LaViT student (or plain model), in order."""

    def __init__(self, model: GenerativeModel, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.model = model
        self.batch_size = batch_size

    def generate(self, requests: list[Request]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            if req.gen_kwargs.get("do_sample") or float(req.gen_kwargs.get("temperature", 0) or 0) > 0:
                raise ValueError("lavit generates greedily (as the paper evaluates); set temperature=0, do_sample=false")
            tokens = (req.gen_kwargs.get("max_new_tokens") or self.model.max_new_tokens
                      or self.model.protocol.default_max_new_tokens)
            groups.setdefault(int(tokens), []).append(i)
        for max_new, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                outs = self.model.generate([requests[i].images for i in chunk], [requests[i].context for i in chunk],
                                           max_new_tokens=max_new)
                for i, out in zip(chunk, outs):
                    answers[i] = cut_at_stop(out, requests[i].gen_kwargs.get("until"))
        return answers  # type: ignore[return-value]
