"""The `lavit` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from lavit.config import describe_config, load_config
from lavit.console import EndpointError, MissingDependency, failed_write
from lavit.data.samples import DEFAULT_MAX_TEXT_TOKENS


def _recipe_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    return (items[0], items[1:]) if items and "=" not in items[0] else (None, items)


def _load(path: str):
    """The object at 'module:attr', its module imported now: each stage imports torch and friends only when it
    runs."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


# the config class of each config-driven stage ('module:attr'): its recipe, its overrides, its output setting
STAGE_CONFIGS = {"train": "lavit.training.lavit_config:LavitTrainConfig",
                 "extract": "lavit.teacher.extract_config:ExtractConfig",
                 "filter": "lavit.teacher.filter_config:FilterConfig"}


def stage_config_class(stage: str) -> type:
    """The config class of a config-driven stage (a key of `STAGE_CONFIGS`)."""
    return _load(STAGE_CONFIGS[stage])


def _config_stage(stage: str, runner_path: str, summary):
    """A handler for a config-driven stage: `--help-config`, or load recipe + overrides, run (the runner at
    'module:attr'), print a summary."""
    def handler(args: argparse.Namespace) -> int:
        config_cls = stage_config_class(stage)
        if args.help_config:
            print(describe_config(config_cls))
            return 0
        recipe, overrides = _recipe_and_overrides(args.items)
        if getattr(args, "shard", ""):
            overrides.append(f"shard={args.shard}")
        print(json.dumps(summary(_load(runner_path)(load_config(config_cls, recipe, overrides))), indent=2))
        return 0
    return handler


_train = _config_stage("train", "lavit.training.train:run_training",
                       lambda r: {k: r[k] for k in ("train_loss", "global_step", "student_dir", "wall_seconds")})
_extract = _config_stage("extract", "lavit.teacher.extractor:run_extract",
                         lambda r: {k: v for k, v in r.items() if k != "settings"})
_filter = _config_stage("filter", "lavit.teacher.filter:run_filter",
                        lambda r: {k: v for k, v in r.items() if k != "settings"})


def _import_official(args: argparse.Namespace) -> int:
    from lavit.data.official import import_official

    result = import_official(args.data, args.image_root, args.out, features_root=args.features_root,
                             teacher_dim=args.teacher_dim, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    print(json.dumps(result, indent=2))
    return 0


def _repair_store(args: argparse.Namespace) -> int:
    from lavit.data.signal_store import repair_store

    print(json.dumps(repair_store(args.store, apply=args.apply), indent=2))
    return 0


def eval_pixel_limits(args: argparse.Namespace) -> dict:
    """The resolution to evaluate at: as given (a deviation from the protocol, recorded); for --suite paper under
    protocol lavit the paper's training limits for every model (Table 1 compares models at one resolution);
    otherwise 0 = as the protocol says (lavit: the model's training limits, else its processor's)."""
    from lavit.models.grid import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS

    if args.suite and args.protocol == "lavit":
        given = bool(args.min_pixels or args.max_pixels)
        return {"min_pixels": args.min_pixels or PAPER_MIN_PIXELS, "max_pixels": args.max_pixels or PAPER_MAX_PIXELS,
                **({} if given else {"pixels_by": "--suite paper under protocol lavit (Table A1's limits)"})}
    return {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _eval(args: argparse.Namespace) -> int:
    from lavit.eval.models import load_eval_model

    if bool(args.benchmark) == bool(args.suite):
        raise ValueError("give exactly one of --benchmark NAME or --suite paper")
    tokens = [t.strip() for t in args.latent_tokens.split(",") if t.strip()] if args.latent_tokens else None
    kwargs = {"protocol": args.protocol} if args.model.startswith("constant:") else {
        "protocol": args.protocol, "latent_tokens": tokens, "mode": args.latent_mode,
        "max_new_tokens": args.max_new_tokens, "system_prompt": args.system_prompt, "dtype": args.dtype,
        "device_map": args.device_map, "engine": args.engine, "tensor_parallel_size": args.tensor_parallel_size,
        "max_model_len": args.max_model_len, "enforce_eager": args.enforce_eager, "processor": args.processor,
        "force_lvr": args.force_lvr, **eval_pixel_limits(args)}
    model = load_eval_model(args.model, **kwargs)
    deviations = model.describe()["protocol"]["deviations"]
    if deviations:
        print(f"lavit eval: warning: this run departs from protocol {args.protocol} ({deviations}): its numbers are "
              "not that protocol's, and lavit compare pairs it only with runs of the same deviations", file=sys.stderr)
    try:
        return _score_eval(args, model)
    finally:
        if hasattr(model, "close"):  # vLLM's engine processes end with the command
            model.close()


def _score_eval(args: argparse.Namespace, model) -> int:
    if args.suite:
        from lavit.eval.suite import run_paper_suite

        result = run_paper_suite(model, args.data_root, args.out, label=args.label or args.model,
                                 max_samples=args.max_samples, batch_size=args.batch_size, interval=args.interval,
                                 label_fixes=args.label_fixes, max_text_tokens=args.max_text_tokens)
        print(result["row"])
        return 0
    from lavit.eval.runner import run_eval

    summary = run_eval(model, args.benchmark, args.data_root, args.out, max_samples=args.max_samples,
                       batch_size=args.batch_size, interval=args.interval, label_fixes=args.label_fixes,
                       max_text_tokens=args.max_text_tokens)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lavit.data.signal_store import write_json_atomic
    from lavit.eval.compare import compare_runs, render_markdown

    if args.out and Path(args.out).name in ("summary.json", "predictions.jsonl", "run.json", "suite_paper.json"):
        raise ValueError(f"--out {args.out} would overwrite a lavit eval file; name another JSON file")
    result = compare_runs(args.run_a, args.run_b, benchmarks=args.benchmark or None, pair_anyway=args.pair_anyway)
    for warning in result["warnings"]:
        print(f"lavit compare: warning: {warning}", file=sys.stderr)
    print(render_markdown(result))
    if args.out:
        write_json_atomic(result, Path(args.out))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from lavit.eval.audit import audit_markdown, choose_diagnostics, choose_interventions, run_audit
    from lavit.eval.models import GenerativeModel, load_eval_model

    if bool(args.benchmark) == bool(args.samples):
        raise ValueError("give exactly one of --benchmark NAME (with --data-root) or --samples FILE (with "
                         "--image-root)")
    tokens = [t.strip() for t in args.latent_tokens.split(",") if t.strip()] if args.latent_tokens else None
    chosen = [t.strip() for t in args.interventions.split(",") if t.strip()] if args.interventions else None
    choose_interventions(chosen)  # a misspelt name fails before the model loads
    diagnostics = (None if args.diagnostics == "all" else [] if args.diagnostics == "none"
                   else [d.strip() for d in args.diagnostics.split(",") if d.strip()])
    choose_diagnostics(diagnostics)
    model = load_eval_model(args.model, protocol=args.protocol, latent_tokens=tokens, mode="forced",
                            max_new_tokens=args.max_new_tokens, system_prompt=args.system_prompt, dtype=args.dtype,
                            device_map=args.device_map, processor=args.processor)
    if not isinstance(model, GenerativeModel):
        raise ValueError(f"{args.model} answers without a model: there is no latent block to audit")
    result = run_audit(model, args.out, benchmark=args.benchmark, data_root=args.data_root, samples=args.samples,
                       image_root=args.image_root, interventions=chosen, seed=args.seed, batch_size=args.batch_size,
                       max_samples=args.max_samples, label_fixes=args.label_fixes,
                       max_text_tokens=args.max_text_tokens, diagnostics=diagnostics)
    print(audit_markdown(result))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.what == "gpu":
        from lavit.training.bench_gpu import run

        return run(args)
    if args.what == "train":
        from lavit.training.bench import bench_train

        result = bench_train(batch_size=args.batch_size or 8, repeats=args.repeats or 9,
                             families=tuple(args.family or ()))
    elif args.what == "dataset":
        from lavit.training.bench import bench_dataset

        result = bench_dataset(rows=args.rows, teacher_dim=args.teacher_dim, traj_cells=args.traj_cells)
    else:
        from lavit.teacher.bench import bench_extract

        result = bench_extract(batch_size=args.batch_size or 2, repeats=args.repeats or 9, config=args.config,
                               num_layers=args.num_layers)
        if args.vllm:
            from lavit.teacher.bench import bench_answers

            result["answers"] = bench_answers(num_prompts=args.answer_prompts, config=args.config,
                                              num_layers=args.num_layers, enforce_eager=args.enforce_eager)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _demo_config(args: argparse.Namespace):
    import dataclasses

    from lavit.config import build_config, parse_overrides
    from lavit.demo import DemoConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if f.name != "student_overrides"}
    return build_config(DemoConfig, values | {"student_overrides": parse_overrides(args.set)})


def _demo(args: argparse.Namespace) -> int:
    from lavit.demo import run_demo

    results = run_demo(_demo_config(args))
    paired = results["paired_difference"]
    failed = [k for k, c in results["validity"].items() if not c["pass"]]
    ci = "n/a" if paired["ci95"] is None else "[" + ", ".join(f"{100 * x:+.1f}" for x in paired["ci95"]) + "]"
    print(f"demo finished in {results['wall_seconds']:.0f}s; report: {args.out}/report.md")
    print(f"validity: {'all checks pass' if not failed else 'FAILED ' + ', '.join(failed)}")
    print(f"LaViT − Naive-SFT test accuracy: {100 * paired['mean']:+.1f} points, 95% CI {ci} → {paired['verdict']}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from lavit.ablate import ROW_SETS, ROW_TITLES, run_ablation, run_data_efficiency, run_designs

    cfg = _demo_config(args)
    if args.pool_sizes:
        sizes = [int(x) for x in args.pool_sizes.split(",") if x.strip()]
        result = run_data_efficiency(cfg, sizes)
        print((Path(args.out) / "data_efficiency.md").read_text())
    elif args.rows == "designs":
        result = run_designs(cfg)
        print((Path(args.out) / "designs.md").read_text())
    else:
        result = run_ablation(cfg, ROW_SETS[args.rows], title=ROW_TITLES[args.rows], audit=args.rows == "bottlenecks")
        print((Path(args.out) / "ablation.md").read_text())
    print(f"ablation finished in {result['wall_seconds']:.0f}s")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from lavit.analysis.analyze import analyze
    from lavit.analysis.pixel_limits import parse_pixel_limits

    models = dict(item.split("=", 1) for item in args.model)
    pixels = parse_pixel_limits(args.pixels)
    correct = None
    if args.correct:
        correct = json.loads(Path(args.correct).read_text(encoding="utf-8-sig"))  # a BOM, as every reader accepts
    result = analyze(args.samples, args.image_root, models, args.out, teacher=args.teacher, correct=correct,
                     max_samples=args.max_samples, heatmaps=args.heatmaps, batch_size=args.batch_size, pixels=pixels,
                     teacher_store=args.teacher_store or None, device_map=args.device_map,
                     max_text_tokens=args.max_text_tokens)
    summary = {n: {k: round(v["mean"], 4) for k, v in m.items() if isinstance(v, dict) and "mean" in v}
               | {"pixel_limits": m["pixel_limits"]} for n, m in result["per_model"].items()}
    print(json.dumps({"per_model": summary, "rejected": result["rejected_by_reason"], "figures": result["figures"]},
                     indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def config_stage(name: str, handler, help: str, description: str) -> argparse.ArgumentParser:  # noqa: A002
        stage = sub.add_parser(name, help=help, description=description)
        stage.add_argument("items", nargs="*", help="optional YAML recipe, then key=value overrides")
        stage.add_argument("--help-config", action="store_true", help="list every setting with its default and help")
        stage.set_defaults(run=handler)
        return stage

    config_stage("train", _train, "train a LaViT or Naive-SFT student", "lavit train [RECIPE.yaml] [key=value ...]")
    extract = config_stage("extract", _extract, "teacher answers and signals (A_traj, V_sem, S_focus) → Parquet store",
                           "lavit extract [RECIPE.yaml] [key=value ...]; rerun to resume")
    extract.add_argument("--shard", default="", help="i/n: this data-parallel worker's share")
    config_stage("filter", _filter, "three-stage filter (correct, hard, grounded) → LaViT-SFT set",
                 "lavit filter [RECIPE.yaml] [key=value ...]")

    ev = sub.add_parser("eval", help="score a model on MMVP / BLINK / V* / MMStar from their published files",
                        description="lavit eval --model PATH_OR_SPEC --benchmark NAME --data-root DIR --out DIR")
    ev.add_argument("--model", required=True, help="student or Qwen-VL (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) "
                    "directory / hub id, 'tiny[:FAMILY]', or constant:<letter>")
    ev.add_argument("--benchmark", default="", help="mmvp | blink:<Task> | vstar[:category] | mmstar")
    ev.add_argument("--suite", default="", choices=["", "paper"], help="paper: Table 1's seven columns")
    ev.add_argument("--data-root", required=True, help="the benchmark's directory (for --suite: the directory "
                    "holding MMVP/, vstar_bench/, BLINK/, MMStar/)")
    ev.add_argument("--out", required=True, help="writes OUT/<benchmark>/predictions.jsonl and summary.json")
    ev.add_argument("--latent-mode", default=None, choices=["forced", "natural", "masked", "none"],
                    help="default: the protocol's (lavit: forced when the model has latent tokens, else none; authors "
                    "and lmms-eval: what the checkpoint's chat template does — forced for an exported lavit student, "
                    "natural for the authors' LaViT-3B)")
    checkpoint_args(ev, "score")
    ev.add_argument("--force-lvr", action="store_true", help="protocol authors: their --force_lvr variant (four "
                    "'<lvr>' appended to the prompt); refused when '<lvr>' has no trained embedding")
    ev.add_argument("--min-pixels", type=non_negative_int, default=0, help="image processor min pixels (0 = the "
                    "protocol's: lavit the model's training limit from lavit.json, else its processor's, and for "
                    "--suite paper 200704 for every model; authors the checkpoint's processor; lmms-eval 200704); "
                    "given, a deviation from the protocol; recorded in summary.json")
    ev.add_argument("--max-pixels", type=non_negative_int, default=0, help="image processor max pixels (0 = the "
                    "protocol's: lavit as --min-pixels says, --suite paper 1003520; lmms-eval 1605632)")
    ev.add_argument("--max-new-tokens", type=positive_int, default=None, help="longest answer (default: the "
                    "protocol's per benchmark: lavit 32; authors 512; lmms-eval 16 MMVP and V*, 1024 BLINK, 128 "
                    "MMStar); given, a deviation from the protocol")
    ev.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ev.add_argument("--device-map", default="", help="'auto' to split a large model over GPUs (transformers)")
    ev.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                    help="generation engine: transformers' generate (every latent mode, inference gates) or vLLM "
                    "(forced, natural, none; greedy answers equal transformers' in fp32; needs the vllm package)")
    ev.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vLLM: GPUs one model is split over")
    ev.add_argument("--max-model-len", type=non_negative_int, default=0,
                    help="vLLM: longest prompt + answer in tokens (0 = the model's own)")
    ev.add_argument("--enforce-eager", action="store_true", help="vLLM: no CUDA graphs / torch.compile (start-up in "
                    "seconds; slower generation)")
    ev.add_argument("--label", default="", help="row label for --suite (default: the model spec)")
    ev.add_argument("--interval", default="wilson", choices=["wilson", "clopper_pearson"],
                    help="method of every accuracy's 95%% interval in summary.json (clopper_pearson: exact)")
    ev.add_argument("--label-fixes", action="store_true", help="protocol lavit: correct the benchmark's documented "
                    "label errors (MMVP: 4 swapped answers) before scoring; listed in summary.json and a setting of "
                    "the run (lmms-eval always scores the corrected labels, authors never)")
    ev.add_argument("--max-text-tokens", type=non_negative_int, default=DEFAULT_MAX_TEXT_TOKENS,
                    help="an item with a text (question, option, prompt) over this many of the model's tokens is a "
                    "recorded skip, text_too_long, as one holding a special token of its tokenizer is "
                    "special_token_in_text (0 = no limit; constant:<X> has no tokenizer: Qwen-VL's special tokens, "
                    "no limit); recorded in the run's settings")
    ev.set_defaults(run=_eval)

    cmp = sub.add_parser("compare", help="pair two lavit eval runs item by item: A − B with a 95%% interval and an "
                         "exact McNemar p per benchmark",
                         description="lavit compare RUN_A RUN_B [--benchmark NAME ...] [--out FILE.json]")
    cmp.add_argument("run_a", help="a lavit eval --out folder (one subfolder per benchmark) or one benchmark's folder")
    cmp.add_argument("run_b", help="the run to compare it with, as RUN_A")
    cmp.add_argument("--benchmark", action="extend", nargs="+", default=[], metavar="NAME",
                     help="only these benchmarks (e.g. mmvp blink:IQ_Test; default: every one in both runs)")
    cmp.add_argument("--out", default="", help="also write the comparison, with both runs' settings, as JSON here")
    cmp.add_argument("--pair-anyway", action="store_true", help="pair runs of different protocols, data or items "
                     "instead of refusing them; the differences overridden are recorded in the JSON (paired_anyway)")
    cmp.set_defaults(run=_compare)

    au = sub.add_parser("audit", help="does the answer read the latent block? interventions vs the forced run",
                        description="lavit audit --model M (--benchmark NAME --data-root DIR | --samples FILE "
                        "--image-root DIR) --out DIR; docs/audit.md")
    au.add_argument("--model", required=True, help="a latent-token checkpoint: directory or hub id")
    au.add_argument("--benchmark", default="", help="mmvp | blink:<Task> | vstar[:category] | mmstar")
    au.add_argument("--data-root", default="", help="the benchmark's directory")
    au.add_argument("--samples", default="", help="JSONL rows {id, image, question, answer, [pair]}, free-text "
                    "answers (e.g. a toy-world split)")
    au.add_argument("--image-root", default="", help="directory the samples' images are under")
    au.add_argument("--out", required=True, help="writes OUT/audit.json, OUT/audit.md (and run.json)")
    au.add_argument("--interventions", default="", help="comma list of none,masked,zero,first_repeat,random,swap "
                    "(default: all; forced, the reference, always runs)")
    au.add_argument("--diagnostics", default="all", help="comma list of emission,norm_ratio,sensitivity,oracle,"
                    "format_only (the 2026 diagnostics, docs/audit.md), 'all' (default) or 'none'")
    checkpoint_args(au, "audit")
    au.add_argument("--seed", type=int, default=0, help="draws the random donors (a derangement) and same-prompt "
                    "swap donors; recorded")
    au.add_argument("--max-new-tokens", type=positive_int, default=None, help="longest answer, in every run "
                    "(default: the protocol's per benchmark, 32 for a samples file)")
    au.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    au.add_argument("--device-map", default="", help="'auto' to split a large model over GPUs")
    au.add_argument("--label-fixes", action="store_true", help="correct the benchmark's documented label errors "
                    "(as lavit eval --label-fixes; recorded in audit.json)")
    au.add_argument("--max-text-tokens", type=non_negative_int, default=DEFAULT_MAX_TEXT_TOKENS,
                    help="an item or sample with a text over this many of the model's tokens is a recorded skip, "
                    "text_too_long, as one holding a special token of its tokenizer is special_token_in_text (0 = no "
                    "limit); recorded in the settings")
    au.set_defaults(run=_audit)

    official = sub.add_parser("import-official", help="convert the authors' LaViT-15k layout into a signal store")
    official.add_argument("--data", required=True, help="their training JSON ({'results': [...]})")
    official.add_argument("--image-root", required=True, help="directory image_relative_path starts from")
    official.add_argument("--out", required=True, help="output store directory (rerun resumes)")
    official.add_argument("--features-root", default="", help="look V_top/attention files up by name here instead "
                          "of their absolute paths")
    official.add_argument("--teacher-dim", type=int, default=5120, help="expected V_top width (32B teacher: 5120)")
    official.add_argument("--min-pixels", type=int, default=3136, help="processor min_pixels used by the extraction")
    official.add_argument("--max-pixels", type=int, default=12845056, help="processor max_pixels used by the extraction")
    official.set_defaults(run=_import_official)

    repair = sub.add_parser("repair-store", help="remove the extra copies of ids a store holds more than once",
                            description="lavit repair-store STORE [--apply]: lists every id stored more than once and "
                            "the copy it keeps (an 'ok' row over a 'rejected' one, then the first in shard-name "
                            "order); --apply rewrites the shards holding the others, atomically, under the store's "
                            "lock")
    repair.add_argument("store", help="a lavit store folder (manifest.json, data/)")
    repair.add_argument("--apply", action="store_true", help="rewrite the shards (default: a dry run that changes "
                        "nothing)")
    repair.set_defaults(run=_repair_store)

    bench = sub.add_parser("bench", help="performance against the plain model, as JSON")
    bench.add_argument("what", choices=["train", "extract", "dataset", "gpu"],
                       help="train: LaViT step and latent generation overheads; extract: probe vs forward vs eager; "
                            "dataset: host memory of the training set, rows read from Arrow vs to_pylist; gpu: on "
                            "one GPU at real widths, the 3B student's step (dense and FlexAttention gate) and "
                            "generation, the 32B teacher's signal pass, numerics against fp32 (writes --out, prints "
                            "a table; exit 1 when a numerics bound fails)")
    bench.add_argument("--json", action="store_true", help="one-line JSON")
    bench.add_argument("--family", action="append", default=None,
                       help="train only: a model family to measure, e.g. qwen3_vl (repeatable; default: every "
                            "supported family)")
    bench.add_argument("--repeats", type=int, default=0, help="timed repeats per measurement, median reported (0 = "
                       "9 for train and extract, 5 for gpu, 1 for gpu --tiny)")
    bench.add_argument("--batch-size", type=int, default=0, help="samples per measured call (0 = 8 for train, "
                       "2 for extract, 4 for gpu)")
    bench.add_argument("--config", default="bench", choices=["bench", "qwen2.5-vl-32b", "tiny"],
                       help="extract only: the teacher text config (qwen2.5-vl-32b: real dims, random weights)")
    bench.add_argument("--num-layers", type=int, default=0, help="extract only: keep this many decoder layers "
                       "(0 = all), to fit the real config on one GPU")
    bench.add_argument("--vllm", action="store_true", help="extract only: also teacher answers per second on "
                       "transformers vs vLLM in the same run (needs the vllm package)")
    bench.add_argument("--answer-prompts", type=positive_int, default=16, help="extract --vllm: prompts answered "
                       "by each engine")
    bench.add_argument("--enforce-eager", action="store_true", help="extract --vllm: vLLM without CUDA graphs / "
                       "torch.compile")
    bench.add_argument("--rows", type=int, default=1000, help="dataset only: rows in the measured set")
    bench.add_argument("--teacher-dim", type=int, default=5120, help="dataset only: V_sem width (32B teacher: 5120)")
    bench.add_argument("--traj-cells", type=int, default=1280, help="dataset only: A_traj cells per row (1 280: "
                       "a ~1 MP image on 28-pixel merged tokens)")
    bench.add_argument("--out", default="runs/bench_gpu.json", help="gpu only: the JSON, rewritten after each part")
    bench.add_argument("--tiny", action="store_true", help="gpu only: tiny models at tiny sizes (the path, anywhere)")
    bench.add_argument("--student-layers", type=int, default=0, help="gpu only: the 3B student's decoder layers "
                       "(0 = all 36)")
    bench.add_argument("--teacher-layers", type=int, default=0, help="gpu only: the 32B teacher's decoder layers "
                       "(0 = 16 of its 64)")
    bench.set_defaults(run=_bench)

    def world_args(p: argparse.ArgumentParser, out: str) -> None:
        import dataclasses
        import typing

        from lavit.demo import DemoConfig

        hints = typing.get_type_hints(DemoConfig)
        for f in dataclasses.fields(DemoConfig):
            if f.name == "student_overrides":
                continue
            default = out if f.name == "out" else f.default
            flag = "--world" if f.name == "world_name" else f"--{f.name.replace('_', '-')}"
            p.add_argument(flag, dest=f.name, type=hints[f.name], default=default,
                           help=f"{f.metadata['help']} (default: {default})")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a `lavit train` setting for both students, e.g. --set lam=0.5 (repeatable)")

    demo = sub.add_parser("demo", help="the whole pipeline in the toy world, with report.md and figures")
    world_args(demo, "runs/demo")
    demo.set_defaults(run=_demo)

    ablate = sub.add_parser("ablate", help="Table 3 rows and the K sweep in the toy world, or data efficiency")
    world_args(ablate, "runs/ablate")
    ablate.add_argument("--pool-sizes", default="", help="comma list, e.g. 1000,2000,4000: LaViT vs Naive-SFT "
                        "accuracy at each pool size over --seeds seeds (data efficiency) instead of the Table 3 rows")
    ablate.add_argument("--rows", choices=["paper", "remedies", "bottlenecks", "designs"], default="paper",
                        help="paper: Table 3 rows and the K sweep; remedies: λ, T_w, K, Top-K, question gating and "
                        "learning rate for both methods (choose on the val column); bottlenecks: variants in which "
                        "vision must pass through the latents, each with the latent-usage audit (beyond the paper); "
                        "designs: LaViT, continuous latents and the distillation baselines (KD, GKD, LaViT + KD) next "
                        "to Naive-SFT, each design's setting chosen on val, latent designs audited")
    ablate.set_defaults(run=_ablate)

    an = sub.add_parser("analyze", help="Perception-Gap analysis: S_focus, entropy, KL by token type, heatmaps")
    an.add_argument("--samples", required=True, help="JSONL samples with bbox (our sample format)")
    an.add_argument("--image-root", required=True, help="directory the samples' images are under")
    an.add_argument("--model", action="append", required=True, help="NAME=PATH, repeated; one must be the teacher")
    an.add_argument("--teacher", default="teacher", help="which NAME is the teacher")
    an.add_argument("--correct", default="", help="JSON {model: {sample id: bool}} for the S_focus/accuracy curve")
    an.add_argument("--out", required=True, help="analysis.json and PNG figures go here")
    an.add_argument("--max-samples", type=int, default=100, help="samples to analyse")
    an.add_argument("--heatmaps", type=int, default=4, help="samples shown in the heatmap figure")
    an.add_argument("--pixels", action="append", default=[], metavar="NAME=MIN:MAX",
                    help="image processor pixel limits of model NAME, e.g. teacher=200704:1003520 (repeatable). "
                    "Default: for the teacher those of --teacher-store, else the model's training limits "
                    "(lavit.json), else a built-in tiny model's processor's; a model with none of them is an error")
    an.add_argument("--teacher-store", default="", metavar="STORE",
                    help="a `lavit extract` store of this teacher: the pixel limits its signals were extracted at "
                    "(manifest.json pixel_limits) are the teacher's")
    an.add_argument("--device-map", default="", help="from_pretrained device_map, e.g. auto to split each model "
                    "over the GPUs (default: the whole model on one device)")
    an.add_argument("--batch-size", type=positive_int, default=16, help="samples per forward pass of a model")
    an.add_argument("--max-text-tokens", type=non_negative_int, default=DEFAULT_MAX_TEXT_TOKENS,
                    help="a sample whose question or answer is longer than this many tokens (of the model whose "
                    "tokenizer makes it longest) is rejected, text_too_long, as one holding a special token of a "
                    "model's tokenizer is special_token_in_text, before any model loads (0 = no limit); recorded in "
                    "run.json")
    an.set_defaults(run=_analyze)
    return parser


def checkpoint_args(parser: argparse.ArgumentParser, verb: str) -> None:
    """The protocol, latent-token, prompt and batching options `lavit eval` and `lavit audit` share."""
    from lavit.eval.protocols import protocol_names

    parser.add_argument("--protocol", default="lavit", choices=protocol_names(), help="evaluation protocol: prompts, "
                        "answer length, decoding, resolution, item set and scoring (docs/protocols.md); "
                        "recorded with every result")
    parser.add_argument("--processor", default="", help="take the processor (image processor, chat template) from "
                        "this folder or hub id, for a checkpoint saved without one (a Trainer checkpoint-N folder); "
                        "the checkpoint's own tokenizer is kept; recorded")
    parser.add_argument("--latent-tokens", default="", help="comma list overriding lavit.json, e.g. "
                        "'<lvr1>,<lvr2>,<lvr3>,<lvr4>' for the authors' LaViT-3B")
    parser.add_argument("--system-prompt", default=None, help="default: the one recorded in lavit.json, else the "
                        "template's")
    parser.add_argument("--max-samples", type=non_negative_int, default=0,
                        help=f"{verb} only the first N items (0 = all)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="items per generate call")


# the config-driven stages: where each one's config class is (its output is `output_dir=` or `out=`)
def command_output(args: argparse.Namespace) -> tuple[str | None, str]:
    """Where the command writes (None: nowhere of its own) and the option that chooses it."""
    if args.command not in STAGE_CONFIGS:
        return getattr(args, "out", "") or None, "--out"
    key = "output_dir" if args.command == "train" else "out"
    config = stage_config(args)
    return (getattr(config, key) if config else None), f"{key}="


def stage_config(args: argparse.Namespace):
    """The config a config-driven stage ran with (recipe and overrides); None where it is what failed."""
    try:
        return load_config(stage_config_class(args.command), *_recipe_and_overrides(args.items))
    except (ValueError, OSError):  # nothing was written
        return None


def rerun_hint(args: argparse.Namespace) -> str:
    """How to go on after a full disk: the same command, which resumes. A `lavit train` into a folder holding a
    run is refused unless it says resume= (from the newest complete checkpoint) or, where none was completed,
    overwrite=true (start again)."""
    config = stage_config(args) if args.command == "train" else None
    if config is None:
        return "rerun the same command to resume"
    from lavit.training.lavit_trainer import checkpoint_folders, checkpoint_problem

    out = Path(config.output_dir)
    if out.is_dir() and any(checkpoint_problem(folder) is None for folder in checkpoint_folders(out)):
        return f"rerun the same command{'' if config.resume == 'latest' else ' with resume=latest'} to resume"
    return f"rerun the same command{'' if config.overwrite else ' with overwrite=true'} (no checkpoint was complete)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as err:
        # a full disk or an unwritable output, whatever library's write hit it, before the errors users cause
        out, option = command_output(args)
        failed = failed_write(err, out)
        if failed is not None:
            message = failed.message(option, rerun_hint(args) if failed.full else "")
        elif isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, MissingDependency, EndpointError)):
            message = str(err)
        else:
            raise
        print(f"lavit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
