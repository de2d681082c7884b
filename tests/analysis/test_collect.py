"""`read_records`: the samples `lavit analyze` studies, checked as extraction checks them — a sample it cannot
use is a rejection with a reason code, a malformed file an error before any work."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lavit.analysis.collect import read_records
from lavit.toyworld.world import write_split


def with_extra(tmp_path, extra: list[dict], n: int = 3, bom: bool = False):
    """A toy test split of `n` good samples (images under data/images) followed by `extra` lines."""
    samples = write_split(tmp_path / "data", "test", n, world_seed=3)
    text = samples.read_text() + "".join(json.dumps(r) + "\n" for r in extra)
    samples.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return samples, tmp_path / "data" / "images"


def sample(id_: str, image: str, **fields) -> dict:
    return {"id": id_, "image": image, "question": "what color is the circle ?", "answer": "red",
            "bbox": [2, 2, 20, 20], **fields}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above its limit; we refuse
def test_samples_the_analysis_cannot_use_are_rejections_with_reasons(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    outside = tmp_path / "x.png"  # a readable image outside the image root
    Image.new("RGB", (64, 64), (9, 9, 9)).save(outside)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(images / "ok.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG not really")
    Image.new("1", (10000, 10000)).save(images / "huge.png")  # 10⁸ px, over the limit; 12 KB on disk
    (images / "loop.png").symlink_to("loop.png")
    samples, root = with_extra(tmp_path, [
        sample("up", "../../x.png"), sample("abs", str(outside)), sample("nobox", "ok.png", bbox=None),
        sample("flat", "ok.png", bbox=[10, 10, 10, 30]), sample("noq", "ok.png", question=None),
        sample("gone", "absent.png"), sample("corrupt", "corrupt.png"), sample("huge", "huge.png"),
        sample("loop", "loop.png"), sample("long", "x" * 300 + ".png"), sample("nul", "a\x00b.png")])
    records, rejected = read_records(samples, root)
    assert [r.id for r in records] == ["test-00000", "test-00001", "test-00002"]
    assert all(r.size == Image.open(root / r.image).size for r in records)
    assert {r["id"]: r["reason"] for r in rejected} == {
        "up": "path_outside_root", "abs": "path_outside_root", "nobox": "box_missing", "flat": "box_degenerate",
        "noq": "question_empty", "gone": "image_missing", "corrupt": "image_corrupt", "huge": "image_too_large",
        "loop": "image_unreadable", "long": "image_unreadable", "nul": "image_unreadable"}
    by_id = {r["id"]: r["detail"] for r in rejected}
    assert "'../../x.png' is not under the image root" in by_id["up"]
    assert "Symlink loop" in by_id["loop"] and "File name too long" in by_id["long"]
    assert "embedded null byte" in by_id["nul"]
    # max_samples counts lines of the file, good or not
    records, rejected = read_records(samples, root, max_samples=4)
    assert len(records) == 3 and [r["id"] for r in rejected] == ["up"]


def test_a_bom_is_dropped_and_malformed_lines_stop_before_work(tmp_path):
    samples, root = with_extra(tmp_path, [], bom=True)
    records, rejected = read_records(samples, root)
    assert [r.id for r in records] == ["test-00000", "test-00001", "test-00002"] and rejected == []
    with open(samples, "a", encoding="utf-8") as f:
        f.write('{"id": "torn", "ima\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:4: not valid JSON"):
        read_records(samples, root)
