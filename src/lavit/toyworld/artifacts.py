"""Train the toy world's teacher, base student and text-only model, and measure the student architecture's
capacity (committed under `src/lavit/toyworld/artifacts/` so `lavit demo` need not retrain them).

    python -m lavit.toyworld.artifacts --out src/lavit/toyworld/artifacts            # ~20 min on 2 cores
    python -m lavit.toyworld.artifacts --out src/lavit/toyworld/artifacts_premise --world premise
    python -m lavit.toyworld.artifacts --out DIR --prior-strength 0.8 --roles base,text_only
    python -m lavit.toyworld.artifacts --out DIR --roles base,capacity --student-family qwen3_vl

Recipes (`lavit.toyworld.pretrain`: a vision phase with a per-token colour/shape probe, then a language
phase that keeps the probe's loss; scenes drawn fresh every step from world 0's streams):
* teacher   — teacher architecture, its own vision phase, language phase on *unbiased* colours
              (prior strength 0.25: all four colours equally likely) of the `teacher` stream;
* base      — student architecture, student vision phase, a short language phase on the `pretrain`
              stream with the world's prior: it learns the prior but not yet where to look;
* capacity  — the same vision phase, a full language phase on unbiased colours: its val accuracy shows
              that perception is learnable at the student's size (recorded, not kept);
* text_only — student architecture, no vision phase, language phase with every image blank.
The teacher is a Qwen2.5-VL; `--student-family` builds base, capacity and text_only in another family
(`lavit demo --student-family` does this for its base student).
`--world premise` builds the premise world's models (`world.WORLDS`) with its budget (`WORLD_BUDGETS`).
`artifacts.json` records the world (and its name), the budget and every model's val accuracy (overall, per kind,
prior-consistent / prior-violating) on world 0's val split at the world's prior strength.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lavit.console import quiet_libraries
from lavit.models.families import DEFAULT_FAMILY
from lavit.toyworld.models import (
    BLANK_IMAGE,
    TOY_STUDENT_SPEC,
    TOY_TEACHER_SPEC,
    blank_image,
    new_toy_model,
    toy_accuracy,
)
from lavit.toyworld.pretrain import PhaseConfig, train_language, train_vision
from lavit.toyworld.world import WORLDS, WorldConfig, stream, write_split

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"
WORLD_ARTIFACTS = {"default": ARTIFACTS_DIR, "premise": Path(__file__).parent / "artifacts_premise"}
ROLES = ("teacher", "base", "capacity", "text_only")
KEPT = ("teacher", "base", "text_only")  # capacity is measured, not kept
UNBIASED = 0.25  # prior strength at which the prior colour is as likely as each other colour


@dataclass
class ArtifactBudget:
    teacher_vision_steps: int = 600
    teacher_steps: int = 2000
    teacher_shape_share: float = 0.5  # more shape questions than the default world: the slower-learnt kind
    student_vision_steps: int = 400
    base_steps: int = 100
    capacity_steps: int = 2500
    text_only_steps: int = 400
    batch_size: int = 32
    vision_learning_rate: float = 2e-3
    learning_rate: float = 5e-4
    val_samples: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        counts = [v for k, v in asdict(self).items() if k.endswith("_steps")]
        if min(counts) < 0 or self.batch_size < 1 or self.val_samples < 1:
            raise ValueError("steps must be >= 0, batch_size and val_samples >= 1")


def _save(model, processor, directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Base language steps where the family's student learns to see faster than Qwen2.5-VL's, chosen on world 0's val
# split so that the base stays prior-reliant (validity: <= 45 % on prior-violating questions). Qwen3-VL (DeepStack
# feeds ViT features straight into the first decoder layers): 25 steps → 39 %, 50 → 32 %, 75 → 41 %, 100 → 59 %
# (overall 37 %, 67 %, 82 %, 87 %); 75 is the longest that stays prior-reliant.
BASE_STEPS = {"qwen3_vl": 75}


# The premise world's budget: shorter vision phases and a higher language learning rate, so that its build fits an
# hour on 2 shared cores (a step costs what it costs in the default world: the same 6 × 6 tokens). Measured on val:
# teacher 800 steps 93 % (shape questions 76 %) → 2000 steps at a 0.6 shape share 98 %; capacity 1000 steps at the
# world's 0.6 shape share 72 % (colour 59 %) → 2500 steps 100 %. Built side by side: teacher 35 min, students 27 min.
WORLD_BUDGETS = {"default": ArtifactBudget(),
                 "premise": ArtifactBudget(teacher_vision_steps=300, teacher_steps=2000, teacher_shape_share=0.6,
                                           student_vision_steps=300,
                                           capacity_steps=2500, text_only_steps=300, learning_rate=1e-3)}


def budget_for(student_family: str = DEFAULT_FAMILY, world_name: str = "default") -> ArtifactBudget:
    """The committed budget of `world_name`, with the base language phase of `student_family` (BASE_STEPS; measured
    in the default world only, so another family's base in the premise world keeps the world's base steps)."""
    if world_name not in WORLD_BUDGETS:
        raise ValueError(f"world must be one of {sorted(WORLD_BUDGETS)}, got {world_name!r}")
    default = WORLD_BUDGETS[world_name]
    steps = BASE_STEPS.get(student_family, default.base_steps) if world_name == "default" else default.base_steps
    return replace(default, base_steps=steps)


def build_artifacts(out: str | Path, budget: ArtifactBudget = ArtifactBudget(), world: WorldConfig = WorldConfig(),
                    roles: tuple[str, ...] = ROLES, student_family: str = DEFAULT_FAMILY,
                    world_name: str | None = None) -> dict:
    """`world_name` (a key of WORLDS, recorded in artifacts.json) defaults to the one `world` equals at its prior
    strength, else none (a custom world)."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown roles {unknown}; choose from {ROLES}")
    if world_name is None:
        world_name = next((n for n, w in WORLDS.items() if replace(w, prior_strength=world.prior_strength) == world),
                          None)
    elif world_name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {world_name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    previous = out / "artifacts.json"
    report = json.loads(previous.read_text()) if previous.is_file() else {"models": {}}
    if report.get("world") not in (None, asdict(world)):
        stale = sorted(set(report["models"]) - set(roles))
        if stale:
            raise ValueError(f"{out} holds models of another world ({report['world']}); retrain them too "
                             f"(roles {stale}) or use a new --out")
    if report.get("student_family", DEFAULT_FAMILY) != student_family:
        stale = sorted({"base", "text_only"} & set(report["models"]) - set(roles))
        if stale:
            raise ValueError(f"{out} holds {report.get('student_family', DEFAULT_FAMILY)} student models ({stale}); "
                             "retrain them too or use a new --out")
    report["world"] = asdict(world)
    report["world_name"] = world_name
    report["student_family"] = student_family
    unbiased = replace(world, prior_strength=UNBIASED)
    language = PhaseConfig(0, budget.learning_rate, budget.batch_size)
    vision = PhaseConfig(0, budget.vision_learning_rate, budget.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        val = write_split(Path(tmp), "val", budget.val_samples, cfg=world)
        blank = blank_image(Path(tmp) / "images" / BLANK_IMAGE, world.image_size)

        def record(role: str, model, processor, log: dict, image_override: Path | None = None) -> None:
            scores = toy_accuracy(model, processor, val, image_override=image_override)
            report["models"][role] = {"budget": asdict(budget), "training": log, "val_accuracy": scores["accuracy"],
                                      "val_per_kind": scores["per_kind"], "val_per_prior": scores["per_prior"]}
            print(f"{role}: val accuracy {scores['accuracy']:.3f} {scores['per_kind']} {scores['per_prior']}",
                  flush=True)

        if "teacher" in roles:
            model, processor = new_toy_model(TOY_TEACHER_SPEC, budget.seed, world=world)
            probe, seen = train_vision(model, processor, replace(vision, steps=budget.teacher_vision_steps), world,
                                       rng=stream("teacher", 0, 0), seed=budget.seed, desc="teacher vision")
            log = {"vision": seen,
                   "language": train_language(model, processor, replace(language, steps=budget.teacher_steps),
                                              replace(unbiased, shape_question_share=budget.teacher_shape_share),
                                              rng=stream("teacher", 0, 1), probe=probe, seed=budget.seed,
                                              desc="teacher language")}
            record("teacher", model, processor, log)
            _save(model, processor, out / "teacher")
        if {"base", "capacity"} & set(roles):
            model, processor = new_toy_model(TOY_STUDENT_SPEC, budget.seed, student_family, world)
            probe, seen = train_vision(model, processor, replace(vision, steps=budget.student_vision_steps), world,
                                       rng=stream("pretrain", 0, 0), seed=budget.seed, desc="student vision")
            for role, steps, prior_world, draw in (("base", budget.base_steps, world, 1),
                                                   ("capacity", budget.capacity_steps, unbiased, 2)):
                if role not in roles:
                    continue
                branch, branch_probe = copy.deepcopy(model), copy.deepcopy(probe)
                log = {"vision": seen,
                       "language": train_language(branch, processor, replace(language, steps=steps), prior_world,
                                                  rng=stream("pretrain", 0, draw), probe=branch_probe,
                                                  seed=budget.seed, desc=f"{role} language")}
                record(role, branch, processor, log)
                if role in KEPT:
                    _save(branch, processor, out / role)
        if "text_only" in roles:
            model, processor = new_toy_model(TOY_STUDENT_SPEC, budget.seed, student_family, world)
            log = {"language": train_language(model, processor, replace(language, steps=budget.text_only_steps), world,
                                              rng=stream("pretrain", 0, 3), blank_images=True, seed=budget.seed,
                                              desc="text_only language")}
            record("text_only", model, processor, log, image_override=blank)
            _save(model, processor, out / "text_only")
    # Another role build of this world into `out` may have finished meanwhile (the teacher and the students can be
    # built side by side): keep its models and timings.
    latest = json.loads(previous.read_text()) if previous.is_file() else report
    report["models"] = latest["models"] | report["models"]
    wall = latest.get("wall_seconds") if isinstance(latest.get("wall_seconds"), dict) else {}
    report["wall_seconds"] = {**wall, "+".join(roles): time.time() - start}
    report["command"] = (f"python -m lavit.toyworld.artifacts --out {out} --world {world_name or '(custom)'} "
                         f"--prior-strength {world.prior_strength} "
                         f"--roles {','.join(roles)} --student-family {student_family} (budget flags: see --help)")
    (out / "artifacts.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="where teacher/, base/, text_only/ go (default: the world's "
                        f"committed artifacts, {', '.join(f'{k}: {v}' for k, v in WORLD_ARTIFACTS.items())})")
    parser.add_argument("--world", default="default", choices=sorted(WORLDS),
                        help="which world (lavit.toyworld.world.WORLDS) the models are trained on")
    parser.add_argument("--roles", default=",".join(ROLES), help=f"comma list of roles to (re)train, of {ROLES}")
    parser.add_argument("--student-family", default=DEFAULT_FAMILY,
                        help="model family of the base, capacity and text-only models (the teacher is qwen2_5_vl)")
    parser.add_argument("--prior-strength", type=float, default=None,
                        help="how often a shape takes its prior colour (the base, text-only and val worlds; "
                        f"default: the world's, {WorldConfig().prior_strength})")
    for name, value in asdict(ArtifactBudget()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"default: the world's (default world: {value})" + (
                                " (the student family's, see BASE_STEPS)" if name == "base_steps" else ""))
    args = parser.parse_args(argv)
    quiet_libraries()
    given = {k: getattr(args, k) for k in asdict(ArtifactBudget()) if getattr(args, k) is not None}
    budget = replace(budget_for(args.student_family, args.world), **given)
    world = WORLDS[args.world]
    world = world if args.prior_strength is None else replace(world, prior_strength=args.prior_strength)
    build_artifacts(args.out or WORLD_ARTIFACTS[args.world], budget, world,
                    roles=tuple(r for r in args.roles.split(",") if r), student_family=args.student_family,
                    world_name=args.world)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
