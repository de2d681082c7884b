"""MMStar (Lin-Chen/MMStar): `mmstar.parquet` with `index`, `question` (options inside:
"Options: A: …, B: …"), `image` (encoded bytes or a `{bytes, path}` struct), `answer` "A", `category`
(6 core capabilities), `l2_category`. Micro accuracy over all items, plus per category, each with its interval
and item count."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from lavit.data.samples import Rejection
from lavit.eval.items import EvalItem, build_items, image_cell, text
from lavit.eval.stats import accuracy_summary

COLUMNS = ("index", "question", "image", "answer", "category", "l2_category")
_OPTION = re.compile(r"(?:^|[\s,])([A-H]):\s")


def load(root: Path) -> list[EvalItem]:
    path = root / "mmstar.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"MMStar: {path} not found")
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"MMStar: {path} lacks columns {missing}")
    if table.num_rows == 0:
        raise ValueError(f"MMStar: {path} holds no rows")

    def build(row: dict, ident: str) -> EvalItem:
        # The categories are checked here, not in `summary`: a null one is this item's skip, before any answer.
        meta = {key: text(row, key) for key in ("category", "l2_category")}
        question = text(row, "question")
        options_part = question.split("Options:", 1)[1] if "Options:" in question else question
        image = image_cell(row["image"], "image", root)
        if image is None:
            raise Rejection("image_missing", "'image' is null")
        doc = {"index": row["index"], "question": question, "answer": text(row, "answer"), **meta}
        return EvalItem(id=ident, images=[image], letters="".join(dict.fromkeys(_OPTION.findall(options_part))),
                        answer=doc["answer"].strip().upper(), doc=doc, meta=meta)

    return build_items(((f"row {n}", row) for n, row in enumerate(table.to_pylist(), 1)), "index", build)


def summary(records: list[dict], interval: str) -> dict:
    out = {}
    for key in ("category", "l2_category"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for r in records:
            groups[r[key]].append(r["correct"])
        stats = {k: accuracy_summary(v, method=interval) for k, v in sorted(groups.items())}
        out |= {f"per_{key}": {k: s["accuracy"] for k, s in stats.items()},
                f"per_{key}_ci95": {k: s["ci95"] for k, s in stats.items()},
                f"per_{key}_n": {k: s["n"] for k, s in stats.items()}}
    return out
