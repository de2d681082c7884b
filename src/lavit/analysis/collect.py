"""Run a model over `[image, question, answer]` and read its attention maps and hidden states.

Every model is fed the *same* text (teacher forcing: question + reference answer), so the maps of a
teacher and a student line up token by token, as in the paper's Perception-Gap study (§3.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from lavit.data.samples import open_rgb
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.teacher.extractor import SignalExtractor, TokenTrace

# Word lists for the token categories of Fig. 3 (lower-cased, tokenizer prefix marks stripped).
OBJECT_WORDS = {"circle", "square", "triangle", "object", "shape", "cat", "dog", "car", "tree", "sky", "image",
                "picture", "point", "person", "man", "woman", "table", "cup", "sign", "ball", "box", "bus"}
ATTRIBUTE_WORDS = {"red", "green", "blue", "yellow", "white", "black", "purple", "orange", "small", "big", "large",
                   "left", "right", "top", "bottom", "above", "below", "near", "far", "closer", "farther", "yes",
                   "no", "one", "two", "three", "four", "five"}
CATEGORIES = ("functional", "object", "attribute")


def token_category(token: str) -> str:
    word = token.lstrip("Ġ▁ ").lower()
    if word in OBJECT_WORDS:
        return "object"
    if word in ATTRIBUTE_WORDS:
        return "attribute"
    return "functional"


@dataclass
class SampleRecord:
    id: str
    image: str
    question: str
    answer: str
    bbox: list[float]


def read_records(jsonl: str | Path, max_samples: int = 0) -> list[SampleRecord]:
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    rows = rows[:max_samples] if max_samples else rows
    records = []
    for r in rows:
        if r.get("bbox") is None:
            raise ValueError(f"sample {r['id']}: the analysis needs a bounding box")
        records.append(SampleRecord(str(r["id"]), r["image"], r["question"], str(r["answer"]), list(r["bbox"])))
    return records


def trace_model(path: str, records: list[SampleRecord], image_root: Path, *, batch_size: int = 16,
                desc: str = "") -> tuple[list[TokenTrace], list[list[str]]]:
    """Generation-aligned token traces of one model over the records, plus each trace's produced tokens as
    strings."""
    meta = read_lavit_meta(path) if Path(path).is_dir() else {}
    model, processor = load_for_inference(path)
    extractor = SignalExtractor(model, processor, system_prompt=meta.get("system_prompt") or None,
                                latent_tokens=meta.get("latent_tokens", []))
    traces: list[TokenTrace] = []
    for i in tqdm(range(0, len(records), batch_size), desc=f"trace {desc or path}", unit="batch"):
        chunk = records[i:i + batch_size]
        images = [open_rgb(image_root / r.image) for r in chunk]
        batch = extractor.prepare_batch([r.id for r in chunk], images, [r.question for r in chunk],
                                        [r.answer for r in chunk])
        traces += extractor.forward_traces(batch)
    tokens = [processor.tokenizer.convert_ids_to_tokens(t.token_ids.tolist()) for t in traces]
    return traces, tokens


def image_sizes(records: list[SampleRecord], image_root: Path) -> list[tuple[int, int]]:
    sizes = []
    for r in records:
        with Image.open(image_root / r.image) as img:
            sizes.append(img.size)
    return sizes
