"""Visual-CoT readers on records in the published raw (viscot_363k) and LVR-formatted forms, and `pixel_box`."""

from __future__ import annotations

import copy
import json

import pytest
from PIL import Image

from lavit.data.samples import Rejection, Sample, check_text, pixel_box
from lavit.data.visual_cot import read_visual_cot

# Verbatim from viscot_363k.json; the image is 2200x1700 (W x H).
RAW = {"dataset": "docvqa", "split": "train", "question_id": 138460,
       "image": ["cot/docvqa/kpfl0225_13.png", "cot/docvqa/kpfl0225_13.png###[14, 645, 1776, 1617]"],
       "conversations": [
           {"from": "human", "value": "<image>\nWhat is the percentage of all consumers who tried option of "
                                      "\"Semi Hard Strip\"? Please provide the bounding box coordinate of the region "
                                      "that can help you answer the question better."},
           {"from": "gpt", "value": "[0.006, 0.407, 0.807, 0.849]"},
           {"from": "human", "value": "<image>"},
           {"from": "gpt", "value": "8%"}]}
RAW_SIZE = (2200, 1700)
RAW_PIXELS = [14.0, 645.0, 1776.0, 1617.0]

# Verbatim from viscot_363k_lvr_formatted.json; the image is 500x375.
LVR = {"dataset": "flickr30k", "split": "train", "question_id": 31593, "image": ["viscot/flickr30k/2618322793.jpg"],
       "conversations": [
           {"from": "human", "value": "<image>\nCan you describe the lower apparel of the child on the swing?\n"
                                      "Provide a short and direct response."},
           {"from": "gpt", "value": "<lvr>\n<answer> The child on the swing is wearing dark blue denim shorts. </answer>"}],
       "bboxes": [[0.382, 0.456, 0.718, 0.656]]}
LVR_SIZE = (500, 375)


def write(tmp_path, records, name="viscot.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def read_one(tmp_path, record, **kwargs):
    samples = read_visual_cot(write(tmp_path, [record]), **kwargs)
    assert len(samples) == 1
    return samples[0]


def test_raw_record_uses_the_pixel_box_after_hashes(tmp_path):
    s = read_one(tmp_path, RAW)
    assert s.id == "docvqa-138460"
    assert s.image == "cot/docvqa/kpfl0225_13.png"
    assert s.question == "What is the percentage of all consumers who tried option of \"Semi Hard Strip\"?"
    assert "<image>" not in s.question and "bounding box" not in s.question
    assert s.answer == "8%"
    assert s.bbox == RAW_PIXELS and s.bbox_format == "pixels"
    assert s.source == "docvqa"
    assert pixel_box(s, RAW_SIZE) == RAW_PIXELS


@pytest.mark.parametrize("images", [["cot/docvqa/kpfl0225_13.png"],
                                    "cot/docvqa/kpfl0225_13.png",
                                    ["cot/docvqa/kpfl0225_13.png", "cot/docvqa/kpfl0225_13.png"]])
def test_raw_record_without_pixel_box_converts_the_padded_square_box(tmp_path, images):
    record = copy.deepcopy(RAW)
    record["image"] = images
    s = read_one(tmp_path, record)
    assert s.image == "cot/docvqa/kpfl0225_13.png"
    assert s.bbox == [0.006, 0.407, 0.807, 0.849] and s.bbox_format == "normalized_square"
    # Landscape: padded to 2200x2200 with (2200 - 1700) // 2 = 250 px on top; y = v * 2200 - 250.
    box = pixel_box(s, RAW_SIZE)
    assert box == pytest.approx([13.2, 645.4, 1775.4, 1617.8], abs=1e-6)
    assert box == pytest.approx(RAW_PIXELS, abs=2.0)


def test_portrait_normalized_square_pads_x():
    # 600x1000 portrait: padded to 1000x1000 with (1000 - 600) // 2 = 200 px on the left.
    # Pixel box [100, 300, 500, 900] -> [(100+200)/1000, 300/1000, (500+200)/1000, 900/1000].
    s = Sample("p", "p.png", "q", "a", [0.3, 0.3, 0.7, 0.9], "normalized_square")
    assert pixel_box(s, (600, 1000)) == pytest.approx([100.0, 300.0, 500.0, 900.0], abs=1e-9)
    # The same fractions read as plain x/W, y/H land elsewhere.
    plain = Sample("p", "p.png", "q", "a", [0.3, 0.3, 0.7, 0.9], "normalized")
    assert pixel_box(plain, (600, 1000)) == pytest.approx([180.0, 300.0, 420.0, 900.0], abs=1e-9)


def test_real_images_give_the_same_box(tmp_path):
    """The size comes from a real image file, as the extractor would read it."""
    (tmp_path / "cot/docvqa").mkdir(parents=True)
    image = tmp_path / "cot/docvqa/kpfl0225_13.png"
    Image.new("RGB", RAW_SIZE, (255, 255, 255)).save(image)
    record = copy.deepcopy(RAW)
    record["image"] = record["image"][:1]
    s = read_one(tmp_path, record)
    with Image.open(tmp_path / s.image) as img:
        assert pixel_box(s, img.size) == pytest.approx(RAW_PIXELS, abs=2.0)


def test_lvr_record_answer_and_default_box(tmp_path):
    s = read_one(tmp_path, LVR)
    assert s.id == "flickr30k-31593"
    assert s.image == "viscot/flickr30k/2618322793.jpg"
    assert s.question == "Can you describe the lower apparel of the child on the swing?\nProvide a short and direct response."
    assert s.answer == "The child on the swing is wearing dark blue denim shorts."
    assert s.bbox == [0.382, 0.456, 0.718, 0.656] and s.bbox_format == "normalized"
    # x/W, y/H of 500x375: [0.382*500, 0.456*375, 0.718*500, 0.656*375]
    assert pixel_box(s, LVR_SIZE) == pytest.approx([191.0, 171.0, 359.0, 246.0], abs=1e-9)


def test_lvr_record_with_square_convention(tmp_path):
    s = read_one(tmp_path, LVR, lvr_box_format="normalized_square")
    assert s.bbox_format == "normalized_square"
    # Padded to 500x500 with (500 - 375) // 2 = 62 px on top: y = v * 500 - 62.
    assert pixel_box(s, LVR_SIZE) == pytest.approx([191.0, 166.0, 359.0, 266.0], abs=1e-9)


def test_lvr_boxes_merge_into_their_enclosing_box(tmp_path):
    record = copy.deepcopy(LVR)
    record["bboxes"] = [[0.1, 0.2, 0.3, 0.4], [0.25, 0.1, 0.5, 0.35], [0.2, 0.3, 0.45, 0.6]]
    s = read_one(tmp_path, record)
    assert s.bbox == [0.1, 0.1, 0.5, 0.6]
    assert pixel_box(s, LVR_SIZE) == pytest.approx([50.0, 37.5, 250.0, 225.0], abs=1e-9)


def test_lvr_without_answer_tags_and_without_boxes(tmp_path):
    record = copy.deepcopy(LVR)
    record["conversations"][1]["value"] = "<lvr>\nDenim shorts."
    record["bboxes"] = []
    s = read_one(tmp_path, record)
    assert s.answer == "Denim shorts."
    assert s.bbox is None and pixel_box(s, LVR_SIZE) is None


def test_raw_and_lvr_records_in_one_file(tmp_path):
    samples = read_visual_cot(write(tmp_path, [RAW, LVR]))
    assert [s.id for s in samples] == ["docvqa-138460", "flickr30k-31593"]
    assert [s.bbox_format for s in samples] == ["pixels", "normalized"]


def _three_turns():
    r = copy.deepcopy(RAW)
    del r["conversations"][2]
    return r


def _no_conversations():
    r = copy.deepcopy(RAW)
    del r["conversations"]
    return r


def _bad_box():
    r = copy.deepcopy(RAW)
    r["image"] = r["image"][:1]
    r["conversations"][1]["value"] = "the box is [0.006, 0.407]"
    return r


@pytest.mark.parametrize("content,message", [
    ({"annotations": [RAW]}, "expected a JSON list"),
    ([_three_turns()], r"record 0: raw Visual-CoT records have 4 turns, this one has 3"),
    ([LVR, _no_conversations()], r"record 1: a Visual-CoT record needs 'image' and 'conversations'"),
    ([_bad_box()], r"second turn is not a box: 'the box is \[0.006, 0.407\]'"),
    ([RAW, LVR, RAW], r"sample ids must be unique; duplicated: 'docvqa-138460' \(records 1 and 3\)"),
])
def test_structural_errors_name_the_problem(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        read_visual_cot(write(tmp_path, content))


@pytest.mark.parametrize("record", [
    {"dataset": "d", "question_id": 1, "image": ["a.png"], "conversations": ["<image>\nq", "a"]},
    {"dataset": "d", "question_id": 1, "image": 5, "conversations": [{"from": "human", "value": "q"}]},
])
def test_malformed_record_fields_are_value_errors(tmp_path, record):
    with pytest.raises(ValueError, match="record 0"):
        read_visual_cot(write(tmp_path, [record]))


def test_invalid_json_is_a_value_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"dataset": "docvqa",', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_visual_cot(path)


@pytest.mark.parametrize("bbox,fmt,reason", [
    ([10, 10, 120, 50], "pixels", "box_outside_image"),  # x2 beyond the 100 px width
    ([-5, 10, 50, 50], "pixels", "box_outside_image"),
    ([50, 10, 50, 40], "pixels", "box_degenerate"),  # x2 == x1
    ([60, 10, 40, 40], "pixels", "box_degenerate"),  # x2 < x1
    ([10, 30, 40, 20], "pixels", "box_degenerate"),  # y2 < y1
    (["a", 10, 40, 40], "pixels", "box_invalid"),
    ([10, None, 40, 40], "pixels", "box_invalid"),
    ([10, 10, 40], "pixels", "box_invalid"),
    ([10, 10, 40, 40, 50], "pixels", "box_invalid"),
    ("10,10,40,40", "pixels", "box_invalid"),
    ([10, float("nan"), 40, 40], "pixels", "box_invalid"),
    ([0.1, 0.2, 1.3, 0.5], "normalized", "box_outside_image"),
    ([0.1, 0.2, 0.5, 1.01], "normalized_square", "box_outside_image"),
    ([0.5, 0.2, 0.5, 0.4], "normalized", "box_degenerate"),
])
def test_pixel_box_rejections(bbox, fmt, reason):
    s = Sample("x", "x.png", "q", "a", bbox, fmt)
    with pytest.raises(Rejection) as info:
        pixel_box(s, (100, 80))
    assert info.value.reason == reason
    assert str(info.value).startswith(reason + ": ")


def test_pixel_box_tolerates_one_pixel_and_clips():
    s = Sample("x", "x.png", "q", "a", [-0.5, 0, 100.8, 80], "pixels")
    assert pixel_box(s, (100, 80)) == [0.0, 0.0, 100.0, 80.0]


def test_values_that_are_not_text_reach_check_text_as_read(tmp_path):
    raw, lvr = copy.deepcopy(RAW), copy.deepcopy(LVR)
    raw["conversations"][0]["value"] = 12  # an AttributeError on .replace before
    raw["dataset"] = ["docvqa"]
    lvr["conversations"][1]["value"] = {"answer": "shorts"}  # a TypeError in the answer pattern before
    lvr["question_id"] = 2
    raw_sample, lvr_sample = read_visual_cot(write(tmp_path, [raw, lvr]))
    assert raw_sample.question == 12 and lvr_sample.answer == {"answer": "shorts"}
    for sample, field in ((raw_sample, "question"), (lvr_sample, "answer")):
        with pytest.raises(Rejection, match=f"field_not_text: {field}"):
            check_text(sample)
    raw["conversations"][0]["value"] = "<image>\nwhat ?"
    with pytest.raises(Rejection, match="field_not_text: source"):
        check_text(read_one(tmp_path, raw))
