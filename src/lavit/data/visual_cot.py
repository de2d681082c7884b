"""Readers for Visual-CoT (deepcs233/Visual-CoT) in its two published JSON forms.

Raw form (`viscot_363k.json`): a list of records
  {"dataset", "split", "question_id", "image": [path, path + "###[x1, y1, x2, y2]"], "conversations": [
     human "<image>\\n<question> Please provide the bounding box coordinate of the region that can help
           you answer the question better.",
     gpt "[x1, y1, x2, y2]", human "<image>", gpt "<answer>"]}
  The gpt box has 3 decimals and is normalised to the image *padded to a centred square* (LLaVA's
  expand2square: the short side is offset by (long - short) // 2, then everything is divided by the
  long side) — Visual-CoT's tools/convert_data_to_llava_format.py. The second `image` entry carries
  the same box in integer source-image pixels after '###'; when present we use it, otherwise the
  normalised box is converted with the real image size (`bbox_format='normalized_square'`).

LVR-formatted form (`viscot_363k_lvr_formatted.json`): one human turn "<image>\\n<question>…", one gpt
  turn "<lvr>\\n<answer> … </answer>", and `bboxes` [[x1, y1, x2, y2], …] with 3-decimal fractions. The
  LVR loaders read them as x/W, y/H of the unpadded image, which is our default
  (`lvr_box_format='normalized'`); pass 'normalized_square' if your copy kept Visual-CoT's padded
  convention. Several boxes are merged into their enclosing box.

Ids are `<dataset>-<question_id>`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lavit.data.samples import Sample, check_unique_ids

BOX_REQUEST = "Please provide the bounding box coordinate of the region that can help you answer the question better."
_PIXEL_BOX = re.compile(r"###\[\s*([-\d.]+),\s*([-\d.]+),\s*([-\d.]+),\s*([-\d.]+)\s*\]$")
_NORM_BOX = re.compile(r"^\[\s*([-\d.]+),\s*([-\d.]+),\s*([-\d.]+),\s*([-\d.]+)\s*\]$")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def read_visual_cot(path: str | Path, *, lvr_box_format: str = "normalized") -> list[Sample]:
    """Samples from a Visual-CoT JSON file (raw 4-turn or LVR-formatted form, detected per record)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is dropped, as every reader here does
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of Visual-CoT records")
    samples = [_record_to_sample(r, i, path, lvr_box_format) for i, r in enumerate(records)]
    check_unique_ids(samples, str(path))
    return samples


def _record_to_sample(record: dict, i: int, path: Path, lvr_box_format: str) -> Sample:
    where = f"{path} record {i}"
    try:
        images, turns = record["image"], record["conversations"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: a Visual-CoT record needs 'image' and 'conversations'") from None
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images) or not images:
        raise ValueError(f"{where}: 'image' must be a path or a non-empty list of paths")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of {{'from', 'value'}} objects")
    sample_id = f"{record.get('dataset', 'viscot')}-{record.get('question_id', i)}"
    image = images[0].split("###")[0]
    question = _strip_image_tag(turns[0].get("value", ""))
    if "bboxes" in record:
        answer = turns[1].get("value", "") if len(turns) > 1 else None
        if isinstance(answer, str):  # anything else is kept as read, for `check_text` to reject
            match = _ANSWER.search(answer)
            answer = match.group(1).strip() if match else answer.replace("<lvr>", "").strip() or None
        boxes = record["bboxes"] or []
        bbox = _enclosing(boxes) if boxes else None
        return Sample(sample_id, image, question, answer, bbox, lvr_box_format, record.get("dataset"))
    if len(turns) != 4:
        raise ValueError(f"{where}: raw Visual-CoT records have 4 turns, this one has {len(turns)}")
    question = question.replace(BOX_REQUEST, "").strip() if isinstance(question, str) else question
    answer = turns[3].get("value")
    pixel = _PIXEL_BOX.search(images[1]) if len(images) > 1 else None
    if pixel:
        return Sample(sample_id, image, question, answer, [float(v) for v in pixel.groups()], "pixels",
                      record.get("dataset"))
    box_turn = turns[1].get("value", "")
    norm = _NORM_BOX.match(box_turn.strip()) if isinstance(box_turn, str) else None
    if not norm:
        raise ValueError(f"{where}: second turn is not a box: {turns[1].get('value')!r}")
    return Sample(sample_id, image, question, answer, [float(v) for v in norm.groups()], "normalized_square",
                  record.get("dataset"))


def _strip_image_tag(text):
    if not isinstance(text, str):
        return text  # kept as read: `check_text` rejects it as 'field_not_text'
    return text.replace("<image>\n", "").replace("<image>", "").strip()


def _enclosing(boxes: list) -> list[float]:
    try:
        coords = [[float(v) for v in b] for b in boxes]
    except (TypeError, ValueError):
        return boxes  # left as given; `pixel_box` rejects it with the reason
    if any(len(c) != 4 for c in coords):
        return boxes
    return [min(c[0] for c in coords), min(c[1] for c in coords), max(c[2] for c in coords), max(c[3] for c in coords)]
