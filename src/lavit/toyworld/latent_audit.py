"""The latent-usage audit (`lavit.eval.audit`) of toy-world students, and its summary over seeds.

Each seed's student is audited on the same paired test scenes (`write_split(..., pairs=True)`: two scenes
ask one question and differ in its answer, so `swap` has a donor for every item). Per intervention the
summary gives the mean over seeds of the accuracy, of the paired difference against the unmodified run
(with a Student-t interval over seeds), of the flip rate and of how often a swapped answer follows its
donor, and how many seeds' exact McNemar tests reject "no change" at 5 %.
"""

from __future__ import annotations

from pathlib import Path

from lavit.analysis.stats import mean_of_present, t_interval
from lavit.eval.audit import LoadedModel, audit_items, sample_items
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.models.gating import InferenceGate

SIGNIFICANT = 0.05


def audit_student(student_dir: str | Path, split: Path, *, seed: int = 0, max_new_tokens: int = 3) -> dict:
    """`audit_items` of an exported toy student (its latents forced, its inference gate if it has one) on a
    paired split written by `write_split(..., pairs=True)`."""
    meta = read_lavit_meta(str(student_dir))
    model, processor = load_for_inference(str(student_dir))
    loaded = LoadedModel(model, processor, meta["latent_tokens"], meta.get("system_prompt") or None,
                         max_new_tokens=max_new_tokens, gate=InferenceGate.from_meta(meta), name=str(student_dir))
    result = audit_items(loaded, sample_items(split, split.parent / "images"), seed=seed, batch_size=64,
                         desc=f"audit {Path(student_dir).parent.name}")
    result.pop("items")  # per-item answers and donors stay out of the demo's results.json
    result.pop("donors")
    return result



def summarise_audits(audits: list[dict]) -> dict:
    """Per intervention, over the seeds' audits: accuracy, Δ vs forced (mean, t interval, per seed), flip rate,
    follows_donor, seeds with McNemar p < 0.05; and the collapse numbers' means."""
    rows: dict[str, dict] = {}
    for audit in audits:
        for row in audit["table"]:
            entry = rows.setdefault(row["intervention"], {"accuracy": [], "difference": [], "mcnemar_p": [],
                                                          "flip_rate": [], "follows_donor": [], "reason": None})
            if not row["applicable"]:
                entry["reason"] = row["reason"]
                continue
            entry["accuracy"].append(row["accuracy"])
            if "vs_forced" in row:
                entry["difference"].append(row["vs_forced"]["difference"])
                entry["mcnemar_p"].append(row["vs_forced"]["mcnemar_p"])
                entry["flip_rate"].append(row["flip_rate"])
            if "follows_donor" in row:
                entry["follows_donor"].append(row["follows_donor"]["rate"])
    table = []
    for name, e in rows.items():
        if not e["accuracy"]:
            table.append({"intervention": name, "applicable": False, "reason": e["reason"]})
            continue
        ci = t_interval(e["difference"]) if e["difference"] else None
        table.append({"intervention": name, "applicable": True, "accuracy": mean_of_present(e["accuracy"]),
                      "accuracy_per_seed": e["accuracy"],
                      "difference": mean_of_present(e["difference"]),
                      "difference_ci95": None if ci is None else list(ci),
                      "difference_per_seed": e["difference"], "mcnemar_p_per_seed": e["mcnemar_p"],
                      "significant_seeds": sum(p < SIGNIFICANT for p in e["mcnemar_p"]),
                      "flip_rate": mean_of_present(e["flip_rate"]),
                      "follows_donor": mean_of_present(e["follows_donor"])})
    collapse = {which: {stat: mean_of_present([(a["collapse"][which] or {}).get(stat) for a in audits])
                        for stat in ("mean_pairwise_cosine", "effective_rank")}
                for which in ("latents", "readout", "last_prompt_token")}
    return {"seeds": len(audits), "items": audits[0]["n_asked"] if audits else 0, "k": audits[0]["k"] if audits else 0,
            "table": table, "collapse": collapse}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def audit_table_lines(summary: dict) -> list[str]:
    """The markdown table of `summarise_audits`."""
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
        ci = row["difference_ci95"]
        diff = f"{100 * row['difference']:+.1f}" + ("" if ci is None else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]")
        lines.append(f"| {row['intervention']} | {_pct(row['accuracy'])} | {diff} | {row['significant_seeds']}/{seeds} "
                     f"| {_pct(row['flip_rate'])} | {_pct(row['follows_donor'])} |")
    return lines
