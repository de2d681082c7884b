"""`lavit demo`: the whole paper in the toy world, on a laptop CPU, as a checked experiment.

    lavit demo --out runs/demo                    # 5 seeds, a few minutes on 2 cores
    lavit demo --out runs/demo2 --world-seed 1    # the same world, other pool/val/test scenes
    lavit demo --out runs/demo_q3 --student-family qwen3_vl   # Qwen3-VL students of the Qwen2.5-VL teacher

World → toy teacher (committed artifact, see `lavit.toyworld.artifacts`) → per seed: `lavit extract` on
the seed's pool draw → `lavit filter` (teacher correct, text-only model wrong, S_focus ≥ 0.2), plus
replayed samples that failed only the difficulty stage → Naive-SFT and LaViT trained from the same base
with the same data and budget → every model on the held-out val and test splits → paired LaViT −
Naive-SFT differences with a t interval → mechanism diagnostics (latent maps vs the teacher's target,
masked-latent drop, training dynamics) → Perception-Gap analysis → the testbed's validity checks →
`report.md` + `results.json` + figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import set_seed

from lavit.analysis.analyze import analyze
from lavit.analysis.figures import dynamics_figure
from lavit.analysis.latent_maps import BoxedSample, DynamicsCallback, build_probe_set, latent_map_stats
from lavit.analysis.stats import mean_of_present, paired_summary, verdict
from lavit.config import build_config, field
from lavit.console import quiet_libraries, say
from lavit.data.samples import open_rgb
from lavit.data.signal_store import read_store
from lavit.data.targets import build_traj_target
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.models.families import family_named
from lavit.models.gating import InferenceGate
from lavit.models.lavit_student import LavitStudent
from lavit.models.tiny import build_tiny_tokenizer
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.teacher.filter import run_filter
from lavit.teacher.filter_config import FilterConfig
from lavit.toyworld.artifacts import WORLD_ARTIFACTS, budget_for, build_artifacts
from lavit.toyworld.latent_audit import audit_student, summarise_audits
from lavit.toyworld.models import BLANK_IMAGE, TOY_STUDENT_SPEC, blank_image, toy_accuracy, toy_pixels
from lavit.toyworld.report import write_report
from lavit.toyworld.validity import check_validity, premise_validity
from lavit.toyworld.world import WorldConfig, write_split
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import build_student, run_training

STUDENTS = ("naive_sft", "lavit")
SPLITS = ("prior_consistent", "prior_violating")


@dataclass
class DemoConfig:
    out: str = field("runs/demo", "Output directory: report.md, results.json, figures, one folder per seed.")
    seeds: int = field(5, "Student seeds: seed s extracts draw s of the world's pool stream and initialises both "
                       "students with s, so every seed is one paired comparison.")
    world_name: str = field("default", "Which world (`lavit demo --world`): default (2–3 distinct shapes) or premise "
                            "(3–5 objects whose shapes may repeat: finding the evidence among distractors is the "
                            "hard part). An empty `artifacts` picks the world's committed toy models.")
    world_seed: int = field(0, "Which stream of the world the pool, val and test scenes come from (the committed "
                            "toy models were trained on world 0's other splits and stay valid for any).")
    pool_samples: int = field(2000, "Scenes the teacher extracts per seed before filtering.")
    val_samples: int = field(300, "Held-out val questions (validity checks, settings).")
    test_samples: int = field(300, "Held-out test questions (final numbers only).")
    replay: float = field(1.0, "Replayed samples per filtered sample: rows that passed correctness and alignment "
                          "but failed only the difficulty stage (the text-only model answers them), so both students "
                          "keep seeing prior-consistent questions. 0 = the paper's filtered set alone.")
    steps: int = field(200, "Optimiser steps per student.")
    batch_size: int = field(16, "Samples per step.")
    learning_rate: float = field(3e-4, "Peak learning rate of both students.")
    gate_warmup_fraction: float = field(0.4, "T_w as a fraction of the steps (paper: 400 of 1000).")
    analysis_samples: int = field(120, "Test samples in the Perception-Gap analysis (seed 0's students).")
    diagnostic_samples: int = field(96, "Test samples for the latent-map diagnostics; the first 32 val samples "
                                    "are the training-dynamics probe.")
    dynamics_every: int = field(10, "Record the training dynamics every N steps.")
    audit_samples: int = field(120, "Paired test scenes (two per question, different answers) on which every LaViT "
                               "student's latent use is audited (`lavit audit`'s interventions); 0 = no audit.")
    artifacts: str = field("", "Directory of the toy teacher, base and text-only models ('' = the world's "
                           "committed ones, lavit/toyworld/artifacts or artifacts_premise).")
    student_overrides: dict = field({}, "Extra `lavit train` settings for both students (experiments, ablations).")
    student_family: str = field("", "Model family of the base and both students: qwen2_vl, qwen2_5_vl, qwen3_vl "
                                "('' = the committed base's, qwen2_5_vl). Another family is distilled from the "
                                "Qwen2.5-VL toy teacher across families; its base (and its capacity check) is "
                                "pretrained once like the committed one, under OUT/artifacts-FAMILY (~15 min on 2 "
                                "cores).")

    def __post_init__(self) -> None:
        checks = [(self.seeds >= 1, "seeds must be >= 1"), (self.world_seed >= 0, "world_seed must be >= 0"),
                  (self.steps >= 1, "steps must be >= 1"), (self.pool_samples >= 8, "pool_samples must be >= 8"),
                  (self.val_samples >= 4 and self.test_samples >= 4, "val_samples and test_samples must be >= 4"),
                  (self.replay >= 0, "replay must be >= 0"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.learning_rate > 0, "learning_rate must be > 0"),
                  (0 <= self.gate_warmup_fraction <= 1, "gate_warmup_fraction must be in [0, 1]"),
                  (self.analysis_samples >= 1 and self.diagnostic_samples >= 1,
                   "analysis_samples and diagnostic_samples must be >= 1"),
                  (self.dynamics_every >= 1, "dynamics_every must be >= 1"),
                  (self.audit_samples >= 0 and self.audit_samples % 2 == 0, "audit_samples must be even and >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.world_name not in WORLD_ARTIFACTS:
            raise ValueError(f"world must be one of {sorted(WORLD_ARTIFACTS)}, got {self.world_name!r}")
        self.artifacts = self.artifacts or str(WORLD_ARTIFACTS[self.world_name])
        missing = [r for r in ("teacher", "base", "text_only") if not (Path(self.artifacts) / r / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"toy artifacts {missing} missing in {self.artifacts}; build them with "
                                    f"`python -m lavit.toyworld.artifacts --out {self.artifacts} "
                                    f"--world {self.world_name}`")
        record = Path(self.artifacts) / "artifacts.json"
        built = json.loads(record.read_text()).get("world_name", "default") if record.is_file() else "default"
        if built != self.world_name:
            raise ValueError(f"{self.artifacts} holds models of the {built!r} world, not {self.world_name!r}; pass "
                             "--artifacts of that world or leave it empty for the committed ones")
        family = family_named(self.family)
        if family.is_hybrid(family.tiny_config(build_tiny_tokenizer(), TOY_STUDENT_SPEC).text_config):
            raise ValueError(f"student family {self.family}: the demo's masked-latent diagnostic (Table 3's 'w/o "
                             "latent tokens') cannot hide latents from linear-attention layers; train and evaluate "
                             "hybrid students with `lavit train` / `lavit eval` instead")

    @property
    def committed_family(self) -> str:
        """The model family of the committed base student."""
        return json.loads((Path(self.artifacts) / "base" / "config.json").read_text())["model_type"]

    @property
    def family(self) -> str:
        """The students' model family: as set, else the committed base's."""
        return self.student_family or self.committed_family

    @property
    def student_artifacts(self) -> Path:
        """Where the students' base and capacity record live: the committed artifacts for their family, else
        OUT/artifacts-FAMILY (built by `prepare_student_artifacts` when missing)."""
        family = self.family
        return Path(self.artifacts) if family == self.committed_family else Path(self.out) / f"artifacts-{family}"

    @property
    def world(self) -> WorldConfig:
        """The world of the committed models (their artifacts.json), so val/test match what they learnt."""
        record = Path(self.artifacts) / "artifacts.json"
        saved = json.loads(record.read_text()).get("world") if record.is_file() else None
        return WorldConfig(**saved) if saved else WorldConfig()


def evaluate(path: str, split: Path, mode: str | None = None, image_override: Path | None = None) -> dict:
    """Greedy accuracy of a toy model or exported student on a world split (students: latents forced)."""
    meta = read_lavit_meta(path)
    latents = meta.get("latent_tokens", [])
    model, processor = load_for_inference(path)
    return toy_accuracy(model, processor, split, latent_tokens=latents, mode=mode or ("forced" if latents else "none"),
                        system_prompt=meta.get("system_prompt") or None, image_override=image_override,
                        gate=InferenceGate.from_meta(meta))


def student_config(cfg: DemoConfig, method: str, data: list[Path], image_root: Path, out: Path, seed: int,
                   **overrides) -> LavitTrainConfig:
    values = dict(model=str(cfg.student_artifacts / "base"), method=method, data=[str(d) for d in data],
                  image_root=str(image_root), output_dir=str(out), max_steps=cfg.steps, global_batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, warmup_ratio=0.05,
                  gate_warmup_steps=round(cfg.steps * cfg.gate_warmup_fraction), gradient_checkpointing=False,
                  system_prompt="", logging_steps=max(cfg.steps // 20, 1), save_steps=cfg.steps, save_total_limit=1,
                  seed=seed, min_pixels=toy_pixels(cfg.family, cfg.world), max_pixels=toy_pixels(cfg.family, cfg.world),
                  overwrite=True)  # a rerun of the demo trains every student again, as its filter runs do
    values.update(cfg.student_overrides)
    values.update(overrides)
    return build_config(LavitTrainConfig, values)  # the overrides are text: read them as their fields' types


def eval_splits(cfg: DemoConfig, out: Path, pairs: bool) -> tuple[Path, Path, Path | None]:
    """The held-out val and test splits under `out`/data and, with `pairs` (and cfg.audit_samples), the paired test
    scenes of the latent-usage audit under `out`/data/audit (else None): the same scenes on every call."""
    data, world = out / "data", cfg.world
    val = write_split(data, "val", cfg.val_samples, world_seed=cfg.world_seed, cfg=world)
    test = write_split(data, "test", cfg.test_samples, world_seed=cfg.world_seed, cfg=world)
    audit = (write_split(data / "audit", "test", cfg.audit_samples, world_seed=cfg.world_seed, cfg=world, pairs=True)
             if pairs and cfg.audit_samples else None)
    return val, test, audit


def boxed_samples(split: Path, n: int) -> list[BoxedSample]:
    rows = [json.loads(line) for line in split.read_text().splitlines() if line.strip()][:n]
    images = split.parent / "images"
    return [BoxedSample(r["id"], open_rgb(images / r["image"]), r["question"], r["answer"], r["bbox"])
            for r in rows]


def extract(cfg: DemoConfig, samples: Path, out: Path, seed: int) -> dict:
    """The toy teacher's signals of `samples`, with its top-8 next tokens at each answer token (what method=kd and
    lavit_kd train on; 8 of the toy vocabulary's 109 tokens)."""
    return run_extract(ExtractConfig(samples=str(samples), image_root=str(samples.parent / "images"), out=str(out),
                                     teacher=str(Path(cfg.artifacts) / "teacher"), queries="answer", batch_size=64,
                                     max_new_tokens=4, seed=seed, kd_top_k=8))


def prepare_seed(cfg: DemoConfig, seed: int, root: Path) -> dict:
    """The seed's pool draw → teacher signals → the LaViT-SFT set (+ replayed samples)."""
    data = root / "data"
    pool = write_split(data, "pool", cfg.pool_samples, world_seed=cfg.world_seed, draw=seed, cfg=cfg.world)
    extracted = extract(cfg, pool, root / "signals", seed)
    blank = blank_image(data / "images" / BLANK_IMAGE)
    report = run_filter(FilterConfig(signals=str(root / "signals"), out=str(root / "lavit_sft"),
                                     text_model=str(Path(cfg.artifacts) / "text_only"), text_only_image=str(blank),
                                     max_new_tokens=4, batch_size=64, overwrite=True))
    sets, replayed = [root / "lavit_sft"], 0
    if cfg.replay > 0 and report["kept"]:
        # Everything but the difficulty stage, minus the kept rows: the questions the prior alone answers.
        run_filter(FilterConfig(signals=str(root / "signals"), out=str(root / "no_difficulty"),
                                stages=["correctness", "alignment"], overwrite=True))
        kept = set(read_store(root / "lavit_sft", columns=["id"]).column("id").to_pylist())
        candidates = read_store(root / "no_difficulty")
        candidates = candidates.filter(pa.array([i not in kept for i in candidates.column("id").to_pylist()]))
        n = min(round(cfg.replay * report["kept"]), candidates.num_rows)
        pick = np.sort(np.random.default_rng(seed).permutation(candidates.num_rows)[:n])
        (root / "replay").mkdir(exist_ok=True)
        pq.write_table(candidates.take(pa.array(pick)), root / "replay" / "replay.parquet")
        sets.append(root / "replay")
        replayed = n
    if report["kept"] + replayed < cfg.batch_size:
        raise ValueError(f"the filter kept only {report['kept']} samples; raise pool_samples")
    return {"extract": extracted["store_counts"],
            "filter": {k: report[k] for k in ("input_rows", "kept", "dropped_by_stage")} | {"replayed": replayed},
            "data": sets, "images": data / "images"}


def teacher_targets(store: Path, samples: list[BoxedSample], student_grid: tuple[int, int, int], top_k: int):
    """The L_traj targets (eq. 3 + Top-K, on the student's grid) of the teacher's test-split signals."""
    table = read_store(store, columns=["id", "status", "a_traj", "a_traj_grid"]).to_pylist()
    rows = {r["id"]: r for r in table if r["status"] == "ok"}
    missing = [s.id for s in samples if s.id not in rows]
    if missing:
        raise ValueError(f"the teacher has no signals for test samples {missing[:5]}")
    return torch.stack([build_traj_target(rows[s.id]["a_traj"], rows[s.id]["a_traj_grid"], student_grid, top_k)
                        for s in samples])


def latent_maps(student_dir: str, start_cfg: LavitTrainConfig, probe_samples: list[BoxedSample],
                targets: torch.Tensor) -> dict:
    """Latent maps of the trained LaViT student and, from the same positions, of its step-0 state (the base
    with freshly added latent tokens, exactly as training started: same seed, same initialisation)."""
    meta = read_lavit_meta(student_dir)
    model, processor = load_for_inference(student_dir)
    trained = LavitStudent(model, processor.tokenizer.convert_tokens_to_ids(meta["latent_tokens"]))
    probe = build_probe_set(processor, probe_samples, meta["latent_tokens"], system_prompt=None)
    set_seed(start_cfg.seed)
    start, start_processor, names = build_student(start_cfg, meta["teacher_dim"])
    start_probe = build_probe_set(start_processor, probe_samples, names, system_prompt=None)
    return {"lavit": latent_map_stats(trained.eval(), probe, targets),
            "base": latent_map_stats(start.eval(), start_probe, targets)}



def run_demo(cfg: DemoConfig) -> dict:
    quiet_libraries()
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    art = Path(cfg.artifacts)
    world = cfg.world
    say(f"lavit demo: world {cfg.world_seed}, {cfg.seeds} seeds, pool {cfg.pool_samples}, {cfg.steps} steps "
        f"→ {out}")
    students = prepare_student_artifacts(cfg)
    val, test, audit_split = eval_splits(cfg, out, pairs=True)
    blank = blank_image(out / "data" / "images" / BLANK_IMAGE)
    say("fixed models: teacher, base and text-only on val and test")
    fixed = {name: {"val": evaluate(str(where / name), val), "test": evaluate(str(where / name), test)}
             for name, where in (("teacher", art), ("base", students))}
    fixed["text_only"] = {"val": evaluate(str(art / "text_only"), val, image_override=blank)}
    extract(cfg, test, out / "test_signals", 0)
    diagnostics = boxed_samples(test, cfg.diagnostic_samples)
    dynamics_probe = boxed_samples(val, 32)

    seeds = []
    for seed in range(cfg.seeds):
        root = out / f"seed{seed}"
        say(f"seed {seed + 1}/{cfg.seeds}: pool draw {seed} → extract → filter")
        prepared = prepare_seed(cfg, seed, root)
        say(f"seed {seed + 1}/{cfg.seeds}: {prepared['filter']['kept']} filtered + {prepared['filter']['replayed']} "
            "replayed samples; training both students")
        runs = {}
        for method in STUDENTS:
            dyn = DynamicsCallback(dynamics_probe, cfg.dynamics_every)
            train_cfg = student_config(cfg, method, prepared["data"], prepared["images"], root / method, seed)
            trained = run_training(train_cfg, callbacks=[dyn], desc=f"seed {seed + 1}/{cfg.seeds} {method}")
            runs[method] = {"dir": trained["student_dir"], "val": evaluate(trained["student_dir"], val),
                            "test": evaluate(trained["student_dir"], test), "train_loss": trained["train_loss"],
                            "dynamics": dyn.records, "config": train_cfg}
        lavit = runs["lavit"]
        lavit["test_masked"] = evaluate(lavit["dir"], test, mode="masked")
        if audit_split is not None:
            lavit["audit"] = audit_student(lavit["dir"], audit_split, seed=seed)
        targets = teacher_targets(out / "test_signals", diagnostics, world_grid(world), lavit["config"].traj_top_k)
        lavit["latent_map"] = latent_maps(lavit["dir"], lavit["config"], diagnostics, targets)
        seeds.append({"seed": seed, "extract": prepared["extract"], "filter": prepared["filter"], "runs": runs})
        say(f"seed {seed + 1}/{cfg.seeds}: test accuracy naive_sft {100 * runs['naive_sft']['test']['accuracy']:.1f}, "
            f"lavit {100 * lavit['test']['accuracy']:.1f}")

    say("analysis: answer-token attention of teacher, base and seed 0's students on test")
    first = seeds[0]["runs"]
    models = {"teacher": str(art / "teacher"), "base": str(students / "base"), "naive_sft": first["naive_sft"]["dir"],
              "lavit": first["lavit"]["dir"]}
    correct = {"teacher": fixed["teacher"]["test"]["correct"], "base": fixed["base"]["test"]["correct"],
               "naive_sft": first["naive_sft"]["test"]["correct"], "lavit": first["lavit"]["test"]["correct"]}
    toy = toy_pixels(cfg.family, cfg.world)  # the base was pretrained at the students' limits; the teacher's: its store
    analysis = analyze(test, test.parent / "images", models, out / "analysis", correct=correct,
                       max_samples=cfg.analysis_samples, teacher_store=out / "test_signals",
                       pixels={"base": {"min_pixels": toy, "max_pixels": toy}})
    results = summarise(cfg, world, fixed, seeds, analysis, students)
    results["validity"] |= premise_validity(results)  # the premise world's two checks (none in the default world)
    figures = {f"dynamics_{m}": f"analysis/dynamics_{m}.png" for m in STUDENTS}
    for m in STUDENTS:
        dynamics_figure(out / figures[f"dynamics_{m}"], {s["seed"]: s["runs"][m]["dynamics"] for s in seeds},
                        title=f"{m}: training dynamics ({cfg.seeds} seeds)")
    results["figures"] = {**{k: f"analysis/{v}" for k, v in analysis["figures"].items()}, **figures}
    results["wall_seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out / "report.md", results, analysis)
    return results


def prepare_student_artifacts(cfg: DemoConfig) -> Path:
    """`cfg.student_artifacts`, with a base of this family's budget (`budget_for`) and a capacity record: what is
    missing there, or a base of another budget, is pretrained first, on the committed models' world."""
    where = cfg.student_artifacts
    if where == Path(cfg.artifacts):  # the committed models' own family: used as they are
        return where
    record = where / "artifacts.json"
    models = json.loads(record.read_text()).get("models", {}) if record.is_file() else {}
    budget = budget_for(cfg.family, cfg.world_name)
    base_ready = models.get("base", {}).get("budget") == asdict(budget) and (where / "base" / "config.json").is_file()
    todo = [role for role, ready in (("base", base_ready), ("capacity", "capacity" in models)) if not ready]
    if todo:
        say(f"pretraining the {cfg.family} student artifacts {todo} → {where} (once)")
        build_artifacts(where, budget, cfg.world, roles=tuple(todo), student_family=cfg.family,
                        world_name=cfg.world_name)
    return where


def world_grid(world: WorldConfig) -> tuple[int, int, int]:
    return 1, world.grid, world.grid


def summarise(cfg: DemoConfig, world: WorldConfig, fixed: dict, seeds: list[dict], analysis: dict,
              students: Path) -> dict:
    def per_seed(method: str, split: str = "test", key: str | None = None) -> list[float | None]:
        scores = [s["runs"][method][split] for s in seeds]
        return [sc["accuracy"] if key is None else sc["per_prior"][key] for sc in scores]

    def fixed_scores(name: str, split: str) -> dict:
        sc = fixed[name][split]
        return {"overall": sc["accuracy"], **sc["per_prior"], **sc["per_kind"]}

    def student_scores(method: str, split: str) -> dict:
        runs = [s["runs"][method][split] for s in seeds]
        kinds = sorted({k for r in runs for k in r["per_kind"]})
        return {"overall": mean_of_present([r["accuracy"] for r in runs]),
                **{k: mean_of_present([r["per_prior"][k] for r in runs]) for k in SPLITS},
                **{k: mean_of_present([r["per_kind"].get(k) for r in runs]) for k in kinds}}

    paired = paired_summary(per_seed("lavit"), per_seed("naive_sft"))
    per_split = {}
    for key in SPLITS:
        a, b = per_seed("lavit", key=key), per_seed("naive_sft", key=key)
        per_split[key] = paired_summary(a, b) if None not in a + b else None
    paired["per_split"] = per_split
    paired["verdict"] = verdict(None if paired["ci95"] is None else tuple(paired["ci95"]))

    masked = [s["runs"]["lavit"]["test"]["accuracy"] - s["runs"]["lavit"]["test_masked"]["accuracy"] for s in seeds]
    latent = {who: {stat: mean_of_present([s["runs"]["lavit"]["latent_map"][who][stat] for s in seeds])
                    for stat in ("kl_target_vs_latent", "s_focus")} for who in ("lavit", "base")}
    latent["per_seed"] = [{who: {k: v for k, v in s["runs"]["lavit"]["latent_map"][who].items() if k != "per_sample"}
                           for who in ("lavit", "base")} for s in seeds]
    latent["samples"] = cfg.diagnostic_samples
    record = students / "artifacts.json"  # the students' family: its base and its capacity check
    artifacts = json.loads(record.read_text()) if record.is_file() else None
    per_model = analysis["per_model"]
    naive_val = student_scores("naive_sft", "val")
    validity = check_validity(
        teacher_val=fixed_scores("teacher", "val"), teacher_s_focus=per_model["teacher"]["s_focus"]["mean"],
        capacity_val=(artifacts or {}).get("models", {}).get("capacity", {}).get("val_accuracy"),
        base_val=fixed_scores("base", "val"), naive_val=naive_val,
        text_only_val=fixed_scores("text_only", "val"), prior_strength=world.prior_strength)
    return {
        "validity": validity,
        "paired_difference": paired,
        "accuracy": {"test": {"base": fixed_scores("base", "test"), "teacher": fixed_scores("teacher", "test"),
                              **{m: student_scores(m, "test") for m in STUDENTS},
                              "lavit_masked": {"overall": mean_of_present(
                                  [s["runs"]["lavit"]["test_masked"]["accuracy"] for s in seeds])}},
                     "val": {"base": fixed_scores("base", "val"), "teacher": fixed_scores("teacher", "val"),
                             "text_only": fixed_scores("text_only", "val"),
                             **{m: student_scores(m, "val") for m in STUDENTS}},
                     "by_seed": {m: per_seed(m) for m in STUDENTS} | {"lavit_masked": [
                         s["runs"]["lavit"]["test_masked"]["accuracy"] for s in seeds]}},
        "masked_drop": {"per_seed": masked, "mean": float(np.mean(masked))},
        "audit": (summarise_audits([s["runs"]["lavit"]["audit"] for s in seeds]) | {"per_seed": [
            s["runs"]["lavit"]["audit"] for s in seeds]}) if "audit" in seeds[0]["runs"]["lavit"] else None,
        "latent_map": latent,
        "attention_entropy": {n: per_model[n]["attention_entropy"]["mean"] for n in per_model},
        "s_focus": {n: per_model[n]["s_focus"]["mean"] for n in per_model},
        "salient_regions": {n: per_model[n]["salient_regions"] for n in per_model},
        "perception_gap": analysis["perception_gap"],
        "dynamics": {m: {str(s["seed"]): s["runs"][m]["dynamics"] for s in seeds} for m in STUDENTS},
        "seeds": [{"seed": s["seed"], "extract": s["extract"], "filter": s["filter"],
                   "train_loss": {m: s["runs"][m]["train_loss"] for m in STUDENTS}} for s in seeds],
        "settings": asdict(cfg) | {"world": asdict(world), "student_family": cfg.family,
                                   "teacher_family": json.loads((Path(cfg.artifacts) / "teacher" / "config.json")
                                                                .read_text())["model_type"]},
        "student_settings": asdict(seeds[0]["runs"]["lavit"]["config"]) | {"seed": "per seed"},
        "artifacts": artifacts,
    }
