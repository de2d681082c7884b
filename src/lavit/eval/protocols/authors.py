"""Protocol `authors`: the LaViT authors' evaluator, re-stated from reading it (never copied).

Source: Svardfox/LaViT at commit 26bf182, `evaluation/utils/adapters.py` (prompts, item sets),
`evaluator.py` / `base_evaluator.py` (chat template, decoding) and `answer_checker.py` (scoring). Their evaluator:

* asks every item alone (batch size 1) through the checkpoint's own chat template with no system message (so
  the template's default one), the images first, then the prompt with any `<image>` removed and stripped;
* prompts: MMVP "{Question}\\n{Options}\\nAnswer with the option letter from the given choices directly." — the
  CSV's option line as it is, and "option letter", not lmms-eval's "option's letter"; BLINK its `prompt` column
  as it is (built from `question` and `choices` only when that is empty); V* its `text` as it is; MMStar the
  question, with that instruction appended unless it already holds "Answer with";
* reads all of V* (191 items: the relative-position ones too), from the hub;
* generates with `model.generate(**inputs, max_new_tokens=512)`: the checkpoint's generation config as it is
  (Qwen's: do_sample with top_k 1 — greedy — and repetition_penalty 1.05; eos `<|im_end|>`, `<|endoftext|>`);
  a LaViT checkpoint in natural mode (it writes its own latents), a plain one without;
* loads the processor saved with the checkpoint (their training saves it at min_pixels 200 704, max_pixels
  4 194 304; the base Qwen2.5-VL-3B's is 3 136 – 12 845 056), so each model runs at its own processor's limits;
* decodes with special tokens kept (`skip_special_tokens=False`) and scores the last option letter it finds
  (`authors_letter` below) against the truth's letter; accuracy over the items that produced an answer.

Their `--force_lvr` is meant to append four `<lvr>` tokens to the prompt (`force_lvr=True` here). A checkpoint
saved their way has `<lvr1>`…`<lvr4>` and no `<lvr>`: their evaluator adds `<lvr>` to the tokenizer with an id
past the embedding table, so `force_lvr` refuses such a checkpoint with an error saying so. (In their code as
written the appended ids never reach `generate` — `inputs.input_ids = …` sets an attribute of the processor's
`BatchFeature`, not the input — and only shift where the answer is cut: DESIGN §4.)
"""

from __future__ import annotations

import re

from lavit.eval.items import EvalItem
from lavit.eval.protocols import Protocol, TaskRules

COMMIT = "26bf182"
INSTRUCTION = "Answer with the option letter from the given choices directly."
MAX_NEW_TOKENS = 512
FORCE_TOKEN = "<lvr>"
FORCE_COUNT = 4


def _clean(prompt: str) -> str:
    """What their `generate` does to every prompt before the chat template."""
    return prompt.replace("<image>", "").strip()


def mmvp_prompt(item: EvalItem) -> str:
    return _clean(f"{item.doc['Question']}\n{item.doc['Options']}\n{INSTRUCTION}")


def blink_prompt(item: EvalItem) -> str:
    if item.doc["prompt"]:
        return _clean(item.doc["prompt"])
    options = "".join(f"\n({'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[i]}) {choice}" for i, choice in enumerate(item.doc["choices"]))
    return _clean(item.doc["question"] + ("\nOptions:" + options + f"\n{INSTRUCTION}" if options else ""))


def vstar_prompt(item: EvalItem) -> str:
    return _clean(item.doc["text"])


def mmstar_prompt(item: EvalItem) -> str:
    question = item.doc["question"]
    return _clean(question if "Answer with" in question else f"{question}\n{INSTRUCTION}")


# Their conclusion phrases, tried in this order after a parenthesised letter; the last match of the first phrase
# that matches wins (case-insensitive, across lines).
_CONCLUSIONS = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in (
    r"answer\s*:?\s*([a-h])\b",
    r"choice\s*:?\s*([a-h])\b",
    r"conclusion\s*:?\s*([a-h])\b",
    r"final\s+answer\s*:?\s*([a-h])\b",
    r"therefore.*?\bis\s+([a-h])\b",
    r"the\s+correct\s+answer\s+is\s+([a-h])\b",
    r"([a-h])\s+is\s+the\s+correct\s+answer",
)]
_PARENTHESISED = re.compile(r"\(([A-Ha-h])\)")
_SINGLE = re.compile(r"\b([A-Ha-h])\b")
_ANY = re.compile(r"[A-Ha-h]")


def authors_letter(text: str | None) -> str | None:
    """The option letter their `extract_answer_letter` reads (upper-cased; they compare lower-cased), or None.

    In order: a trailing `<|im_end|>` is dropped; the last "(x)"; the last match of the first conclusion phrase
    that matches; the last standalone letter A–H other than a lower-case "a" (the article) — "a" only when it is
    the sole kind found; in a text under 10 characters, the first letter A–H anywhere (so "None" reads as "e").
    """
    if not text:
        return None
    text = re.sub(r"<\|im_end\|>$", "", str(text)).strip()
    for pattern in (_PARENTHESISED, *_CONCLUSIONS):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    singles = _SINGLE.findall(text)
    if singles:
        not_article = [m for m in singles if m != "a"]
        return (not_article[-1] if not_article else "a").upper()
    if len(text) < 10 and (m := _ANY.search(text)):
        return m.group(0).upper()
    return None


def extract(raw: str, item: EvalItem) -> str | None:
    return authors_letter(raw)


PROTOCOL = Protocol(
    name="authors", version=f"Svardfox/LaViT@{COMMIT}",
    description="the LaViT authors' evaluator: their prompts, natural latents, 512 tokens, the checkpoint's "
                "generation config and processor, all of V*, their letter extraction",
    tasks={"mmvp": TaskRules(mmvp_prompt, extract, MAX_NEW_TOKENS),
           "blink": TaskRules(blink_prompt, extract, MAX_NEW_TOKENS),
           "vstar": TaskRules(vstar_prompt, extract, MAX_NEW_TOKENS),
           "mmstar": TaskRules(mmstar_prompt, extract, MAX_NEW_TOKENS)},
    latent_mode="template", decoding="generation_config", sampling_from_checkpoint=True, pixels="processor",
    system_prompt="template", eos="generation_config", keep_special_tokens=True, vstar_items="all",
    label_fixes=False, default_max_new_tokens=MAX_NEW_TOKENS,
    notes=("their evaluator asks one item at a time; lavit batches (--batch-size 1 for their exact numerics in "
           "bf16)", "V* from the local test_questions.jsonl, which their evaluator downloads from the hub"))
