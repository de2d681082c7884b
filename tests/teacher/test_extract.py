"""`lavit extract` end to end on the tiny teacher: rows, rejections, resume, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavit.cli import main
from lavit.data.samples import ImageLimits, Sample
from lavit.data.signal_store import read_store, shard_files
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
    shards = tmp_path / "resumed" / "data"
    (shards / "signals-w000of001-00099.parquet.tmp").write_bytes(b"half a shard")
    (shards / "signals-w001of002-00003.parquet.tmp").write_bytes(b"another worker's shard")
    result = run_extract(config(tmp_path, "resumed"))
    assert result["skipped_already_stored"] == 9
    assert [p.name for p in shards.glob("*.tmp")] == ["signals-w001of002-00003.parquet.tmp"]
    (shards / "signals-w001of002-00003.parquet.tmp").unlink()
    assert stored(tmp_path / "resumed") == full
    # two data-parallel workers into one store
    for i in range(2):
        run_extract(config(tmp_path, "sharded", shard=f"{i}/2"))
    assert stored(tmp_path / "sharded") == full
    assert {p.name.split("-")[1] for p in shard_files(tmp_path / "sharded")} == {"w000of002", "w001of002"}


def test_resume_refuses_changed_settings(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    run_extract(config(tmp_path))
    with pytest.raises(ValueError, match="different settings.*layers"):
        run_extract(config(tmp_path, layers="last:1"))


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
    kills = 0
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
    assert kills >= 3
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert stored(out) == stored(reference)
    ids = [r["id"] for r in stored(out)]
    assert len(ids) == len(set(ids)) == 16 + len(BAD)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[2] / "recipes").glob("extract_*.yaml")))
def test_extract_recipes_load(recipe):
    from lavit.config import load_config

    cfg = load_config(ExtractConfig, str(recipe), ["samples=s.jsonl"])
    assert cfg.teacher.startswith("Qwen/") and cfg.dtype == "bfloat16" and cfg.layers == "all"
