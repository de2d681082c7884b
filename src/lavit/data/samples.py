"""Input samples for teacher extraction (DESIGN §3) and their validation.

A sample is `id`, `image` (path relative to an image root), `question`, `answer`, optional `bbox`
and optional `source`. Readers (`read_jsonl_samples`, `lavit.data.visual_cot`) turn files into
`Sample`s; `check_sample` + `load_image` turn a sample into a checked RGB image and a pixel box, or a
`Rejection` whose `reason` is recorded in the output — a bad sample is never silently altered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# Qwen2.5-VL's smart_resize refuses aspect ratios above this.
MAX_ASPECT_RATIO = 200
BOX_FORMATS = ("pixels", "normalized", "normalized_square")


@dataclass
class Sample:
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


def read_jsonl_samples(path: str | Path) -> list[Sample]:
    """Our JSONL format: one object per line with `id`, `image`, `question`, `answer`, optional `bbox`, `source`.

    Structural errors (bad JSON, missing `id`/`image`, duplicate ids) are errors naming the line;
    content problems (empty question, missing answer, bad box) become rejections at extraction.
    """
    path = Path(path)
    samples: list[Sample] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
        samples.append(Sample(id=str(record["id"]), image=str(record["image"]), question=record.get("question") or "",
                              answer=record.get("answer"), bbox=record.get("bbox"), source=record.get("source")))
    check_unique_ids(samples, str(path))
    return samples


def check_unique_ids(samples: list[Sample], where: str) -> None:
    seen: dict[str, int] = {}
    dups = []
    for i, s in enumerate(samples):
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
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or root not in path.parents:
        raise Rejection("path_outside_root", f"{relative!r} is not under the image root {root}")
    return path


def load_image(path: Path, limits: ImageLimits) -> Image.Image:
    """Open, check and convert an image to 8-bit RGB (`open_rgb`), or raise `Rejection`."""
    if not path.is_file():
        raise Rejection("image_missing", str(path))
    return open_rgb(path, limits)


def open_rgb(source: str | Path | BinaryIO, limits: ImageLimits | None = None) -> Image.Image:
    """The one image decoding every stage uses — extraction, filter, training, evaluation, analysis — so the
    teacher, the student and the evaluator see the same pixels.

    Grayscale and palette images are expanded; 16-/32-bit integer images are scaled (not clipped) to
    8 bits; transparent images are composited on white. EXIF orientation is *not* applied, because
    published boxes refer to the stored pixel array. With `limits`, sizes are checked before decoding.
    An unreadable file raises `Rejection` ('image_corrupt').
    """
    name = source if isinstance(source, (str, Path)) else "embedded bytes"
    try:
        image = Image.open(source)
    except (UnidentifiedImageError, OSError) as err:
        raise Rejection("image_corrupt", f"{name}: {err}") from None
    with image:
        if limits is not None:
            check_size(image.size, limits)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise Rejection("image_corrupt", f"{name}: {err}") from None
        return to_rgb(image)


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
    """The sample's box in source-image pixels, checked against the image, or `Rejection`."""
    if sample.bbox is None:
        return None
    box = sample.bbox
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise Rejection("box_invalid", f"expected [x1, y1, x2, y2], got {box!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise Rejection("box_invalid", f"non-numeric box {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise Rejection("box_invalid", f"non-finite box {box!r}")
    width, height = image_size
    if sample.bbox_format in ("normalized", "normalized_square"):
        if not all(-1e-6 <= v <= 1 + 1e-6 for v in (x1, y1, x2, y2)):
            raise Rejection("box_outside_image", f"normalised box {box!r} leaves [0, 1]")
        if sample.bbox_format == "normalized":
            x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
        else:
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            x1, x2, y1, y2 = x1 * side - pad_x, x2 * side - pad_x, y1 * side - pad_y, y2 * side - pad_y
    elif sample.bbox_format != "pixels":
        raise ValueError(f"unknown box format {sample.bbox_format!r}; expected one of {BOX_FORMATS}")
    if x2 <= x1 or y2 <= y1:
        raise Rejection("box_degenerate", f"box {box!r} has no area")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise Rejection("box_outside_image", f"box {box!r} is not inside the {width}x{height} image")
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def check_text(sample: Sample) -> None:
    if not isinstance(sample.question, str) or not sample.question.strip():
        raise Rejection("question_empty")
    if sample.answer is None or (isinstance(sample.answer, str) and not sample.answer.strip()):
        raise Rejection("answer_missing")
