"""`lavit eval`: one model on one benchmark → predictions.jsonl + summary.json (resumable).

    lavit eval --model runs/lavit_3b/student --benchmark blink:Relative_Depth --data-root data/BLINK --out runs/eval

The model's evaluation protocol (`lavit.eval.protocols`: `lavit`, `authors`, `lmms-eval`) decides each item's
prompt, the answer length, how a letter is read from the answer and the headline metric; everything it fixes, and
any deviation from it, is in the run's settings. Every item is either scored (prompt, raw output, extracted letter,
truth, correct, and the item's fingerprint: its prompt, options, truth and image bytes) or skipped with a recorded
reason (a null or mistyped cell, an image missing, unreadable or outside the benchmark's folder, an answer not
among the choices, a text field holding a special token of the model's tokenizer — `special_token_in_text` — or
longer than `max_text_tokens` tokens — `text_too_long` —, the field named); both are counted in the summary, which
also fingerprints the benchmark's data files and its items. A rerun with the same model settings continues where
the last one stopped, decides every skip again (an image may have been restored, a file mended) and scores again
every item whose fingerprint changed; other settings are refused, each difference listed (`run.json`), and one
eval holds its folder at a time.

Every accuracy in `summary.json` carries a 95 % interval (`accuracy_ci95`, the method in `interval`: Wilson score by
default, exact Clopper–Pearson on request), over the scored items only. With `label_fixes` the benchmark's
documented label errors (`benchmarks/label_fixes.py`) are corrected before scoring, listed in the summary, and the
table applied is a setting of the run, so a run with fixes and one without never share a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from lavit.data.fingerprints import files_fingerprint
from lavit.data.run_dir import RunLock, record_settings, refuse_inputs_inside
from lavit.data.samples import DEFAULT_MAX_TEXT_TOKENS, TextLimits
from lavit.data.signal_store import read_journal, write_json_atomic
from lavit.eval.benchmarks import Benchmark, get_benchmark
from lavit.eval.benchmarks.label_fixes import apply_label_fixes
from lavit.eval.items import EvalItem, text_limits_for
from lavit.eval.protocols import Protocol, TaskRules, apply_protocol
from lavit.eval.protocols.lavit import PROTOCOL as LAVIT_PROTOCOL
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


def score(item: EvalItem, raw_output: str, rules: TaskRules) -> dict:
    letter = rules.extract(raw_output, item)
    return {"id": item.id, "prompt": item.prompt, "raw_output": raw_output, "extracted": letter,
            "truth": item.answer, "correct": letter == item.answer, "item_sha256": item.fingerprint(), **item.meta}


def summarise(records: list[dict], extra, interval: str, rules: TaskRules) -> dict:
    scored = [r for r in records if "skipped" not in r]
    skipped = [r for r in records if "skipped" in r]
    stats = accuracy_summary([r["correct"] for r in scored], method=interval)
    metric_name, metric = rules.metric(scored) if rules.metric else ("accuracy", stats["accuracy"])
    summary = {"n": stats["n"], "correct": stats["correct"], "accuracy": stats["accuracy"],
               "accuracy_ci95": stats["ci95"], "interval": interval, "metric": metric_name, "score": metric,
               "unparsed": sum(r["extracted"] is None for r in scored),
               "skipped": len(skipped),
               "skipped_by_reason": dict(Counter(r["skipped"].split(":")[0] for r in skipped))}
    summary.update(extra(scored, interval))
    return summary


def items_fingerprint(items: list[EvalItem], fingerprints: dict[str, str]) -> str:
    """One digest over the items in order: their ids and fingerprints."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\0{fingerprints[item.id]}\n".encode())
    return digest.hexdigest()


def protocol_label_fixes(protocol: Protocol, asked: bool, bench: Benchmark) -> bool:
    """Whether to correct `bench`'s documented label errors: as asked under a protocol that leaves it to the run
    (`lavit`), else as the protocol fixes it (lmms-eval's MMVP copy carries the fixes; the authors' does not)."""
    if protocol.label_fixes is None:
        if asked and not bench.label_fixes:
            raise ValueError(f"no documented label errors are known for {bench.name} (only for mmvp); drop "
                             "--label-fixes")
        return asked
    if asked and not protocol.label_fixes:
        raise ValueError(f"protocol {protocol.name!r} scores the published labels (its evaluator has no fixes); drop "
                         "--label-fixes or use --protocol lavit")
    return protocol.label_fixes and bool(bench.label_fixes)


def load_benchmark(benchmark: str, data_root: str | Path, max_samples: int = 0, label_fixes: bool = False,
                   protocol: Protocol = LAVIT_PROTOCOL) -> tuple[Benchmark, list[EvalItem], dict, dict]:
    """(the benchmark, its first `max_samples` items (0 = all) asked as `protocol` asks them, the settings and the
    summary fields its label fixes add): the documented label errors are corrected with `label_fixes` under a
    protocol that leaves it to the run (an error for a benchmark that has none), or as the protocol fixes it."""
    bench = get_benchmark(benchmark, protocol.vstar_items)
    fixes = protocol_label_fixes(protocol, label_fixes, bench)
    items = bench.load(Path(data_root))
    if max_samples:
        items = items[:max_samples]
    # which V* items a bare `vstar` read depends on the protocol: said in the settings
    settings = {"vstar_category": benchmark.partition(":")[2] or protocol.vstar_items} if bench.base == "vstar" else {}
    if not fixes:
        return bench, apply_protocol(items, protocol, benchmark), settings, {}
    items, applied, not_applied = apply_label_fixes(items, bench.label_fixes, benchmark)
    return (bench, apply_protocol(items, protocol, benchmark),
            {**settings, "label_fixes": [fix.describe() for fix in bench.label_fixes]},
            {"label_fixes": applied, "label_fixes_not_applied": not_applied})


def run_eval(model, benchmark: str, data_root: str | Path, out: str | Path, *, max_samples: int = 0,
             batch_size: int = 8, interval: str = "wilson", label_fixes: bool = False,
             max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> dict:
    """Score `model` on `benchmark` into `output_dir(out, benchmark)`, as the model's protocol asks (`model.protocol`);
    `interval` names the method of every accuracy's 95 % interval, `label_fixes` corrects the benchmark's documented
    label errors where the protocol leaves it to the run (an error for a benchmark that has none); an item with a text
    longer than `max_text_tokens` tokens (0 = no limit) or holding a special token is a recorded skip
    (`text_limits_for`)."""
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 (0 = all), got {max_samples}")
    if max_text_tokens < 0:
        raise ValueError(f"max_text_tokens must be >= 0 (0 = no limit), got {max_text_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be one of {INTERVAL_METHODS}, got {interval!r}")
    start = time.time()
    protocol = model.protocol
    bench, items, extra_settings, extra_summary = load_benchmark(benchmark, data_root, max_samples, label_fixes,
                                                                 protocol)
    directory = output_dir(out, benchmark)
    model_dir = getattr(model, "name", "")  # a local checkpoint folder is an input too (a hub id does not exist here)
    refuse_inputs_inside(directory, {"data_root": data_root, "model": model_dir}, key="output folder",
                         folders=("data_root",))
    with RunLock(directory):  # one eval per folder at a time: two would append to one predictions file
        return _score(model, bench, items, benchmark, data_root, directory, batch_size, start, interval,
                      extra_settings, extra_summary, text_limits_for(model, max_text_tokens))


def _score(model, bench, items: list[EvalItem], benchmark: str, data_root: str | Path, directory: Path,
           batch_size: int, start: float, interval: str, extra_settings: dict, extra_summary: dict,
           text_limits: TextLimits) -> dict:
    rules = model.protocol.rules(benchmark)
    tokens = getattr(model, "max_new_tokens", None) or rules.max_new_tokens
    # The label-fix table is a setting (it changes truths); the interval method is not: it is recomputed from
    # the records on every run. The text limits are: they decide which items are skipped.
    settings = {"benchmark": benchmark, "data_root": str(Path(data_root).resolve()), **model.describe(),
                "max_new_tokens": tokens, **text_limits.describe(), **extra_settings}
    if Path(settings["model"]).exists():  # a local checkpoint is one model however its path is spelled
        settings["model"] = str(Path(settings["model"]).resolve())
    record_settings(directory / "run.json", settings, hint="use another --out")

    path = directory / PREDICTIONS
    records = read_journal(path)  # a line torn by a crash is dropped
    fingerprints = {item.id: item.fingerprint() for item in items}
    invalid = {item.id for item in items if item.invalid is not None}
    # Skips are decided again (no model call: cheap); a scored record of an item the loader now refuses (an older
    # loader scored a null category), or of an item asked differently since (a mended file, a replaced image),
    # gives way, so no record of another question reaches the summary.
    kept = [r for r in records if "skipped" not in r and r["id"] not in invalid
            and r.get("item_sha256") == fingerprints.get(r["id"])]
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

        problems = {it.id: it.problem(text_limits) for it in todo}  # decodes each image once
        write([{"id": it.id, "skipped": problems[it.id], "truth": it.answer, "item_sha256": fingerprints[it.id],
                **it.meta} for it in todo if problems[it.id] is not None])
        ready = [it for it in todo if problems[it.id] is None]
        for i in range(0, len(ready), batch_size):
            batch = ready[i:i + batch_size]
            write([score(item, raw, rules) for item, raw in zip(batch, model.answer(batch, max_new_tokens=tokens))])
    order = {item.id: k for k, item in enumerate(items)}
    records = sorted((r for r in records if r["id"] in order), key=lambda r: order[r["id"]])
    summary = summarise(records, bench.summary, interval, rules)
    summary.update(extra_summary)
    root = Path(data_root)
    summary.update(benchmark=benchmark, settings=settings, wall_seconds=time.time() - start,
                   data_fingerprint=files_fingerprint([f for f in bench.files(root) if f.is_file()], root),
                   items_fingerprint=items_fingerprint(items, fingerprints))
    write_json_atomic(summary, directory / SUMMARY)
    return summary
