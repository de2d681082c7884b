"""V* Bench (craigwu/vstar_bench): `test_questions.jsonl` lines `{image, text, category, question_id,
label}`; `text` holds the question, options "(A) …" and the answer instruction; images are paths under
the root (`direct_attributes/sa_4690.jpg`; one outside it is refused). Table 1's "V* Attr." is the 115
`direct_attributes` items; category `all` reads all 191 (the 76 `relative_position` ones too), as the authors'
evaluator and lmms-eval's `vstar_bench` task do.

Beside each image the benchmark publishes its annotation (`sa_4690.json`: `target_object`, the names asked about,
and `bbox`, one [x, y, w, h] box in the image's pixels per target). Its boxes become the item's `boxes`
([x1, y1, x2, y2]; two for a relative_position item), the regions the audit's oracle view shows; an item whose
annotation is missing or malformed keeps no boxes, with the reason, and is scored as any other."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from lavit.data.samples import Rejection, resolve_image
from lavit.eval.items import EvalItem, build_items, image_at, text
from lavit.eval.stats import accuracy_summary

_LETTER = re.compile(r"\(([A-H])\)")
ALL = "all"


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
            if category != ALL and line_category != category:
                continue
        rows.append((f"line {lineno}", row))
    if category != ALL and category not in categories:
        raise ValueError(f"V*: no items of category {category!r} in {path} (categories: {sorted(categories)}, "
                         f"or {ALL!r})")

    def build(row: dict, ident: str) -> EvalItem:
        # a null or mistyped category is this line's skip (lines of other categories are left out)
        doc = {key: text(row, key) for key in ("category", "text", "label")} | {"question_id": row["question_id"]}
        relative = text(row, "image")
        image = image_at(root, relative)
        boxes, no_box = target_boxes(root, str(Path(relative).with_suffix(".json")))
        return EvalItem(id=ident, images=[image], letters="".join(dict.fromkeys(_LETTER.findall(doc["text"]))),
                        answer=doc["label"].strip().upper(), doc=doc, meta={"category": doc["category"]},
                        boxes=boxes, no_box=no_box)

    return build_items(rows, "question_id", build)


def target_boxes(root: Path, relative: str) -> tuple[list[list[float]] | None, str]:
    """The target boxes [[x1, y1, x2, y2], ...] of the V* annotation file `relative` under `root` (kept under it as
    the images are), or (None, why not)."""
    try:
        annotation = resolve_image(root, relative)
    except Rejection as rej:
        return None, f"annotation {relative}: {rej}"
    try:
        if not annotation.is_file():
            return None, f"no annotation file {relative} beside the image"
        record = json.loads(annotation.read_text(encoding="utf-8-sig"))
    except OSError as err:  # a name over the filesystem's limit, no permission, ...
        return None, f"annotation {relative} cannot be read ({err.strerror or err})"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"annotation {relative} is not JSON text ({err})"
    raw = record.get("bbox") if isinstance(record, dict) else None
    if not isinstance(raw, list) or not raw:
        return None, f"annotation {relative} has no 'bbox' list"
    targets = record.get("target_object")
    if not isinstance(targets, list) or len(targets) != len(raw):
        return None, (f"annotation {relative} has {len(raw)} boxes for target_object {targets!r}: expected one box "
                      "per target")
    boxes = []
    for box in raw:
        try:
            if (not isinstance(box, list) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise TypeError
            x, y, w, h = (float(v) for v in box)  # a non-finite corner is `image_box`'s rejection, with the image
        except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer too large for a float
            return None, f"annotation {relative}: {box!r} is not an [x, y, w, h] box"
        boxes.append([x, y, x + w, y + h])
    return boxes, ""


def summary(records: list[dict], interval: str) -> dict:
    """Per category (direct_attributes, relative_position), each with its interval and item count."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        groups[r["category"]].append(r["correct"])
    stats = {k: accuracy_summary(v, method=interval) for k, v in sorted(groups.items())}
    return {"per_category": {k: s["accuracy"] for k, s in stats.items()},
            "per_category_ci95": {k: s["ci95"] for k, s in stats.items()},
            "per_category_n": {k: s["n"] for k, s in stats.items()}}
