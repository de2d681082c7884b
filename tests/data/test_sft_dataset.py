"""The training set is checked when it is opened: every unusable row is named before any step runs."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image

from lavit.data.sft_dataset import LavitSftDataset
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer


def open_set(root, rows):
    return LavitSftDataset(pa.Table.from_pylist(rows), str(root / "images"),
                           build_tiny_processor(build_tiny_tokenizer()), [], system_prompt=None, with_signals=False)


def test_every_bad_row_is_listed_when_the_set_is_opened(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (56, 56)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (56, 56)).save(tmp_path / "outside.png")
    good = {"image": "a.png", "question": "q ?", "answer": "red"}
    rows = [{**good, "id": "ok"}, {**good, "id": "empty", "answer": ""}, {**good, "id": "blank", "answer": "  "},
            {**good, "id": "none", "answer": None}, {**good, "id": "gone", "image": "b.png"},
            {**good, "id": "gone2", "image": "c.png"}, {**good, "id": "up", "image": "../outside.png"},
            {**good, "id": "abs", "image": str(tmp_path / "outside.png")}]
    with pytest.raises(ValueError) as err:
        open_set(tmp_path, rows)
    message = str(err.value)
    assert "missing or empty answer (3 rows): empty, blank, none" in message
    assert "image not found" in message and "(2 rows): gone, gone2" in message
    assert "outside image_root" in message and "(2 rows): up, abs" in message
    assert ": ok" not in message and ", ok" not in message  # the usable row is not blamed
    assert len(open_set(tmp_path, rows[:1])) == 1
