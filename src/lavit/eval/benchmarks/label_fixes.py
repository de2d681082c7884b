"""Documented label errors in published benchmark files, applied only when asked (`lavit eval --label-fixes`).

MMVP's `Questions.csv` (tsb0601/MMVP, MMVP/MMVP on the hub) swaps the answers of two pairs: the elephant-tusk pair
(Index 99, 100) and the elderly-person pair (Index 279, 280). Reported in tsb0601/MMVP#14 (279/280, quoting the
CSV lines) and #30 (all four), checked image by image in EvolvingLMMs-Lab/lmms-eval#1018, whose `lmms-lab-eval/MMVP`
copy carries the four corrections (lmms_eval/tasks/mmvp/README.md, "Ground Truth Corrections"). Each pair keeps
MMVP's design, one (a) and one (b), after the swap.

An entry is applied only to the item it was written for: its question must contain `question_contains` (a copy
numbered otherwise is refused, not mis-corrected) and its answer must be the published one; an answer that already
is the corrected one (a mended copy) is left alone and reported as such.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lavit.eval.items import EvalItem


@dataclass(frozen=True)
class LabelFix:
    id: str  # the item id lavit gives it (MMVP: the CSV's 1-based Index)
    published: str  # the letter the published file holds
    corrected: str  # the letter the sources give
    question_contains: str  # a phrase of the item's question, lower case
    source: str

    def describe(self) -> str:
        """How the fix reads in a run's settings: 'id:published→corrected'."""
        return f"{self.id}:{self.published}→{self.corrected}"


_SWAPPED_PAIRS = ("https://github.com/tsb0601/MMVP/issues/30; https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/"
                  "1018 (applied in lmms-lab-eval/MMVP, lmms_eval/tasks/mmvp/README.md)")
_POSTURE = "https://github.com/tsb0601/MMVP/issues/14; " + _SWAPPED_PAIRS

MMVP = (
    LabelFix("99", "A", "B", "tusks", _SWAPPED_PAIRS),  # short tusks in the image, published (a) Long
    LabelFix("100", "B", "A", "tusks", _SWAPPED_PAIRS),  # long tusks, published (b) Short
    LabelFix("279", "A", "B", "standing or sitting", _POSTURE),  # sitting on a bench, published (a) Standing
    LabelFix("280", "B", "A", "standing or sitting", _POSTURE),  # standing, published (b) Sitting
)


def apply_label_fixes(items: list[EvalItem], fixes: tuple[LabelFix, ...], benchmark: str
                      ) -> tuple[list[EvalItem], list[dict], list[dict]]:
    """(items with the fixes applied, `{id, published, corrected, source}` per fix applied, `{id, reason}` per fix
    not applied: 'not_in_run' (beyond --max-samples or absent), 'item_invalid' (skipped anyway) or
    'already_corrected'). A fixed item's record keeps the published letter as `published_truth`. An item that is
    not the one an entry describes is an error."""
    by_id = {item.id: k for k, item in enumerate(items)}
    fixed, applied, not_applied = list(items), [], []
    for fix in fixes:
        k = by_id.get(fix.id)
        if k is None:
            not_applied.append({"id": fix.id, "reason": "not_in_run"})
            continue
        item = items[k]
        if item.invalid is not None:
            not_applied.append({"id": fix.id, "reason": "item_invalid"})
            continue
        question = item.doc.get("Question", "")
        if fix.question_contains not in question.lower():
            raise ValueError(f"{benchmark}: label fix for item {fix.id} expects a question about "
                             f"{fix.question_contains!r}, the file's item {fix.id} asks {question!r}: this file is not "
                             "numbered as the published one; drop --label-fixes (or use --protocol lavit: protocol "
                             "lmms-eval always applies them)")
        if item.answer == fix.corrected:
            not_applied.append({"id": fix.id, "reason": "already_corrected"})
            continue
        if item.answer != fix.published:
            raise ValueError(f"{benchmark}: label fix for item {fix.id} expects the published answer "
                             f"{fix.published!r} (or the corrected {fix.corrected!r}), the file holds {item.answer!r}; "
                             "drop --label-fixes")
        fixed[k] = dataclasses.replace(item, answer=fix.corrected, meta={**item.meta, "published_truth": fix.published})
        applied.append({"id": fix.id, "published": fix.published, "corrected": fix.corrected, "source": fix.source})
    return fixed, applied, not_applied
