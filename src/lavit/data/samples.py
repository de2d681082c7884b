"""Input samples for teacher extraction (DESIGN §3) and their validation.

A sample is `id`, `image` (path relative to an image root), `question`, `answer`, optional `bbox`
and optional `source`. Readers (`read_jsonl_samples`, `lavit.data.visual_cot`) turn files into
`Sample`s; `check_text` + `load_image` turn a sample into a checked RGB image and a pixel box, or a
`Rejection` whose `reason` is recorded in the output — a bad sample is never silently altered.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from lavit.data.fingerprints import record_fingerprint

# Qwen2.5-VL's smart_resize refuses aspect ratios above this.
MAX_ASPECT_RATIO = 200
BOX_FORMATS = ("pixels", "normalized", "normalized_square")
# The longest question or answer (in tokens of the model reading it) any stage accepts by default.
DEFAULT_MAX_TEXT_TOKENS = 1024
# The special tokens of Qwen2-VL's, Qwen2.5-VL's and Qwen3-VL's tokenizers (ids 151643-151656): the text checks of
# a model without a tokenizer (`lavit eval --model constant:A`), so that it skips the items a Qwen-VL model skips.
QWEN_VL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                          "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class Sample:
    """Fields as read (only `id` is made text); `check_text` rejects the ones that are not text."""

    id: str
    image: str
    question: str
    answer: str | None
    bbox: list[float] | None = None
    # 'pixels': source-image pixels; 'normalized': x/W, y/H; 'normalized_square': Visual-CoT's fractions of
    # the image padded to a centred square (LLaVA's expand2square), i.e. (x + pad_x)/max(W, H).
    bbox_format: str = "pixels"
    source: str | None = None


@dataclass
class Rejection(Exception):
    """A sample that cannot yield signals; `reason` is a short code, `detail` says what was wrong."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class ImageLimits:
    min_side: int = 28  # one merged Qwen token (14 px patches × 2 merge)
    max_pixels: int = 89_478_485  # PIL's decompression-bomb warning limit


@dataclass
class TextLimits:
    """The text checks that need the tokenizer, applied by every stage through `check_text_fields`. Its special
    tokens may not occur in a text field: the tokenizer would read them as control tokens (an `<|image_pad|>` asks
    for an image that is not there, an `<|im_end|>` ends the turn). Stripping them would alter the text, so the
    sample (item, row) is rejected instead. A field over `max_tokens` is rejected too: one 100 000-character
    question would otherwise fill the memory of its whole batch."""

    special_tokens: tuple[str, ...] = ()
    max_tokens: int = 0  # 0 = no limit
    count_tokens: Callable[[str], int] | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer, max_tokens: int = 0) -> TextLimits:
        return cls.for_tokenizers([tokenizer], max_tokens)

    @classmethod
    def for_tokenizers(cls, tokenizers: Sequence, max_tokens: int = 0) -> TextLimits:
        """The limits of text that several models read (an analysis feeds one text to each): any special token of
        any of them, and a text's length as the one that makes it longest."""
        special: set[str] = set()
        for tokenizer in tokenizers:
            special |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
            special |= set(tokenizer.all_special_tokens)
        return cls(tuple(sorted(special)), max_tokens,
                   lambda text: max(len(t(text, add_special_tokens=False)["input_ids"]) for t in tokenizers))

    @functools.cached_property
    def special_pattern(self) -> re.Pattern | None:
        """One regular expression finding any special token (longest first), or None without any."""
        if not self.special_tokens:
            return None
        return re.compile("|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)))

    def describe(self) -> dict:
        """What a run records of the limits it applied: the token limit (None: none) and the special tokens."""
        return {"max_text_tokens": self.max_tokens or None, "special_tokens": list(self.special_tokens)}


def text_value(value: Any) -> str | None:
    """`value` if it is text a Parquet string column can hold (valid Unicode: JSON admits lone surrogates),
    else None. Numbers are not text here: only an answer may be one (`answer_text`)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def answer_text(answer: Any) -> str | None:
    """The answer as stored: text as given, a JSON number (`3`, `2.5`) as its text, anything else None."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    return text_value(answer)


def read_jsonl_samples(path: str | Path) -> list[Sample]:
    """Our JSONL format: one object per line with `id`, `image`, `question`, `answer`, optional `bbox`, `source`.

    Structural errors (bad JSON, missing `id`/`image`, duplicate ids) are errors naming the line;
    content problems (empty question, missing answer, bad box) become rejections at extraction.
    """
    path = Path(path)
    samples: list[Sample] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # a BOM is dropped
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        for key in ("id", "image"):
            if record.get(key) in (None, ""):
                raise ValueError(f"{path}:{lineno}: missing '{key}'")
        question = "" if record.get("question") is None else record["question"]
        samples.append(Sample(id=str(record["id"]), image=record["image"], question=question,
                              answer=record.get("answer"), bbox=record.get("bbox"), source=record.get("source")))
    check_unique_ids(samples, str(path))
    return samples


def sample_fingerprint(sample: Sample) -> str:
    """sha256 of the fields a sample's extraction reads — image path, question, answer, box (and how the box is
    given), source — as read from the samples file. The image file's content is not part of it: hashing every image
    on every rerun would cost as much I/O as the extraction's own reading."""
    fields = {"image": sample.image, "question": sample.question, "answer": sample.answer, "bbox": sample.bbox,
              "bbox_format": sample.bbox_format, "source": sample.source}
    try:
        return record_fingerprint(fields)
    except UnicodeEncodeError:  # JSON admits lone surrogates, UTF-8 does not: fingerprint their escaped form
        return record_fingerprint({"escaped": json.dumps(fields, sort_keys=True)})


def check_unique_ids(samples: list[Sample], where: str) -> None:
    """Ids are the store's keys: unique, and text it can hold (a rejected row needs its id too)."""
    seen: dict[str, int] = {}
    dups = []
    for i, s in enumerate(samples):
        if text_value(s.id) is None:
            raise ValueError(f"{where}: record {i + 1} has an id that is not valid Unicode text: {s.id!r}")
        if s.id in seen:
            dups.append(f"'{s.id}' (records {seen[s.id] + 1} and {i + 1})")
        seen.setdefault(s.id, i)
    if dups:
        raise ValueError(f"{where}: sample ids must be unique; duplicated: {', '.join(dups[:10])}"
                         + (f" and {len(dups) - 10} more" if len(dups) > 10 else ""))


def resolve_image(image_root: str | Path, relative: str) -> Path:
    """`image_root / relative`, refused (`Rejection` 'path_outside_root') unless it stays under the root:
    a sample's image may not be an absolute path or climb out with '..' (symbolic links are followed)."""
    root = Path(image_root).resolve()
    if Path(relative).is_absolute():
        raise Rejection("path_outside_root", f"{relative!r} is not under the image root {root}")
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symbolic-link loop; a NUL byte in the name
        raise Rejection("image_unreadable", f"{relative!r}: {err}") from None
    if root not in path.parents:
        raise Rejection("path_outside_root", f"{relative!r} is not under the image root {root}")
    return path


def load_image(path: Path, limits: ImageLimits) -> Image.Image:
    """Open, check and convert an image to 8-bit RGB (`open_rgb`), or raise `Rejection`."""
    try:
        found = path.is_file()
    except OSError as err:  # e.g. a file name over the filesystem's 255 bytes
        raise Rejection("image_unreadable", str(err)) from None
    if not found:
        raise Rejection("image_missing", str(path))
    return open_rgb(path, limits)


def open_rgb(source: str | Path | BinaryIO, limits: ImageLimits | None = None) -> Image.Image:
    """The one image decoding every stage uses — extraction, filter, training, evaluation, analysis — so the
    teacher, the student and the evaluator see the same pixels.

    Grayscale and palette images are expanded; 16-/32-bit integer images are scaled (not clipped) to
    8 bits; transparent images are composited on white. EXIF orientation is *not* applied, because
    published boxes refer to the stored pixel array. With `limits`, sizes are checked before decoding (PIL's
    own bomb check, which fires on open, is 'image_too_large' too). Bytes PIL cannot decode raise `Rejection`
    ('image_corrupt'), a file the filesystem will not read 'image_unreadable'.
    """
    name = source if isinstance(source, (str, Path)) else "embedded bytes"
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as err:  # PIL's own check, at twice its limit, fires on open: before ours
        raise Rejection("image_too_large", f"{name}: {err}") from None
    except Exception as err:  # PIL's parsers raise many kinds on bad bytes; all are this file's problem
        raise _unreadable(name, err) from None
    with image:
        if limits is not None:
            check_size(image.size, limits)
        try:
            image.load()
        except Exception as err:
            raise _unreadable(name, err) from None
        return to_rgb(image)


def _unreadable(name, err: Exception) -> Rejection:
    """'image_unreadable' for a filesystem error (permission, I/O), else 'image_corrupt' (the bytes)."""
    reason = "image_unreadable" if isinstance(err, OSError) and err.errno else "image_corrupt"
    return Rejection(reason, f"{name}: {err}" if isinstance(err, OSError) else f"{name}: {type(err).__name__}: {err}")


def check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise Rejection("image_too_large", f"{width}x{height} exceeds {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise Rejection("image_too_small", f"{width}x{height}; each side needs at least {limits.min_side} px")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise Rejection("image_aspect_ratio", f"{width}x{height} exceeds aspect ratio {MAX_ASPECT_RATIO}")


def to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        raise Rejection("image_mode", "floating-point images have no defined display range")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def pixel_box(sample: Sample, image_size: tuple[int, int], tolerance: float = 1.0) -> list[float] | None:
    """The sample's box in source-image pixels, checked against the image (`image_box`), or None without one."""
    if sample.bbox is None:
        return None
    return image_box(sample.bbox, image_size, sample.bbox_format, tolerance)


def image_box(box, image_size: tuple[int, int], box_format: str = "pixels", tolerance: float = 1.0) -> list[float]:
    """A box [x1, y1, x2, y2] in `box_format` as source-image pixels, checked against the image, or `Rejection`:
    malformed, degenerate, outside the image, or given in pixels with every coordinate in [0, 1] on an image larger
    than 1 px ('box_looks_normalized': fractions of the image, almost surely)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise Rejection("box_invalid", f"expected [x1, y1, x2, y2], got {box!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer too large for a float
        raise Rejection("box_invalid", f"non-numeric box {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise Rejection("box_invalid", f"non-finite box {box!r}")
    width, height = image_size
    if box_format in ("normalized", "normalized_square"):
        if not all(-1e-6 <= v <= 1 + 1e-6 for v in (x1, y1, x2, y2)):
            raise Rejection("box_outside_image", f"normalised box {box!r} leaves [0, 1]")
        if box_format == "normalized":
            x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
        else:
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            x1, x2, y1, y2 = x1 * side - pad_x, x2 * side - pad_x, y1 * side - pad_y, y2 * side - pad_y
    elif box_format != "pixels":
        raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")
    if x2 <= x1 or y2 <= y1:
        raise Rejection("box_degenerate", f"box {box!r} has no area")
    if box_format == "pixels" and max(width, height) > 1 and all(0 <= v <= 1 for v in (x1, y1, x2, y2)):
        # at most one pixel of a larger image: a box given as fractions, which read as pixels would point at the
        # image's top-left corner; rejected, not guessed, and not only warned of (its signals would be stored)
        raise Rejection("box_looks_normalized", f"box {box!r} lies within [0, 1] on the {width}x{height} image: "
                        "it looks normalised; give boxes in source pixels (or lvr_box_format for Visual-CoT files)")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise Rejection("box_outside_image", f"box {box!r} is not inside the {width}x{height} image")
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def check_text(sample: Sample, limits: TextLimits | None = None) -> None:
    """The sample's text, or `Rejection`: a question and an answer (`question_empty`, `answer_missing`); question,
    answer, image path and source that are text (`field_not_text`: an answer may be a number); and with `limits`
    no special token in question or answer (`special_token_in_text`), neither over `limits.max_tokens`
    (`text_too_long`), which keeps one sample from filling the memory of its whole batch."""
    question, answer = sample.question, sample.answer
    if question is None or (isinstance(question, str) and not question.strip()):
        raise Rejection("question_empty")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise Rejection("answer_missing")
    fields = {"question": (question, text_value(question)), "answer": (answer, answer_text(answer)),
              "image": (sample.image, text_value(sample.image)),
              "source": (sample.source, "" if sample.source is None else text_value(sample.source))}
    for name, (value, text) in fields.items():
        if text is None:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "…"
            kind = "not valid Unicode text" if isinstance(value, str) else f"not text but {type(value).__name__}"
            raise Rejection("field_not_text", f"{name} is {kind}: {shown}")
    if limits is not None:
        check_text_fields({"question": question, "answer": fields["answer"][1]}, limits)


def check_text_fields(texts: Mapping[str, str], limits: TextLimits) -> None:
    """The one tokenizer-aware text check of every stage (extraction, training, evaluation, audit, analysis):
    `Rejection` 'special_token_in_text' naming the first field of `texts` ({field name: text}) that holds a special
    token of `limits`, else 'text_too_long' naming the first one over `limits.max_tokens` tokens."""
    if limits.special_pattern is not None:
        for name, text in texts.items():
            if found := limits.special_pattern.search(text):
                raise Rejection("special_token_in_text", f"{name} holds the special token {found.group()!r} "
                                f"at character {found.start()}")
    if limits.max_tokens:
        for name, text in texts.items():
            if (n := limits.count_tokens(text)) > limits.max_tokens:
                raise Rejection("text_too_long", f"{name} has {n} tokens, over max_text_tokens={limits.max_tokens}")
