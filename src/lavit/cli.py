"""The `lavit` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys

from lavit.config import describe_config, load_config


def _train(args: argparse.Namespace) -> int:
    from lavit.training.lavit_config import LavitTrainConfig

    if args.help_config:
        print(describe_config(LavitTrainConfig))
        return 0
    recipe, overrides = (args.items[0], args.items[1:]) if args.items and "=" not in args.items[0] else (None, args.items)
    from lavit.training.train import run_training

    results = run_training(load_config(LavitTrainConfig, recipe, overrides))
    print(json.dumps({k: results[k] for k in ("train_loss", "global_step", "student_dir", "wall_seconds")}, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from lavit.training.bench import bench_train

    result = bench_train(batch_size=args.batch_size, repeats=args.repeats)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lavit.demo import run_demo

    results = run_demo(args.out, steps=args.steps, seed=args.seed)
    print(f"interim demo (synthetic teacher signals) finished in {results['wall_seconds']:.0f}s; "
          f"results in {args.out}/results.json")
    for name, run in results["runs"].items():
        print(f"  {name:10s} test accuracy {run['test_accuracy']:.2f}  last losses {run['last_logged']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a LaViT or Naive-SFT student",
                           description="lavit train [RECIPE.yaml] [key=value ...]")
    train.add_argument("items", nargs="*", help="optional YAML recipe, then key=value overrides")
    train.add_argument("--help-config", action="store_true", help="list every setting with its default and help")
    train.set_defaults(run=_train)

    bench = sub.add_parser("bench", help="performance against the plain model, as JSON")
    bench.add_argument("what", choices=["train"], help="train: LaViT step and latent generation overheads")
    bench.add_argument("--json", action="store_true", help="one-line JSON")
    bench.add_argument("--repeats", type=int, default=9, help="timed repeats per measurement (median reported)")
    bench.add_argument("--batch-size", type=int, default=8, help="samples per step and per generate call")
    bench.set_defaults(run=_bench)

    demo = sub.add_parser("demo", help="end-to-end run on the embedded synthetic default")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--steps", type=int, default=120, help="training steps per student")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"lavit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
