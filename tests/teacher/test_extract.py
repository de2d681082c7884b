"""`lavit extract` end to end on the tiny teacher: rows, rejections, resume, shards."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lavit.cli import main
from lavit.data.fingerprints import file_fingerprint
from lavit.data.samples import ImageLimits, Sample, read_jsonl_samples, sample_fingerprint
from lavit.data.signal_store import SCHEMA_VERSION, read_store, shard_files, write_manifest
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import (
    TeacherSignals,
    process_group,
    rank_gpus,
    read_answer_journals,
    run_extract,
    teacher_placement,
)
from lavit.toyworld.shapes import make_scene

BAD = {  # id -> expected rejection reason
    "missing": "image_missing",
    "corrupt": "image_corrupt",
    "dot": "image_too_small",
    "huge": "image_too_large",
    "outside": "box_outside_image",
    "flat": "box_degenerate",
    "noq": "question_empty",
    "noa": "answer_missing",
    "escape": "path_outside_root",
    "absolute": "path_outside_root",
}


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (PIL reads the size, and runs its bomb check, on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


def write_samples(root: Path, n_good: int, bad: bool = True, seed: int = 0) -> Path:
    """`n_good` toy scenes (plus grayscale, RGBA and 16-bit variants) and, optionally, one sample per bad input."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_good):
        scene = make_scene(rng)
        image = scene.image
        if i % 4 == 1:
            image = image.convert("L")
        elif i % 4 == 2:
            image = image.convert("RGBA")
        elif i % 4 == 3:
            image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
        image.save(images / f"g{i}.png")
        records.append({"id": f"g{i}", "image": f"g{i}.png", "question": f"what color is the {scene.shape} ?",
                        "answer": scene.color, "bbox": list(scene.bbox), "source": "toy"})
    if bad:
        (images / "corrupt.png").write_bytes(b"not an image at all")
        Image.new("RGB", (1, 1)).save(images / "dot.png")
        Image.new("RGB", (700, 700)).save(images / "huge.png")
        Image.new("RGB", (112, 84)).save(images / "ok.png")
        base = {"question": "what color is the circle ?", "answer": "red", "image": "ok.png"}
        records += [
            {**base, "id": "missing", "image": "absent.png"},
            {**base, "id": "corrupt", "image": "corrupt.png"},
            {**base, "id": "dot", "image": "dot.png"},
            {**base, "id": "huge", "image": "huge.png"},
            {**base, "id": "outside", "bbox": [50, 50, 200, 80]},
            {**base, "id": "flat", "bbox": [50, 50, 50, 80]},
            {**base, "id": "noq", "question": ""},
            {**base, "id": "noa", "answer": None},
            {**base, "id": "escape", "image": "../samples.jsonl"},  # an existing file, but outside the root
            {**base, "id": "absolute", "image": str((images / "ok.png").resolve())},
        ]
        rng.shuffle(records)
    path = root / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config(root: Path, out: str = "out", **kw) -> ExtractConfig:
    values = dict(samples=str(root / "samples.jsonl"), image_root=str(root / "images"), out=str(root / out),
                  teacher="tiny-teacher", batch_size=3, rows_per_file=3, max_new_tokens=4, max_image_pixels=400 * 400)
    values.update(kw)
    return ExtractConfig(**values)


def test_extract_rows_and_rejections(tmp_path):
    write_samples(tmp_path, 8)
    result = run_extract(config(tmp_path))
    rows = {r["id"]: r for r in read_store(tmp_path / "out").to_pylist()}
    assert len(rows) == 8 + len(BAD) and result["store_counts"]["ok"] == 8
    assert result["store_counts"]["rejected"] == len(BAD)
    for sample_id, expected in BAD.items():
        row = rows[sample_id]
        assert row["status"] == "rejected" and row["reject_reason"].split(":")[0] == expected, row
        assert row["a_traj"] is None and row["v_sem"] is None and row["s_focus"] is None  # never zero-filled
    for i in range(8):  # RGB, grayscale, RGBA and 16-bit images all give real signals
        row = rows[f"g{i}"]
        assert row["status"] == "ok" and row["teacher_answer"]
        a = np.asarray(row["a_traj"])
        assert a.size == np.prod(row["a_traj_grid"]) and np.isfinite(a).all() and a.min() > 0
        assert 0 < a.sum() < 1  # raw aggregate: attention also goes to text tokens
        assert len(row["v_sem"]) == 192 and np.isfinite(row["v_sem"]).all()
        assert 0.0 <= row["s_focus"] <= 1.0
        assert row["image_size"] == list(Image.open(tmp_path / "images" / row["image"]).size)
    assert pq.read_schema(shard_files(tmp_path / "out")[0]).field("v_sem").type.value_type.bit_width == 16
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["layers"] == "all" and manifest["counts"]["rejected_by_reason"]["image_missing"] == 1


# Inputs that each stopped a whole run (the trial's exception in the comment), and their rejection now.
ONE_BAD_SAMPLE = {
    "question_number": ({"question": 5}, "field_not_text"),  # ArrowTypeError when the shard was written
    "source_object": ({"source": {"name": "toy"}}, "field_not_text"),  # ArrowTypeError
    "surrogate": ({"question": "what color is the \ud800 ?"}, "field_not_text"),  # UnicodeEncodeError
    "symlink_loop": ({"image": "loop_a.png"}, "image_unreadable"),  # RuntimeError
    "long_name": ({"image": "x" * 300 + ".png"}, "image_unreadable"),  # OSError [Errno 36]
    "bomb": ({"image": "bomb.png"}, "image_too_large"),  # DecompressionBombError
    "image_pad": ({"question": "what color is the <|image_pad|> ?"}, "special_token_in_text"),  # exit 2, no id
    "vision_start": ({"question": "<|vision_start|> what color ?"}, "special_token_in_text"),
    "novel": ({"question": "what color is the circle ? " * 3846}, "text_too_long"),  # 100 000 characters: 10 GB
}


def test_one_bad_sample_is_its_own_rejection_and_its_batch_goes_on(tmp_path):
    write_samples(tmp_path, 9, bad=False)
    images = tmp_path / "images"
    (images / "loop_a.png").symlink_to(images / "loop_b.png")
    (images / "loop_b.png").symlink_to(images / "loop_a.png")
    (images / "bomb.png").write_bytes(png_header(30000, 30000))
    Image.new("RGB", (112, 84)).save(images / "ok.png")
    good = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    base = {"image": "ok.png", "question": "what color is the circle ?", "answer": "red"}
    bad = [{**base, **fields, "id": sample_id} for sample_id, (fields, _) in ONE_BAD_SAMPLE.items()]
    # each batch of 3: a bad sample between good ones
    records = [r for pair in zip(good, bad) for r in pair] + good[len(bad):]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len("what color is the circle ? " * 3846) > 100_000

    result = run_extract(config(tmp_path))
    rows = {r["id"]: r for r in stored(tmp_path / "out")}
    assert len(rows) == len(records) and result["store_counts"]["ok"] == len(good)
    for sample_id, (_, expected) in ONE_BAD_SAMPLE.items():
        row = rows[sample_id]
        assert row["status"] == "rejected" and row["reject_reason"].split(":")[0] == expected, row
        assert row["teacher_answer"] is None and row["a_traj"] is None
    assert rows["question_number"]["question"] is None and rows["source_object"]["source"] is None  # not storable
    assert "'<|image_pad|>'" in rows["image_pad"]["reject_reason"]
    assert all(rows[r["id"]]["status"] == "ok" for r in good)  # including every bad sample's batch mates
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["max_text_tokens"] == 1024 and manifest["counts"]["rejected"] == len(bad)
    rerun = run_extract(config(tmp_path))  # the rejections are stored rows: nothing is tried again
    assert rerun["processed_this_run"] == 0 and rerun["skipped_already_stored"] == len(records)


def test_manifest_records_the_pixel_limits_in_force(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    # 0 = the processor's default: the tiny teacher's 4 to 64 merged tokens of 28 x 28 pixels
    run_extract(config(tmp_path, "default"))
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert manifest["settings"]["max_pixels"] == 0 and manifest["pixel_limits"] == {"min_pixels": 3136,
                                                                                   "max_pixels": 50176}
    limits = {"min_pixels": 16 * 784, "max_pixels": 20 * 784}
    run_extract(config(tmp_path, "explicit", **limits))
    assert json.loads((tmp_path / "explicit" / "manifest.json").read_text())["pixel_limits"] == limits
    for row in read_store(tmp_path / "explicit").to_pylist():  # the stored grids follow them
        assert 16 <= np.prod(row["a_traj_grid"]) <= 20
    # a resume whose processor resizes differently is refused (here: a store edited to claim other limits)
    path = tmp_path / "explicit" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pixel_limits": {"min_pixels": 1, "max_pixels": 2}}))
    shard_files(tmp_path / "explicit")[0].unlink()  # leave work to do, so the teacher loads
    with pytest.raises(ValueError, match="pixel limits"):
        run_extract(config(tmp_path, "explicit", **limits))


def test_nonfinite_signals_and_empty_answers_are_rejected(tmp_path):
    class NaNTeacher:
        def answers(self, images, questions):
            return ["red"] * len(images)

        def signals(self, ids, images, questions, answers):
            return [TeacherSignals(np.array([0.5, np.nan, 0.1, 0.1], np.float32), (1, 2, 2),
                                   np.zeros(4, np.float16)) for _ in ids]

    class SilentTeacher(NaNTeacher):
        def answers(self, images, questions):
            return ["  "] * len(images)

    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    rows = process_group(NaNTeacher(), [(0, Sample("a", "a.png", "q ?", "red"))], tmp_path, ImageLimits())
    assert rows[0]["status"] == "rejected" and rows[0]["reject_reason"].startswith("teacher_signal_nonfinite")
    assert rows[0]["a_traj"] is None
    rows = process_group(SilentTeacher(), [(0, Sample("a", "a.png", "q ?", "red"))], tmp_path, ImageLimits())
    assert rows[0]["reject_reason"] == "teacher_answer_empty" and rows[0]["v_sem"] is None


def stored(out: Path) -> list[dict]:
    return read_store(out).to_pylist()


def test_resume_and_shards_equal_one_uninterrupted_run(tmp_path):
    write_samples(tmp_path, 10, bad=True)
    run_extract(config(tmp_path, "full"))
    full = stored(tmp_path / "full")
    # first 7 samples (rounded up to whole groups of 3: 9), with a half-written shard of this worker left
    # behind and another worker's temporary file in flight
    run_extract(config(tmp_path, "resumed", max_samples=7))
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["num_input_samples"] == 9
    shards = tmp_path / "resumed" / "data"
    (shards / ".signals-w000of001-00099.parquet.0123456789ab.tmp").write_bytes(b"half a shard")
    (shards / ".signals-w001of002-00003.parquet.0123456789ab.tmp").write_bytes(b"another worker's shard")
    result = run_extract(config(tmp_path, "resumed"))
    assert result["skipped_already_stored"] == 9
    assert [p.name for p in shards.glob("*.tmp")] == [".signals-w001of002-00003.parquet.0123456789ab.tmp"]
    (shards / ".signals-w001of002-00003.parquet.0123456789ab.tmp").unlink()
    assert stored(tmp_path / "resumed") == full
    # a later run over fewer samples keeps the store's input count: it covers the larger run's
    run_extract(config(tmp_path, "resumed", max_samples=3))
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["num_input_samples"] == len(full) == manifest["counts"]["rows"]
    # two data-parallel workers into one store
    for i in range(2):
        run_extract(config(tmp_path, "sharded", shard=f"{i}/2"))
    assert stored(tmp_path / "sharded") == full
    assert {p.name.split("-")[1] for p in shard_files(tmp_path / "sharded")} == {"w000of002", "w001of002"}


def test_resume_refuses_changed_settings(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    run_extract(config(tmp_path))
    with pytest.raises(ValueError, match="different settings \\(layers: 'all' there, 'last:1' here\\)"):
        run_extract(config(tmp_path, layers="last:1"))


def test_resume_accepts_the_same_inputs_spelled_relative_or_absolute(tmp_path, monkeypatch):
    write_samples(tmp_path, 2, bad=False)
    first = run_extract(config(tmp_path))
    monkeypatch.chdir(tmp_path)
    relative = config(tmp_path)
    relative.samples, relative.image_root = os.path.relpath(relative.samples), os.path.relpath(relative.image_root)
    assert run_extract(relative)["store_counts"] == first["store_counts"]  # resumed: nothing new to do


def test_an_output_folder_holding_something_else_is_refused(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    (tmp_path / "sft").mkdir()
    write_manifest({"schema_version": SCHEMA_VERSION, "kind": "lavit_sft", "teacher": "t"}, tmp_path / "sft")
    with pytest.raises(ValueError, match="holds a 'lavit_sft' store, not teacher signals"):  # a KeyError before
        run_extract(config(tmp_path, "sft"))
    # a wrong image root would store every sample as 'image_missing', and a rerun would skip them all
    with pytest.raises(NotADirectoryError, match="image_root .*nowhere is not a directory"):
        run_extract(config(tmp_path, "new", image_root=str(tmp_path / "nowhere")))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name, content, found", [
    ("samples.jsonl", "", r"it is empty \(0 bytes\)"),
    ("samples.jsonl", "\n\n   \n", r"only blank lines \(3 lines, 6 bytes\)"),
    ("viscot.json", "[]", "its JSON list has no record"),
])
def test_a_samples_file_without_a_sample_is_refused_before_a_store_is_created(tmp_path, capsys, name, content, found):
    # it used to exit 0 with an empty store
    (tmp_path / "images").mkdir()
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=f"samples file .*{name} holds no sample: {found}; nothing to extract"):
        run_extract(config(tmp_path, samples=str(tmp_path / name)))
    assert main(["extract", f"samples={tmp_path / name}", f"image_root={tmp_path / 'images'}",
                 f"out={tmp_path / 'out'}", "teacher=tiny-teacher"]) == 2
    assert "holds no sample" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_out_that_is_holds_or_lies_inside_an_input_is_refused_before_the_store_is_created(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    (tmp_path / "images" / "coco").mkdir()
    (tmp_path / "images" / "coco" / "1.png").write_bytes(b"an image the samples do not name")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, relation, name in ((tmp_path / "images", "is", "image_root"),
                                (tmp_path / "images" / "coco", "lies inside", "image_root"),  # it holds files
                                (tmp_path, "contains", "samples"),
                                (tmp_path / "samples.jsonl" / "x", "lies inside", "samples")):
        with pytest.raises(ValueError, match=f"out {out} {relation} the input {name} "):
            run_extract(config(tmp_path, out=str(out)))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # a new folder under the image root (often the working directory) harms no image
    run_extract(config(tmp_path, out=str(tmp_path / "images" / "signals")))
    assert (tmp_path / "images" / "coco" / "1.png").is_file()


@pytest.mark.parametrize("override", ["max_samples=-3", "batch_size=0", "rows_per_file=0", "max_new_tokens=0",
                                      "min_image_side=0", "max_image_pixels=0", "max_text_tokens=0"])
def test_counts_and_sizes_are_checked_before_work(override):
    from lavit.config import load_config

    key = override.split("=")[0]
    with pytest.raises(ValueError, match=key):
        load_config(ExtractConfig, None, ["samples=s.jsonl", override])
    with pytest.raises(ValueError, match=key):  # the Python API too: max_samples=-3 used to drop the last batch
        ExtractConfig(samples="s.jsonl", **{key: int(override.split("=")[1])})


def test_cli_extract(tmp_path, capsys):
    write_samples(tmp_path, 2, bad=False)
    args = [f"samples={tmp_path / 'samples.jsonl'}", f"image_root={tmp_path / 'images'}", f"out={tmp_path / 'o'}",
            "teacher=tiny-teacher", "max_new_tokens=3"]
    assert main(["extract", *args, "--shard", "0/1"]) == 0
    assert json.loads(capsys.readouterr().out)["store_counts"]["ok"] == 2
    assert main(["extract", f"samples={tmp_path / 'absent.jsonl'}", "teacher=tiny-teacher"]) == 2
    assert main(["extract", *args, "--shard", "3/2"]) == 2


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_equals_uninterrupted(tmp_path):
    write_samples(tmp_path, 16, bad=True)
    reference = tmp_path / "reference"
    run_extract(config(tmp_path, "reference", batch_size=2, rows_per_file=2))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lavit.cli", "extract", f"samples={tmp_path / 'samples.jsonl'}",
           f"image_root={tmp_path / 'images'}", f"out={out}", "teacher=tiny-teacher", "batch_size=2",
           "rows_per_file=2", "max_new_tokens=4", "max_image_pixels=160000"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    kills = locks_left = 0
    for wait_for_shards in (0, 1, 4, 7):  # 0: killed while starting up, before any shard exists
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(shard_files(out)) >= wait_for_shards and (wait_for_shards or time.time() > deadline - 118):
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        locks_left += (out / ".writer-signals-w000of001.lock").exists()
    assert kills >= 3 and locks_left  # a killed writer leaves its shard prefix's lock ...
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "cleared a stale lock" in finished.stderr and not list(out.glob(".*.lock"))  # ... which the rerun clears
    assert stored(out) == stored(reference)
    ids = [r["id"] for r in stored(out)]
    assert len(ids) == len(set(ids)) == 16 + len(BAD)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[2] / "recipes").glob("extract_*.yaml")))
def test_extract_recipes_load(recipe):
    from lavit.config import load_config

    cfg = load_config(ExtractConfig, str(recipe), ["samples=s.jsonl"])
    assert cfg.teacher.startswith("Qwen/") and cfg.dtype == "bfloat16" and cfg.layers == "all"
    assert (cfg.min_pixels, cfg.max_pixels) == (200704, 1003520)  # Table A1's, the student's


def edit_sample(root: Path, sample_id: str, **fields) -> None:
    """Rewrite the samples file with `fields` changed in one record."""
    path = root / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, **fields} if r["id"] == sample_id else r) + "\n" for r in records))


def test_a_changed_sample_is_refused_until_told_to_extract_it_again(tmp_path):
    write_samples(tmp_path, 5, bad=False)
    run_extract(config(tmp_path))
    before = {r["id"]: r for r in stored(tmp_path / "out")}
    samples = read_jsonl_samples(tmp_path / "samples.jsonl")
    assert all(before[s.id]["sample_sha256"] == sample_fingerprint(s) for s in samples)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples_fingerprint"] == file_fingerprint(tmp_path / "samples.jsonl")

    edit_sample(tmp_path, "g1", question="what shape is red ?")
    # the old code skipped g1 as stored, keeping the teacher's answer to the old question
    with pytest.raises(ValueError, match=r"1 samples of .*samples.jsonl changed .*: g1\. .*changed_samples=reextract"):
        run_extract(config(tmp_path))
    assert {r["id"]: r for r in stored(tmp_path / "out")} == before  # refused before anything was written

    result = run_extract(config(tmp_path, changed_samples="reextract"))
    assert result["changed_samples_reextracted"] == ["g1"] and result["processed_this_run"] == 1
    after = {r["id"]: r for r in stored(tmp_path / "out")}
    assert {k: v for k, v in after.items() if k != "g1"} == {k: v for k, v in before.items() if k != "g1"}
    assert after["g1"]["question"] == "what shape is red ?" and after["g1"]["index"] == 1
    assert after["g1"]["sample_sha256"] == sample_fingerprint(read_jsonl_samples(tmp_path / "samples.jsonl")[1])
    # what a fresh extraction of the edited file stores for it (in a batch of 1 here, of 3 there)
    run_extract(config(tmp_path, "fresh"))
    fresh = {r["id"]: r for r in stored(tmp_path / "fresh")}["g1"]
    assert after["g1"]["teacher_answer"] == fresh["teacher_answer"]
    assert after["g1"]["a_traj"] == pytest.approx(fresh["a_traj"], rel=1e-4, abs=1e-6)
    # a box or a source is a change too; an unchanged file resumes as before
    assert run_extract(config(tmp_path))["processed_this_run"] == 0
    edit_sample(tmp_path, "g3", bbox=[1, 1, 20, 20], source="other")
    with pytest.raises(ValueError, match=r": g3\."):
        run_extract(config(tmp_path))


def test_rows_stored_before_the_fingerprint_column_load_and_are_reported_unchecked(tmp_path):
    write_samples(tmp_path, 5, bad=False)
    run_extract(config(tmp_path))
    shards = shard_files(tmp_path / "out")
    for path in shards:  # a store written before the column existed
        pq.write_table(pq.read_table(path).drop_columns(["sample_sha256"]), path, compression="zstd")
    shards[-1].unlink()  # leave work, so that a rerun adds a shard with the column beside the old ones
    edit_sample(tmp_path, "g0", question="what shape is red ?")
    with pytest.warns(RuntimeWarning, match="3 stored rows were written before .* cannot be checked"):
        result = run_extract(config(tmp_path))
    assert result["rows_without_fingerprint"] == 3 and result["processed_this_run"] == 2
    rows = {r["id"]: r for r in stored(tmp_path / "out")}  # old and new shards read as one table
    assert [rows[f"g{i}"]["sample_sha256"] is None for i in range(5)] == [True] * 3 + [False] * 2


def test_a_journaled_answer_is_used_only_while_its_sample_is_unchanged(tmp_path):
    lines = [{"group": 0, "answers": {"0": "red", "1": "blue"}, "samples": {"0": "a", "1": "b", "2": "c"}},
             {"group": 1, "answers": {"3": "green"}, "samples": {"3": "d"}},
             {"group": 2, "answers": {"4": "old"}}]  # written before the journal recorded fingerprints
    (tmp_path / "teacher_answers-w000of001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    answers, groups = read_answer_journals(tmp_path, {0: "a", 1: "b", 2: "c", 3: "edited", 4: "e"})
    assert answers == {0: "red", 1: "blue", 4: "old"} and groups == {0, 2}  # group 1 is answered again


def test_a_journaled_vllm_answer_of_a_changed_sample_is_answered_again(tmp_path, monkeypatch):
    """engine=vllm on a stand-in for vLLM (the answer phase's journal is what is tested; the probe pass is real)."""
    from lavit.models.checkpoint import load_model_and_processor
    from lavit.teacher import extractor

    _, processor = load_model_and_processor("tiny-teacher")
    asked: list[str] = []

    class StandInVllm:
        def __init__(self, *args, **kwargs):
            self.processor = processor

        def generate(self, images, questions, **kwargs):
            asked.extend(questions)
            return [f"answer to {q}" for q in questions]

        def close(self):
            pass

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(extractor, "VllmEngine", StandInVllm)
    monkeypatch.setattr(extractor, "import_vllm", lambda: None)
    write_samples(tmp_path, 4, bad=False)  # groups of 3: [g0, g1, g2], [g3]
    signals = extractor.SignalExtractor.signals
    monkeypatch.setattr(extractor.SignalExtractor, "signals", killed)
    with pytest.raises(Killed):  # every answer journaled, the probe pass killed before it stored a row
        run_extract(config(tmp_path, engine="vllm"))
    assert len(asked) == 4 and not shard_files(tmp_path / "out")
    monkeypatch.setattr(extractor.SignalExtractor, "signals", signals)
    edit_sample(tmp_path, "g3", question="what shape is red ?")
    asked.clear()
    run_extract(config(tmp_path, engine="vllm"))
    assert asked == ["what shape is red ?"]  # only the changed sample's group is answered again
    rows = {r["id"]: r for r in stored(tmp_path / "out")}
    assert rows["g3"]["teacher_answer"] == "answer to what shape is red ?"
    assert rows["g0"]["teacher_answer"] == f"answer to {rows['g0']['question']}"


def cuda_env(world: int, local_rank: int, local_world: int | None) -> dict[str, str]:
    env = {"WORLD_SIZE": str(world), "RANK": str(local_rank), "LOCAL_RANK": str(local_rank)}
    return env if local_world is None else {**env, "LOCAL_WORLD_SIZE": str(local_world)}


def test_each_rank_gets_its_own_block_of_gpus():
    assert [rank_gpus(r, 2, 8) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [rank_gpus(r, 4, 8) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [rank_gpus(r, 8, 8) for r in range(8)] == [[r] for r in range(8)]
    assert rank_gpus(0, 1, 8) == list(range(8))
    for local_world, gpus in ((3, 8), (4, 6), (8, 4)):
        with pytest.raises(ValueError, match=f"{local_world} data-parallel ranks on this node cannot share its "
                                             f"{gpus} visible GPUs evenly: launch --nproc_per_node with one of"):
            rank_gpus(0, local_world, gpus)


def test_teacher_placement_per_rank():
    # the README's command on 8 GPUs with the recipe's device_map=auto: one GPU per rank, not 8 full copies each
    eight = [teacher_placement("auto", cuda_env(8, r, 8), 8) for r in range(8)]
    assert [(p.device_map, p.gpus, p.confined) for p in eight] == [("", [r], False) for r in range(8)]
    # 2 ranks × 4 GPUs: rank 1 splits the teacher over GPUs 4..7 only
    second = teacher_placement("auto", cuda_env(2, 1, 2), 8)
    assert (second.device_map, second.gpus, second.confined) == ("auto", [4, 5, 6, 7], True)
    assert "rank 1 splits the teacher over GPUs [4, 5, 6, 7]" in second.rule
    # two nodes of 4 GPUs, 1 rank per node: each rank has its whole node
    assert teacher_placement("auto", cuda_env(2, 0, 1), 4).confined is False
    # one plain process: device_map as given over every visible GPU; '' = its one GPU
    assert (teacher_placement("auto", {}, 8).gpus, teacher_placement("", {}, 8).gpus) == (list(range(8)), [0])
    # no CUDA: every rank loads onto the CPU, whatever the device_map
    for device_map in ("auto", "", "cpu"):
        cpu = teacher_placement(device_map, cuda_env(2, 1, 2), 0)
        assert (cpu.device_map, cpu.gpus, cpu.max_memory()) == ("", [], None) and "CPU" in cpu.rule
    assert teacher_placement("cpu", cuda_env(2, 1, 2), 8).device_map == "cpu"  # never moved to a GPU
    with pytest.raises(ValueError, match="cannot share its 6 visible GPUs evenly"):
        teacher_placement("auto", cuda_env(4, 0, 4), 6)
    with pytest.raises(ValueError, match="each of the 4 data-parallel ranks on this node on its own GPU, but 2"):
        teacher_placement("", cuda_env(4, 0, 4), 2)
    with pytest.raises(ValueError, match="without LOCAL_WORLD_SIZE"):
        teacher_placement("auto", cuda_env(2, 0, None), 8)
    with pytest.raises(ValueError, match="device_map must be one of"):
        ExtractConfig(samples="s.jsonl", device_map="cuda:1")


def test_a_ranks_split_stays_on_its_own_gpus(monkeypatch):
    from transformers.integrations.accelerate import _get_device_map

    from lavit.models.checkpoint import load_model_and_processor
    from lavit.teacher import extractor

    model, _ = load_model_and_processor("tiny-teacher")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (size, 2 * size))  # free, total bytes of GPU i
    placement = teacher_placement("auto", cuda_env(2, 1, 2), 4)  # rank 1 of 2 on a node of 4 GPUs
    assert placement.max_memory() == {2: size, 3: size}
    # the device map from_pretrained computes from it (no GPU needed to compute it) uses GPUs 2 and 3 only
    assert set(_get_device_map(model, "auto", placement.max_memory(), None).values()) == {2, 3}
    seen = {}
    monkeypatch.setattr(extractor, "load_model_and_processor", lambda name, **kw: seen.update(kw) or (model, None))
    extractor.load_teacher(ExtractConfig(samples="s.jsonl", device_map="auto"), placement)
    assert (seen["device_map"], seen["max_memory"]) == ("auto", {2: size, 3: size})


def test_a_placement_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    write_samples(tmp_path, 2, bad=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 6)
    for key, value in cuda_env(4, 0, 4).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="4 data-parallel ranks on this node cannot share its 6 visible GPUs"):
        run_extract(config(tmp_path, device_map="auto"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_readmes_torchrun_command_runs_one_worker_per_rank_on_cpu(tmp_path):
    """`torchrun --nproc_per_node N -m lavit.cli extract recipes/extract_qwen2_5_vl_32b.yaml ...` as the README
    writes it (the recipe's device_map: auto), on 2 CPU ranks: each loads the teacher onto the CPU and takes its
    batch groups, and the store holds every sample once."""
    write_samples(tmp_path, 6, bad=False)
    recipe = Path(__file__).parents[2] / "recipes" / "extract_qwen2_5_vl_32b.yaml"
    overrides = [f"samples={tmp_path / 'samples.jsonl'}", f"image_root={tmp_path / 'images'}", "teacher=tiny-teacher",
                 "dtype=float32", "batch_size=2", "max_new_tokens=4"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lavit.cli",
           "extract", str(recipe), *overrides, f"out={tmp_path / 'ranks'}"]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads((tmp_path / "ranks" / f"extract_results-w{r:03d}of002.json").read_text()) for r in range(2)]
    for result in results:
        assert result["placement"] == {"device_map": "", "gpus": [], "confined": False,
                                       "rule": "no CUDA device: the teacher loads onto the CPU"}
        assert result["settings"]["device_map"] == "auto"
    assert [r["processed_this_run"] for r in results] == [4, 2]  # groups of 2: rank 0 takes groups 0 and 2
    assert "no CUDA device: the teacher loads onto the CPU" in done.stderr
    assert {p.name.split("-")[1] for p in shard_files(tmp_path / "ranks")} == {"w000of002", "w001of002"}
    from lavit.config import load_config

    run_extract(load_config(ExtractConfig, str(recipe), [*overrides, f"out={tmp_path / 'one'}"]))
    one, ranks = stored(tmp_path / "one"), stored(tmp_path / "ranks")
    assert [(r["id"], r["status"], r["teacher_answer"]) for r in ranks] == [
        (r["id"], r["status"], r["teacher_answer"]) for r in one] and len(one) == 6
    for a, b in zip(ranks, one):
        assert a["a_traj"] == pytest.approx(b["a_traj"], rel=1e-4, abs=1e-7)
