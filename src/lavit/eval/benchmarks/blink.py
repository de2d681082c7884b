"""BLINK (BLINK-Benchmark/BLINK): `<Task>/val-00000-of-00001.parquet` with columns `idx`, `question`,
`sub_task`, `image_1`…`image_4` (`{bytes, path}` structs, null when unused; a path, used without bytes, is
relative to the task's folder), `choices`, `answer` "(A)", `prompt` (question + "Select from the following
choices." + options). Only val has answers; the test split's are hidden, so it is never used."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from lavit.data.samples import Rejection
from lavit.eval.items import EvalItem, build_items, image_cell, kind, text

COLUMNS = ("idx", "choices", "answer", "prompt", "image_1")


def load(root: Path, task: str) -> list[EvalItem]:
    task_dir = root / task
    if not task_dir.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        raise ValueError(f"BLINK: unknown sub-task {task!r}: no directory {task_dir}; found {known}")
    files = sorted(task_dir.glob("val-*.parquet"))
    if not files:
        raise FileNotFoundError(f"BLINK: no val split in {task_dir} (val-*.parquet); the test split's answers "
                                "are hidden, so it cannot be scored")
    rows = []
    for f in files:
        table = pq.read_table(f)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"BLINK: {f} lacks columns {missing}")
        rows += [(f"{f.name} row {n}", row) for n, row in enumerate(table.to_pylist(), 1)]
    if not rows:
        raise ValueError(f"BLINK: {files[0]} holds no rows")

    def build(row: dict, ident: str) -> EvalItem:
        choices = row["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise Rejection("cell_invalid", f"'choices' is {kind(choices)}, expected a list of option texts")
        refs = [image_cell(row.get(f"image_{k}"), f"image_{k}", task_dir) for k in range(1, 5)]
        doc = {"idx": ident, "prompt": text(row, "prompt"), "choices": list(choices), "answer": text(row, "answer"),
               "question": row.get("question") if isinstance(row.get("question"), str) else "",
               "sub_task": row.get("sub_task") if isinstance(row.get("sub_task"), str) else task}
        return EvalItem(id=ident, images=[r for r in refs if r is not None], letters="ABCDEFGH"[:len(choices)],
                        answer=doc["answer"].strip().strip("()").upper(), doc=doc, meta={"task": task})

    return build_items(rows, "idx", build, lambda row: {"task": task})
