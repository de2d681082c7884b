"""`lavit filter`: the three-stage filter of paper §4.1, turning teacher signals into the LaViT-SFT set.

    lavit filter signals=runs/signals out=runs/lavit_sft

Stages, in order: (1) correctness — the teacher's answer matches the ground truth; (2) difficulty —
a text-only model asked the question without the image must get it wrong; (3) alignment —
S_focus >= 0.2. Samples the extractor rejected, and rows whose stored signal is not finite, are
dropped before the stages. Every drop is written to dropped.jsonl with its stage and reason;
filter_report.json counts them. The kept rows are the training set (`lavit train data=OUT`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from lavit.data.samples import open_rgb
from lavit.data.signal_store import (
    SCHEMA_VERSION,
    SHARD_DIR,
    SIGNAL_SCHEMA,
    check_finite_row,
    read_manifest,
    read_store,
    write_json_atomic,
    write_manifest,
    write_table_atomic,
)
from lavit.eval.matching import get_matcher
from lavit.inference.generate import generate_answers
from lavit.models.checkpoint import load_for_inference
from lavit.teacher.filter_config import FilterConfig

SFT_SCHEMA = pa.schema([*SIGNAL_SCHEMA, ("teacher_correct", pa.bool_()), ("text_only_answer", pa.string()),
                        ("text_only_correct", pa.bool_())])


def apply_filter(rows: list[dict], cfg: FilterConfig, text_only_answers) -> tuple[list[dict], list[dict]]:
    """Split rows into kept rows and drop records {id, stage, reason, ...}.

    `text_only_answers(questions) -> answers` is the difficulty stage's model (called in batches).
    """
    match = get_matcher(cfg.matcher)
    dropped: list[dict] = []

    def drop(row: dict, stage: str, reason: str, detail: str) -> None:
        # `reason` is a fixed code (summable); `detail` carries the values that made the decision.
        dropped.append({"id": row["id"], "stage": stage, "reason": reason, "detail": detail, "answer": row.get("answer"),
                        "teacher_answer": row.get("teacher_answer"), "text_only_answer": row.get("text_only_answer"),
                        "s_focus": row.get("s_focus")})

    if "correctness" in cfg.stages and any(r["status"] == "ok" and r["teacher_answer"] is None for r in rows):
        raise ValueError("the store has rows without a teacher answer (an imported official set is already filtered "
                         "by its authors): run the filter with stages=[alignment] or train on the store directly")
    alive = []
    for row in rows:
        row = {**row, "teacher_correct": None, "text_only_answer": None, "text_only_correct": None}
        if row["status"] != "ok":
            reject = row["reject_reason"] or "rejected"
            drop(row, "extract", reject.split(":")[0].strip(), reject)
            continue
        try:
            check_finite_row(row)
        except ValueError as err:
            drop(row, "invalid_signal", "nonfinite_signal", str(err))
            continue
        alive.append(row)

    for stage in cfg.stages:
        survivors = []
        if stage == "correctness":
            for row in alive:
                row["teacher_correct"] = bool(match(row["teacher_answer"], row["answer"]))
                if row["teacher_correct"]:
                    survivors.append(row)
                else:
                    drop(row, stage, "teacher_wrong",
                         f"teacher answered {row['teacher_answer']!r}, ground truth {row['answer']!r}")
        elif stage == "difficulty":
            answers = text_only_answers([r["question"] for r in alive]) if alive else []
            for row, answer in zip(alive, answers, strict=True):
                row["text_only_answer"] = answer
                row["text_only_correct"] = bool(match(answer, row["answer"]))
                if row["text_only_correct"]:
                    drop(row, stage, "text_only_correct", f"answered {answer!r} without the image")
                else:
                    survivors.append(row)
        else:  # alignment
            for row in alive:
                if row["s_focus"] is None:
                    if cfg.require_box:
                        drop(row, stage, "no_box", "no bounding box, S_focus undefined")
                    else:
                        survivors.append(row)
                elif row["s_focus"] >= cfg.min_s_focus:
                    survivors.append(row)
                else:
                    drop(row, stage, "low_s_focus", f"S_focus {row['s_focus']:.3f} < {cfg.min_s_focus}")
        alive = survivors
    return alive, dropped


def run_filter(cfg: FilterConfig) -> dict:
    start = time.time()
    if not cfg.signals:
        raise ValueError("no teacher-signal store given (set signals=DIR)")
    source = read_manifest(Path(cfg.signals))
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ValueError(f"{out} exists and is not empty; set overwrite=true or choose another out=")
        shutil.rmtree(out)
    rows = read_store(cfg.signals).to_pylist()
    if not rows:
        raise ValueError(f"{cfg.signals} holds no rows")
    expected = source.get("num_input_samples")
    if expected is not None and len(rows) != expected:
        raise ValueError(f"{cfg.signals} holds {len(rows)} of {expected} samples: an extract worker has not "
                         "finished (rerun `lavit extract` to complete the store)")

    text_model_name = None
    if "difficulty" in cfg.stages:
        text_model_name = source["teacher"] if cfg.text_model == "teacher" else cfg.text_model
        model, processor = load_for_inference(text_model_name, dtype=cfg.dtype, device_map=cfg.device_map,
                                              seed=cfg.seed)

    blank = None
    if cfg.text_only_image:
        if not Path(cfg.text_only_image).is_file():
            raise FileNotFoundError(f"text_only_image {cfg.text_only_image} does not exist")
        blank = open_rgb(cfg.text_only_image)

    def text_only_answers(questions: list[str]) -> list[str]:
        answers = []
        for i in tqdm(range(0, len(questions), cfg.batch_size), desc="text-only answers", unit="batch"):
            chunk = questions[i:i + cfg.batch_size]
            answers += generate_answers(model, processor, None if blank is None else [blank] * len(chunk), chunk,
                                        latent_tokens=[], mode="none", system_prompt=cfg.system_prompt or None,
                                        max_new_tokens=cfg.max_new_tokens)
        return answers

    kept, dropped = apply_filter(rows, cfg, text_only_answers)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(parents=True)
    write_table_atomic(pa.Table.from_pylist(kept, schema=SFT_SCHEMA), out / SHARD_DIR / "lavit_sft-00000.parquet")
    with open(out / "dropped.jsonl", "w", encoding="utf-8") as f:
        for record in dropped:
            f.write(json.dumps(record) + "\n")
    by_stage = Counter(d["stage"] for d in dropped)
    by_reason: dict[str, dict[str, int]] = {}
    for d in dropped:
        by_reason.setdefault(d["stage"], Counter())[d["reason"]] += 1
    report = {
        "input_rows": len(rows),
        "kept": len(kept),
        "dropped_by_stage": {s: by_stage.get(s, 0) for s in ("extract", "invalid_signal", *cfg.stages)},
        "dropped_by_reason": {stage: dict(sorted(codes.items())) for stage, codes in by_reason.items()},
        "text_model": text_model_name,
        "settings": asdict(cfg),
        "wall_seconds": time.time() - start,
    }
    write_json_atomic(report, out / "filter_report.json")
    write_manifest({"schema_version": SCHEMA_VERSION, "kind": "lavit_sft", "teacher": source["teacher"],
                    "text_model": text_model_name, "extract_settings": source["settings"],
                    "filter_settings": asdict(cfg), "counts": {"kept": len(kept), "dropped": len(dropped)}}, out)
    return report
