"""Run a model over `[image, question, answer]` and read its attention maps and hidden states.

Every model is fed the *same* text (teacher forcing: question + reference answer), so the maps of a
teacher and a student line up token by token, as in the paper's Perception-Gap study (§3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from transformers import AutoTokenizer

from lavit.data.samples import (
    ImageLimits,
    Rejection,
    Sample,
    TextLimits,
    check_text,
    check_text_fields,
    load_image,
    open_rgb,
    pixel_box,
    read_jsonl_samples,
    resolve_image,
)
from lavit.models.checkpoint import load_for_inference, read_lavit_meta, tiny_name
from lavit.models.grid import processor_pixel_limits
from lavit.models.tiny import build_tiny_tokenizer
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


def model_text_limits(models: dict[str, str], max_tokens: int) -> TextLimits:
    """The text checks of samples every model in `models` ({name: path}) reads: the special tokens of any of their
    tokenizers, and at most `max_tokens` tokens (0 = no limit) in the tokenizer that makes a text longest. Only the
    tokenizers are loaded, no model."""
    # a tiny model's processor is built around the tiny tokenizer (`load_model_and_processor`)
    tokenizers = [build_tiny_tokenizer() if tiny_name(path) else AutoTokenizer.from_pretrained(path)
                  for path in models.values()]
    return TextLimits.for_tokenizers(tokenizers, max_tokens)


def read_records(jsonl: str | Path, image_root: str | Path, max_samples: int = 0,
                 text_limits: Callable[[], TextLimits] | None = None) -> tuple[list[SampleRecord], list[dict]]:
    """The first `max_samples` (0 = all) samples of a JSONL file in lavit's sample format, checked as extraction
    checks them, and a rejection `{id, reason, detail}` for each one the analysis cannot use, in file order: empty
    question, missing answer, no or a bad box (`box_missing`, `box_invalid`, `box_looks_normalized`, …), an image
    outside the image root (`path_outside_root`), missing, undecodable or beyond the pixel limits (checked before
    decoding), and with `text_limits` a question or answer holding a special token or over the token limit
    (`special_token_in_text`, `text_too_long`). `text_limits` builds the limits (loading tokenizers) only when a
    sample passed the other checks, so a file without a usable sample stops before anything loads. Malformed
    lines, missing and duplicate ids stop before any work, naming the line (`read_jsonl_samples`)."""
    samples = read_jsonl_samples(jsonl)
    samples = samples[:max_samples] if max_samples else samples
    checked: list[SampleRecord | dict] = []
    for sample in samples:
        try:
            checked.append(check_record(sample, Path(image_root)))
        except Rejection as rej:
            checked.append(rejection(sample.id, rej))
    if text_limits is not None and any(isinstance(c, SampleRecord) for c in checked):
        limits = text_limits()
        checked = [check_record_text(c, limits) if isinstance(c, SampleRecord) else c for c in checked]
    return [c for c in checked if isinstance(c, SampleRecord)], [c for c in checked if isinstance(c, dict)]


def rejection(sample_id: str, rej: Rejection) -> dict:
    """A rejected sample as `analysis.json` lists it."""
    return {"id": sample_id, "reason": rej.reason, "detail": rej.detail}


def check_record_text(record: SampleRecord, limits: TextLimits) -> SampleRecord | dict:
    """The record, or its rejection when its question or answer fails `check_text_fields` (extraction's check)."""
    try:
        check_text_fields({"question": record.question, "answer": record.answer}, limits)
    except Rejection as rej:
        return rejection(record.id, rej)
    return record


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
