"""The lmms-eval model `lavit`: any lmms-eval task with LaViT latent-token inference.

    pip install lmms-eval   # optional; lavit never imports this module otherwise
    lmms-eval --model lavit --model_args pretrained=runs/lavit_3b/student,latent_mode=forced --tasks mmstar

Registered through the `lmms_eval.models` entry point in lavit's pyproject (`manifests` below).
model_args: pretrained, latent_mode (forced | natural | masked | none), latent_tokens ('|'-separated,
e.g. <lvr1>|<lvr2>|<lvr3>|<lvr4> for the authors' LaViT-3B), batch_size, max_new_tokens,
system_prompt, dtype, device_map.

Data-parallel: `accelerate launch --num_processes N -m lmms_eval --model lavit ...` (or torchrun) runs one
whole model per GPU; lmms-eval shards the documents by the `rank`/`world_size` this model reports.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from lavit.eval.lmms_adapter import LmmsGenerator, Request, parse_model_args, process_device, process_placement
from lavit.eval.models import GenerativeModel


class LavitLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, **model_args) -> None:
        super().__init__()
        args = parse_model_args(pretrained, **model_args)
        batch_size = args.pop("batch_size")
        placement = process_placement(args.pop("device"), args.pop("device_map"))
        self._rank, self._world_size = placement["rank"], placement["world_size"]
        if self._world_size > 1:
            from accelerate import Accelerator

            # the process group lmms-eval's evaluator gathers request counts over (gloo on CPU-only machines)
            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.generator = LmmsGenerator(GenerativeModel(**args, device_map=placement["device_map"]),
                                       batch_size=batch_size)
        self._device = process_device(self.generator.model)

    @property
    def device(self):
        return self._device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LavitLmms":
        """lmms-eval adds its CLI's batch_size/max_batch_size/device to `--model_args`; ours win on a clash."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        batch = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            batch.append(Request(context, [v for v in (visuals or []) if v is not None], dict(gen_kwargs or {})))
        return self.generator.generate(batch)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("lavit evaluates by generation (generate_until tasks); loglikelihood tasks are "
                                  "not supported")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("lavit does not implement multi-round generation")


def manifests() -> list[ModelManifest]:
    """The `lmms_eval.models` entry point payload."""
    return [ModelManifest(model_id="lavit", simple_class_path="lavit.eval.lmms_plugin.LavitLmms")]
