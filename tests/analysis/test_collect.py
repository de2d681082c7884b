"""`read_records`: the samples `lavit analyze` studies, checked as extraction checks them — a sample it cannot
use is a rejection with a reason code, a malformed file an error before any work."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lavit.analysis.collect import read_records
from lavit.data.samples import TextLimits
from lavit.models.tiny import build_tiny_tokenizer
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


def test_special_tokens_long_texts_and_fractional_boxes_are_rejections(tmp_path):
    """The checks extraction makes, before any model runs: a special token of a model's tokenizer in question or
    answer, a question or answer over the token limit, a box in pixels that lies within [0, 1] (fractions)."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(images / "ok.png")
    novel = "what color is the circle ? " * 3846  # 100 000 characters, 23 076 tiny tokens
    samples, root = with_extra(tmp_path, [
        sample("pad", "ok.png", question="what <|image_pad|> color ?"), sample("novel", "ok.png", question=novel),
        sample("turn", "ok.png", answer="red <|im_end|>"), sample("frac", "ok.png", bbox=[0.1, 0.2, 0.5, 0.6]),
        sample("corner", "ok.png", bbox=[0, 0, 1, 2])])
    limits = TextLimits.for_tokenizer(build_tiny_tokenizer(), 1024)
    records, rejected = read_records(samples, root, text_limits=lambda: limits)
    assert [r.id for r in records] == ["test-00000", "test-00001", "test-00002", "corner"]
    assert [(r["id"], r["reason"]) for r in rejected] == [
        ("pad", "special_token_in_text"), ("novel", "text_too_long"), ("turn", "special_token_in_text"),
        ("frac", "box_looks_normalized")]
    by_id = {r["id"]: r["detail"] for r in rejected}
    assert by_id["pad"] == "question holds the special token '<|image_pad|>' at character 5"
    assert by_id["novel"] == "question has 23076 tokens, over max_text_tokens=1024"
    assert by_id["frac"].startswith("box [0.1, 0.2, 0.5, 0.6] lies within [0, 1] on the 64x64 image")


def test_the_tokenizers_load_only_when_a_sample_passed_the_other_checks(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(sample("up", "../x.png")) + "\n")
    (tmp_path / "images").mkdir()

    def never():
        raise AssertionError("no sample needed the tokenizers")

    records, rejected = read_records(samples, tmp_path / "images", text_limits=never)
    assert records == [] and [r["reason"] for r in rejected] == ["path_outside_root"]
