"""`lavit import-official`: the authors' LaViT-15k training layout → our teacher-signal store.

    lavit import-official --data lavit_15k_for_training.json --image-root data/images --out runs/official

Layout (official repository, data_construction/scripts/extract_viscot_trajectories.py):
`{"results": [{question_id, dataset, question, ground_truth_enriched, image_relative_path,
v_top_path_abs, attention_path_abs}, ...]}`.
* `v_top_path_abs`: a `torch.save`d tensor [N_img, D] (bf16, D = 5120 for the 32B teacher) — the last
  decoder layer's output at the image tokens (their hook sits *before* the final norm, unlike our
  V_sem). Loaded with `weights_only=True` and mean-pooled to one fp16 vector.
* `attention_path_abs`: JSON `{"steps": [{"p_t": [...N_img], "p_topk_idx": [...]}]}`; `p_t` is the
  teacher map min-max scaled to [0, 1] (last 8 layers). We store `p_t / sum(p_t)`, a distribution on
  its grid, which is the image's merged-token grid at the extraction processor's resolution
  (Qwen2.5-VL defaults: min_pixels 3136, max_pixels 12845056).
The official set is already filtered by its authors; rows have no teacher answer and no box
(`s_focus` null). Absolute paths from the authors' machine can be redirected with `features_root`
(files are then looked up by name under it).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lavit.data.run_dir import refuse_inputs_inside
from lavit.data.samples import Rejection, Sample, check_text, resolve_image
from lavit.data.signal_store import (
    SCHEMA_VERSION,
    ShardWriter,
    create_store,
    pending_row,
    store_counts,
    update_manifest,
)
from lavit.models.grid import merged_grid

QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056


def read_official_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official training file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is dropped, as every reader here does
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    records = data.get("results") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected an object with a 'results' list (the official LaViT-15k layout)")
    needed = ("image_relative_path", "question", "ground_truth_enriched", "v_top_path_abs", "attention_path_abs")
    for i, r in enumerate(records):
        missing = [k for k in needed if k not in r]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {missing}")
    return records


def record_id(record: dict, i: int) -> str:
    qid = record.get("question_id", i)
    return f"{record['dataset']}-{qid}" if record.get("dataset") else str(qid)


def _resolve(path: str, features_root: Path | None) -> Path:
    return features_root / Path(path).name if features_root else Path(path)


def load_v_top(path: Path, teacher_dim: int) -> tuple[np.ndarray, int]:
    """[N_img, D] tensor → (mean-pooled float16 [D], N_img), or `Rejection`."""
    if not path.is_file():
        raise Rejection("v_top_missing", str(path))
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise Rejection("v_top_unreadable", f"{path}: {type(err).__name__}: {err}") from None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2 or tensor.shape[1] != teacher_dim:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise Rejection("v_top_dim", f"{path}: expected [N_img, {teacher_dim}], got {shape}")
    pooled = tensor.float().mean(0).numpy().astype(np.float16)  # checked after the cast: fp16 overflows at 65504
    if not torch.isfinite(tensor.float()).all() or not np.isfinite(pooled).all():
        raise Rejection("signal_nonfinite", f"{path}: V_top contains NaN or inf, or its mean overflows float16")
    return pooled, tensor.shape[0]


def load_p_t(path: Path) -> np.ndarray:
    if not path.is_file():
        raise Rejection("attention_missing", str(path))
    try:
        steps = json.loads(path.read_text())["steps"]
        if len(steps) != 1:
            raise Rejection("attention_steps", f"{path}: {len(steps)} steps; the official training data has one")
        p_t = np.asarray(steps[0]["p_t"], dtype=np.float64)
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as err:
        raise Rejection("attention_unreadable", f"{path}: {type(err).__name__}: {err}") from None
    if p_t.ndim != 1 or p_t.size == 0:
        raise Rejection("attention_unreadable", f"{path}: p_t is not a non-empty list")
    if not np.isfinite(p_t).all() or (p_t < 0).any() or p_t.sum() <= 0:
        raise Rejection("signal_nonfinite", f"{path}: p_t has NaN/inf, negative values or no mass")
    return p_t


def convert_record(record: dict, index: int, image_root: Path, features_root: Path | None, teacher_dim: int,
                   min_pixels: int, max_pixels: int) -> dict:
    row = pending_row(index, record_id(record, index), record["image_relative_path"], record["question"],
                      record["ground_truth_enriched"], record.get("dataset"))
    try:
        check_text(Sample(row["id"], record["image_relative_path"], record["question"], record["ground_truth_enriched"],
                          source=record.get("dataset")))
        image_path = resolve_image(image_root, record["image_relative_path"])
        try:
            with Image.open(image_path) as img:  # the size only: the header, no decoding
                size = img.size
        except FileNotFoundError:
            raise Rejection("image_missing", str(image_path)) from None
        except Image.DecompressionBombError as err:
            raise Rejection("image_too_large", f"{image_path}: {err}") from None
        except UnidentifiedImageError as err:
            raise Rejection("image_corrupt", f"{image_path}: {err}") from None
        except OSError as err:  # a name over the filesystem's limit, a permission, a directory, an I/O error
            raise Rejection("image_unreadable", f"{image_path}: {err}") from None
        v_sem, n_tokens = load_v_top(_resolve(record["v_top_path_abs"], features_root), teacher_dim)
        p_t = load_p_t(_resolve(record["attention_path_abs"], features_root))
        grid = merged_grid(size, min_pixels=min_pixels, max_pixels=max_pixels)
        cells = grid[0] * grid[1] * grid[2]
        if not p_t.size == n_tokens == cells:
            raise Rejection("grid_mismatch", f"p_t has {p_t.size} values, V_top {n_tokens} rows, the {size[0]}x"
                            f"{size[1]} image gives a {grid} grid ({cells} tokens): check min/max_pixels")
        row.update(status="ok", image_size=list(size), a_traj=(p_t / p_t.sum()).astype(np.float32).tolist(),
                   a_traj_grid=list(grid), v_sem=v_sem.tolist())
    except Rejection as rej:
        row["reject_reason"] = str(rej)
    return row


def import_official(data: str, image_root: str, out: str, *, features_root: str = "", teacher_dim: int = 5120,
                    min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
                    rows_per_file: int = 1024) -> dict:
    records = read_official_records(data)
    ids = [record_id(r, i) for i, r in enumerate(records)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: duplicate sample ids (dataset + question_id)")
    settings = {"data": str(Path(data).resolve()), "teacher_dim": teacher_dim, "min_pixels": min_pixels, "max_pixels": max_pixels}
    out_dir = Path(out)
    refuse_inputs_inside(out_dir, {"--data": data, "--image-root": image_root, "--features-root": features_root},
                         key="--out", folders=("--image-root", "--features-root"))
    manifest, _ = create_store(out_dir, {
        "schema_version": SCHEMA_VERSION, "kind": "teacher_signals",
        "teacher": "official LaViT-15k (Qwen2.5-VL-32B-Instruct)", "settings": settings,
        "note": "imported; already filtered by the authors; V_sem is their pre-norm V_top mean; "
                "a_traj is their last-8-layer p_t renormalised"})
    if manifest.get("settings") != settings:
        raise ValueError(f"{out_dir} was imported with different settings; choose a new --out")
    roots = (Path(image_root), Path(features_root) if features_root else None)
    pending, counts = [], {"ok": 0, "rejected": 0}
    with ShardWriter(out_dir, "official") as writer:
        done = writer.stored_ids()
        for i, record in enumerate(tqdm(records, desc="import", unit="sample")):
            if ids[i] in done:
                continue
            row = convert_record(record, i, *roots, teacher_dim, min_pixels, max_pixels)
            counts[row["status"]] += 1
            pending.append(row)
            if len(pending) >= rows_per_file:
                writer.write(pending)
                pending = []
        if pending:
            writer.write(pending)
        update_manifest(out_dir, lambda m: m.update(counts=store_counts(out_dir)))
    return {"records": len(records), "skipped_already_stored": len(done & set(ids)), **counts}
