"""V* Bench (craigwu/vstar_bench): `test_questions.jsonl` lines `{image, text, category, question_id,
label}`; `text` holds the question, options "(A) …" and the answer instruction; images are paths under
the root (`direct_attributes/sa_4690.jpg`; one outside it is refused). Table 1's "V* Attr." is the 115
`direct_attributes` items."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lavit.data.samples import Rejection
from lavit.eval.items import EvalItem, build_items, image_at, text

_LETTER = re.compile(r"\(([A-H])\)")


def load(root: Path, category: str) -> list[EvalItem]:
    path = root / "test_questions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"V*: {path} not found")
    rows, categories = [], set()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is dropped, as every reader here does
    except UnicodeDecodeError as err:
        raise ValueError(f"V*: {path} is not UTF-8 text ({err})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = Rejection("row_invalid", f"line {lineno} is not valid JSON ({err.msg})")
        # A line whose category cannot be read is skipped in every category's run, so it is never lost unseen.
        line_category = row.get("category") if isinstance(row, dict) else None
        if isinstance(line_category, str):
            categories.add(line_category)
            if line_category != category:
                continue
        rows.append((f"line {lineno}", row))
    if category not in categories:
        raise ValueError(f"V*: no items of category {category!r} in {path} (categories: {sorted(categories)})")

    def build(row: dict, ident: str) -> EvalItem:
        text(row, "category")  # a null or mistyped one is this line's skip (lines of other categories are left out)
        prompt = text(row, "text")
        return EvalItem(id=ident, images=[image_at(root, text(row, "image"))], prompt=prompt.strip(),
                        letters="".join(dict.fromkeys(_LETTER.findall(prompt))),
                        answer=text(row, "label").strip().upper(), meta={"category": category})

    return build_items(rows, "question_id", build)
