"""Evaluation protocols: everything besides the model that changes a benchmark number, named and versioned.

A number is a function of the protocol as much as of the model (DESIGN §2, evaluation protocols). A protocol
fixes, per benchmark, the prompt text and answer length, the way a letter is read from the answer and the
headline metric; and, on the model side, the default latent mode, decoding (greedy, or the checkpoint's
generation config), the eos tokens, the resolution, the system prompt, the item set (which V* items) and the
label set (MMVP's documented errors corrected or not). Everything it fixes is recorded with every result
(`Protocol.describe`), and `lavit compare` refuses results of different protocols.

* `lavit` (`protocols/lavit.py`): lavit's own, the default — the question, options on their own lines and
  lmms-eval's answer instruction; forced latents; 32 tokens; plain greedy decoding; each model at the
  resolution it was trained at.
* `authors` (`protocols/authors.py`): the LaViT authors' evaluator (`evaluation/utils/run_eval.py` and
  `run_eval_base.py` of Svardfox/LaViT at commit 26bf182), re-stated from reading it.
* `lmms-eval` (`protocols/lmms_eval.py`): lmms-eval 0.7.3's `mmvp`, `blink_*`, `vstar_bench*` and `mmstar` tasks
  as its `qwen2_5_vl` model runs them, re-stated and checked item by item against lmms-eval's own task code
  (tests/eval/test_protocols.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from lavit.eval.items import EvalItem


@dataclass(frozen=True)
class TaskRules:
    """How one benchmark is asked and scored under a protocol."""

    prompt: Callable[[EvalItem], str]  # the text after the image(s)
    extract: Callable[[str, EvalItem], str | None]  # the option letter read from an answer (None: no letter)
    max_new_tokens: int
    # The protocol's headline metric from the scored records, when it is not the micro accuracy:
    # (name, value in [0, 1]); e.g. lmms-eval's MMStar 'average' over its l2 categories.
    metric: Callable[[list[dict]], tuple[str, float | None]] | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    version: str
    description: str
    tasks: Mapping[str, TaskRules]  # keyed by benchmark base: mmvp, blink, vstar, mmstar
    latent_mode: str  # for a model with latent tokens: forced | natural | template
    decoding: str  # greedy: argmax and nothing else; generation_config: the checkpoint's (repetition penalty, eos)
    sampling_from_checkpoint: bool  # the checkpoint's do_sample is kept (it must then be greedy-equivalent)
    pixels: str | tuple[int, int]  # trained | processor | (min_pixels, max_pixels)
    system_prompt: str  # trained (lavit.json) | template (the chat template's default)
    eos: str  # generation_config (the checkpoint's eos ids) | tokenizer (the tokenizer's eos only)
    keep_special_tokens: bool  # the answer decoded with special (and latent) tokens, cut after its first eos
    vstar_items: str  # what a bare `vstar` reads: direct_attributes | all
    label_fixes: bool | None  # None: the run's --label-fixes; True / False: fixed by the protocol
    default_max_new_tokens: int  # the answer length where no benchmark sets one (a task of lmms-eval's, a free prompt)
    image_transport: str | None = None  # a resize before the processor's (lmms-eval: qwen_vl_utils' fetch_image)
    families: tuple[str, ...] | None = None  # model families it replicates (None: every family)
    notes: tuple[str, ...] = field(default_factory=tuple)  # what it does not replicate, said with its results

    def rules(self, benchmark: str) -> TaskRules:
        base = benchmark.partition(":")[0]
        if base not in self.tasks:
            raise ValueError(f"protocol {self.name!r} has no rules for benchmark {benchmark!r}")
        return self.tasks[base]

    def describe(self) -> dict:
        """What the protocol fixes, as recorded in run.json / summary.json."""
        return {"name": self.name, "version": self.version, "latent_mode": self.latent_mode,
                "decoding": self.decoding, "sampling_from_checkpoint": self.sampling_from_checkpoint,
                "pixels": list(self.pixels) if isinstance(self.pixels, tuple) else self.pixels,
                "system_prompt": self.system_prompt, "eos": self.eos, "keep_special_tokens": self.keep_special_tokens,
                "vstar_items": self.vstar_items, "label_fixes": self.label_fixes,
                "default_max_new_tokens": self.default_max_new_tokens,
                "image_transport": self.image_transport, "notes": list(self.notes),
                "max_new_tokens": {name: rules.max_new_tokens for name, rules in self.tasks.items()}}


def apply_protocol(items: list[EvalItem], protocol: Protocol, benchmark: str) -> list[EvalItem]:
    """The items with their prompts as `protocol` asks them (an item the loader refused keeps its empty prompt)."""
    rules = protocol.rules(benchmark)
    return [item if item.invalid is not None else replace(item, prompt=rules.prompt(item)) for item in items]


def _protocols() -> dict[str, Protocol]:
    from lavit.eval.protocols import authors, lavit, lmms_eval

    return {p.name: p for p in (lavit.PROTOCOL, authors.PROTOCOL, lmms_eval.PROTOCOL)}


def protocol_names() -> tuple[str, ...]:
    return tuple(_protocols())


def get_protocol(name: str) -> Protocol:
    protocols = _protocols()
    if name not in protocols:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(protocols)}")
    return protocols[name]
