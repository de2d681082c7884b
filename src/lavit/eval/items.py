"""One multiple-choice evaluation item, as every benchmark loader produces it, and the cell readers the
loaders share: a null or mistyped cell, an image path outside the benchmark's folder, an undecodable image, or a
text holding a special token of the model's tokenizer or longer than the token limit (`text_limits_for`) makes that
item a recorded skip naming it, never a crash.

A loader keeps the row's text fields as its file holds them (`doc`); the evaluation protocol
(`lavit.eval.protocols`) builds the prompt from them, so one loaded item can be asked the way lavit, the
authors' evaluator or lmms-eval asks it."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lavit.data.samples import (
    QWEN_VL_SPECIAL_TOKENS,
    ImageLimits,
    Rejection,
    TextLimits,
    check_text_fields,
    open_rgb,
    resolve_image,
)

# PIL's pixel limit, checked before decoding, and the aspect ratio Qwen's processor refuses mid-batch; no minimum
# side: the processor scales small benchmark images up.
EVAL_LIMITS = ImageLimits(min_side=1)


@dataclass(frozen=True)
class ImageRef:
    """An image on disk or as encoded bytes (parquet `{bytes, path}` structs), opened only when needed."""

    path: Path | None = None
    data: bytes | None = None

    def open(self) -> Image.Image:
        """The RGB pixels every stage sees (`open_rgb`: alpha on white, 16-bit scaled, no EXIF rotation)."""
        return open_rgb(io.BytesIO(self.data) if self.data is not None else self.path, EVAL_LIMITS)

    def size(self) -> tuple[int, int]:
        """(width, height) from the image's header, without decoding it: `open`'s size too (`open_rgb` applies no
        EXIF rotation). For an image `problem` already found usable."""
        with Image.open(io.BytesIO(self.data) if self.data is not None else self.path) as image:
            return image.size

    def sha256(self) -> str:
        """sha256 of the encoded image bytes (the file's, or the embedded cell's)."""
        return hashlib.sha256(self.data if self.data is not None else self.path.read_bytes()).hexdigest()

    def problem(self) -> str | None:
        """Why this image cannot be used, or None (decodes fully: a file truncated after its header fails here,
        not mid-batch)."""
        try:
            if self.data is None and not self.path.is_file():
                return f"image_missing: {self.path}"
            self.open()
        except Rejection as rej:
            return str(rej)
        except Exception as err:  # PIL's decoders raise many kinds (EOFError, struct.error, …): each is this item's
            return f"image_unreadable: {self.path or 'embedded bytes'}: {type(err).__name__}: {err}"
        return None


@dataclass
class EvalItem:
    id: str
    images: list[ImageRef]
    letters: str  # the option letters this item offers, e.g. 'AB' or 'ABCD'
    answer: str  # the correct letter
    doc: dict = field(default_factory=dict)  # the row's text fields as the benchmark's file holds them
    meta: dict = field(default_factory=dict)  # category, task, pair, ...
    prompt: str = ""  # the full text after the image(s), as the evaluation protocol asks it
    invalid: str | None = None  # why the loader could not build it ('cell_invalid: …'): a skip without a look
    # The asked regions of its one image, [x1, y1, x2, y2] in its pixels (not yet checked against it), where the
    # benchmark publishes them (V*'s target objects): the audit's oracle view. Never part of what is scored.
    boxes: list[list[float]] | None = None
    no_box: str = "the benchmark publishes no boxes"  # why `boxes` is None

    def fingerprint(self) -> str:
        """sha256 of what decides this item's score: its prompt, options, truth and image bytes (or why it is
        invalid). Two runs whose records of one id carry different fingerprints did not ask the same question."""
        images = []
        for ref in self.images:
            try:
                images.append(ref.sha256())
            except OSError as err:  # a missing image is this item's skip; its absence is part of what was asked
                images.append(f"unreadable: {type(err).__name__}")
        content = {"prompt": self.prompt, "letters": self.letters, "answer": self.answer, "images": images,
                   "invalid": self.invalid}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    def text_fields(self) -> dict[str, str]:
        """Every text of the row as its file holds it (a list's entries as 'choices[1]', …), then the prompt the
        protocol built from them: what `text_problem` checks, by the names a skip reports."""
        fields = {}
        for key, value in self.doc.items():
            if isinstance(value, str):
                fields[key] = value
            elif isinstance(value, list):
                fields |= {f"{key}[{i}]": entry for i, entry in enumerate(value) if isinstance(entry, str)}
        return fields | {"prompt": self.prompt}

    def text_problem(self, limits: TextLimits) -> str | None:
        """'special_token_in_text: …' or 'text_too_long: …' naming the field (`check_text_fields`, as extraction
        checks a sample), or None. Every text field of the row is checked, not only those the protocol asks, so one
        row is skipped alike under every protocol."""
        try:
            check_text_fields(self.text_fields(), limits)
        except Rejection as rej:
            return str(rej)
        return None

    def problem(self, text_limits: TextLimits | None = None) -> str | None:
        """A reason to skip this item (recorded and counted), or None; with `text_limits` its texts are checked
        (`text_problem`) before its images are decoded."""
        if self.invalid is not None:
            return self.invalid
        if text_limits is not None and (reason := self.text_problem(text_limits)) is not None:
            return reason
        if not self.images:
            return "image_missing: the item has no image"
        for ref in self.images:
            if (reason := ref.problem()) is not None:
                return reason
        if len(self.answer) != 1 or self.answer not in self.letters:
            return f"answer_not_in_choices: answer {self.answer!r}, choices {list(self.letters)}"
        return None


def text_limits_for(model, max_tokens: int) -> TextLimits:
    """The text checks of items `model` is asked: its tokenizer's special tokens and at most `max_tokens` tokens
    (0 = no limit) per field. A model without a processor (`ConstantModel`) tokenizes nothing: it is checked for
    Qwen-VL's special tokens (a fixed list), so a chance baseline skips the items a Qwen-VL model skips, and has no
    length limit, there being no tokens to count and no memory to fill."""
    processor = getattr(model, "processor", None)
    if processor is None:
        return TextLimits(QWEN_VL_SPECIAL_TOKENS)
    return TextLimits.for_tokenizer(processor.tokenizer, max_tokens)


def kind(value) -> str:
    """How a cell's value reads in a skip reason: 'null', 'an int', 'a list', …"""
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def text(row: dict, key: str) -> str:
    """A cell that must hold text."""
    value = row.get(key)
    if not isinstance(value, str):
        raise Rejection("cell_invalid", f"{key!r} is {kind(value)}, expected text")
    return value


def image_at(root: Path, relative: str) -> ImageRef:
    """An image file a benchmark row names, kept under the benchmark's folder as extraction keeps a sample's under
    its image root (`resolve_image`: '../x.png' and absolute paths are 'path_outside_root')."""
    if not relative:
        raise Rejection("cell_invalid", "the image path is empty")
    try:
        return ImageRef(path=resolve_image(root, relative))
    except ValueError as err:  # a NUL byte in the path (a link loop is `resolve_image`'s 'image_unreadable')
        raise Rejection("image_unreadable", f"{relative!r}: {err}") from None


def image_cell(cell, key: str, root: Path) -> ImageRef | None:
    """A parquet image cell: a `{bytes, path}` struct, raw bytes, or null (no image). A path is used only without
    bytes, and is relative to `root`, the parquet's folder."""
    if cell is None:
        return None
    if isinstance(cell, (bytes, bytearray)):
        return ImageRef(data=bytes(cell))
    if not isinstance(cell, dict):
        raise Rejection("cell_invalid", f"{key!r} is {kind(cell)}, expected image bytes or a {{bytes, path}} struct")
    data, path = cell.get("bytes"), cell.get("path")
    if data:
        if not isinstance(data, (bytes, bytearray)):
            raise Rejection("cell_invalid", f"{key!r}.bytes is {kind(data)}, expected bytes")
        return ImageRef(data=bytes(data))
    if path is None or path == "":
        raise Rejection("image_missing", f"{key!r} has neither bytes nor a path")
    if not isinstance(path, str):
        raise Rejection("cell_invalid", f"{key!r}.path is {kind(path)}, expected text")
    return image_at(root, path)


def row_id(value) -> str | None:
    """An item's id as its file spells it (text or an integer), or None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def build_items(rows: Iterable[tuple[str, object]], id_key: str, build: Callable[[dict, str], EvalItem],
                meta: Callable[[dict], dict] = lambda row: {}) -> list[EvalItem]:
    """`build(row, id)` for each `(position, row)`; a row that is no object (or a `Rejection` met while reading
    it), has no usable id, or whose cells `build` finds null or mistyped (`Rejection`) becomes a skipped item
    named by its id — or by its position ('row 3', 'line 7') when the id itself is bad — so the run goes on and
    the summary counts it."""
    items = []
    for position, row in rows:
        ident = row_id(row.get(id_key)) if isinstance(row, dict) else None
        try:
            if isinstance(row, Rejection):
                raise row
            if not isinstance(row, dict):
                raise Rejection("row_invalid", f"{position} is {kind(row)}, not an object")
            if ident is None:
                raise Rejection("cell_invalid", f"{id_key!r} is {kind(row.get(id_key))}, expected an id")
            items.append(build(row, ident))
        except Rejection as rej:
            items.append(EvalItem(id=ident or position, images=[], letters="", answer="",
                                  meta=meta(row) if isinstance(row, dict) else {}, invalid=str(rej)))
    return items
