"""Protocol `lmms-eval`: lmms-eval 0.7.3's tasks as its `qwen2_5_vl` model runs them, re-stated (never copied).

Tasks (`lmms_eval/tasks/<task>/utils.py` and the task YAMLs): `mmvp`, `blink_<sub_task>`, `vstar_bench` /
`vstar_bench_direct_attributes` / `vstar_bench_relative_position`, `mmstar`. Per task: the prompt its
`doc_to_text` / `doc_to_messages` builds with the default `lmms_eval_specific_kwargs`, the answer length of its
`generation_kwargs`, the letter its `process_results` extracts and the metric its aggregation reports (MMStar's
`average` is the mean of its per-l2-category accuracies, not the micro accuracy). Every function below is checked
item by item against lmms-eval's own installed task code in tests/eval/test_protocols.py.

Model side, as `lmms-eval --model qwen2_5_vl` (the chat class lmms-eval resolves that name to) runs a model:
no system message (the chat template's default), the images first; each image resized by qwen_vl_utils'
`fetch_image` at its defaults (each side a multiple of 28, 3 136 – 12 845 056 pixels, PIL's bicubic) before the
processor, which lmms-eval loads at min_pixels 200 704, max_pixels 1 605 632; greedy (`do_sample=False`) with the
rest of the checkpoint's generation config (Qwen's repetition_penalty 1.05) and the tokenizer's eos only; 128 new
tokens where a task sets none (MMStar); special tokens skipped on decode. A checkpoint's latent tokens are
whatever its chat template does (an exported lavit student's appends them; the authors' LaViT-3B writes its own).
MMVP is scored against lmms-lab-eval/MMVP's labels, which carry the documented fixes of pairs 99/100 and 279/280.
Only Qwen2.5-VL is replicated: lmms-eval's other Qwen classes resize, prompt and decode differently.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from PIL import Image

from lavit.eval.items import EvalItem
from lavit.eval.protocols import Protocol, TaskRules

VERSION = "0.7.3"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# lmms-eval's qwen2_5_vl model class: the processor's limits, and qwen_vl_utils' own for its first resize.
PROCESSOR_PIXELS = (256 * 28 * 28, 1605632)
FETCH_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
FETCH_MAX_RATIO = 200
DEFAULT_MAX_NEW_TOKENS = 128  # the chat class's default, for a task that sets none


# -- the first resize (qwen_vl_utils.fetch_image at its defaults) ------------------------------------------------
def fetch_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) qwen_vl_utils' `smart_resize` gives an image: each side rounded to a multiple of 28 (at
    least 28), then scaled down (floor) or up (ceil) to a multiple of 28 when the area leaves its limits."""
    if max(height, width) / min(height, width) > FETCH_MAX_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds {FETCH_MAX_RATIO}")
    f = FETCH_FACTOR
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > FETCH_MAX_PIXELS:
        beta = math.sqrt((height * width) / FETCH_MAX_PIXELS)
        h, w = math.floor(height / beta / f) * f, math.floor(width / beta / f) * f
    elif h * w < FETCH_MIN_PIXELS:
        beta = math.sqrt(FETCH_MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return w, h


def fetch_image(image: Image.Image) -> Image.Image:
    """The image qwen_vl_utils hands lmms-eval's processor: resized to `fetch_size` with PIL's default (bicubic)."""
    return image.resize(fetch_size(*image.size))


# -- MMVP -------------------------------------------------------------------------------------------------------
_MMVP_OPTION = re.compile(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", re.IGNORECASE)
_MMVP_LETTER = [re.compile(p, re.IGNORECASE) for p in (
    r"^\s*\(?([ab])\)?\.?\s*$",  # the letter alone
    r"^\s*\(?([ab])\)?[.\s]",  # the letter first
    r"answer\s+is\s+\(?([ab])\)?",
    r"option\s+\(?([ab])\)?",
    r"\(?([ab])\)?(?:\s|$)",  # an a or b before a space or the end, anywhere (inside a word too)
)]


def mmvp_prompt(item: EvalItem) -> str:
    options = [text.strip() for text in _MMVP_OPTION.findall(item.doc["Options"])]
    lines = "\n".join(f"{chr(65 + i)}. {text}" for i, text in enumerate(options))
    return f"{item.doc['Question']}\n{lines}{POST_PROMPT}"


def mmvp_letter(text: str) -> str | None:
    text = text.strip()
    for pattern in _MMVP_LETTER:
        if m := pattern.search(text):
            return m.group(1).upper()
    return text[0].upper() if text and text[0].upper() in "AB" else None


# -- BLINK ------------------------------------------------------------------------------------------------------
def blink_prompt(item: EvalItem) -> str:
    letters = ", ".join(chr(65 + i) for i in range(len(item.doc["choices"])))
    return f"Note: You only need to respond with {letters} without providing any additional information.\n" \
           f"{item.doc['prompt']}"


def blink_letter(text: str, valid: str) -> str | None:
    """In order: a first line of at most 4 characters that is just the letter; the last "answer (is) X"; the last
    "(X)" (upper case only); a valid letter first in the text, whatever follows it."""
    text = text.strip()
    letters = re.escape(valid.upper())
    first_line = text.split("\n", 1)[0].strip()
    if len(first_line) <= 4 and (m := re.match(rf"^\(?([{letters}])\)?[.\s:,)]*$", first_line, re.IGNORECASE)):
        return m.group(1).upper()
    stated = re.findall(rf"answers?(?:\s+is)?\s*[:\-]?\s*\(?([{letters}])\)?(?![A-Za-z])", text, re.IGNORECASE)
    if stated:
        return stated[-1].upper()
    parenthesised = re.findall(rf"\(([{letters}])\)", text)
    if parenthesised:
        return parenthesised[-1].upper()
    if m := re.match(rf"[(\s]*([{letters}])[).\s]*", text, re.IGNORECASE):
        return m.group(1).upper()
    return None


def blink_extract(raw: str, item: EvalItem) -> str | None:
    valid = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(item.doc["choices"])] or "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return blink_letter(raw, valid)


# -- V* ---------------------------------------------------------------------------------------------------------
_VSTAR_OPTION = re.compile(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)")
_VSTAR_LETTER = [re.compile(p, re.IGNORECASE) for p in (
    r"^([A-D])\s*[.)\]]*",
    r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",
    r"\(([A-D])\)",
    r"([A-D])\s*(?:\.|\)|])",
    r"(?:^|\s)([A-D])(?:\s|$)",
)]


def vstar_prompt(item: EvalItem) -> str:
    """The question before "(A)", then each option as "A. …" (the last one runs to the end of the text, so it keeps
    the V* file's own instruction), then the task's instruction."""
    text = item.doc["text"]
    options = _VSTAR_OPTION.findall(text)
    if options:
        lines = "\n".join(f"{'ABCD'[i]}. {option.strip()}" for i, option in enumerate(options[:4]))
        text = f"{text.split('(A)')[0].strip()}\n{lines}"
    return f"{text}{POST_PROMPT}"


def vstar_letter(text: str) -> str | None:
    """On the upper-cased answer: a first letter A–D; "answer/choice/option (is) X"; "(X)"; "X." / "X)" / "X]";
    a standalone X; the only A–D anywhere; else its first character when that is one."""
    text = text.strip().upper()
    for pattern in _VSTAR_LETTER:
        if m := pattern.search(text):
            return m.group(1).upper()
    found = re.findall(r"[A-D]", text)
    if len(found) == 1:
        return found[0]
    return text[0] if text and text[0] in "ABCD" else None


# -- MMStar -----------------------------------------------------------------------------------------------------
MMSTAR_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"  # no final period
_YES_NO_SUFFIX = " Please answer yes or no."
_MMSTAR_CHOICES = "ABCD"
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
            "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
            "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
# Higher wins; within one kind, the later position.
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def mmstar_prompt(item: EvalItem) -> str:
    return item.doc["question"].strip().replace(_YES_NO_SUFFIX, "") + MMSTAR_POST_PROMPT


def mcq_letter(response: str, choices: str = _MMSTAR_CHOICES) -> str | None:
    """lmms-eval's shared multiple-choice extraction: every way a choice letter can appear is a candidate — the
    last "(X)", "X.", "X:", "X)", "X " (padded with spaces, so first and last words count), any X after an answer
    phrase, the text starting or ending with a lone X, and, when nothing else, the last X anywhere — and the
    candidate of the highest-priority kind wins, the later one within a kind."""
    if not response or not response.strip():
        return None
    text = response.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    candidates = []
    for mark, kind in (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"),
                       ("{} ", "space")):
        candidates += [(ch, text.rfind(mark.format(ch)), kind) for ch in choices if mark.format(ch) in text]
    lower = text.lower()
    for phrase in _PHRASES:
        at = lower.find(phrase)
        if at != -1:
            candidates += [(ch, pos, "phrase") for ch in choices if (pos := text.find(ch, at + len(phrase))) != -1]
    core = text.strip()
    candidates += [(ch, 0, "start") for ch in choices
                   if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha())]
    candidates += [(ch, len(text) - 1, "end") for ch in choices
                   if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha())]
    if not candidates:
        candidates = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (_PRIORITY[c[2]], c[1]))[0]


def mmstar_extract(raw: str, item: EvalItem) -> str | None:
    return mcq_letter(raw)


def mmstar_average(records: list[dict]) -> tuple[str, float | None]:
    """lmms-eval's MMStar `average`: the mean over l2 categories of each one's accuracy."""
    by_l2: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_l2[r["l2_category"]].append(r["correct"])
    if not by_l2:
        return "average over l2_category", None
    return "average over l2_category", sum(sum(v) / len(v) for v in by_l2.values()) / len(by_l2)


PROTOCOL = Protocol(
    name="lmms-eval", version=f"lmms-eval {VERSION} (qwen2_5_vl)",
    description="lmms-eval 0.7.3's mmvp / blink / vstar_bench / mmstar tasks as its qwen2_5_vl model runs them",
    tasks={"mmvp": TaskRules(mmvp_prompt, lambda raw, item: mmvp_letter(raw), 16),
           "blink": TaskRules(blink_prompt, blink_extract, 1024),
           "vstar": TaskRules(vstar_prompt, lambda raw, item: vstar_letter(raw), 16),
           "mmstar": TaskRules(mmstar_prompt, mmstar_extract, DEFAULT_MAX_NEW_TOKENS, mmstar_average)},
    latent_mode="template", decoding="generation_config", sampling_from_checkpoint=False, pixels=PROCESSOR_PIXELS,
    system_prompt="template", eos="tokenizer", keep_special_tokens=False, vstar_items="direct_attributes",
    label_fixes=True, default_max_new_tokens=DEFAULT_MAX_NEW_TOKENS, image_transport="qwen_vl_utils",
    families=("qwen2_5_vl",),
    notes=("images are decoded as every lavit stage decodes them (an RGBA image composited on white; lmms-eval's "
           "doc_to_visual drops the alpha channel)",
           "the benchmarks are read from their published files; lmms-eval downloads its own copies "
           "(lmms-lab-eval/MMVP, lmms-lab-encoder/vstar-bench, Lin-Chen/MMStar, BLINK-Benchmark/BLINK), and a copy "
           "whose text differs gives other prompts"))
