"""One multiple-choice evaluation item, as every benchmark loader produces it."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lavit.data.samples import Rejection, open_rgb

# The instruction lmms-eval and the Qwen2.5-VL reports append to multiple-choice questions.
ANSWER_DIRECTLY = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class ImageRef:
    """An image on disk or as encoded bytes (parquet `{bytes, path}` structs), opened only when needed."""

    path: Path | None = None
    data: bytes | None = None

    def open(self) -> Image.Image:
        """The RGB pixels every stage sees (`open_rgb`: alpha on white, 16-bit scaled, no EXIF rotation)."""
        return open_rgb(io.BytesIO(self.data) if self.data is not None else self.path)

    def problem(self) -> str | None:
        """Why this image cannot be used, or None (decodes fully: a file truncated after its header fails here,
        not mid-batch)."""
        if self.data is None and (self.path is None or not self.path.is_file()):
            return f"image_missing: {self.path}"
        try:
            self.open()
        except Rejection as rej:
            return str(rej)
        return None


@dataclass
class EvalItem:
    id: str
    images: list[ImageRef]
    prompt: str  # the full text after the image(s): question, options and answer instruction
    letters: str  # the option letters this item offers, e.g. 'AB' or 'ABCD'
    answer: str  # the correct letter
    meta: dict = field(default_factory=dict)  # category, task, pair, ...

    def problem(self) -> str | None:
        """A reason to skip this item (recorded and counted), or None."""
        if not self.images:
            return "image_missing: the item has no image"
        for ref in self.images:
            if (reason := ref.problem()) is not None:
                return reason
        if len(self.answer) != 1 or self.answer not in self.letters:
            return f"answer_not_in_choices: answer {self.answer!r}, choices {list(self.letters)}"
        return None
