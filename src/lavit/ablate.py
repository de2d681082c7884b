"""`lavit ablate`: Table 3's rows and Table A2's K sweep in the toy world, the in-method remedies, or
LaViT's data efficiency.

    lavit ablate --out runs/ablate --seeds 3
    lavit ablate --out runs/remedies --rows remedies --seeds 3
    lavit ablate --out runs/data_eff --pool-sizes 1000,2000,4000 --seeds 5

Rows (each a student trained from the same base, data and budget as `lavit demo`, on every seed):
`--rows paper` (default): full LaViT; w/o trajectory alignment (no L_traj); w/o semantic reconstruction
(no L_concept); w/o curriculum gate (gate=hard: γ = 0 then 1); single stage (gate=none: γ ≡ 1); w/o latent
tokens (the full model evaluated with its latents masked); K ∈ {4, 6, 8} (Table A2); and Naive-SFT.
`--rows remedies`: the settings one would try if LaViT does not beat Naive-SFT — λ, T_w, K, Top-K,
question-token gating — and both methods at a lower and a higher learning rate. Choose on val.
`--rows bottlenecks` (beyond the paper): variants in which visual evidence must pass through the latents — the
readout (the last latent, which predicts a one-token answer) gated too, a final γ below 1 or γ ≡ 0 kept at
inference, an L_read term rewarding the readout for reading latents 1..K-1 — each with the latent-usage audit
of its students on paired test scenes. Choose on val.

`--pool-sizes`: LaViT and Naive-SFT at each pool size (seed s draws the first N scenes of pool draw s,
so the pools are nested), mean test accuracy with a 95 % t interval over seeds, the paired difference,
and one PNG.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lavit.analysis.stats import paired_summary, t_interval, verdict  # noqa: E402
from lavit.console import quiet_libraries, say  # noqa: E402
from lavit.demo import DemoConfig, evaluate, prepare_seed, student_config  # noqa: E402
from lavit.toyworld.latent_audit import audit_student, audit_table_lines, summarise_audits  # noqa: E402
from lavit.toyworld.world import write_split  # noqa: E402
from lavit.training.train import run_training  # noqa: E402

ROWS = [
    ("LaViT (full)", "lavit", {}),
    ("w/o trajectory alignment", "lavit", {"trajectory_loss": False}),
    ("w/o semantic reconstruction", "lavit", {"concept_loss": False}),
    ("w/o curriculum gate (hard switch)", "lavit", {"gate": "hard"}),
    ("single stage (no gate)", "lavit", {"gate": "none"}),
    ("K = 6", "lavit", {"num_latent_tokens": 6}),
    ("K = 8", "lavit", {"num_latent_tokens": 8}),
    ("Naive-SFT", "naive_sft", {}),
]

REMEDY_ROWS = [
    ("LaViT (full)", "lavit", {}),
    ("Naive-SFT", "naive_sft", {}),
    ("LaViT, λ = 1.0", "lavit", {"lam": 1.0}),
    ("LaViT, λ = 0.1", "lavit", {"lam": 0.1}),
    ("LaViT, T_w = 0.8 × steps", "lavit", {"gate_warmup_fraction": 0.8}),
    ("LaViT, question tokens not gated", "lavit", {"gate_question_tokens": False}),
    ("LaViT, Top-K = 4", "lavit", {"traj_top_k": 4}),
    ("LaViT, K = 2", "lavit", {"num_latent_tokens": 2}),
    ("LaViT, lr 1e-4", "lavit", {"learning_rate": 1e-4}),
    ("Naive-SFT, lr 1e-4", "naive_sft", {"learning_rate": 1e-4}),
    ("LaViT, lr 1e-3", "lavit", {"learning_rate": 1e-3}),
    ("Naive-SFT, lr 1e-3", "naive_sft", {"learning_rate": 1e-3}),
]

# Beyond the paper: variants in which visual evidence must pass through the latents. The readout (the last latent)
# predicts a one-token answer, so the paper's gate never reaches that prediction; these gate it too, keep the gate
# partly (γ_final) or fully (γ ≡ 0) closed at inference (lavit's generation only), or reward the readout for
# reading latents 1..K-1 (L_read; stock-servable).
BOTTLENECK_ROWS = [
    ("LaViT (full)", "lavit", {}),
    ("Naive-SFT", "naive_sft", {}),
    ("LaViT, readout gated in warm-up (γ → 1)", "lavit", {"gate_readout": True}),
    ("LaViT, readout gated, γ_final = 0.1", "lavit", {"gate_readout": True, "gate_final": 0.1}),
    ("LaViT, latent-only vision (readout gated, γ ≡ 0)", "lavit", {"gate_readout": True, "gate": "none",
                                                                    "gate_final": 0.0}),
    ("LaViT + L_read (w = 0.3)", "lavit", {"read_weight": 0.3}),
]

ROW_SETS = {"paper": ROWS, "remedies": REMEDY_ROWS, "bottlenecks": BOTTLENECK_ROWS}
ROW_TITLES = {"paper": "Table 3, Table A2", "remedies": "in-method remedies", "bottlenecks": "bottlenecks"}
STOCK_SERVABLE = "stock clients serve it (its export runs at γ = 1)"
LAVIT_ONLY = "needs lavit's generation (an attention bias at inference)"
DEMO_FIELDS = {f.name for f in fields(DemoConfig)}


def _mean_ci(values: list[float]) -> dict:
    ci = t_interval(values)
    return {"mean": float(np.mean(values)), "ci95": None if ci is None else list(ci), "per_seed": values}


def _pct_ci(entry: dict) -> str:
    ci = entry["ci95"]
    return f"{100 * entry['mean']:.1f}" + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")


def run_ablation(cfg: DemoConfig, rows: list[tuple[str, str, dict]] = ROWS, title: str = "Table 3, Table A2",
                 audit: bool = False) -> dict:
    """Every row on every seed's data; val accuracy (for choosing settings) and test accuracy (to report); with
    `audit`, every latent row's students also get the latent-usage audit on paired test scenes."""
    quiet_libraries()
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    val = write_split(out / "data", "val", cfg.val_samples, world_seed=cfg.world_seed, cfg=cfg.world)
    test = write_split(out / "data", "test", cfg.test_samples, world_seed=cfg.world_seed, cfg=cfg.world)
    pairs = (write_split(out / "data" / "audit", "test", cfg.audit_samples, world_seed=cfg.world_seed, cfg=cfg.world,
                         pairs=True) if audit and cfg.audit_samples else None)
    scores: dict[str, dict] = {}
    filters = []
    audits: dict[str, list[dict]] = {}

    def add(label: str, method: str, overrides: dict, student: str, mode: str | None = None) -> None:
        entry = scores.setdefault(label, {"method": method, "overrides": overrides, "val": [], "test": [],
                                          "per_kind": []})
        entry["val"].append(evaluate(student, val, mode=mode)["accuracy"])
        result = evaluate(student, test, mode=mode)
        entry["test"].append(result["accuracy"])
        entry["per_kind"].append(result["per_kind"] | result["per_prior"])

    for seed in range(cfg.seeds):
        say(f"seed {seed + 1}/{cfg.seeds}: pool draw {seed} → extract → filter")
        prepared = prepare_seed(cfg, seed, out / f"seed{seed}")
        filters.append(prepared["filter"])
        for i, (label, method, overrides) in enumerate(rows):
            # A row may change a demo setting (e.g. gate_warmup_fraction) or a training setting (e.g. lam).
            demo_keys = {k: v for k, v in overrides.items() if k in DEMO_FIELDS}
            train_keys = {k: v for k, v in overrides.items() if k not in DEMO_FIELDS}
            train_cfg = student_config(replace(cfg, **demo_keys), method, prepared["data"], prepared["images"],
                                       out / f"seed{seed}" / f"row{i}", seed, **train_keys)
            student = run_training(train_cfg, desc=f"seed {seed + 1}/{cfg.seeds} {label}")["student_dir"]
            add(label, method, overrides, student)
            if pairs is not None and method == "lavit":
                audits.setdefault(label, []).append(audit_student(student, pairs, seed=seed))
            if label == "LaViT (full)":
                add("w/o latent tokens (masked at inference)", method, {"eval_mode": "masked"}, student, mode="masked")
    table = [{"row": label, "method": e["method"], "overrides": e["overrides"], "val": _mean_ci(e["val"]),
              "test": _mean_ci(e["test"]),
              "per_kind": {k: float(np.mean([p[k] for p in e["per_kind"] if p.get(k) is not None]))
                           for k in e["per_kind"][0]}} for label, e in scores.items()]
    for row in table:
        if row["row"] in audits:
            row["audit"] = summarise_audits(audits[row["row"]])
        if audit:
            row["serving"] = LAVIT_ONLY if float(row["overrides"].get("gate_final", 1.0)) < 1.0 else STOCK_SERVABLE
    result = {"rows": table, "filter": filters, "settings": asdict(cfg), "wall_seconds": time.time() - start}
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    kinds = list(table[0]["per_kind"])
    lines = [f"# Ablations in the toy world ({title})", "",
             f"Same base, data and budget ({cfg.steps} steps) for every row, {cfg.seeds} seed(s); accuracy (%), mean "
             "[95 % t interval] over seeds on val (for choosing settings) and on the held-out test split; the other "
             "columns are test means.", "",
             "| variant | val | test | " + " | ".join(k.replace("_", "-") for k in kinds) + " |",
             "|---" * (len(kinds) + 3) + "|"]
    for r in table:
        lines.append(f"| {r['row']} | {_pct_ci(r['val'])} | {_pct_ci(r['test'])} | "
                     + " | ".join(f"{100 * r['per_kind'][k]:.1f}" for k in kinds) + " |")
    for r in table:
        if "audit" in r:
            lines += ["", f"### Audit: {r['row']} ({r['serving']})", "", *audit_table_lines(r["audit"])]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    return result


def run_data_efficiency(cfg: DemoConfig, pool_sizes: list[int]) -> dict:
    """LaViT vs Naive-SFT at each pool size over cfg.seeds seeds: means, t intervals, paired differences, PNG."""
    if not pool_sizes or min(pool_sizes) < 8:
        raise ValueError("pool sizes must be given and >= 8")
    quiet_libraries()
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    test = write_split(out / "data", "test", cfg.test_samples, world_seed=cfg.world_seed, cfg=cfg.world)
    sizes = []
    for size in sorted(pool_sizes):
        at = replace(cfg, pool_samples=size)
        acc = {"naive_sft": [], "lavit": []}
        kept = []
        for seed in range(cfg.seeds):
            say(f"pool {size}, seed {seed + 1}/{cfg.seeds}: extract → filter → both students")
            root = out / f"pool{size}" / f"seed{seed}"
            prepared = prepare_seed(at, seed, root)
            kept.append(prepared["filter"]["kept"] + prepared["filter"]["replayed"])
            for method in acc:
                trained = run_training(student_config(at, method, prepared["data"], prepared["images"], root / method,
                                                      seed), desc=f"pool {size} seed {seed + 1}/{cfg.seeds} {method}")
                acc[method].append(evaluate(trained["student_dir"], test)["accuracy"])
        paired = paired_summary(acc["lavit"], acc["naive_sft"])
        paired["verdict"] = verdict(None if paired["ci95"] is None else tuple(paired["ci95"]))
        sizes.append({"pool_samples": size, "training_samples": kept, **{m: _mean_ci(v) for m, v in acc.items()},
                      "paired_difference": paired})
    figure = out / "data_efficiency.png"
    _plot(figure, sizes, cfg.seeds)
    result = {"pool_sizes": sizes, "figure": figure.name, "settings": asdict(cfg), "wall_seconds": time.time() - start}
    (out / "data_efficiency.json").write_text(json.dumps(result, indent=2))
    lines = ["# Data efficiency in the toy world", "",
             f"Test accuracy (%), mean [95 % t interval] over {cfg.seeds} seed(s); training samples = filtered + "
             "replayed (mean over seeds).", "",
             "| pool | training samples | Naive-SFT | LaViT | LaViT − Naive-SFT | verdict |", "|---|---|---|---|---|---|"]
    for s in sizes:
        p = s["paired_difference"]
        diff = f"{100 * p['mean']:+.1f}" + ("" if p["ci95"] is None else
                                           f" [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]")
        lines.append(f"| {s['pool_samples']} | {np.mean(s['training_samples']):.0f} | {_pct_ci(s['naive_sft'])} | "
                     f"{_pct_ci(s['lavit'])} | {diff} | {p['verdict']} |")
    lines += ["", f"![data efficiency]({figure.name})"]
    (out / "data_efficiency.md").write_text("\n".join(lines) + "\n")
    return result


def _plot(path: Path, sizes: list[dict], seeds: int) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [s["pool_samples"] for s in sizes]
    for method, label in (("naive_sft", "Naive-SFT"), ("lavit", "LaViT")):
        mean = np.array([100 * s[method]["mean"] for s in sizes])
        ax.plot(x, mean, marker="o", label=label)
        if all(s[method]["ci95"] is not None for s in sizes):
            lo = np.array([100 * s[method]["ci95"][0] for s in sizes])
            hi = np.array([100 * s[method]["ci95"][1] for s in sizes])
            ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xscale("log")
    ax.minorticks_off()  # only the pool sizes measured are labelled
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("pool size (scenes extracted before filtering)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Data efficiency ({seeds} seeds, 95 % t intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
