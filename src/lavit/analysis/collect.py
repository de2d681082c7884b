"""Run a model over `[image, question, answer]` and read its attention maps and hidden states.

Every model is fed the *same* text (teacher forcing: question + reference answer), so the maps of a
teacher and a student line up token by token, as in the paper's Perception-Gap study (§3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lavit.data.samples import (
    ImageLimits,
    Rejection,
    Sample,
    check_text,
    load_image,
    open_rgb,
    pixel_box,
    read_jsonl_samples,
    resolve_image,
)
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.models.grid import processor_pixel_limits
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
    image: str  # relative to the image root, checked to stay under it
    question: str
    answer: str
    bbox: list[float]  # source-image pixels, checked against the image
    size: tuple[int, int]  # the image's (width, height)


def read_records(jsonl: str | Path, image_root: str | Path, max_samples: int = 0) -> tuple[list[SampleRecord],
                                                                                           list[dict]]:
    """The first `max_samples` (0 = all) samples of a JSONL file in lavit's sample format, checked as extraction
    checks them, and a rejection `{id, reason, detail}` for each one the analysis cannot use: empty question,
    missing answer, no or a bad box (`box_missing`, `box_invalid`, …), an image outside the image root
    (`path_outside_root`), missing, undecodable or beyond the pixel limits (checked before decoding). Malformed
    lines, missing and duplicate ids stop before any work, naming the line (`read_jsonl_samples`)."""
    samples = read_jsonl_samples(jsonl)
    samples = samples[:max_samples] if max_samples else samples
    records, rejected = [], []
    for sample in samples:
        try:
            records.append(check_record(sample, Path(image_root)))
        except Rejection as rej:
            rejected.append({"id": sample.id, "reason": rej.reason, "detail": rej.detail})
    return records, rejected


def check_record(sample: Sample, image_root: Path) -> SampleRecord:
    check_text(sample)
    if sample.bbox is None:
        raise Rejection("box_missing", "S_focus needs the sample's bounding box")
    try:
        path = resolve_image(image_root, sample.image)
        with load_image(path, ImageLimits()) as image:
            size = image.size
    except Rejection:
        raise
    except Exception as err:  # a NUL byte in the path, an error past the decoder, …: this sample's, not the run's
        raise Rejection("image_unreadable", f"{sample.image!r}: {type(err).__name__}: {err}") from None
    return SampleRecord(sample.id, sample.image, sample.question, str(sample.answer), pixel_box(sample, size), size)


@dataclass
class ModelTraces:
    """One model's traces over the records, each trace's produced tokens as strings, and the pixel limits its
    processor applied (as the processor reports them)."""

    traces: list[TokenTrace]
    tokens: list[list[str]]
    pixel_limits: dict[str, int]


def trace_model(path: str, records: list[SampleRecord], image_root: Path, *, pixel_limits: dict[str, int],
                device_map: str = "", batch_size: int = 16, desc: str = "") -> ModelTraces:
    """Generation-aligned token traces of one model over the records, its processor resizing within
    `pixel_limits` ({min_pixels, max_pixels}); a processor that applies other limits is an error, so every
    number is measured at the stated resolution. `device_map` (e.g. 'auto') splits the model over devices."""
    meta = read_lavit_meta(path) if Path(path).is_dir() else {}
    model, processor = load_for_inference(path, device_map=device_map, min_pixels=pixel_limits["min_pixels"],
                                          max_pixels=pixel_limits["max_pixels"])
    in_force = processor_pixel_limits(processor.image_processor)
    if in_force != pixel_limits:
        raise ValueError(f"{desc or path}: asked for pixel limits {pixel_limits}, its processor applies {in_force}")
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
    return ModelTraces(traces, tokens, in_force)
