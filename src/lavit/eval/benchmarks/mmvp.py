"""MMVP (tsb0601/MMVP): `Questions.csv` (`Index` — some copies spell it `lndex` — `Question`, `Options`
"(a) Open (b) Closed", `Correct Answer` "(a)") and `MMVP Images/{Index}.jpg`. Questions come in pairs
(1 & 2, 3 & 4, …) on the same question with opposite answers; pair accuracy counts a pair only when
both are right (its interval over the complete pairs). The paper reports per-question accuracy."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lavit.data.samples import Rejection
from lavit.eval.items import EvalItem, ImageRef, build_items, text
from lavit.eval.stats import accuracy_summary

IMAGES = "MMVP Images"
_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)")


def parse_options(options: str) -> list[tuple[str, str]]:
    """'(a) Open (b) Closed' → [('a', 'Open'), ('b', 'Closed')]."""
    return _OPTION.findall(options.strip())


def load(root: Path) -> list[EvalItem]:
    path = root / "Questions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"MMVP: {path} not found (expected Questions.csv and 'MMVP Images/' in {root})")
    if not (root / IMAGES).is_dir():  # every item would be a skip: n = 0, no accuracy, nothing said
        raise FileNotFoundError(f"MMVP: no folder '{IMAGES}' beside {path}: the benchmark's 300 images are missing")
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
        options = parse_options(text(row, "Options"))
        if len(options) < 2:
            raise Rejection("cell_invalid", f"cannot read options {row['Options']!r}: expected '(a) … (b) …'")
        doc = {"Index": index, **{key: text(row, key) for key in ("Question", "Options", "Correct Answer")}}
        return EvalItem(id=str(index), images=[ImageRef(root / IMAGES / f"{index}.jpg")],
                        letters="".join(letter.upper() for letter, _ in options),
                        answer=doc["Correct Answer"].strip().strip("()").upper(), doc=doc,
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
