"""Sample validation: every bad input is a Rejection with a reason (or a clear error), never altered silently."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lavit.data.samples import (
    ImageLimits,
    Rejection,
    Sample,
    TextLimits,
    check_text,
    check_text_fields,
    load_image,
    pixel_box,
    read_jsonl_samples,
    resolve_image,
)
from lavit.models.tiny import build_tiny_tokenizer

LIMITS = ImageLimits(min_side=28, max_pixels=400 * 400)


def reason(fn, *args) -> str:
    with pytest.raises(Rejection) as info:
        fn(*args)
    return info.value.reason


def test_image_rejections(tmp_path):
    assert reason(load_image, tmp_path / "nope.png", LIMITS) == "image_missing"
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really an image")
    assert reason(load_image, tmp_path / "garbage.png", LIMITS) == "image_corrupt"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert reason(load_image, tmp_path / "truncated.png", LIMITS) == "image_corrupt"
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    assert reason(load_image, tmp_path / "dot.png", LIMITS) == "image_too_small"
    Image.new("1", (500, 500)).save(tmp_path / "huge.png")
    assert reason(load_image, tmp_path / "huge.png", LIMITS) == "image_too_large"
    Image.new("RGB", (6000, 28)).save(tmp_path / "strip.png")
    assert reason(load_image, tmp_path / "strip.png", ImageLimits(max_pixels=10**9)) == "image_aspect_ratio"
    Image.fromarray(np.ones((40, 40), dtype=np.float32)).save(tmp_path / "float.tif")
    assert reason(load_image, tmp_path / "float.tif", LIMITS) == "image_mode"


def test_modes_are_converted_not_clipped(tmp_path):
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8).repeat(20, 0).repeat(20, 1)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgb = np.asarray(load_image(tmp_path / "gray.png", LIMITS))
    assert rgb.shape == (40, 40, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()

    deep = np.array([[0, 32768], [65535, 257 * 10]], dtype=np.uint16).repeat(20, 0).repeat(20, 1)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    rgb = np.asarray(load_image(tmp_path / "deep.png", LIMITS))
    assert rgb[0, 0, 0] == 0 and rgb[0, 30, 0] == 128 and rgb[30, 0, 0] == 255 and rgb[30, 30, 0] == 10

    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:20] = (255, 0, 0, 255)  # opaque red top, fully transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = np.asarray(load_image(tmp_path / "rgba.png", LIMITS))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[39, 0]) == (255, 255, 255)


def box(bbox, fmt="pixels"):
    return Sample("s", "x.png", "q", "a", bbox, fmt)


def test_box_checks():
    assert pixel_box(box(None), (100, 50)) is None
    assert pixel_box(box([10, 5, 60, 40]), (100, 50)) == [10, 5, 60, 40]
    assert pixel_box(box([0.1, 0.2, 0.5, 1.0], "normalized"), (100, 50)) == pytest.approx([10, 10, 50, 50])
    # Visual-CoT: a 100x50 image padded to a 100x100 square, 25 px on top
    assert pixel_box(box([0.1, 0.25, 0.5, 0.75], "normalized_square"), (100, 50)) == pytest.approx([10, 0, 50, 50])
    assert reason(pixel_box, box([10, 5, 160, 40]), (100, 50)) == "box_outside_image"
    assert reason(pixel_box, box([-30, 5, 60, 40]), (100, 50)) == "box_outside_image"
    assert reason(pixel_box, box([60, 5, 60, 40]), (100, 50)) == "box_degenerate"
    assert reason(pixel_box, box([60, 40, 10, 5]), (100, 50)) == "box_degenerate"
    assert reason(pixel_box, box([1, 2, 3]), (100, 50)) == "box_invalid"
    assert reason(pixel_box, box(["a", 2, 3, 4]), (100, 50)) == "box_invalid"
    assert reason(pixel_box, box([0, 0, float("nan"), 4]), (100, 50)) == "box_invalid"
    assert reason(pixel_box, box([0, 0, 10**400, 4]), (100, 50)) == "box_invalid"  # an OverflowError before
    assert reason(pixel_box, box([0.1, 0.2, 1.5, 0.9], "normalized"), (100, 50)) == "box_outside_image"


def test_text_checks():
    assert reason(check_text, Sample("s", "x", "  ", "a")) == "question_empty"
    assert reason(check_text, Sample("s", "x", "what ?", None)) == "answer_missing"
    assert reason(check_text, Sample("s", "x", "what ?", "")) == "answer_missing"
    check_text(Sample("s", "x", "what ?", "red"))


def test_jsonl_structural_errors_name_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "a", "image": "a.png", "question": "q", "answer": "x"}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"s.jsonl:2: not valid JSON"):
        read_jsonl_samples(path)
    path.write_text(json.dumps({"image": "a.png", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r":1: missing 'id'"):
        read_jsonl_samples(path)
    rows = [{"id": "a", "image": "a.png", "question": "q", "answer": "x"}, {"id": "b", "image": "b.png"},
            {"id": "a", "image": "c.png", "question": "q", "answer": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"unique.*'a' \(records 1 and 3\)"):
        read_jsonl_samples(path)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (PIL reads the size, and runs its bomb check, on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


def test_filesystem_and_decoder_failures_are_rejections(tmp_path):
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    assert reason(resolve_image, tmp_path, "loop_a.png") == "image_unreadable"  # was RuntimeError
    assert reason(load_image, tmp_path / ("x" * 300 + ".png"), LIMITS) == "image_unreadable"  # was OSError Errno 36
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    with pytest.raises(Rejection, match=r"image_too_large: .*bomb.png.*decompression bomb"):  # DecompressionBombError
        load_image(tmp_path / "bomb.png", ImageLimits(max_pixels=10**12))
    assert reason(load_image, tmp_path / "bomb.png", LIMITS) == "image_too_large"
    (tmp_path / "claims.png").write_bytes(png_header(300, 300))  # under the pixel limit, but no pixels inside
    assert reason(load_image, tmp_path / "claims.png", LIMITS) == "image_corrupt"
    (tmp_path / "big.png").write_bytes(png_header(500, 500))  # over it: refused from the header, never decoded
    assert reason(load_image, tmp_path / "big.png", LIMITS) == "image_too_large"
    (tmp_path / "dir.png").mkdir()
    assert reason(load_image, tmp_path / "dir.png", LIMITS) == "image_missing"


def test_fields_that_are_not_text_are_rejections(tmp_path):
    def why(**fields):
        values = {"id": "s", "image": "x.png", "question": "what ?", "answer": "red", **fields}
        with pytest.raises(Rejection) as info:
            check_text(Sample(**values))
        return str(info.value)

    assert why(question=5).startswith("field_not_text: question is not text but int: 5")
    assert why(question={"text": "what ?"}).startswith("field_not_text: question")
    assert why(source=["viscot"]).startswith("field_not_text: source is not text but list")
    assert why(image=7).startswith("field_not_text: image")
    assert why(answer=["red"]).startswith("field_not_text: answer")
    assert why(answer=True).startswith("field_not_text: answer")
    assert why(question="what \ud800?").startswith("field_not_text: question is not valid Unicode text")
    assert why(question=None) == "question_empty" and why(question=0).startswith("field_not_text")
    for answer in (3, 2.5, "3"):  # JSON numbers are answers
        check_text(Sample("s", "x.png", "how many ?", answer, source=None))


def test_special_tokens_and_long_texts_are_rejections():
    tokenizer = build_tiny_tokenizer()
    limits = TextLimits.for_tokenizer(tokenizer, max_tokens=8)
    assert {"<|image_pad|>", "<|vision_start|>", "<|im_end|>"} <= set(limits.special_tokens)
    check_text(Sample("s", "x.png", "what color is the circle ?", "red"), limits)
    for question in ("what <|image_pad|> is this ?", "<|vision_start|>what ?", "what ?<|im_end|>"):
        assert reason(check_text, Sample("s", "x.png", question, "red"), limits) == "special_token_in_text"
    assert reason(check_text, Sample("s", "x.png", "what ?", "red <|image_pad|>"), limits) == "special_token_in_text"
    with pytest.raises(Rejection, match=r"text_too_long: question has 9 tokens, over max_text_tokens=8"):
        check_text(Sample("s", "x.png", "red " * 9, "red"), limits)
    assert reason(check_text, Sample("s", "x.png", "what ?", "red " * 9), limits) == "text_too_long"


def test_the_text_check_of_several_models_takes_every_special_token_and_the_longest_count():
    """`lavit analyze` feeds one text to a teacher and its students: a student's latent tokens are special to it,
    and the length is the one the tokenizer counting most tokens gives."""
    student = build_tiny_tokenizer()
    student.add_special_tokens({"additional_special_tokens": ["<lvr_1>"]}, replace_extra_special_tokens=False)
    characters = TextLimits(max_tokens=3, count_tokens=len)  # a stand-in tokenizer: one token per character
    both = TextLimits.for_tokenizers([build_tiny_tokenizer(), student], max_tokens=3)
    assert "<lvr_1>" in both.special_tokens and "<|image_pad|>" in both.special_tokens
    with pytest.raises(Rejection, match=r"special_token_in_text: answer holds the special token '<lvr_1>' at "
                                        "character 4"):
        check_text_fields({"question": "what ?", "answer": "red <lvr_1>"}, both)
    check_text_fields({"question": "red red"}, both)  # 2 tiny tokens
    with pytest.raises(Rejection, match=r"text_too_long: question has 7 tokens, over max_text_tokens=3"):
        check_text_fields({"question": "red red"}, characters)
    assert both.describe() == {"max_text_tokens": 3, "special_tokens": list(both.special_tokens)}
    assert TextLimits().describe() == {"max_text_tokens": None, "special_tokens": []}


def test_a_pixel_box_within_0_1_on_a_larger_image_is_rejected_as_normalised():
    """Fractions taken for pixels would put the box on the top-left pixel: rejected, naming what to do."""
    with pytest.raises(Rejection, match=r"box_looks_normalized: box \[0.1, 0.2, 0.5, 0.6\] lies within \[0, 1\] on the "
                                        r"640x480 image: it looks normalised; give boxes in source pixels \(or "
                                        r"lvr_box_format for Visual-CoT files\)"):
        pixel_box(Sample("s", "x.png", "q", "a", [0.1, 0.2, 0.5, 0.6]), (640, 480))
    assert pixel_box(Sample("s", "x.png", "q", "a", [0, 0, 1, 1]), (1, 1)) == [0, 0, 1, 1]  # the whole 1 px image
    assert pixel_box(Sample("s", "x.png", "q", "a", [0, 0, 1, 2]), (640, 480)) == [0, 0, 1, 2]  # leaves [0, 1]
    assert pixel_box(Sample("s", "x.png", "q", "a", [0.1, 0.2, 0.5, 0.6], "normalized"), (640, 480)) == \
        pytest.approx([64, 96, 320, 288])
    assert reason(pixel_box, Sample("s", "x.png", "q", "a", [0.5, 0.5, 0.5, 0.5]), (640, 480)) == "box_degenerate"


def test_jsonl_keeps_mistyped_fields_for_the_check_and_refuses_unstorable_ids(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": 1, "image": 5, "question": 7, "answer": 3, "source": {"a": 1}}) + "\n")
    (sample,) = read_jsonl_samples(path)
    assert (sample.id, sample.image, sample.question, sample.answer, sample.source) == ("1", 5, 7, 3, {"a": 1})
    path.write_text(json.dumps({"id": "a\ud800", "image": "a.png", "question": "q", "answer": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"record 1 has an id that is not valid Unicode text"):
        read_jsonl_samples(path)
