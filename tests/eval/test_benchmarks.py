"""Benchmark loaders, scoring, bad input, resume and the `lavit eval` CLI on tiny copies of the
published layouts (MMVP Questions.csv, BLINK val parquet, V* test_questions.jsonl, MMStar parquet).

Every expected number is counted by hand from the fixtures in `fixtures.py` (images from fixed seeds);
no network, no real model.
"""

from __future__ import annotations

import json
import struct

import pyarrow.parquet as pq
import pytest
from fixtures import (
    DEPTH_PROMPT,
    DEPTH_ROWS,
    IQ_ROWS,
    MMSTAR_QUESTION,
    MMSTAR_ROWS,
    MMVP_ROWS,
    blink_schema,
    blink_size,
    image_bytes,
    mmstar_schema,
    mmstar_size,
    mmvp_size,
    png_claiming,
    vstar_size,
    write_blink,
    write_blink_task,
    write_mmstar,
    write_mmvp,
    write_paper_root,
    write_vstar,
)
from PIL import Image

import lavit.eval.items as items_module
from lavit.cli import main
from lavit.eval.benchmarks import get_benchmark
from lavit.eval.models import ConstantModel, load_eval_model
from lavit.eval.protocols import apply_protocol
from lavit.eval.protocols.lavit import ANSWER_DIRECTLY
from lavit.eval.protocols.lavit import PROTOCOL as LAVIT
from lavit.eval.runner import run_eval

RECORD_KEYS = {"id", "prompt", "raw_output", "extracted", "truth", "correct", "item_sha256"}


def load(name, root):
    """The benchmark's items as the default protocol (lavit) asks them."""
    return apply_protocol(get_benchmark(name).load(root), LAVIT, name)


def predictions(out, name):
    path = out / name.replace(":", "_") / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class CannedModel:
    """Answers each item id with a fixed string; counts what it was asked."""

    protocol = LAVIT

    def __init__(self, outputs: dict[str, str], name: str = "canned"):
        self.outputs, self.name, self.asked = outputs, name, []

    def describe(self) -> dict:
        return {"model": self.name, "protocol": {**LAVIT.describe(), "deviations": {}}}

    def answer(self, items, max_new_tokens=None):
        self.asked += [it.id for it in items]
        return [self.outputs[it.id] for it in items]


# ----------------------------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("header,bom", [("lndex", False), ("Index", False), ("Index", True)])
def test_mmvp_loader(tmp_path, header, bom):
    root = write_mmvp(tmp_path / "MMVP", header=header, bom=bom)
    items = load("mmvp", root)
    assert [it.id for it in items] == [str(n) for n in range(1, 9)]
    first = items[0]
    assert first.prompt == ("Are the butterfly's wings closer to being open or closed?\n(a) Open\n(b) Closed\n"
                            + ANSWER_DIRECTLY)
    assert first.letters == "AB"
    # answers (a) (b) (b) (a) (a) (a) (b) (a) → upper-case letters
    assert [it.answer for it in items] == list("ABBAAABA")
    # Index 1..8 → pairs 0,0,1,1,2,2,3,3
    assert [it.meta["pair"] for it in items] == [0, 0, 1, 1, 2, 2, 3, 3]
    # the question with a comma survived CSV quoting
    assert items[4].prompt.startswith("Is the school bus, seen from the camera, driving towards or away?\n(a) Towards")
    for n, it in enumerate(items, 1):
        assert len(it.images) == 1 and it.images[0].open().size == mmvp_size(n)
        assert it.problem() is None


def test_blink_loader(tmp_path):
    root = write_blink(tmp_path / "BLINK")
    depth = load("blink:Relative_Depth", root)
    assert [it.id for it in depth] == [f"val_Relative_Depth_{i}" for i in range(1, 6)]  # never test_…
    assert depth[0].prompt == DEPTH_PROMPT + "\n" + ANSWER_DIRECTLY
    assert "Which point is closer to the camera?" in depth[0].prompt and "(B) B is closer" in depth[0].prompt
    assert depth[0].letters == "AB"
    assert [it.answer for it in depth] == list("ABAAB")
    assert all(it.meta == {"task": "Relative_Depth"} for it in depth)
    assert [im.open().size for im in depth[1].images] == [blink_size("Relative_Depth", 2, 1)]

    iq = load("blink:IQ_Test", root)
    assert [it.id for it in iq] == [f"val_IQ_Test_{i}" for i in range(1, 5)]
    assert all(it.letters == "ABCD" for it in iq)
    assert [it.answer for it in iq] == list("ACDA")
    # 2, 3, 4, 2 images; null image_k cells dropped, the others in order with their own sizes
    assert [len(it.images) for it in iq] == [2, 3, 4, 2]
    assert [im.open().size for im in iq[2].images] == [blink_size("IQ_Test", 3, k) for k in range(1, 5)]
    assert "(D) image 4" in iq[0].prompt and iq[0].prompt.endswith("\n" + ANSWER_DIRECTLY)


def test_blink_never_opens_the_test_split(tmp_path):
    root = write_blink(tmp_path / "BLINK", {"Relative_Depth": DEPTH_ROWS}, with_test=False)
    (root / "Relative_Depth" / "test-00000-of-00001.parquet").write_bytes(b"not a parquet file at all")
    assert len(load("blink:Relative_Depth", root)) == 5


@pytest.mark.parametrize("int_ids", [False, True])
def test_vstar_loader(tmp_path, int_ids):
    root = write_vstar(tmp_path / "vstar_bench", int_ids=int_ids)
    items = load("vstar", root)
    # direct_attributes are lines 0, 1, 3, 4, 6; relative_position (2, 5) left out
    assert [it.id for it in items] == ["0", "1", "3", "4", "6"]
    first = items[0]
    assert first.prompt == ("What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n"
                            + ANSWER_DIRECTLY)
    assert first.prompt.count(ANSWER_DIRECTLY) == 1  # the text already carries it; not appended twice
    assert all(it.letters == "ABCD" for it in items)
    assert [it.answer for it in items] == list("ABCAD")
    assert all(it.meta == {"category": "direct_attributes"} for it in items)
    assert [it.images[0].open().size for it in items] == [vstar_size(i) for i in (0, 1, 3, 4, 6)]

    rel = load("vstar:relative_position", root)
    assert [it.id for it in rel] == ["2", "5"] and all(it.letters == "AB" for it in rel)


@pytest.mark.parametrize("binary_image", [False, True])
def test_mmstar_loader(tmp_path, binary_image):
    root = write_mmstar(tmp_path / "MMStar", binary_image=binary_image)
    items = load("mmstar", root)
    assert [it.id for it in items] == [str(i) for i in range(6)]
    assert items[0].prompt == MMSTAR_QUESTION + "\n" + ANSWER_DIRECTLY
    assert "D: The suitcase is beneath the book." in items[0].prompt
    assert all(it.letters == "ABCD" for it in items)  # also the math question whose hint says "e.g., A, B, C, D"
    assert [it.answer for it in items] == [a for *_, a in MMSTAR_ROWS]
    assert items[0].meta == {"category": "coarse perception", "l2_category": "image scene and topic"}
    assert items[5].meta == {"category": "math", "l2_category": "numeric commonsense"}
    assert [it.images[0].open().size for it in items] == [mmstar_size(i) for i in range(6)]


# ----------------------------------------------------------------------------------------------- scoring

def check_files(out, name, n, accuracy):
    directory = out / name.replace(":", "_")
    records = predictions(out, name)
    assert len(records) == n
    assert all(RECORD_KEYS <= set(r) for r in records)
    saved = json.loads((directory / "summary.json").read_text())
    assert saved["n"] == n and saved["accuracy"] == accuracy
    return records


def test_mmvp_constant_a(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    summary = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    # truths (a)(b)(b)(a)(a)(a)(b)(a): 5 of 8 are (a) → 0.625
    assert summary["n"] == 8 and summary["correct"] == 5 and summary["accuracy"] == 5 / 8
    # pairs (a,b) (b,a) (a,a) (b,a): only pair 3 has both right → 1 of 4
    assert summary["pairs"] == 4 and summary["pair_accuracy"] == 1 / 4
    assert summary["unparsed"] == 0 and summary["skipped"] == 0
    records = check_files(tmp_path / "out", "mmvp", 8, 5 / 8)
    assert records[0] == {**records[0], "id": "1", "raw_output": "A", "extracted": "A", "truth": "A", "correct": True,
                          "pair": 0}
    assert records[1]["correct"] is False and records[1]["truth"] == "B"


def test_blink_constant_a_per_task(tmp_path):
    root = write_blink(tmp_path / "BLINK")
    depth = run_eval(ConstantModel("A"), "blink:Relative_Depth", root, tmp_path / "out")
    assert depth["n"] == 5 and depth["accuracy"] == 3 / 5  # A B A A B
    iq = run_eval(ConstantModel("A"), "blink:IQ_Test", root, tmp_path / "out")
    assert iq["n"] == 4 and iq["accuracy"] == 2 / 4  # A C D A
    check_files(tmp_path / "out", "blink:Relative_Depth", 5, 3 / 5)
    records = check_files(tmp_path / "out", "blink:IQ_Test", 4, 2 / 4)
    assert [r["truth"] for r in records] == list("ACDA") and all(r["task"] == "IQ_Test" for r in records)


def test_vstar_target_boxes_from_the_published_annotations(tmp_path):
    """Each image's annotation (`sa_4690.json`, [x, y, w, h] pixel boxes) gives the item's boxes as [x1, y1, x2, y2]:
    one for a direct attribute, two for a relative position; a missing or malformed file leaves the item without
    boxes, saying why, and scored as before (the boxes are no part of what decides its score)."""
    bad = {3: None, 4: "{not json", 6: json.dumps({"target_object": ["kite"], "bbox": [[1, 2, 3]]}),
           1: json.dumps({"target_object": ["umbrella"], "bbox": [[1, 2, 3, 4], [5, 6, 7, 8]]}),
           5: '{"target_object": ["cup", "laptop"], "bbox": [[1, 2, 3, 4], [1%s, 2, 3, 4]]}' % ("0" * 400)}
    root = write_vstar(tmp_path / "vstar_bench", annotations=bad)
    items = {it.id: it for it in load("vstar:all", root)}
    assert items["0"].boxes == [[3.0, 2.0, 23.0, 17.0]]
    assert items["1"].boxes is None and "has 2 boxes for target_object ['umbrella']" in items["1"].no_box
    assert items["2"].boxes == [[5.0, 2.0, 25.0, 17.0], [35.0, 3.0, 55.0, 19.0]]  # relative_position: two targets
    assert items["3"].boxes is None
    assert items["3"].no_box == "no annotation file direct_attributes/sa_4692.json beside the image"
    assert items["4"].boxes is None
    assert items["4"].no_box.startswith("annotation direct_attributes/sa_4693.json is not JSON")
    assert items["6"].boxes is None and "[1, 2, 3] is not an [x, y, w, h] box" in items["6"].no_box
    assert items["5"].boxes is None and "is not an [x, y, w, h] box" in items["5"].no_box  # one bad box: no boxes
    unannotated = write_vstar(tmp_path / "plain", annotations=dict.fromkeys(range(7)))
    plain = {it.id: it for it in load("vstar:all", unannotated)}
    assert all(it.boxes is None for it in plain.values())
    assert {i: it.fingerprint() for i, it in plain.items()} == {i: it.fingerprint() for i, it in items.items()}


def test_vstar_constant_a(tmp_path):
    root = write_vstar(tmp_path / "vstar_bench")
    summary = run_eval(ConstantModel("A"), "vstar", root, tmp_path / "out")
    # direct_attributes A B C A D → 2 of 5 (4 of 7 if relative_position leaked in)
    assert summary["n"] == 5 and summary["accuracy"] == 2 / 5
    check_files(tmp_path / "out", "vstar", 5, 2 / 5)


@pytest.mark.parametrize("binary_image", [False, True])
def test_mmstar_constant_a_per_category(tmp_path, binary_image):
    root = write_mmstar(tmp_path / "MMStar", binary_image=binary_image)
    summary = run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "out")
    # A B A | C A D → 3 of 6 overall; coarse perception 2 of 3, math 1 of 3
    assert summary["n"] == 6 and summary["accuracy"] == 3 / 6
    assert summary["per_category"] == {"coarse perception": 2 / 3, "math": 1 / 3}
    # l2: scene & topic (A, B) 1/2, style & quality (A) 1/1, geometry (C, A) 1/2, numeric (D) 0/1
    assert summary["per_l2_category"] == {"geometry": 0.5, "image scene and topic": 0.5,
                                          "image style & quality": 1.0, "numeric commonsense": 0.0}
    records = check_files(tmp_path / "out", "mmstar", 6, 3 / 6)
    assert [r["category"] for r in records] == ["coarse perception"] * 3 + ["math"] * 3


def test_extraction_and_unparsed_counting(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    outputs = {"1": "The answer is (B).", "2": "(b)", "3": "I don't know", "4": "Answer: A", "5": "a",
               "6": "(A) or (B)", "7": "**B**", "8": "B. Closed"}
    summary = run_eval(CannedModel(outputs), "mmvp", root, tmp_path / "out", batch_size=3)
    records = predictions(tmp_path / "out", "mmvp")
    # extracted:  B  B  None A  A  None B  B
    # truth:      A  B  B    A  A  A    B  A
    # correct:    .  x  .    x  x  .    x  .   → 4 of 8; 2 unparsed
    assert [r["extracted"] for r in records] == ["B", "B", None, "A", "A", None, "B", "B"]
    assert [r["correct"] for r in records] == [False, True, False, True, True, False, True, False]
    assert [r["raw_output"] for r in records] == [outputs[str(n)] for n in range(1, 9)]
    assert summary["accuracy"] == 4 / 8 and summary["correct"] == 4 and summary["unparsed"] == 2
    # pairs: (1,2) F T, (3,4) F T, (5,6) T F, (7,8) T F → none complete → 0
    assert summary["pair_accuracy"] == 0.0


def test_extraction_respects_each_items_letters(tmp_path):
    root = write_vstar(tmp_path / "vstar_bench")
    # "E" is no option of an ABCD item; "(c) kevlar" is C
    outputs = {"0": "E", "1": "The correct answer is B.", "3": "(c) kevlar", "4": "Option D", "6": "d"}
    summary = run_eval(CannedModel(outputs), "vstar", root, tmp_path / "out")
    records = predictions(tmp_path / "out", "vstar")
    # truth A B C A D; extracted None B C D D → 3 right, 1 unparsed
    assert [r["extracted"] for r in records] == [None, "B", "C", "D", "D"]
    assert summary["accuracy"] == 3 / 5 and summary["unparsed"] == 1


# ----------------------------------------------------------------------------------------------- bad input

def test_missing_mmvp_image_is_a_recorded_skip(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    (root / "MMVP Images" / "3.jpg").unlink()
    model = CannedModel({str(n): "A" for n in range(1, 9)})
    summary = run_eval(model, "mmvp", root, tmp_path / "out")
    assert "3" not in model.asked
    # 7 scored: truths of 1,2,4..8 = a b a a a b a → 5 of 7
    assert summary["n"] == 7 and summary["accuracy"] == 5 / 7
    assert summary["skipped"] == 1 and summary["skipped_by_reason"] == {"image_missing": 1}
    # pair (3,4) incomplete → 3 complete pairs, only (5,6) right → 1/3
    assert summary["pairs"] == 3 and summary["pair_accuracy"] == 1 / 3
    records = predictions(tmp_path / "out", "mmvp")
    skip = next(r for r in records if r["id"] == "3")
    assert skip["skipped"].startswith("image_missing") and "3.jpg" in skip["skipped"] and skip["truth"] == "B"
    assert len(records) == 8
    # the image is restored: a rerun into the same --out tries that item again, and only that item
    Image.new("RGB", (64, 48), (10, 20, 30)).save(root / "MMVP Images" / "3.jpg")
    again = CannedModel({str(n): "A" for n in range(1, 9)})
    summary = run_eval(again, "mmvp", root, tmp_path / "out")
    assert again.asked == ["3"] and summary["n"] == 8 and summary["skipped"] == 0
    records = predictions(tmp_path / "out", "mmvp")
    assert sorted(r["id"] for r in records) == [str(n) for n in range(1, 9)] and not any("skipped" in r for r in records)


def test_missing_images_in_vstar_and_blink(tmp_path):
    vroot = write_vstar(tmp_path / "vstar_bench")
    (vroot / "direct_attributes" / "sa_4691.jpg").unlink()
    summary = run_eval(ConstantModel("A"), "vstar", vroot, tmp_path / "out")
    # left: A C A D → 2 of 4
    assert summary["n"] == 4 and summary["accuracy"] == 2 / 4 and summary["skipped_by_reason"] == {"image_missing": 1}

    broot = write_blink(tmp_path / "BLINK", {"Relative_Depth": [
        DEPTH_ROWS[0], {**DEPTH_ROWS[1], "images": {1: {"bytes": None, "path": "val_Relative_Depth_2_1.png"}}},
        DEPTH_ROWS[2]]}, with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:Relative_Depth", broot, tmp_path / "out")
    # row 2 (B) has no bytes and a path that does not exist → skipped; A, A left → 2 of 2
    assert summary["n"] == 2 and summary["accuracy"] == 1.0 and summary["skipped_by_reason"] == {"image_missing": 1}


def test_empty_parquets_are_errors(tmp_path):
    (tmp_path / "BLINK" / "Relative_Depth").mkdir(parents=True)
    pq.write_table(blink_schema().empty_table(), tmp_path / "BLINK" / "Relative_Depth" / "val-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no rows"):
        load("blink:Relative_Depth", tmp_path / "BLINK")
    (tmp_path / "MMStar").mkdir()
    pq.write_table(mmstar_schema(False).empty_table(), tmp_path / "MMStar" / "mmstar.parquet")
    with pytest.raises(ValueError, match="no rows"):
        load("mmstar", tmp_path / "MMStar")


def test_unknown_blink_task_names_it_and_lists_found(tmp_path):
    root = write_blink(tmp_path / "BLINK")
    with pytest.raises(ValueError, match="Relative_Reflectance") as err:
        load("blink:Relative_Reflectance", root)
    assert "['IQ_Test', 'Relative_Depth']" in str(err.value)
    with pytest.raises(ValueError, match="sub-task"):
        get_benchmark("blink")


def test_answer_not_among_choices_is_a_recorded_skip(tmp_path):
    rows = [*MMVP_ROWS[:2], (MMVP_ROWS[2][0], MMVP_ROWS[2][1], "(c)"), *MMVP_ROWS[3:]]
    root = write_mmvp(tmp_path / "MMVP", rows)
    summary = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    # row 3 (truth was b) skipped: 5 of 7 as with the missing image
    assert summary["n"] == 7 and summary["accuracy"] == 5 / 7
    assert summary["skipped_by_reason"] == {"answer_not_in_choices": 1}

    broot = write_blink(tmp_path / "BLINK", {"Relative_Depth": [*DEPTH_ROWS[:4], {**DEPTH_ROWS[4], "answer": "(E)"}]},
                        with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:Relative_Depth", broot, tmp_path / "out")
    # A B A A scored → 3 of 4
    assert summary["n"] == 4 and summary["accuracy"] == 3 / 4
    assert summary["skipped"] == 1 and summary["skipped_by_reason"] == {"answer_not_in_choices": 1}
    skip = next(r for r in predictions(tmp_path / "out", "blink:Relative_Depth") if "skipped" in r)
    assert skip["id"] == "val_Relative_Depth_5" and "'E'" in skip["skipped"]


@pytest.mark.parametrize("name,folder,filename", [("mmvp", "MMVP", "Questions.csv"),
                                                  ("mmstar", "MMStar", "mmstar.parquet"),
                                                  ("vstar", "vstar_bench", "test_questions.jsonl")])
def test_missing_index_file(tmp_path, name, folder, filename):
    (tmp_path / folder).mkdir()
    with pytest.raises(FileNotFoundError, match=filename):
        load(name, tmp_path / folder)


def test_blink_with_only_a_test_split(tmp_path):
    write_blink_task(tmp_path / "BLINK", "Relative_Depth", [{**r, "answer": "hidden"} for r in DEPTH_ROWS],
                     split="test")
    with pytest.raises(FileNotFoundError, match="val"):
        load("blink:Relative_Depth", tmp_path / "BLINK")


def test_corrupt_image_bytes_are_a_recorded_skip(tmp_path):
    broot = write_blink(tmp_path / "BLINK", {"IQ_Test": [
        IQ_ROWS[0], {**IQ_ROWS[1], "images": {2: {"bytes": b"\xff\xd8 not really a jpeg", "path": "x.jpg"}}},
        IQ_ROWS[2], IQ_ROWS[3]]}, with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:IQ_Test", broot, tmp_path / "out")
    # row 2 (C) skipped for its second image; A D A → 2 of 3
    assert summary["n"] == 3 and summary["accuracy"] == 2 / 3
    assert summary["skipped_by_reason"] == {"image_corrupt": 1}

    mroot = write_mmstar(tmp_path / "MMStar", binary_image=True, images={1: b"garbage"})
    summary = run_eval(ConstantModel("A"), "mmstar", mroot, tmp_path / "out")
    # row 1 (B) skipped: A A | C A D → 3 of 5; coarse perception 2/2, math 1/3
    assert summary["n"] == 5 and summary["accuracy"] == 3 / 5
    assert summary["per_category"] == {"coarse perception": 1.0, "math": 1 / 3}
    assert summary["skipped_by_reason"] == {"image_corrupt": 1}

    vroot = write_mmvp(tmp_path / "MMVP")
    (vroot / "MMVP Images" / "8.jpg").write_bytes(b"GIF89a but truncated")
    summary = run_eval(ConstantModel("A"), "mmvp", vroot, tmp_path / "out")
    assert summary["n"] == 7 and summary["accuracy"] == 4 / 7  # a b b a a a b → 4 of 7
    assert summary["skipped_by_reason"] == {"image_corrupt": 1}


class OpeningModel(CannedModel):
    """Opens every image before answering, as `GenerativeModel.answer` does."""

    def answer(self, items, max_new_tokens=None):
        for it in items:
            for ref in it.images:
                ref.open()
        return super().answer(items)


def test_truncated_image_is_a_recorded_skip(tmp_path):
    good = image_bytes(blink_size("Relative_Depth", 2, 1), 7, "JPEG")
    root = write_blink(tmp_path / "BLINK", {"Relative_Depth": [
        DEPTH_ROWS[0], {**DEPTH_ROWS[1], "images": {1: {"bytes": good[:len(good) // 2], "path": "x.jpg"}}},
        DEPTH_ROWS[2]]}, with_test=False)
    model = OpeningModel({f"val_Relative_Depth_{i}": "A" for i in (1, 2, 3)})
    summary = run_eval(model, "blink:Relative_Depth", root, tmp_path / "out")
    # row 2 (B) skipped; A, A → 2 of 2
    assert summary["n"] == 2 and summary["skipped_by_reason"] == {"image_corrupt": 1}


@pytest.mark.parametrize("answer", ["", "(AB)"])
def test_empty_or_multi_letter_answer_is_a_recorded_skip(tmp_path, answer):
    root = write_blink(tmp_path / "BLINK", {"Relative_Depth": [*DEPTH_ROWS[:4], {**DEPTH_ROWS[4], "answer": answer}]},
                       with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:Relative_Depth", root, tmp_path / "out")
    # A B A A scored → 3 of 4; the fifth skipped
    assert summary["skipped_by_reason"] == {"answer_not_in_choices": 1}
    assert summary["n"] == 4 and summary["accuracy"] == 3 / 4


def skips(out, name) -> dict[str, str]:
    return {r["id"]: r["skipped"] for r in predictions(out, name) if "skipped" in r}


def test_null_cells_in_mmstar_are_recorded_skips(tmp_path):
    # question null (row 1), index null (row 2), category null (row 4): once a crash in the loader, in the loader
    # (no: "None" became an id) and in the per-category summary after every prediction was written
    root = write_mmstar(tmp_path / "MMStar", cells={1: {"question": None}, 2: {"index": None}, 4: {"category": None}})
    model = CannedModel({str(i): "A" for i in range(6)})
    summary = run_eval(model, "mmstar", root, tmp_path / "out")
    assert model.asked == ["0", "3", "5"]
    # A | C D scored → 1 of 3; coarse perception 1/1, math 0/2
    assert summary["n"] == 3 and summary["accuracy"] == 1 / 3
    assert summary["per_category"] == {"coarse perception": 1.0, "math": 0.0}
    assert summary["per_l2_category"] == {"geometry": 0.0, "image scene and topic": 1.0, "numeric commonsense": 0.0}
    assert summary["skipped"] == 3 and summary["skipped_by_reason"] == {"cell_invalid": 3}
    assert skips(tmp_path / "out", "mmstar") == {
        "1": "cell_invalid: 'question' is null, expected text",
        "row 3": "cell_invalid: 'index' is null, expected an id",  # named by its place when the id is null
        "4": "cell_invalid: 'category' is null, expected text"}


def test_a_scored_record_with_a_null_category_gives_way_to_its_skip(tmp_path):
    """The predictions an older loader wrote (row 4 scored with category null, then the summary crashed): a rerun
    records that item's skip instead, and the summary is written."""
    root = write_mmstar(tmp_path / "MMStar")
    run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "out")
    path = tmp_path / "out" / "mmstar" / "predictions.jsonl"
    records = predictions(tmp_path / "out", "mmstar")
    records[4]["category"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_mmstar(root, cells={4: {"category": None}})
    summary = run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "out")
    # A B A | C D → 2 of 5; coarse perception 2/3, math 0/2
    assert summary["n"] == 5 and summary["accuracy"] == 2 / 5
    assert summary["per_category"] == {"coarse perception": 2 / 3, "math": 0.0}
    assert skips(tmp_path / "out", "mmstar") == {"4": "cell_invalid: 'category' is null, expected text"}
    assert len(predictions(tmp_path / "out", "mmstar")) == 6


def test_null_cells_in_blink_are_recorded_skips(tmp_path):
    rows = [DEPTH_ROWS[0], {**DEPTH_ROWS[1], "choices": None}, {**DEPTH_ROWS[2], "prompt": None}, *DEPTH_ROWS[3:]]
    root = write_blink(tmp_path / "BLINK", {"Relative_Depth": rows}, with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:Relative_Depth", root, tmp_path / "out")
    # A · · A B → 2 of 3
    assert summary["n"] == 3 and summary["accuracy"] == 2 / 3 and summary["skipped_by_reason"] == {"cell_invalid": 2}
    assert skips(tmp_path / "out", "blink:Relative_Depth") == {
        "val_Relative_Depth_2": "cell_invalid: 'choices' is null, expected a list of option texts",
        "val_Relative_Depth_3": "cell_invalid: 'prompt' is null, expected text"}


def test_null_cells_and_bad_lines_in_vstar_are_recorded_skips(tmp_path):
    # text null (row 1), category null (row 4), question_id null (row 6), a JSON list, a torn line
    root = write_vstar(tmp_path / "vstar_bench", cells={1: {"text": None}, 4: {"category": None},
                                                        6: {"question_id": None}},
                       raw_lines=('["direct_attributes/sa_4690.jpg", "a list"]', '{"image": "x.jpg", "te'))
    summary = run_eval(ConstantModel("A"), "vstar", root, tmp_path / "out")
    # direct_attributes 0 (A) and 3 (C) scored → 1 of 2
    assert summary["n"] == 2 and summary["accuracy"] == 1 / 2
    assert summary["skipped_by_reason"] == {"cell_invalid": 3, "row_invalid": 2}
    expected = {"4": "cell_invalid: 'category' is null, expected text",
                "line 8": "row_invalid: line 8 is a list, not an object",
                "line 9": "row_invalid: line 9 is not valid JSON (Unterminated string starting at)"}
    assert skips(tmp_path / "out", "vstar") == {**expected, "1": "cell_invalid: 'text' is null, expected text",
                                                "line 7": "cell_invalid: 'question_id' is null, expected an id"}
    # the lines whose category is unknown are skipped in the other category's run too, never lost unseen
    summary = run_eval(ConstantModel("A"), "vstar:relative_position", root, tmp_path / "out")
    assert summary["n"] == 2 and summary["accuracy"] == 1.0
    assert skips(tmp_path / "out", "vstar:relative_position") == expected


def test_bad_cells_in_mmvp_are_recorded_skips(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    lines = (root / "Questions.csv").read_text().splitlines()
    lines[3] = "3,Is the dog facing left or right?"  # a short row: Options and Correct Answer missing
    lines[5] = "five," + lines[5].split(",", 1)[1]
    lines[7] = "7,Are there any words on the sign?,(a) Yes,(b)"  # one option only
    (root / "Questions.csv").write_text("\n".join(lines) + "\n")
    summary = run_eval(ConstantModel("A"), "mmvp", root, tmp_path / "out")
    # 1 2 4 6 8 scored, truths a b a a a → 4 of 5; pairs: only (1,2) complete, and wrong
    assert summary["n"] == 5 and summary["accuracy"] == 4 / 5 and summary["pairs"] == 1
    assert skips(tmp_path / "out", "mmvp") == {
        "3": "cell_invalid: 'Options' is null, expected text",
        "five": "cell_invalid: 'lndex' is 'five', expected a number",
        "7": "cell_invalid: cannot read options '(a) Yes': expected '(a) … (b) …'"}


def test_image_paths_outside_the_benchmark_folder_are_recorded_skips(tmp_path):
    secret = tmp_path / "secret.png"  # a readable image outside every benchmark folder
    Image.new("RGB", (64, 48), (1, 2, 3)).save(secret)
    vroot = write_vstar(tmp_path / "vstar_bench", cells={0: {"image": "../secret.png"}, 1: {"image": str(secret)},
                                                         3: {"image": "direct_attributes/link.png"}})
    (vroot / "direct_attributes" / "link.png").symlink_to(secret)  # followed, and outside too
    model = CannedModel({str(i): "A" for i in range(7)})
    summary = run_eval(model, "vstar", vroot, tmp_path / "out")
    assert model.asked == ["4", "6"] and summary["skipped_by_reason"] == {"path_outside_root": 3}
    assert all(str(secret.parent.resolve()) not in r.get("prompt", "") for r in predictions(tmp_path / "out", "vstar"))
    assert "'../secret.png' is not under the image root" in skips(tmp_path / "out", "vstar")["0"]

    broot = write_blink(tmp_path / "BLINK", {"Relative_Depth": [
        DEPTH_ROWS[0], {**DEPTH_ROWS[1], "images": {1: {"bytes": None, "path": str(secret)}}},
        {**DEPTH_ROWS[2], "images": {1: {"bytes": None, "path": "../../secret.png"}}}]}, with_test=False)
    summary = run_eval(ConstantModel("A"), "blink:Relative_Depth", broot, tmp_path / "out")
    assert summary["n"] == 1 and summary["skipped_by_reason"] == {"path_outside_root": 2}

    mroot = write_mmstar(tmp_path / "MMStar", images={2: {"bytes": None, "path": "../secret.png"}})
    summary = run_eval(ConstantModel("A"), "mmstar", mroot, tmp_path / "out")
    assert summary["n"] == 5 and summary["skipped_by_reason"] == {"path_outside_root": 1}

    # the file mended, a rerun decides those skips again and scores only them
    write_vstar(vroot)
    again = CannedModel({str(i): "A" for i in range(7)})
    summary = run_eval(again, "vstar", vroot, tmp_path / "out")
    assert again.asked == ["0", "1", "3"] and summary["n"] == 5 and summary["skipped"] == 0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above its limit; we refuse
def test_image_failures_are_recorded_skips_and_the_run_goes_on(tmp_path, monkeypatch):
    root = write_mmvp(tmp_path / "MMVP")
    # 30000² is over PIL's own bomb limit (raised while opening), 10000² over ours (checked before decoding);
    # each file holds 16 bytes of pixels, so decoding either would fail as truncated instead
    (root / "MMVP Images" / "3.jpg").write_bytes(png_claiming((30000, 30000)))
    (root / "MMVP Images" / "5.jpg").write_bytes(png_claiming((10000, 10000)))
    model = CannedModel({str(n): "A" for n in range(1, 9)})
    summary = run_eval(model, "mmvp", root, tmp_path / "out")
    assert model.asked == ["1", "2", "4", "6", "7", "8"] and summary["n"] == 6
    reasons = skips(tmp_path / "out", "mmvp")
    assert set(reasons) == {"3", "5"} and all(r.startswith("image_too_large: ") for r in reasons.values())
    assert "900000000 pixels" in reasons["3"] and "10000x10000 exceeds 89478485 pixels" in reasons["5"]

    vroot = write_vstar(tmp_path / "vstar_bench", cells={0: {"image": "direct_attributes/loop.png"},
                                                         1: {"image": "direct_attributes/" + "x" * 300 + ".jpg"},
                                                         4: {"image": "direct_attributes/a\x00b.jpg"}})
    (vroot / "direct_attributes" / "loop.png").symlink_to("loop.png")
    # any other error while decoding one image (PIL's plugins raise EOFError, struct.error, …)
    real_open = items_module.open_rgb

    def open_rgb(source, limits=None):
        if "sa_4692" in str(source):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real_open(source, limits)

    monkeypatch.setattr(items_module, "open_rgb", open_rgb)
    summary = run_eval(ConstantModel("A"), "vstar", vroot, tmp_path / "out")
    assert summary["n"] == 1 and summary["skipped_by_reason"] == {"image_unreadable": 4}
    reasons = skips(tmp_path / "out", "vstar")
    assert "Symlink loop" in reasons["0"] and "File name too long" in reasons["1"]
    assert "embedded null byte" in reasons["4"]
    assert reasons["3"].endswith("sa_4692.jpg: error: unpack requires a buffer of 4 bytes")


def test_a_bom_is_dropped_by_every_reader(tmp_path):
    # MMVP's in test_mmvp_loader; V* refused it (JSONDecodeError on line 1) while MMVP accepted it
    plain = load("vstar", write_vstar(tmp_path / "plain"))
    with_bom = load("vstar", write_vstar(tmp_path / "bom", bom=True))
    assert [it.id for it in with_bom] == [it.id for it in plain] == ["0", "1", "3", "4", "6"]
    assert all(it.invalid is None for it in with_bom)


# ----------------------------------------------------------------------------------------------- resume

def test_resume_continues_without_duplicates(tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    out = tmp_path / "out"
    first = CannedModel({str(n): "A" for n in range(1, 9)}, name="constant:A")
    summary = run_eval(first, "mmvp", root, out, max_samples=3)
    # a b b → 1 of 3; the pair (1,2) is complete and wrong, (3,) is not → pair accuracy 0/1
    assert summary["n"] == 3 and summary["accuracy"] == 1 / 3 and summary["pairs"] == 1
    assert [r["id"] for r in predictions(out, "mmvp")] == ["1", "2", "3"]

    path = out / "mmvp" / "predictions.jsonl"
    with open(path, "a") as f:
        f.write('{"id": "x", "pro')  # a crash mid-line
    second = CannedModel({str(n): "A" for n in range(1, 9)}, name="constant:A")
    summary = run_eval(second, "mmvp", root, out)
    assert second.asked == ["4", "5", "6", "7", "8"]  # only the rest
    ids = [r["id"] for r in predictions(out, "mmvp")]
    assert sorted(ids, key=int) == [str(n) for n in range(1, 9)] and len(ids) == 8
    assert path.read_text().endswith("\n")
    assert summary["n"] == 8 and summary["accuracy"] == 5 / 8 and summary["pair_accuracy"] == 1 / 4

    # torn line after a complete run: dropped, nothing rescored, same summary
    with open(path, "a") as f:
        f.write('{"id": "x", "pro')
    third = CannedModel({}, name="constant:A")
    summary = run_eval(third, "mmvp", root, out)
    assert third.asked == [] and summary["n"] == 8 and summary["accuracy"] == 5 / 8
    assert [r["id"] for r in predictions(out, "mmvp")] == ids  # every line is JSON again; no "x"

    with pytest.raises(ValueError, match="different settings"):
        run_eval(ConstantModel("B"), "mmvp", root, out)
    assert len(predictions(out, "mmvp")) == 8


def test_constant_model_resume_matches_a_single_run(tmp_path):
    root = write_mmstar(tmp_path / "MMStar")
    once = run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "once")
    run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "twice", max_samples=3)
    twice = run_eval(ConstantModel("A"), "mmstar", root, tmp_path / "twice")
    for key in ("n", "correct", "accuracy", "per_category", "per_l2_category", "skipped"):
        assert once[key] == twice[key]
    assert predictions(tmp_path / "once", "mmstar") == predictions(tmp_path / "twice", "mmstar")


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_single_benchmarks(tmp_path, capsys):
    mmvp = write_mmvp(tmp_path / "MMVP")
    out = tmp_path / "out"
    assert main(["eval", "--model", "constant:A", "--benchmark", "mmvp", "--data-root", str(mmvp),
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == 5 / 8 and "settings" not in printed
    assert len((out / "mmvp" / "predictions.jsonl").read_text().splitlines()) == 8
    assert json.loads((out / "mmvp" / "summary.json").read_text())["accuracy"] == 5 / 8

    blink = write_blink(tmp_path / "BLINK")
    assert main(["eval", "--model", "constant:a", "--benchmark", "blink:Relative_Depth", "--data-root", str(blink),
                 "--out", str(out)]) == 0
    assert json.loads((out / "blink_Relative_Depth" / "summary.json").read_text())["accuracy"] == 3 / 5
    assert (out / "blink_Relative_Depth" / "predictions.jsonl").is_file()


def test_cli_errors_exit_2(tmp_path, capsys):
    mmvp = write_mmvp(tmp_path / "MMVP")
    base = ["eval", "--model", "constant:A", "--data-root", str(mmvp), "--out", str(tmp_path / "out")]
    assert main([*base, "--benchmark", "mmbench"]) == 2
    assert "unknown benchmark 'mmbench'" in capsys.readouterr().err
    assert main([*base, "--benchmark", "mmstar"]) == 2  # no mmstar.parquet in MMVP/
    assert "mmstar.parquet" in capsys.readouterr().err
    assert main([*base]) == 2  # neither --benchmark nor --suite
    assert main([*base, "--benchmark", "mmvp", "--suite", "paper"]) == 2
    assert main(["eval", "--model", "constant:AB", "--benchmark", "mmvp", "--data-root", str(mmvp),
                 "--out", str(tmp_path / "out")]) == 2
    with pytest.raises(ValueError, match="one letter"):
        load_eval_model("constant:7")
    for flag, value in (("--max-samples", "-1"), ("--batch-size", "0"), ("--min-pixels", "-5")):
        with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, before any work
            main([*base, "--benchmark", "mmvp", flag, value])
        assert exit_.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
    for kwargs in ({"max_samples": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be"):
            run_eval(load_eval_model("constant:A"), "mmvp", mmvp, tmp_path / "out", **kwargs)


def test_cli_paper_suite(tmp_path, capsys):
    root = write_paper_root(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["eval", "--model", "constant:A", "--suite", "paper", "--data-root", str(root),
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == "| Model | MMVP | V* Attr. | Rel. Depth | IQ-Test | Rel. Ref. | Spatial | MMStar |"
    assert lines[-2] == "|---|---|---|---|---|---|---|---|"
    # MMVP 5/8, V* 2/5, Rel. Depth 3/5, IQ 2/4, Rel. Ref. 1/3, Spatial 3/4, MMStar 3/6, with Wilson intervals
    # (5/8: (5 + 1.92) / 11.84 ± 1.96 √(1.875 + 0.96) / 11.84 = [30.6, 86.3])
    assert lines[-1] == ("| constant:A | 62.5 [30.6, 86.3] | 40.0 [11.8, 76.9] | 60.0 [23.1, 88.2] | 50.0 [15.0, 85.0] "
                         "| 33.3 [6.1, 79.2] | 75.0 [30.1, 95.4] | 50.0 [18.8, 81.2] |")
    result = json.loads((out / "suite_paper.json").read_text())
    assert result["score"]["Rel. Ref."] == 1 / 3 and result["model"] == "constant:A" and result["protocol"] == "lavit"
    for name in ("mmvp", "vstar", "blink_Relative_Depth", "blink_IQ_Test", "blink_Relative_Reflectance",
                 "blink_Spatial_Relation", "mmstar"):
        assert (out / name / "summary.json").is_file()
    ids = [r["id"] for r in predictions(out, "blink:Spatial_Relation")]
    assert ids == [f"val_Spatial_Relation_{i}" for i in range(1, 5)]

    assert main(["eval", "--model", "constant:B", "--suite", "paper", "--label", "B baseline", "--data-root",
                 str(root), "--out", str(tmp_path / "out_b")]) == 0
    # B shares: MMVP 3/8, V* 1/5, Depth 2/5, IQ 0/4, Ref 1/3, Spatial 1/4, MMStar 1/6
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        ("| B baseline | 37.5 [13.7, 69.4] | 20.0 [3.6, 62.4] | 40.0 [11.8, 76.9] | 0.0 [0.0, 49.0] | 33.3 [6.1, 79.2] "
         "| 25.0 [4.6, 69.9] | 16.7 [3.0, 56.4] |")


def test_missing_mmvp_images_folder_is_an_error_and_the_suite_checks_every_folder_first(tmp_path, capsys):
    import shutil

    root = write_mmvp(tmp_path / "MMVP")
    shutil.rmtree(root / "MMVP Images")
    with pytest.raises(FileNotFoundError, match="no folder 'MMVP Images' beside"):
        load("mmvp", root)  # before: 8 skips, n = 0, accuracy null, exit 0
    paper = write_paper_root(tmp_path / "data")
    shutil.rmtree(paper / "BLINK" / "Spatial_Relation")
    shutil.rmtree(paper / "MMVP" / "MMVP Images")
    assert main(["eval", "--model", "constant:A", "--suite", "paper", "--data-root", str(paper), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MMVP Images" in err and "Spatial_Relation/val-*.parquet" in err
    assert not (tmp_path / "out").exists()  # nothing ran before the check
