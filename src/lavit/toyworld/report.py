"""`report.md` of a demo run: the testbed's validity first, then the verdict read off the paired
confidence interval, then the numbers and diagnostics behind it — whatever the outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lavit.analysis.stats import t_interval
from lavit.toyworld.latent_audit import audit_table_lines
from lavit.toyworld.validity import failures, premise_validity

MODELS = ("base", "naive_sft", "lavit", "teacher")
# The answer depends on the latent tokens when masking them costs at least one point on average and the 95 % t
# interval of the drop over seeds lies above 0 (one seed's large drop is not a dependence).
READS_LATENTS = 0.01
VERDICT_TEXT = {
    "lavit_better": "LaViT is **better** than Naive-SFT: the whole 95 % interval of the paired difference is above 0.",
    "naive_better": "Naive-SFT is **better** than LaViT: the whole 95 % interval of the paired difference is below 0.",
    "no_detectable_difference": "**No detectable difference** between LaViT and Naive-SFT: the 95 % interval of the "
                                "paired difference contains 0.",
}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ci(summary: dict | None) -> str:
    if summary is None:
        return "—"
    ci = summary["ci95"]
    interval = "n/a (one seed)" if ci is None else f"[{_pts(ci[0])}, {_pts(ci[1])}]"
    return f"{_pts(summary['mean'])} points, 95 % CI {interval}"


def validity_lines(validity: dict) -> list[str]:
    lines = ["| criterion | value | threshold | pass |", "|---|---|---|---|"]
    for name, c in validity.items():
        value = _num(c["value"])
        lines.append(f"| {c['description']} (`{name}`) | {value} | {c['comparison']} {c['threshold']} | "
                     f"{'yes' if c['pass'] else '**NO**'} |")
    failed = failures(validity)
    lines.append("")
    if failed:
        lines.append(f"**The testbed failed {len(failed)} of {len(validity)} validity checks ({', '.join(failed)}).** "
                     "The comparison below is reported as measured, but it is not a valid test of the paper's claims "
                     "until these pass.")
    else:
        lines.append(f"All {len(validity)} validity checks pass: the teacher perceives and looks at the evidence, "
                     "perception is learnable at the student's size, the base relies on the prior, fine-tuning does "
                     "not wreck it, and the text-only model is the prior.")
    return lines


def all_validity(results: dict) -> dict:
    """The run's validity checks plus, in the premise world, its two premise checks (read off the results)."""
    return results["validity"] | premise_validity(results)


def verdict_lines(results: dict) -> list[str]:
    paired = results["paired_difference"]
    n = paired["n"]
    failed = failures(all_validity(results))
    lines = [f"- **Testbed not valid on this run** (failed: {', '.join(failed)}): read what follows as a measurement "
             "of this setup, not as evidence for or against LaViT."] if failed else []
    lines += [f"- {VERDICT_TEXT[paired['verdict']]} LaViT − Naive-SFT test accuracy over {n} paired seed"
             f"{'s' * (n > 1)}: {_ci(paired)} (per seed: {', '.join(_pts(d) for d in paired['per_seed'])})."]
    for split, summary in paired["per_split"].items():
        lines.append(f"- {split.replace('_', '-')} questions: {_ci(summary)}.")
    latent, masked = results["latent_map"], results["masked_drop"]
    lines.append(f"- **Do the latents look where the teacher looks?** KL(teacher target ‖ latent map) "
                 f"{_num(latent['lavit']['kl_target_vs_latent'])} for the trained LaViT student vs "
                 f"{_num(latent['base']['kl_target_vs_latent'])} for the same positions before training; latent-map "
                 f"S_focus {_num(latent['lavit']['s_focus'])} vs {_num(latent['base']['s_focus'])}.")
    lines.append(f"- **Does the answer read them?** Masking the latents at inference changes test accuracy by "
                 f"{_pts(-masked['mean'])} points (masked_drop {_pts(masked['mean'])}).")
    foc = results["s_focus"]
    lines.append(f"- **Answer-time attention:** answer-token S_focus LaViT {_num(foc['lavit'])}, Naive-SFT "
                 f"{_num(foc['naive_sft'])}, base {_num(foc['base'])}, teacher {_num(foc['teacher'])} (seed 0).")
    lines.append("- These are toy-world numbers from tiny models: they test the machinery and the direction of the "
                 "paper's claims, not its magnitudes.")
    return lines


def diagnosis_lines(results: dict) -> list[str]:
    """The mechanism chain of the paper, link by link, read off this run's diagnostics: do the latents learn
    the teacher's map, does the answer depend on them, and does it reach the image some other way."""
    latent, masked = results["latent_map"], results["masked_drop"]["mean"]
    ci = t_interval(results["masked_drop"]["per_seed"])
    depends = masked >= READS_LATENTS and ci is not None and ci[0] > 0
    learned = latent["lavit"]["kl_target_vs_latent"] < latent["base"]["kl_target_vs_latent"]
    end_mass = {m: float(np.mean([records[-1]["answer_image_mass"] for records in runs.values()]))
                for m, runs in results["dynamics"].items()}
    warmup = round(results["settings"]["steps"] * results["settings"]["gate_warmup_fraction"])
    lines = [f"1. The latent tokens **{'learn' if learned else 'do not learn'}** the teacher's map: KL(target ‖ "
             f"latent map) {_num(latent['base']['kl_target_vs_latent'])} before training → "
             f"{_num(latent['lavit']['kl_target_vs_latent'])} after, latent-map S_focus "
             f"{_num(latent['base']['s_focus'])} → {_num(latent['lavit']['s_focus'])}.",
             f"2. The answer **{'depends' if depends else 'does not depend'}** on them: hiding the latents at "
             f"inference changes test accuracy by {_pts(-masked)} points"
             + ("." if ci is None else f" (95 % t interval over seeds {_pts(-ci[1])} to {_pts(-ci[0])})."),
             f"3. After the gate opens (γ = 1 from step {warmup}) the answer tokens read the image directly: at the "
             f"end of training {_num(end_mass.get('lavit'), 2)} of their attention is on the image tokens "
             f"(Naive-SFT {_num(end_mass.get('naive_sft'), 2)}). A one-token answer is predicted one position "
             "earlier, by the readout (the last latent), which the paper's gate never covers: it sees the image "
             "throughout training."]
    audit = results.get("audit")
    if audit:
        rows = {r["intervention"]: r for r in audit["table"] if r["applicable"]}
        parts = [f"{name} {_pts(rows[name]['difference'])}" for name in ("zero", "random", "swap") if name in rows]
        follows = rows.get("swap", {}).get("follows_donor")
        lines.insert(2, f"   The audit ({audit['items']} paired scenes): replacing the states of latents 1..{audit['k'] - 1} "
                        f"changes accuracy by {', '.join(parts)} points (means over seeds)"
                        + (f"; swapped answers follow the donor scene {_pct(follows)} % of the time where the two "
                           "scenes' answers differ." if follows is not None else "."))
    if not depends and results["paired_difference"]["verdict"] != "lavit_better":
        lines += ["", f"So the chain breaks at its second link{' (its first holds)' if learned else ''}: the answer reaches "
                  "the image through its own attention once the gate is open and does not need the latents. The "
                  "in-method remedies (λ, T_w, K, Top-K, "
                     "question-token gating, learning rate) are compared on val by `lavit ablate --rows remedies`; "
                     "docs/demo.md records their results."]
    return lines


def audit_lines(audit: dict | None) -> list[str]:
    """The latent-usage audit of the LaViT students (docs/audit.md), or nothing when not run."""
    if not audit:
        return []
    k = audit["k"]
    c = audit["collapse"]
    return [f"## Latent-usage audit ({audit['items']} paired test scenes, LaViT students, {audit['seeds']} seeds)", "",
            f"The states of latents 1..{k - 1} at every decoder layer replaced (zero, first-repeat, another scene's: "
            f"random, the paired scene's: swap), the latents removed (none) or masked; the readout (latent {k}, "
            "which predicts the answer) keeps its own view of image and question. Accuracy in %, Δ in points, "
            "means over seeds.", "", *audit_table_lines(audit), "",
            f"Collapse at the last layer (mean pairwise cosine / effective rank): latents 1..{k - 1} "
            f"{_num(c['latents']['mean_pairwise_cosine'])} / {_num(c['latents']['effective_rank'], 1)}, readout "
            f"{_num(c['readout']['mean_pairwise_cosine'])} / {_num(c['readout']['effective_rank'], 1)}, last prompt "
            f"token {_num(c['last_prompt_token']['mean_pairwise_cosine'])} / "
            f"{_num(c['last_prompt_token']['effective_rank'], 1)}.", ""]


def write_report(path: Path, results: dict, analysis: dict) -> None:
    settings = results["settings"]
    lines = ["# LaViT in the toy world", "",
             f"{settings['seeds']} seeds, world {settings['world_seed']}, pool {settings['pool_samples']} scenes per "
             f"seed, {settings['steps']} steps × batch {settings['batch_size']} at lr {settings['learning_rate']}, "
             f"replay {settings['replay']}; wall time {results['wall_seconds']:.0f} s. Settings in results.json.", "",
             "## Is this a valid test?", "", *validity_lines(all_validity(results)), "",
             "## Verdict", "", *verdict_lines(results), "",
             "## Reading the diagnostics", "", *diagnosis_lines(results), ""]
    acc = results["accuracy"]["test"]
    cols = ("overall", "prior_consistent", "prior_violating", "color", "shape")
    lines += ["## Accuracy on the held-out test split (%)", "",
              "| model | " + " | ".join(c.replace("_", "-") for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in ("base", "naive_sft", "lavit", "teacher"):
        lines.append(f"| {m} | " + " | ".join(_pct(acc[m].get(c)) for c in cols) + " |")
    lines.append(f"| lavit, latents masked | {_pct(acc['lavit_masked']['overall'])} |" + " |" * (len(cols) - 1))
    lines += ["", "Students: mean over seeds. Prior-consistent questions are those the language prior alone answers "
              "right; prior-violating ones need the image.", "",
              "| seed | Naive-SFT | LaViT | LaViT − Naive-SFT | LaViT, latents masked |", "|---|---|---|---|---|"]
    by_seed = results["accuracy"]["by_seed"]
    for i, (a, b, c) in enumerate(zip(by_seed["naive_sft"], by_seed["lavit"], by_seed["lavit_masked"])):
        lines.append(f"| {i} | {_pct(a)} | {_pct(b)} | {_pts(b - a)} | {_pct(c)} |")
    latent = results["latent_map"]
    lines += ["", f"## Mechanism diagnostics ({latent['samples']} test samples, mean over seeds)", "",
              "| latent tokens of | KL(target ‖ latent map) | latent-map S_focus |", "|---|---|---|",
              f"| LaViT student | {_num(latent['lavit']['kl_target_vs_latent'])} | {_num(latent['lavit']['s_focus'])} |",
              f"| base, same positions (step 0) | {_num(latent['base']['kl_target_vs_latent'])} | "
              f"{_num(latent['base']['s_focus'])} |", "",
              f"masked_drop (forced − latents masked, test): {_pts(results['masked_drop']['mean'])} points "
              f"(per seed {', '.join(_pts(d) for d in results['masked_drop']['per_seed'])}).", "",
              "Training dynamics (γ, the answer's attention mass on the image, latent S_focus, answer accuracy on a "
              "fixed val batch): `analysis/dynamics_lavit.png`, `analysis/dynamics_naive_sft.png`.", "",
              *audit_lines(results.get("audit")),
              "## Data: extraction and the three-stage filter", "",
              "| seed | pool | extracted ok | kept | replayed | dropped: correctness | difficulty | alignment | other |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in results["seeds"]:
        d = s["filter"]["dropped_by_stage"]
        lines.append(f"| {s['seed']} | {s['filter']['input_rows']} | {s['extract']['ok']} | {s['filter']['kept']} | "
                     f"{s['filter']['replayed']} | {d.get('correctness', 0)} | {d.get('difficulty', 0)} | "
                     f"{d.get('alignment', 0)} | {d.get('extract', 0) + d.get('invalid_signal', 0)} |")
    lines += ["", f"## Attention statistics (Table 2 style, {analysis['samples']} test samples, answer tokens, seed 0)",
              "", "| model | S_focus mean | entropy mean | entropy σ | entropy CV | salient mean | salient σ | "
              "salient range | salient CV |", "|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        pm = analysis["per_model"][m]
        e, s = pm["attention_entropy"], pm["salient_regions"]
        lines.append(f"| {m} | {_num(pm['s_focus']['mean'])} | {_num(e['mean'])} | {_num(e['std'])} | {_num(e['cv'])} "
                     f"| {_num(s['mean'], 1)} | {_num(s['std'], 1)} | {s['min']:.0f}–{s['max']:.0f} | {_num(s['cv'])} |")
    lines += ["", "Answer-token maps are the attention of the queries that produce the answer's tokens (as in "
              "generation), averaged over layers and heads.", "",
              "## Perception gap against the teacher (Fig. 3)", "",
              "| model | KL functional | KL object | KL attribute | cos functional | cos object | cos attribute |",
              "|---|---|---|---|---|---|---|"]
    for m in ("base", "naive_sft", "lavit"):
        g = analysis["perception_gap"][m]
        lines.append(f"| {m} | " + " | ".join(_num(g["kl_by_category"][c]) for c in ("functional", "object", "attribute"))
                     + " | " + " | ".join(_num(g["cosine_distance_by_category"][c])
                                          for c in ("functional", "object", "attribute")) + " |")
    lines += ["", "## S_focus and correctness (Fig. 2)", ""]
    for m in MODELS:
        pm = analysis["per_model"][m]
        if "mean_s_focus_correct" in pm:
            lines.append(f"- {m}: mean S_focus {_num(pm['mean_s_focus_correct'])} on correct answers, "
                         f"{_num(pm['mean_s_focus_incorrect'])} on wrong ones.")
    lines += ["", "## Figures", ""]
    for key, rel in results["figures"].items():
        lines.append(f"![{key}]({rel})")
    lines.append("")
    path.write_text("\n".join(lines))
