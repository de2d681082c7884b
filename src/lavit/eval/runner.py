"""`lavit eval`: one model on one benchmark → predictions.jsonl + summary.json (resumable).

    lavit eval --model runs/lavit_3b/student --benchmark blink:Relative_Depth --data-root data/BLINK --out runs/eval

Every item is either scored (prompt, raw output, extracted letter, truth, correct) or skipped with
a recorded reason (a null or mistyped cell, an image missing, unreadable or outside the benchmark's
folder, an answer not among the choices); both are counted in the summary. A rerun with the same model
settings continues where the last one stopped, and decides every skip again (an image may have been
restored, a file mended); other settings are refused, each difference listed (`run.json`), and one eval
holds its folder at a time.

Every accuracy in `summary.json` carries a 95 % interval (`accuracy_ci95`, the method in `interval`: Wilson score by
default, exact Clopper–Pearson on request), over the scored items only. With `label_fixes` the benchmark's
documented label errors (`benchmarks/label_fixes.py`) are corrected before scoring, listed in the summary, and the
table applied is a setting of the run, so a run with fixes and one without never share a folder.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from lavit.data.run_dir import RunLock, record_settings, refuse_inputs_inside
from lavit.data.signal_store import read_journal, write_json_atomic
from lavit.eval.benchmarks import Benchmark, get_benchmark
from lavit.eval.benchmarks.label_fixes import apply_label_fixes
from lavit.eval.items import EvalItem
from lavit.eval.matching import extract_option_letter
from lavit.eval.stats import INTERVAL_METHODS, accuracy_summary

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"


def output_dir(out: str | Path, benchmark: str) -> Path:
    """`OUT/<name>` with the sub-task separator made path-friendly: blink:IQ_Test → blink_IQ_Test."""
    return Path(out) / benchmark.replace(":", "_")


def write_predictions(path: Path, records: list[dict]) -> None:
    """Replace the predictions file atomically with `records`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def score(item: EvalItem, raw_output: str) -> dict:
    letter = extract_option_letter(raw_output, item.letters)
    return {"id": item.id, "prompt": item.prompt, "raw_output": raw_output, "extracted": letter,
            "truth": item.answer, "correct": letter == item.answer, **item.meta}


def summarise(records: list[dict], extra, interval: str) -> dict:
    scored = [r for r in records if "skipped" not in r]
    skipped = [r for r in records if "skipped" in r]
    stats = accuracy_summary([r["correct"] for r in scored], method=interval)
    summary = {"n": stats["n"], "correct": stats["correct"], "accuracy": stats["accuracy"],
               "accuracy_ci95": stats["ci95"], "interval": interval,
               "unparsed": sum(r["extracted"] is None for r in scored),
               "skipped": len(skipped),
               "skipped_by_reason": dict(Counter(r["skipped"].split(":")[0] for r in skipped))}
    summary.update(extra(scored, interval))
    return summary


def load_benchmark(benchmark: str, data_root: str | Path, max_samples: int = 0, label_fixes: bool = False
                   ) -> tuple[Benchmark, list[EvalItem], dict, dict]:
    """(the benchmark, its first `max_samples` items (0 = all), the settings and the summary fields its label fixes
    add): with `label_fixes` the documented label errors are corrected (an error for a benchmark that has none)."""
    bench = get_benchmark(benchmark)
    if label_fixes and not bench.label_fixes:
        raise ValueError(f"no documented label errors are known for {benchmark} (only for mmvp); drop --label-fixes")
    items = bench.load(Path(data_root))
    if max_samples:
        items = items[:max_samples]
    if not label_fixes:
        return bench, items, {}, {}
    items, applied, not_applied = apply_label_fixes(items, bench.label_fixes, benchmark)
    return (bench, items, {"label_fixes": [fix.describe() for fix in bench.label_fixes]},
            {"label_fixes": applied, "label_fixes_not_applied": not_applied})


def run_eval(model, benchmark: str, data_root: str | Path, out: str | Path, *, max_samples: int = 0,
             batch_size: int = 8, interval: str = "wilson", label_fixes: bool = False) -> dict:
    """Score `model` on `benchmark` into `output_dir(out, benchmark)`; `interval` names the method of every
    accuracy's 95 % interval, `label_fixes` corrects the benchmark's documented label errors (an error for a
    benchmark that has none)."""
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 (0 = all), got {max_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {INTERVAL_METHODS}, got {interval!r}")
    start = time.time()
    bench, items, extra_settings, extra_summary = load_benchmark(benchmark, data_root, max_samples, label_fixes)
    directory = output_dir(out, benchmark)
    refuse_inputs_inside(directory, {"data_root": data_root}, key="output folder")
    with RunLock(directory):  # one eval per folder at a time: two would append to one predictions file
        return _score(model, bench, items, benchmark, data_root, directory, batch_size, start, interval,
                      extra_settings, extra_summary)


def _score(model, bench, items: list[EvalItem], benchmark: str, data_root: str | Path, directory: Path,
           batch_size: int, start: float, interval: str, extra_settings: dict, extra_summary: dict) -> dict:
    # The label-fix table is a setting (it changes truths); the interval method is not: it is recomputed from
    # the records on every run.
    settings = {"benchmark": benchmark, "data_root": str(Path(data_root).resolve()), **model.describe(),
                **extra_settings}
    if Path(settings["model"]).exists():  # a local checkpoint is one model however its path is spelled
        settings["model"] = str(Path(settings["model"]).resolve())
    record_settings(directory / "run.json", settings, hint="use another --out")

    path = directory / PREDICTIONS
    records = read_journal(path)  # a line torn by a crash is dropped
    # Skips are decided again (no model call: cheap); a scored record of an item the loader now refuses (an older
    # loader scored a null category) gives way to its skip, so no unvalidated cell reaches the summary.
    invalid = {item.id for item in items if item.invalid is not None}
    kept = [r for r in records if "skipped" not in r and r["id"] not in invalid]
    if len(kept) < len(records):
        records = kept
        write_predictions(path, records)
    done = {r["id"] for r in records}
    todo = [item for item in items if item.id not in done]
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(items), initial=len(items) - len(todo),
                                                      desc=benchmark, unit="item") as bar:
        def write(new: list[dict]) -> None:
            for record in new:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
            records.extend(new)
            bar.update(len(new))

        problems = {it.id: it.problem() for it in todo}  # decodes each image once
        write([{"id": it.id, "skipped": problems[it.id], "truth": it.answer, **it.meta}
               for it in todo if problems[it.id] is not None])
        ready = [it for it in todo if problems[it.id] is None]
        for i in range(0, len(ready), batch_size):
            batch = ready[i:i + batch_size]
            write([score(item, raw) for item, raw in zip(batch, model.answer(batch))])
    order = {item.id: k for k, item in enumerate(items)}
    records = sorted((r for r in records if r["id"] in order), key=lambda r: order[r["id"]])
    summary = summarise(records, bench.summary, interval)
    summary.update(extra_summary)
    summary.update(benchmark=benchmark, settings=settings, wall_seconds=time.time() - start)
    write_json_atomic(summary, directory / SUMMARY)
    return summary
