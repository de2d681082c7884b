"""MMVP (tsb0601/MMVP): `Questions.csv` (`Index` — some copies spell it `lndex` — `Question`, `Options`
"(a) Open (b) Closed", `Correct Answer` "(a)") and `MMVP Images/{Index}.jpg`. Questions come in pairs
(1 & 2, 3 & 4, …) on the same question with opposite answers; pair accuracy counts a pair only when
both are right (its interval over the complete pairs). The paper reports per-question accuracy."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lavit.data.samples import Rejection
from lavit.eval.items import ANSWER_DIRECTLY, EvalItem, ImageRef, build_items, text
from lavit.eval.stats import accuracy_summary

_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)")


def load(root: Path) -> list[EvalItem]:
    path = root / "Questions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"MMVP: {path} not found (expected Questions.csv and 'MMVP Images/' in {root})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM, as spreadsheet exports write it, is dropped
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"MMVP: {path} is not UTF-8 CSV ({err})") from None
    if not rows:
        raise ValueError(f"MMVP: {path} has no rows")
    index_col = next((c for c in ("Index", "lndex") if c in rows[0]), None)
    missing = [c for c in ("Question", "Options", "Correct Answer") if c not in rows[0]]
    if index_col is None or missing:
        raise ValueError(f"MMVP: {path} lacks columns {missing or ['Index']} (has {list(rows[0])})")

    def build(row: dict, ident: str) -> EvalItem:
        if not ident.isdecimal():
            raise Rejection("cell_invalid", f"{index_col!r} is {ident!r}, expected a number")
        index = int(ident)
        options = _OPTION.findall(text(row, "Options").strip())
        if len(options) < 2:
            raise Rejection("cell_invalid", f"cannot read options {row['Options']!r}: expected '(a) … (b) …'")
        letters = "".join(letter.upper() for letter, _ in options)
        prompt = "\n".join([text(row, "Question").strip(), *(f"({letter}) {t}" for letter, t in options),
                            ANSWER_DIRECTLY])
        return EvalItem(id=str(index), images=[ImageRef(root / "MMVP Images" / f"{index}.jpg")], prompt=prompt,
                        letters=letters, answer=text(row, "Correct Answer").strip().strip("()").upper(),
                        meta={"pair": (index - 1) // 2})

    # A short row's missing cells read as null (csv's restval), which `text` turns into this row's skip.
    return build_items(((f"row {n}", row) for n, row in enumerate(rows, 1)), index_col, build)


def summary(records: list[dict], interval: str) -> dict:
    pairs: dict[int, list[bool]] = {}
    for r in records:
        pairs.setdefault(r["pair"], []).append(r["correct"])
    stats = accuracy_summary([all(v) for v in pairs.values() if len(v) == 2], method=interval)
    return {"pair_accuracy": stats["accuracy"], "pair_accuracy_ci95": stats["ci95"], "pairs": stats["n"],
            "pairs_correct": stats["correct"]}
