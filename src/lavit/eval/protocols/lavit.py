"""Protocol `lavit`: lavit's own evaluation, the default.

Prompts: the benchmark's question and options (MMVP's on their own lines, as "(a) Open"; BLINK's `prompt`
column; V*'s `text`, which already ends in the instruction; MMStar's question with its inline options), then
lmms-eval's instruction "Answer with the option's letter from the given choices directly." where the text does
not already carry it. Letters are read by `lavit.eval.matching.extract_option_letter` (tested on 60 real-looking
outputs: the article is never an option, a rejected option is no commitment, hedges give no letter). A model
with latent tokens answers in forced mode, 32 new tokens at most, by plain greedy decoding (nothing of the
checkpoint's generation config but its eos tokens, so transformers and vLLM decode alike), at the resolution it
was trained at (`lavit.json`; other models at their processor's). V* is the 115 direct-attribute items.
"""

from __future__ import annotations

from lavit.eval.benchmarks.mmvp import parse_options
from lavit.eval.items import EvalItem
from lavit.eval.matching import extract_option_letter
from lavit.eval.protocols import Protocol, TaskRules

ANSWER_DIRECTLY = "Answer with the option's letter from the given choices directly."
MAX_NEW_TOKENS = 32


def mmvp_prompt(item: EvalItem) -> str:
    options = parse_options(item.doc["Options"])
    return "\n".join([item.doc["Question"].strip(), *(f"({letter}) {text}" for letter, text in options),
                      ANSWER_DIRECTLY])


def blink_prompt(item: EvalItem) -> str:
    return f"{item.doc['prompt'].strip()}\n{ANSWER_DIRECTLY}"


def vstar_prompt(item: EvalItem) -> str:
    return item.doc["text"].strip()


def mmstar_prompt(item: EvalItem) -> str:
    return f"{item.doc['question'].strip()}\n{ANSWER_DIRECTLY}"


def extract(raw: str, item: EvalItem) -> str | None:
    return extract_option_letter(raw, item.letters)


PROTOCOL = Protocol(
    name="lavit", version="lavit-2",
    description="lavit's own: options on their own lines, forced latents, 32 tokens, plain greedy, trained resolution",
    tasks={"mmvp": TaskRules(mmvp_prompt, extract, MAX_NEW_TOKENS),
           "blink": TaskRules(blink_prompt, extract, MAX_NEW_TOKENS),
           "vstar": TaskRules(vstar_prompt, extract, MAX_NEW_TOKENS),
           "mmstar": TaskRules(mmstar_prompt, extract, MAX_NEW_TOKENS)},
    latent_mode="forced", decoding="greedy", sampling_from_checkpoint=False, pixels="trained",
    system_prompt="trained", eos="generation_config", keep_special_tokens=False, vstar_items="direct_attributes",
    label_fixes=None, default_max_new_tokens=MAX_NEW_TOKENS)
