"""`lavit eval --suite paper`: the Table 1 columns for one model, printed as the paper's row with each accuracy's
95 % interval."""

from __future__ import annotations

from pathlib import Path

from lavit.data.signal_store import write_json_atomic
from lavit.eval.benchmarks import PAPER_SUITE, get_benchmark
from lavit.eval.runner import run_eval

SUITE_FILE = "suite_paper.json"


def run_paper_suite(model, data_root: str | Path, out: str | Path, *, label: str, max_samples: int = 0,
                    batch_size: int = 8, interval: str = "wilson", label_fixes: bool = False) -> dict:
    """Runs MMVP, V* Attr., Rel. Depth, IQ-Test, Rel. Ref., Spatial and MMStar; `data_root` holds the
    benchmarks' directories `MMVP/`, `vstar_bench/`, `BLINK/`, `MMStar/`. `label_fixes` corrects the documented
    label errors of the columns that have any (MMVP); the others run as without it."""
    root = Path(data_root)
    scores, intervals = {}, {}
    for column, benchmark, folder in PAPER_SUITE:
        summary = run_eval(model, benchmark, root / folder, out, max_samples=max_samples, batch_size=batch_size,
                           interval=interval, label_fixes=label_fixes and bool(get_benchmark(benchmark).label_fixes))
        scores[column], intervals[column] = summary["accuracy"], summary["accuracy_ci95"]
    row = paper_row(label, scores, intervals)
    result = {"model": label, "accuracy": scores, "accuracy_ci95": intervals, "interval": interval,
              "label_fixes": label_fixes, "row": row}
    write_json_atomic(result, Path(out) / SUITE_FILE)
    return result


def percent_with_interval(accuracy: float | None, ci95: list[float] | None) -> str:
    """'62.3 [56.7, 67.6]': an accuracy and its interval in percent, one decimal; '—' for no scored item."""
    if accuracy is None:
        return "—"
    return f"{100 * accuracy:.1f} [{100 * ci95[0]:.1f}, {100 * ci95[1]:.1f}]"


def paper_row(label: str, scores: dict[str, float | None], intervals: dict[str, list[float] | None]) -> str:
    """'| model | MMVP | V* Attr. | … |' with accuracies in percent, one decimal, as Table 1 prints them, each
    followed by its 95 % interval."""
    header = "| Model | " + " | ".join(c for c, _, _ in PAPER_SUITE) + " |"
    rule = "|---" * (len(PAPER_SUITE) + 1) + "|"
    cells = " | ".join(percent_with_interval(scores[c], intervals[c]) for c, _, _ in PAPER_SUITE)
    return f"{header}\n{rule}\n| {label} | {cells} |"
