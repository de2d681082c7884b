"""The latent-usage audit (`lavit.eval.audit`) of toy-world students, and its summary over seeds.

Each seed's student is audited on the same paired test scenes (`write_split(..., pairs=True)`: two scenes
ask one question and differ in its answer, so `swap` has a donor for every item). Per intervention the
summary gives the mean over seeds of the accuracy, of the paired difference against the unmodified run
(with a Student-t interval over seeds), of the flip rate and of how often a swapped answer follows its
donor, and how many seeds' exact McNemar tests reject "no change" at 5 %. The 2026 diagnostics (docs/audit.md) are
summarised alike: the oracle and format-only arms as the interventions (with how often an answer follows the
oracle's, and format-only's difference against no latents), and the means over seeds of the emission rates per
prompt style, the norm ratios and the input sensitivities.
"""

from __future__ import annotations

from pathlib import Path

from lavit.analysis.stats import mean_of_present, t_interval
from lavit.eval.audit import LoadedModel, audit_items, sample_items
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.models.gating import InferenceGate

SIGNIFICANT = 0.05


def audit_student(student_dir: str | Path, split: Path, *, seed: int = 0, max_new_tokens: int = 3,
                  diagnostics: list[str] | None = None) -> dict:
    """`audit_items` of an exported toy student (its latents forced, its inference gate if it has one) on a
    paired split written by `write_split(..., pairs=True)`, with the diagnostics named (None: all; the scenes' boxes
    are the oracle's regions)."""
    meta = read_lavit_meta(str(student_dir))
    model, processor = load_for_inference(str(student_dir))
    loaded = LoadedModel(model, processor, meta["latent_tokens"], meta.get("system_prompt") or None,
                         max_new_tokens=max_new_tokens, gate=InferenceGate.from_meta(meta), name=str(student_dir))
    result = audit_items(loaded, sample_items(split, split.parent / "images"), seed=seed, batch_size=64,
                         desc=f"audit {Path(student_dir).parent.name}", diagnostics=diagnostics)
    result.pop("items")  # per-item answers and donors stay out of the demo's results.json
    result.pop("donors")
    return result



def _summarise_rows(tables: list[list[dict]], key: str, follows: tuple[str, ...]) -> list[dict]:
    """Per row (named by its `key`) over the seeds' tables: accuracy, Δ vs forced (mean, t interval, per seed), flip
    rate, seeds with McNemar p < 0.05, the mean rate of each of `follows` (`follows_donor`, `follows_oracle`) the row
    has, and format-only's mean Δ vs none where it was run."""
    rows: dict[str, dict] = {}
    for table in tables:
        for row in table:
            entry = rows.setdefault(row[key], {"accuracy": [], "difference": [], "mcnemar_p": [], "flip_rate": [],
                                               "vs_none": [], "reason": None, **{f: [] for f in follows}})
            if not row["applicable"]:
                entry["reason"] = row["reason"]
                continue
            entry["accuracy"].append(row["accuracy"])
            if "vs_forced" in row:
                entry["difference"].append(row["vs_forced"]["difference"])
                entry["mcnemar_p"].append(row["vs_forced"]["mcnemar_p"])
                entry["flip_rate"].append(row["flip_rate"])
            for f in follows:
                if f in row:
                    entry[f].append(row[f]["rate"])
            if "vs_none" in row:
                entry["vs_none"].append(row["vs_none"]["difference"])
    summary = []
    for name, e in rows.items():
        if not e["accuracy"]:
            summary.append({key: name, "applicable": False, "reason": e["reason"]})
            continue
        ci = t_interval(e["difference"]) if e["difference"] else None
        summary.append({key: name, "applicable": True, "accuracy": mean_of_present(e["accuracy"]),
                        "accuracy_per_seed": e["accuracy"],
                        "difference": mean_of_present(e["difference"]),
                        "difference_ci95": None if ci is None else list(ci),
                        "difference_per_seed": e["difference"], "mcnemar_p_per_seed": e["mcnemar_p"],
                        "significant_seeds": sum(p < SIGNIFICANT for p in e["mcnemar_p"]),
                        "flip_rate": mean_of_present(e["flip_rate"]),
                        **{f: mean_of_present(e[f]) for f in follows},
                        **({"vs_none": mean_of_present(e["vs_none"])} if e["vs_none"] else {})})
    return summary


def _summarise_diagnostics(audits: list[dict]) -> dict | None:
    """The diagnostics over the seeds' audits (each ran the same ones): the arms as `_summarise_rows`, and the means
    of the emission rates per prompt style, of the norm ratios, of the input sensitivities at the last layer and of
    the oracle view's accuracy. None when none ran."""
    found = [a.get("diagnostics") or {"chosen": []} for a in audits]
    chosen = found[0]["chosen"] if found else []
    if any(f["chosen"] != chosen for f in found):
        raise ValueError(f"the seeds' audits ran different diagnostics: {[f['chosen'] for f in found]}")
    if not chosen:
        return None
    out: dict = {"chosen": chosen, "table": _summarise_rows([f["table"] for f in found], "arm", ("follows_oracle",))}
    if "emission" in chosen:
        out["emission"] = {style: {"system_prompt": spec["system_prompt"], "same_as": spec["same_as"],
                                   **{stat: mean_of_present([f["emission"][style][stat] for f in found])
                                      for stat in ("all_latents_first", "any_latent", "mean_latents")},
                                   "natural_accuracy": mean_of_present([f["emission"][style]["natural_accuracy"]
                                                                        ["accuracy"] for f in found])}
                           for style, spec in found[0]["emission"].items()}
    if "norm_ratio" in chosen:
        out["norm_ratio"] = {part: mean_of_present([f["norm_ratio"][part]["mean"] for f in found])
                             for part in ("input", "final")}
    if "sensitivity" in chosen:
        out["sensitivity"] = {part: mean_of_present([(f["sensitivity"].get(part) or {}).get("last_layer")
                                                     for f in found])
                              for part in ("latents", "readout", "last_prompt_token")}
    if "oracle" in chosen:
        views = [f["oracle_view"] for f in found if "oracle_view" in f]
        out["oracle_view"] = {"accuracy": mean_of_present([v["accuracy"] for v in views]),
                              "difference": mean_of_present([v["vs_forced"]["difference"] for v in views])}
    return out


def summarise_audits(audits: list[dict]) -> dict:
    """Per intervention, over the seeds' audits: accuracy, Δ vs forced (mean, t interval, per seed), flip rate,
    follows_donor, seeds with McNemar p < 0.05; the collapse numbers' means; and the diagnostics
    (`_summarise_diagnostics`, None when none ran)."""
    table = _summarise_rows([a["table"] for a in audits], "intervention", ("follows_donor",))
    collapse = {which: {stat: mean_of_present([(a["collapse"][which] or {}).get(stat) for a in audits])
                        for stat in ("mean_pairwise_cosine", "effective_rank")}
                for which in ("latents", "readout", "last_prompt_token")}
    return {"seeds": len(audits), "items": audits[0]["n_asked"] if audits else 0, "k": audits[0]["k"] if audits else 0,
            "table": table, "collapse": collapse, "diagnostics": _summarise_diagnostics(audits)}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def signed_pct_ci(value: float, ci: list[float] | tuple[float, float] | None) -> str:
    """A difference in points, signed, with its 95 % interval where there is one: `+5.0 [-1.0, +11.0]`."""
    return f"{100 * value:+.1f}" + ("" if ci is None else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]")


def audit_table_lines(summary: dict) -> list[str]:
    """The markdown tables of `summarise_audits`: the interventions, then the diagnostics that ran."""
    seeds = summary["seeds"]
    lines = ["| intervention | accuracy | Δ vs forced [95 % t over seeds] | seeds with McNemar p < 0.05 | flip rate | "
             "follows donor |", "|---|---|---|---|---|---|"]
    for row in summary["table"]:
        if not row["applicable"]:
            lines.append(f"| {row['intervention']} | not applicable: {row['reason']} | | | | |")
            continue
        if row["intervention"] == "forced":
            lines.append(f"| forced (reference) | {_pct(row['accuracy'])} | — | — | — | — |")
            continue
        diff = signed_pct_ci(row["difference"], row["difference_ci95"])
        lines.append(f"| {row['intervention']} | {_pct(row['accuracy'])} | {diff} | {row['significant_seeds']}/"
                     f"{seeds} | {_pct(row['flip_rate'])} | {_pct(row['follows_donor'])} |")
    return lines + diagnostics_lines(summary.get("diagnostics"), seeds)


def diagnostics_lines(diagnostics: dict | None, seeds: int) -> list[str]:
    """The diagnostics of `summarise_audits` in markdown (docs/audit.md, "Diagnostics (2026)"); nothing when none
    ran."""
    if not diagnostics:
        return []
    lines = []
    if diagnostics["table"]:
        lines += ["", "| diagnostic arm | accuracy | Δ vs forced [95 % t over seeds] | seeds with McNemar p < 0.05 | "
                  "flip rate | follows oracle | Δ vs none |", "|---|---|---|---|---|---|---|"]
        for row in diagnostics["table"]:
            if not row["applicable"]:
                lines.append(f"| {row['arm']} | not applicable: {row['reason']} | | | | | |")
                continue
            vs_none = row.get("vs_none")
            diff = signed_pct_ci(row["difference"], row["difference_ci95"])
            lines.append(f"| {row['arm']} | {_pct(row['accuracy'])} | {diff} | {row['significant_seeds']}/"
                         f"{seeds} | {_pct(row['flip_rate'])} | {_pct(row['follows_oracle'])} | "
                         f"{'—' if vs_none is None else f'{100 * vs_none:+.1f}'} |")
    lines.append("")
    if "oracle_view" in diagnostics:
        view = diagnostics["oracle_view"]
        diff = "—" if view["difference"] is None else f"{100 * view['difference']:+.1f}"
        lines.append(f"Oracle view (the asked region alone, forced): accuracy {_pct(view['accuracy'])} %, Δ vs forced "
                     f"{diff} points.")
    if "emission" in diagnostics:
        for style, e in diagnostics["emission"].items():
            lines.append(f"Emission, {style} prompt" + (f" (as {e['same_as']})" if e["same_as"] else "") +
                         f": all K latents first {_pct(e['all_latents_first'])} %, any latent {_pct(e['any_latent'])} "
                         f"%, {_num(e['mean_latents'], 1)} latents on average, natural-mode accuracy "
                         f"{_pct(e['natural_accuracy'])} %.")
    if "norm_ratio" in diagnostics:
        n = diagnostics["norm_ratio"]
        lines.append(f"Norm ratio over the prompt's text embeddings: latents' decoder input {_num(n['input'])}×, "
                     f"final hidden states {_num(n['final'])}×.")
    if "sensitivity" in diagnostics:
        v = diagnostics["sensitivity"]
        lines.append(f"Input sensitivity (relative change at the last layer, same question on the paired image): "
                     f"latents 1..K−1 {_num(v['latents'], 3)}, readout {_num(v['readout'], 3)}, last prompt token "
                     f"{_num(v['last_prompt_token'], 3)}.")
    return lines
