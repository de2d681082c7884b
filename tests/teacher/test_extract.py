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
from PIL import Image

from lavit.cli import main
from lavit.data.samples import ImageLimits, Sample
from lavit.data.signal_store import SCHEMA_VERSION, read_store, shard_files, write_manifest
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import TeacherSignals, process_group, run_extract
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
