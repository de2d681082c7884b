"""A rehearsal of the first real run, on this CPU: the path the README tells a researcher to take, at the shapes a
real run meets where 2 cores allow.

- Models: Qwen2.5-VL-3B's real config (every width: 2048-d decoder, 1280-d ViT, 151 936-token vocabulary) with one
  decoder layer and one ViT block, the real Qwen tokenizer and processor, saved with the checkpoints' own
  processor limits (up to 12.8 MP). It serves as teacher too: the 32B's 5120-d layers are shape-checked on the meta
  device (tests/models/test_qwen_real.py) but do not fit this suite's time.
- Images at real sizes: a 2480×3508 document page and a 640×480 photo; free-text (sentence) truths.
- `lavit extract` with the shipped recipe (teacher at Table A1's limits), `lavit filter` with the shipped recipe
  (rules first, then a model judge), `lavit train` with the shipped recipe under the shipped FSDP2 config's bf16
  policy on 2 ranks (`accelerate launch`), resume from the engine's checkpoint, export, and `lavit eval` of a
  student whose answers are sentences.

The random teacher's answers are arbitrary tokens, so the judge is a tiny model wired to answer "yes", and the
evaluated student is the export rewired to answer "A dog is sitting on the bench." (a sentence whose first word is
the article, which must not be read as option A).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from lavit.cli import main
from lavit.data.signal_store import read_manifest, read_store
from lavit.data.targets import build_traj_target
from lavit.models.grid import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, merged_grid
from lavit.models.qwen_configs import qwen_config
from lavit.training.bench import cpu_bf16_kernels

TESTS = Path(__file__).parent
ROOT = TESTS.parent
A1 = {"min_pixels": PAPER_MIN_PIXELS, "max_pixels": PAPER_MAX_PIXELS}
DISK_NEEDED = 16 * 2**30
# The bf16 FSDP step needs the CPU's bf16 matrix kernels (oneDNN on AVX-512 BF16 / AMX). Without them PyTorch falls
# back to a reference GEMM some 200× slower than fp32 (measured on an AVX2-only EPYC: 31 s for one 1024 × 2048 ×
# 2048 product), and the step at Qwen2.5-VL-3B's widths would run for hours: a machine limit, said as a skip.
NO_BF16_KERNELS = not cpu_bf16_kernels()


def load(name: str, path: Path):
    """A helper module of tests/ (no package) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def document_page(path: Path) -> tuple[int, int, int, int]:
    """A 2480×3508 (A4 at 300 dpi) page of text lines with a red stamp; returns the stamp's box."""
    rng = np.random.default_rng(0)
    page = Image.new("RGB", (2480, 3508), "white")
    draw = ImageDraw.Draw(page)
    for row in range(60):
        y, x = 200 + 52 * row, 180
        while x < 2300:
            width = int(rng.integers(30, 160))
            draw.rectangle([x, y, x + width, y + 22], fill=(20, 20, 20))
            x += width + 25
    box = (1500, 2900, 2200, 3300)
    draw.rectangle(box, fill=(200, 30, 30))
    page.save(path)
    return box


def write_samples(root: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    stamp = document_page(images / "page.png")
    photo = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    photo[100:400, 100:300] = (200, 30, 30)
    Image.fromarray(photo).save(images / "photo.jpg")
    records = [
        {"id": "page", "image": "page.png", "question": "What is printed in the lower right corner of the page?",
         "answer": "A red stamp is printed in the lower right corner.", "bbox": list(stamp), "source": "docvqa"},
        {"id": "photo", "image": "photo.jpg", "question": "What is the man wearing?",
         "answer": "The man is wearing a red shirt.", "bbox": [100, 100, 300, 400], "source": "flickr30k"},
    ]
    path = root / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sentence_student(student: Path, out: Path, sentence: str, wire) -> Path:
    """The export, untied and rewired so that after its latent tokens it answers `sentence` to anything."""
    processor = AutoProcessor.from_pretrained(student)
    model = AutoModelForImageTextToText.from_pretrained(student, tie_word_embeddings=False)
    tokenizer = processor.tokenizer
    latents = json.loads((student / "lavit.json").read_text())["latent_tokens"]
    ids = [tokenizer.convert_tokens_to_ids(latents[-1]), *tokenizer.encode(sentence), tokenizer.eos_token_id]
    wire(model, ids)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    shutil.copy(student / "lavit.json", out / "lavit.json")
    return out


@pytest.mark.slow
@pytest.mark.rehearsal
@pytest.mark.skipif(NO_BF16_KERNELS and not torch.cuda.is_available(),
                    reason="this CPU has no bf16 matrix kernels (AVX-512 BF16 or AMX): the bf16 FSDP training step at "
                           "real widths would take hours on PyTorch's reference GEMM")
def test_the_first_real_run_rehearsed_at_real_shapes(tmp_path):
    qwen_real = load("qwen_real", TESTS / "models" / "qwen_real.py")
    judges = load("judges", TESTS / "eval" / "judges.py")
    engines = load("engines", TESTS / "training" / "test_engines.py")
    fixtures = load("eval_fixtures", TESTS / "eval" / "fixtures.py")
    processor = qwen_real.build_qwen_processor()  # the checkpoints' limits (skips without dashscope)
    torch.manual_seed(0)
    free = shutil.disk_usage(tmp_path).free
    assert free > DISK_NEEDED, (f"the rehearsal writes up to {DISK_NEEDED / 2**30:.0f} GiB at its peak (two Adam "
                                f"checkpoints at real widths); {tmp_path} has {free / 2**30:.1f} GiB free")
    # bf16 on disk, as the hub's checkpoints are; training loads fp32 master weights from it
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        qwen_config("qwen2.5-vl-3b", text_layers=1, vision_layers=1), dtype=torch.bfloat16)
    qwen = tmp_path / "qwen2.5-vl-3b-cut"
    model.save_pretrained(qwen)
    processor.save_pretrained(qwen)
    del model
    samples = write_samples(tmp_path)
    images = tmp_path / "images"

    # 1. teacher signals, with the shipped recipe: the teacher sees Table A1's area, not its processor's 12.8 MP
    signals = tmp_path / "signals"
    assert main(["extract", str(ROOT / "recipes" / "extract_qwen2_5_vl_32b.yaml"), f"samples={samples}",
                 f"image_root={images}", f"out={signals}", f"teacher={qwen}", "dtype=float32", "device_map=",
                 "batch_size=2", "max_new_tokens=6"]) == 0
    assert read_manifest(signals)["pixel_limits"] == A1
    rows = {r["id"]: r for r in read_store(signals).to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}
    for row, size in ((rows["page"], (2480, 3508)), (rows["photo"], (640, 480))):
        student_grid = merged_grid(size, **A1)
        assert tuple(row["a_traj_grid"]) == student_grid  # the student's own grid: nothing to resample
        assert len(row["v_sem"]) == 2048
        # the teacher's strongest cell survives into the training target
        target = build_traj_target(row["a_traj"], row["a_traj_grid"], student_grid, top_k=8)
        assert target[int(np.argmax(row["a_traj"]))] > 0
    assert rows["page"]["a_traj_grid"] == [1, 42, 30]  # ~1 MP of a 8.7 MP page; 12.8 MP would give 125 × 89

    # 2. the filter with the shipped recipe: free-text truths go to the judge (rules cannot decide sentences)
    judge = judges.save_fixed_output_judge(tmp_path / "judge", ["yes"])
    sft = tmp_path / "sft"
    assert main(["filter", str(ROOT / "recipes" / "filter_paper.yaml"), f"signals={signals}", f"out={sft}",
                 f"judge={judge}", "stages=[correctness, alignment]", "min_s_focus=0.0", "dtype=float32",
                 "device_map=", "batch_size=2"]) == 0
    report = json.loads((sft / "filter_report.json").read_text())
    assert report["kept"] == 2 and report["matcher"] == "judge"
    assert report["judge"]["asked"] == 2

    # 3. training with the shipped recipe under the shipped FSDP2 config's bf16 policy, 2 ranks; then resume
    config = engines.cpu_config("fsdp2", tmp_path)
    train = [str(ROOT / "recipes" / "lavit_qwen2_5_vl_3b.yaml"), f"model={qwen}", "max_steps=2", "save_steps=1",
             "gate_warmup_steps=1", "global_batch_size=2", "learning_rate=1e-4", "warmup_ratio=0.0",
             "logging_steps=1", "precision=bf16"]
    full = engines.launch_driver(config, tmp_path / "full", sft, images, *train)
    curve = engines.losses(tmp_path / "full" / "run")
    seen = full[0]
    assert (seen["engine"], seen["param_dtype"], seen["reduce_dtype"]) == ("FSDP", "bfloat16", "float32")
    assert seen["head_weight_dtype"] == "bfloat16" and seen["loss_traj_dtype"] == seen["loss_concept_dtype"] == "float32"
    # checkpoints are ~5 GiB each here: the first is moved (not copied) to resume from, the rest deleted once used
    (tmp_path / "resumed" / "run").mkdir(parents=True)
    shutil.move(tmp_path / "full" / "run" / "checkpoint-1", tmp_path / "resumed" / "run" / "checkpoint-1")
    shutil.rmtree(tmp_path / "full")
    engines.launch_driver(config, tmp_path / "resumed", sft, images, *train, "resume=latest")
    rest = engines.losses(tmp_path / "resumed" / "run")
    assert len(curve) == 2 and rest == pytest.approx(curve[1:], rel=1e-5)
    for checkpoint in (tmp_path / "resumed" / "run").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    shutil.rmtree(qwen)

    # 4. the export (of the resumed run) loads in stock transformers, its tied embedding written once; evaluated
    # with sentence answers, no article is read as option A
    student = tmp_path / "resumed" / "run" / "student"
    assert json.loads((student / "lavit.json").read_text())["max_pixels"] == PAPER_MAX_PIXELS
    assert (student / "model.safetensors").stat().st_size < 1.9e9  # fp32 masters, lm_head not a second copy
    speaker = sentence_student(student, tmp_path / "speaker", "A dog is sitting on the bench.", judges.wire_bigram_chain)
    mmvp = fixtures.write_mmvp(tmp_path / "MMVP")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(speaker), "--benchmark", "mmvp", "--data-root", str(mmvp), "--out", str(out),
                 "--max-new-tokens", "12", "--batch-size", "4"]) == 0
    predictions = [json.loads(line) for line in (out / "mmvp" / "predictions.jsonl").read_text().splitlines()]
    assert predictions and all(p["raw_output"] == "A dog is sitting on the bench." for p in predictions)
    summary = json.loads((out / "mmvp" / "summary.json").read_text())
    assert summary["unparsed"] == len(predictions) and summary["accuracy"] == 0.0
    assert (summary["settings"]["min_pixels"], summary["settings"]["max_pixels"]) == (PAPER_MIN_PIXELS,
                                                                                        PAPER_MAX_PIXELS)
