"""`lavit compare RUN_A RUN_B`: two `lavit eval` runs paired item by item, per benchmark.

    lavit compare runs/eval_lavit runs/eval_sft --out runs/lavit_vs_sft.json

A run is a `lavit eval --out` folder (one subfolder per benchmark) or one benchmark's folder. Two runs are compared
only when they asked the same questions the same way: the same evaluation protocol (name, version and deviations),
the same benchmark data files (their content fingerprints), the same items, each with the same fingerprint (prompt,
options, truth and image bytes). Anything else is refused before any number is printed, every difference listed;
`pair_anyway` (`--pair-anyway`) pairs them regardless and records the differences it overrode (`paired_anyway`).
The model, its latent mode and its resolution are what is compared; resolutions that differ are a warning.

For every benchmark in both, items are paired on `id`; an item counts only when both runs scored it against the
same truth. Every other item is listed with its reason, never dropped unseen: `only_in_a` / `only_in_b`,
`skipped_in_a:<code>` / `skipped_in_b:<code>` / `skipped_in_both`, `truth_differs`. On the pairs: each
accuracy with its Wilson interval, A − B with Newcombe's paired interval, the exact McNemar p and the discordant
counts (`lavit.eval.stats`); MMVP also on its question pairs (a pair is right when both of its items are, and
counts when both items are paired). Both runs' settings are recorded. When both runs hold `suite_paper.json`, the
Table 1 layout is rendered too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lavit.eval.benchmarks import PAPER_SUITE
from lavit.eval.runner import PREDICTIONS, SUMMARY
from lavit.eval.stats import PAIRED_METHOD, accuracy_summary, paired_difference
from lavit.eval.suite import SUITE_FILE, percent_with_interval

PIXEL_KEYS = ("min_pixels", "max_pixels")


def eval_folders(run: str | Path) -> dict[str, Path]:
    """{benchmark name: folder} of a run folder, or of a single benchmark folder. A folder holding predictions but
    no summary (an eval that never finished) is an error, not a benchmark left out."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a folder written by lavit eval --out")
    candidates = [run] if (run / SUMMARY).is_file() or (run / PREDICTIONS).is_file() else sorted(
        p for p in run.iterdir() if p.is_dir() and ((p / SUMMARY).is_file() or (p / PREDICTIONS).is_file()))
    folders: dict[str, Path] = {}
    for folder in candidates:
        if not (folder / SUMMARY).is_file():
            raise ValueError(f"{folder} has {PREDICTIONS} but no {SUMMARY}: its eval never finished; rerun lavit eval "
                             "into it to complete it")
        name = _read_json(folder / SUMMARY).get("benchmark")
        if not isinstance(name, str):
            raise ValueError(f"{folder / SUMMARY} names no benchmark")
        folders[name] = folder
    if not folders:
        raise ValueError(f"{run} holds no lavit eval results (no {SUMMARY} in it or its subfolders)")
    return folders


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None


def read_run(folder: Path) -> tuple[dict, dict[str, dict]]:
    """(summary, {id: record}) of one benchmark folder, checked against each other: the predictions must be the
    ones the summary counted."""
    summary = _read_json(folder / SUMMARY)
    path = folder / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has {SUMMARY} but no {PREDICTIONS}")
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError(f"{path} ends in a torn line (an interrupted eval); rerun lavit eval into {folder}")
    records: dict[str, dict] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON ({err})") from None
        if record["id"] in records:
            raise ValueError(f"{path} holds item {record['id']!r} twice")
        records[record["id"]] = record
    counted = summary["n"] + summary["skipped"]
    if len(records) != counted:
        raise ValueError(f"{path} holds {len(records)} records, {SUMMARY} counts {counted}: the folder's last eval "
                         "covered other items (--max-samples) or did not finish; rerun lavit eval over the whole "
                         "benchmark into it")
    return summary, records


def _reason(a: dict | None, b: dict | None) -> str | None:
    """Why an item is not paired, or None when both runs scored it against the same truth."""
    if a is None:
        return "only_in_b"
    if b is None:
        return "only_in_a"
    if "skipped" in a and "skipped" in b:
        return "skipped_in_both"
    if "skipped" in a:
        return "skipped_in_a:" + a["skipped"].split(":")[0]
    if "skipped" in b:
        return "skipped_in_b:" + b["skipped"].split(":")[0]
    if a["truth"] != b["truth"]:
        return "truth_differs"
    return None


def _paired(a: list[bool], b: list[bool]) -> dict:
    return {"n": len(a), "a": accuracy_summary(a), "b": accuracy_summary(b),
            "difference": paired_difference(a, b) if a else None}


def _protocol(settings: dict) -> dict | None:
    recorded = settings.get("protocol")
    if not isinstance(recorded, dict):
        return None
    return {k: recorded.get(k) for k in ("name", "version", "deviations", "variant")}


def _ids(ids: list[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f", … ({len(ids)} in all)" if len(ids) > limit else "")


def run_differences(name: str, summary_a: dict, records_a: dict[str, dict], summary_b: dict,
                    records_b: dict[str, dict]) -> list[str]:
    """Why two runs of one benchmark did not ask the same questions the same way ([] when they did)."""
    differences = []
    protocol_a, protocol_b = _protocol(summary_a.get("settings", {})), _protocol(summary_b.get("settings", {}))
    if protocol_a is None or protocol_b is None:
        which = " and ".join(side for side, p in (("A", protocol_a), ("B", protocol_b)) if p is None)
        differences.append(f"{name}: {which} predate{'s' if len(which) == 1 else ''} recorded protocols and "
                           "fingerprints (rerun lavit eval into a new --out)")
        return differences
    if protocol_a != protocol_b:
        differences.append(f"{name}: protocol A {protocol_a}, B {protocol_b}")
    data_a, data_b = summary_a.get("data_fingerprint") or {}, summary_b.get("data_fingerprint") or {}
    if data_a.get("sha256") != data_b.get("sha256"):
        differences.append(f"{name}: data files differ (A sha256 {str(data_a.get('sha256'))[:12]}…, B "
                           f"{str(data_b.get('sha256'))[:12]}…)")
    for side, mine, theirs in (("A", records_a, records_b), ("B", records_b, records_a)):
        only = [i for i in mine if i not in theirs]
        if only:
            differences.append(f"{name}: {len(only)} items only in {side} ({_ids(only)})")
    common = [i for i in records_a if i in records_b]
    truth = [i for i in common if records_a[i].get("truth") != records_b[i].get("truth")]
    asked = [i for i in common if i not in truth
             and records_a[i].get("item_sha256") != records_b[i].get("item_sha256")]
    if truth:
        differences.append(f"{name}: the truth differs on {len(truth)} items ({_ids(truth)}; label fixes A: "
                           f"{summary_a.get('settings', {}).get('label_fixes') or 'none'}, B: "
                           f"{summary_b.get('settings', {}).get('label_fixes') or 'none'})")
    if asked:
        differences.append(f"{name}: {len(asked)} items were asked differently (prompt, options or image bytes; "
                           f"{_ids(asked)})")
    return differences


def compare_benchmark(name: str, folder_a: Path, folder_b: Path, pair_anyway: bool = False) -> dict:
    """One benchmark of two runs, paired on item id (see the module docstring)."""
    summary_a, records_a = read_run(folder_a)
    summary_b, records_b = read_run(folder_b)
    differences = run_differences(name, summary_a, records_a, summary_b, records_b)
    if differences and not pair_anyway:
        raise RunMismatch(differences)
    ids = list(records_a) + [i for i in records_b if i not in records_a]
    paired, excluded = [], []
    for item in ids:
        reason = _reason(records_a.get(item), records_b.get(item))
        if reason is None:
            paired.append(item)
        else:
            excluded.append({"id": item, "reason": reason})
    result = {"benchmark": name, "folder_a": str(folder_a), "folder_b": str(folder_b),
              **_paired([records_a[i]["correct"] for i in paired], [records_b[i]["correct"] for i in paired]),
              "excluded_by_reason": dict(Counter(e["reason"] for e in excluded)), "excluded": excluded,
              "paired_anyway": differences,
              "settings_a": summary_a.get("settings", {}), "settings_b": summary_b.get("settings", {})}
    if name == "mmvp":
        pairs: dict[int, list[str]] = {}
        for item in paired:
            pairs.setdefault(records_a[item]["pair"], []).append(item)
        complete = [v for v in pairs.values() if len(v) == 2]
        result["pairs"] = {**_paired([all(records_a[i]["correct"] for i in v) for v in complete],
                                     [all(records_b[i]["correct"] for i in v) for v in complete]),
                           "incomplete": len(pairs) - len(complete)}
    return result


class RunMismatch(ValueError):
    """Two runs that did not ask the same questions the same way; `differences` lists how."""

    def __init__(self, differences: list[str]):
        self.differences = differences
        super().__init__("the runs are not comparable: " + "; ".join(differences) + ". Compare runs of one protocol "
                         "on the same data, or pass --pair-anyway to pair them regardless (recorded)")


def _warnings(name: str, settings_a: dict, settings_b: dict) -> list[str]:
    warnings = []
    pixels_a = tuple(settings_a.get(k) for k in PIXEL_KEYS)
    pixels_b = tuple(settings_b.get(k) for k in PIXEL_KEYS)
    if None not in pixels_a + pixels_b and pixels_a != pixels_b:
        warnings.append(f"{name}: A was evaluated at min_pixels/max_pixels {pixels_a[0]}/{pixels_a[1]}, B at "
                        f"{pixels_b[0]}/{pixels_b[1]}: the difference mixes model and resolution (the paper compares "
                        "models at one resolution)")
    fixes_a, fixes_b = settings_a.get("label_fixes"), settings_b.get("label_fixes")
    if fixes_a != fixes_b:
        warnings.append(f"{name}: label fix tables differ (A: {fixes_a or 'none'}, B: {fixes_b or 'none'}); no paired "
                        "item's truth differs")
    return warnings


def compare_runs(a: str | Path, b: str | Path, benchmarks: list[str] | None = None, pair_anyway: bool = False
                 ) -> dict:
    """Every benchmark in both runs (or the `benchmarks` named, by name or folder name, each of which must be in
    both), paired item by item; with the Table 1 layout when both runs hold a paper suite. Runs that did not ask the
    same questions the same way are refused (`RunMismatch`, every benchmark's differences listed) unless
    `pair_anyway`."""
    folders_a, folders_b = eval_folders(a), eval_folders(b)
    common = [n for n in folders_a if n in folders_b]
    if benchmarks:
        spelled = {n.replace(":", "_"): n for n in set(folders_a) | set(folders_b)}
        wanted = [spelled.get(n.replace(":", "_"), n) for n in benchmarks]
        missing = [n for n in wanted if n not in common]
        if missing:
            raise ValueError(f"benchmarks {missing} are not in both runs (A has {sorted(folders_a)}, B has "
                             f"{sorted(folders_b)})")
        common = list(dict.fromkeys(wanted))
    if not common:
        raise ValueError(f"no benchmark is in both runs (A has {sorted(folders_a)}, B has {sorted(folders_b)})")
    results, mismatches = {}, []
    for name in common:
        try:
            results[name] = compare_benchmark(name, folders_a[name], folders_b[name], pair_anyway)
        except RunMismatch as err:
            mismatches += err.differences
    if mismatches:
        raise RunMismatch(mismatches)
    warnings = [w for r in results.values() for w in _warnings(r["benchmark"], r["settings_a"], r["settings_b"])]
    return {"run_a": str(a), "run_b": str(b), "interval": "wilson", "paired_interval": PAIRED_METHOD,
            "pair_anyway": pair_anyway,
            "benchmarks": results, "only_in_a": sorted(set(folders_a) - set(folders_b)),
            "only_in_b": sorted(set(folders_b) - set(folders_a)), "warnings": warnings,
            "suite": _suite(Path(a), Path(b), results)}


def _suite(a: Path, b: Path, results: dict[str, dict]) -> dict | None:
    """The Table 1 columns on the paired items, when both runs are `--suite paper` folders."""
    if not ((a / SUITE_FILE).is_file() and (b / SUITE_FILE).is_file()):
        return None
    return {"label_a": _read_json(a / SUITE_FILE).get("model", str(a)),
            "label_b": _read_json(b / SUITE_FILE).get("model", str(b)),
            "columns": {column: name if name in results else None for column, name, _ in PAPER_SUITE}}


def _points(difference: dict | None) -> str:
    if difference is None:
        return "—"
    low, high = difference["ci95"]
    return f"{100 * difference['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def _p(difference: dict | None) -> str:
    if difference is None:
        return "—"
    p = difference["mcnemar_p"]
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _cell(stats: dict) -> str:
    return percent_with_interval(stats["accuracy"], stats["ci95"])


def render_markdown(result: dict) -> str:
    """The per-benchmark table (benchmark | n | A | B | A − B [95 % CI] | McNemar p), what was excluded, and the
    Table 1 layout when both runs are paper suites. Accuracies and differences in points, on the paired items."""
    lines = [f"A = {result['run_a']}, B = {result['run_b']}; accuracies on the items both scored (Wilson 95 % "
             "intervals), A − B with Newcombe's paired interval, exact McNemar p", "",
             "| benchmark | n | A | B | A − B [95 % CI] | McNemar p |", "|---|---|---|---|---|---|"]
    for name, r in result["benchmarks"].items():
        rows = [(name, r)] + ([(f"{name} (pairs)", r["pairs"])] if "pairs" in r else [])
        lines += [f"| {label} | {s['n']} | {_cell(s['a'])} | {_cell(s['b'])} | {_points(s['difference'])} | "
                  f"{_p(s['difference'])} |" for label, s in rows]
    notes = [f"- {name}: {len(r['excluded'])} items not paired ("
             + ", ".join(f"{reason} {count}" for reason, count in sorted(r["excluded_by_reason"].items())) + ")"
             for name, r in result["benchmarks"].items() if r["excluded"]]
    notes += [f"- only in {side.upper()}: {', '.join(result[f'only_in_{side}'])}" for side in "ab"
              if result[f"only_in_{side}"]]
    if notes:
        lines += ["", *notes]
    suite = result["suite"]
    if suite is not None:
        columns = [(c, result["benchmarks"].get(n) if n else None) for c, n in suite["columns"].items()]

        def row(label: str, cell) -> str:
            return f"| {label} | " + " | ".join("—" if r is None else cell(r) for _, r in columns) + " |"

        lines += ["", "| Model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|",
                  row(f"A: {suite['label_a']}", lambda r: _cell(r["a"])),
                  row(f"B: {suite['label_b']}", lambda r: _cell(r["b"])),
                  row("A − B", lambda r: _points(r["difference"])),
                  row("McNemar p", lambda r: _p(r["difference"]))]
    return "\n".join(lines)
