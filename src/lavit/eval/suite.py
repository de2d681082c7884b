"""`lavit eval --suite paper`: the Table 1 columns for one model, printed as the paper's row with each score's
95 % interval, under the model's evaluation protocol (the V* column is the protocol's V* item set; MMStar's score
is lmms-eval's `average` under `--protocol lmms-eval`)."""

from __future__ import annotations

from pathlib import Path

from lavit.data.samples import DEFAULT_MAX_TEXT_TOKENS
from lavit.data.signal_store import write_json_atomic
from lavit.eval.benchmarks import PAPER_SUITE, get_benchmark
from lavit.eval.runner import run_eval

SUITE_FILE = "suite_paper.json"


def check_suite_root(data_root: str | Path, vstar_items: str = "direct_attributes") -> None:
    """Every benchmark folder and data file the suite reads, checked before the first model call: a missing one is
    an error listing all that are missing, not a failure after hours of the others."""
    root = Path(data_root)
    missing = []
    for _, benchmark, folder in PAPER_SUITE:
        files = get_benchmark(benchmark, vstar_items).files(root / folder)
        if not files:  # a glob that found nothing: a BLINK sub-task without its val split
            missing.append(str(root / folder / benchmark.partition(":")[2] / "val-*.parquet"))
        missing += [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"--suite paper needs MMVP/, vstar_bench/, BLINK/<4 tasks>/ and MMStar/ under "
                                f"{root}; missing: {', '.join(dict.fromkeys(missing))}")


def run_paper_suite(model, data_root: str | Path, out: str | Path, *, label: str, max_samples: int = 0,
                    batch_size: int = 8, interval: str = "wilson", label_fixes: bool = False,
                    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> dict:
    """Runs MMVP, V* Attr., Rel. Depth, IQ-Test, Rel. Ref., Spatial and MMStar; `data_root` holds the
    benchmarks' directories `MMVP/`, `vstar_bench/`, `BLINK/`, `MMStar/`. `label_fixes` corrects the documented
    label errors of the columns that have any (MMVP) where the protocol leaves it to the run; the others run as
    without it. `max_text_tokens`: as `run_eval`'s."""
    root = Path(data_root)
    check_suite_root(root, model.protocol.vstar_items)
    scores, intervals, metrics = {}, {}, {}
    for column, benchmark, folder in PAPER_SUITE:
        summary = run_eval(model, benchmark, root / folder, out, max_samples=max_samples, batch_size=batch_size,
                           interval=interval, label_fixes=label_fixes and bool(get_benchmark(benchmark).label_fixes),
                           max_text_tokens=max_text_tokens)
        scores[column], metrics[column] = summary["score"], summary["metric"]
        # an interval belongs to the micro accuracy; a protocol's other metric (lmms-eval's MMStar average) has none
        intervals[column] = summary["accuracy_ci95"] if summary["metric"] == "accuracy" else None
    row = paper_row(label, scores, intervals)
    result = {"model": label, "protocol": model.protocol.name, "score": scores, "metric": metrics,
              "score_ci95": intervals, "interval": interval, "label_fixes": label_fixes, "row": row}
    write_json_atomic(result, Path(out) / SUITE_FILE)
    return result


def percent_with_interval(accuracy: float | None, ci95: list[float] | None) -> str:
    """'62.3 [56.7, 67.6]': a score and its interval in percent, one decimal ('62.3' without one); '—' for no
    scored item."""
    if accuracy is None:
        return "—"
    if ci95 is None:
        return f"{100 * accuracy:.1f}"
    return f"{100 * accuracy:.1f} [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"


def paper_row(label: str, scores: dict[str, float | None], intervals: dict[str, list[float] | None]) -> str:
    """'| model | MMVP | V* Attr. | … |' with scores in percent, one decimal, as Table 1 prints them, each followed
    by its 95 % interval where it has one."""
    header = "| Model | " + " | ".join(c for c, _, _ in PAPER_SUITE) + " |"
    rule = "|---" * (len(PAPER_SUITE) + 1) + "|"
    cells = " | ".join(percent_with_interval(scores[c], intervals[c]) for c, _, _ in PAPER_SUITE)
    return f"{header}\n{rule}\n| {label} | {cells} |"
