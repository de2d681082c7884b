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

`--rows designs` (beyond the paper): which latent design carries the answer, and does any beat the distillation a
practitioner would use? Naive-SFT, LaViT, off-policy KD on the teacher's top-k distribution, on-policy GKD, LaViT + KD,
and continuous latents (fed-back hidden states, raw and norm-matched); each design's setting chosen on val among its
candidates, its paired test difference from Naive-SFT, and the latent-usage audit of every latent design.

    lavit ablate --out runs/designs --rows designs --seeds 5
    lavit ablate --out runs/designs_premise --rows designs --seeds 5 --world premise

`--pool-sizes`: LaViT and Naive-SFT at each pool size (seed s draws the first N scenes of pool draw s,
so the pools are nested), mean test accuracy with a 95 % t interval over seeds, the paired difference,
and one PNG.
"""

from __future__ import annotations

import hashlib
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
from lavit.demo import DemoConfig, eval_splits, evaluate, prepare_seed, student_config  # noqa: E402
from lavit.toyworld.latent_audit import audit_student, audit_table_lines, signed_pct_ci, summarise_audits  # noqa: E402
from lavit.toyworld.world import write_split  # noqa: E402
from lavit.data.signal_store import write_json_atomic  # noqa: E402
from lavit.data.sft_dataset import data_fingerprint  # noqa: E402
from lavit.config import config_to_dict  # noqa: E402
from lavit.training.lavit_config import LavitTrainConfig  # noqa: E402
from lavit.training.train import DATA_FINGERPRINT, RESULTS, run_training  # noqa: E402

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

# `--rows designs` (issue 26): which latent design carries the answer, next to the distillation a practitioner would
# use. Each design lists its candidate settings; every candidate trains on every seed, and the one with the best mean
# val accuracy is the design's row (test accuracy reported for it alone, audited on paired test scenes).
DESIGNS = [
    ("Naive-SFT", [("naive_sft", {})]),
    ("LaViT", [("lavit", {})]),
    ("KD (off-policy, teacher top-k)", [("kd", {"kd_loss": "forward_kl"}), ("kd", {"kd_loss": "jsd"})]),
    ("GKD (on-policy)", [("gkd", {"kd_loss": "jsd"})]),
    ("LaViT + KD", [("lavit_kd", {"kd_loss": "forward_kl"}), ("lavit_kd", {"kd_loss": "jsd"})]),
    ("continuous latents", [("lavit", {"latent_design": "continuous"})]),
    ("continuous latents, norm-matched", [("lavit", {"latent_design": "continuous",
                                                     "latent_norm_match": "embedding_table"})]),
]

LATENT_METHODS = ("lavit", "lavit_kd")
AUDIT_COLUMNS = ("none", "zero", "random", "swap", "oracle_donor", "format_only")

ROW_SETS = {"paper": ROWS, "remedies": REMEDY_ROWS, "bottlenecks": BOTTLENECK_ROWS}
ROW_TITLES = {"paper": "Table 3, Table A2", "remedies": "in-method remedies", "bottlenecks": "bottlenecks"}
STOCK_SERVABLE = "stock clients serve it (its export runs at γ = 1)"
LAVIT_ONLY = "needs lavit's generation (an attention bias at inference)"
DEMO_FIELDS = {f.name for f in fields(DemoConfig)}


def _mean_ci(values: list[float]) -> dict:
    ci = t_interval(values)
    return {"mean": float(np.mean(values)), "ci95": None if ci is None else list(ci), "per_seed": values}


def _mean_per_kind(per_kind: list[dict]) -> dict[str, float]:
    """Each kind's (and prior split's) accuracy, mean over the seeds that have it."""
    return {k: float(np.mean([p[k] for p in per_kind if p.get(k) is not None])) for k in per_kind[0]}


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
    val, test, pairs = eval_splits(cfg, out, pairs=audit)
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
              "test": _mean_ci(e["test"]), "per_kind": _mean_per_kind(e["per_kind"])} for label, e in scores.items()]
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


def _candidate_label(method: str, overrides: dict) -> str:
    return method + "".join(f", {k}={v}" for k, v in overrides.items())


def _audit_cell(summary: dict, name: str) -> str:
    """Δ vs forced of one audit intervention or diagnostic arm, mean [95 % t] over seeds, in points ('n/a' where it
    does not apply)."""
    arms = (summary.get("diagnostics") or {}).get("table", [])
    row = next((r for r in summary["table"] if r["intervention"] == name), None) or next(
        (r for r in arms if r["arm"] == name), None)
    if row is None or not row["applicable"] or row.get("difference") is None:
        return "n/a"
    return signed_pct_ci(row["difference"], row["difference_ci95"])


def _follows_cell(summary: dict) -> str:
    """How often the answer follows the donor's latents under `swap` / the donor region's under `oracle_donor`
    (%, mean over seeds, among items whose donor's answer differs; 'n/a' where the arm did not run)."""
    arms = (summary.get("diagnostics") or {}).get("table", [])
    swap = next((r.get("follows_donor") for r in summary["table"] if r["intervention"] == "swap"), None)
    oracle = next((r.get("follows_oracle") for r in arms if r["arm"] == "oracle_donor"), None)
    return " / ".join("n/a" if v is None else f"{100 * v:.0f}" for v in (swap, oracle))


def _measure_cells(summary: dict) -> list[str]:
    """Natural-mode emission (any latent / all K first, the checkpoint's own prompt) and the norm ratio of the
    latents' final states / of their input embeddings (the fed-back states for continuous latents), means over
    seeds ('n/a' where they did not run)."""
    diagnostics = summary.get("diagnostics") or {}
    emission = next(iter(diagnostics.get("emission", {}).values()), None)
    norm = diagnostics.get("norm_ratio")
    return ["n/a" if emission is None else
            f"{100 * emission['any_latent']:.0f} / {100 * emission['all_latents_first']:.0f}",
            "n/a" if norm is None or norm["final"] is None else f"{norm['final']:.1f}× / {norm['input']:.1f}×"]


def choose_on_val(val_per_candidate: list[list[float]]) -> int:
    """Index of the candidate with the best mean val accuracy over seeds (the first listed on a tie)."""
    if not val_per_candidate or any(not v for v in val_per_candidate):
        raise ValueError("every candidate needs val accuracies to choose among them")
    means = [float(np.mean(v)) for v in val_per_candidate]
    return means.index(max(means))


def finished_training(train_cfg: LavitTrainConfig) -> dict | None:
    """The results of an earlier complete run of exactly these settings on the same data in its output_dir, else
    None: a rerun of an interrupted table trains only what is missing."""
    path = Path(train_cfg.output_dir) / RESULTS
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if (done.get("settings") != json.loads(json.dumps(config_to_dict(train_cfg)))
            or done.get(DATA_FINGERPRINT) != data_fingerprint(train_cfg.data)
            or not (Path(done["student_dir"]) / "lavit.json").is_file()):
        return None
    return done


def _cached_audit(student: str, pairs: Path, seed: int) -> dict:
    """`audit_student`, kept beside the student (designs_audit.json) for the same paired split and seed."""
    path = Path(student).parent / "designs_audit.json"
    key = {"pairs": str(pairs), "pairs_sha256": hashlib.sha256(pairs.read_bytes()).hexdigest(), "seed": seed}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["audit"]
    audit = audit_student(student, pairs, seed=seed)
    write_json_atomic({"key": key, "audit": audit}, path)
    return audit


def run_designs(cfg: DemoConfig, designs: list[tuple[str, list[tuple[str, dict]]]] = DESIGNS) -> dict:
    """Every design's candidates on every seed's data (same base, data and budget); per design the candidate with the
    best mean val accuracy, its test accuracy, its paired difference from Naive-SFT over seeds, and, for latent
    designs, the latent-usage audit of its students on paired test scenes.

    designs.json / designs.md are rewritten after every seed (without the audit until the last), and a rerun with the
    same settings reuses every student already trained (`finished_training`) and every audit already made, so an
    interrupted table loses nothing and continues where it stopped."""
    quiet_libraries()
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if designs[0][0] != "Naive-SFT":
        raise ValueError("the first design must be Naive-SFT: every other row is compared with it")
    val, test, pairs = eval_splits(cfg, out, pairs=True)
    # runs[design][candidate] = {"method", "overrides", "val": [...], "test": [...], "students": [...], ...}
    runs: dict[str, list[dict]] = {name: [{"method": m, "overrides": o, "val": [], "test": [], "per_kind": [],
                                           "students": [], "train_seconds": []} for m, o in candidates]
                                   for name, candidates in designs}
    filters: list[dict] = []
    for seed in range(cfg.seeds):
        say(f"seed {seed + 1}/{cfg.seeds}: pool draw {seed} → extract (with the teacher's top-k) → filter")
        prepared = prepare_seed(cfg, seed, out / f"seed{seed}")
        filters.append(prepared["filter"])
        for d, (name, candidates) in enumerate(designs):
            for c, (method, overrides) in enumerate(candidates):
                extra = {"teacher": str(Path(cfg.artifacts) / "teacher")} if method == "gkd" else {}
                train_cfg = student_config(cfg, method, prepared["data"], prepared["images"],
                                           out / f"seed{seed}" / f"design{d}_{c}", seed, **extra, **overrides)
                trained = finished_training(train_cfg) or run_training(
                    train_cfg, desc=f"seed {seed + 1}/{cfg.seeds} {name} ({_candidate_label(method, overrides)})")
                entry = runs[name][c]
                entry["students"].append(trained["student_dir"])
                entry["train_seconds"].append(trained["wall_seconds"])
                entry["val"].append(evaluate(trained["student_dir"], val)["accuracy"])
                result = evaluate(trained["student_dir"], test)
                entry["test"].append(result["accuracy"])
                entry["per_kind"].append(result["per_kind"] | result["per_prior"])
        audited = seed == cfg.seeds - 1 and pairs is not None
        result = {"rows": _design_rows(runs, pairs if audited else None), "filter": filters, "settings": asdict(cfg),
                  "seeds_done": seed + 1, "wall_seconds": time.time() - start}
        write_json_atomic(result, out / "designs.json")
        (out / "designs.md").write_text("\n".join(design_table_lines(result)) + "\n")
    return result


def _design_rows(runs: dict[str, list[dict]], pairs: Path | None) -> list[dict]:
    """Each design's row: the candidate chosen on val, its val and test accuracy, its paired test difference from
    Naive-SFT and, given the paired audit scenes, the audit of its students."""
    naive = runs["Naive-SFT"][0]
    table = []
    for name, candidates in runs.items():
        entry = candidates[choose_on_val([e["val"] for e in candidates])]
        row = {"design": name, "method": entry["method"], "chosen": entry["overrides"],
               "candidates": [{"method": e["method"], "overrides": e["overrides"], "val": _mean_ci(e["val"]),
                               "test": _mean_ci(e["test"])} for e in candidates],
               "val": _mean_ci(entry["val"]), "test": _mean_ci(entry["test"]),
               "per_kind": _mean_per_kind(entry["per_kind"]),
               "train_seconds": float(np.mean(entry["train_seconds"])), "students": entry["students"]}
        if name != "Naive-SFT":
            paired = paired_summary(entry["test"], naive["test"])
            paired["verdict"] = verdict(None if paired["ci95"] is None else tuple(paired["ci95"]))
            row["vs_naive_sft"] = paired
        if pairs is not None and entry["method"] in LATENT_METHODS:
            row["audit"] = summarise_audits([_cached_audit(student, pairs, seed)
                                             for seed, student in enumerate(entry["students"])])
        table.append(row)
    return table


def design_table_lines(result: dict) -> list[str]:
    """The markdown of `run_designs`: the accuracy table with the paired differences, then the audit table."""
    cfg = result["settings"]
    done = result.get("seeds_done", cfg["seeds"])
    partial = (f" **Partial: {done} of {cfg['seeds']} seeds done; the audit comes with the last seed (rerun the same "
               "command to continue).**" if done < cfg["seeds"] else "")
    lines = [f"# Latent designs and distillation baselines in the toy world ({cfg['world_name']} world)", "",
             f"Same base, data and budget ({cfg['steps']} steps) for every row, {done} seeds; accuracy (%), "
             "mean [95 % t interval] over seeds. Each design's setting was chosen on val among its candidates; test "
             "is reported for the chosen one only. Δ = paired test difference from Naive-SFT over seeds." + partial, "",
             "| design | chosen setting | val | test | Δ vs Naive-SFT | verdict | train s/run |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        setting = ", ".join(f"{k}={v}" for k, v in r["chosen"].items()) or "—"
        if len(r["candidates"]) > 1:
            setting += " (of " + "; ".join(", ".join(f"{k}={v}" for k, v in c["overrides"].items()) + f": val "
                                          f"{100 * c['val']['mean']:.1f}" for c in r["candidates"]) + ")"
        p = r.get("vs_naive_sft")
        diff = "—" if p is None else signed_pct_ci(p["mean"], p["ci95"])
        lines.append(f"| {r['design']} | {setting} | {_pct_ci(r['val'])} | {_pct_ci(r['test'])} | {diff} | "
                     f"{'—' if p is None else p['verdict']} | {r['train_seconds']:.0f} |")
    audited = [r for r in result["rows"] if "audit" in r]
    if audited:
        lines += ["", "Latent-usage audit of each latent design's chosen students on paired test scenes: Δ accuracy "
                  "vs forced (points, mean [95 % t] over seeds) per intervention and diagnostic arm; natural-mode "
                  "emission (% of items with any latent / all K latents first, own prompt); how often the answer "
                  "follows the donor under swap / oracle_donor (% of items whose donor's answer differs); and the "
                  "norm ratio to the prompt's text embeddings of the latents' final states / of their input "
                  "embeddings (docs/audit.md).", "",
                  "| design | " + " | ".join(AUDIT_COLUMNS) + " | emission | follows donor | norm ratio |",
                  "|---" * (len(AUDIT_COLUMNS) + 4) + "|"]
        for r in audited:
            emission, norm = _measure_cells(r["audit"])
            cells = [*(_audit_cell(r["audit"], c) for c in AUDIT_COLUMNS), emission, _follows_cell(r["audit"]), norm]
            lines.append(f"| {r['design']} | " + " | ".join(cells) + " |")
    return lines


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
        lines.append(f"| {s['pool_samples']} | {np.mean(s['training_samples']):.0f} | {_pct_ci(s['naive_sft'])} | "
                     f"{_pct_ci(s['lavit'])} | {signed_pct_ci(p['mean'], p['ci95'])} | {p['verdict']} |")
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
