"""`avvp demo`: LLP-Synth, HAN and MGN trained with the authors' recipe scaled to minutes, a side-by-side report."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    from avvp.demo import DemoConfig

    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="generate LLP-Synth, train HAN and MGN, print their scores side by side (~10 minutes on a 2-core CPU)",
        description="Generate LLP-Synth (cached in DIR/data), train HAN and MGN in their default configurations "
        "with the authors' recipe scaled down (videos, epochs, StepLR step) and early stopping, score both on the "
        "synthetic test split with the broadcast oracle as a reference, print the table and write DIR/results.json, DIR/report.md and "
        "DIR/figures. Re-running reuses the data and replaces the runs and the report.",
    )
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="demo folder (default: runs/demo)")
    scale_help = {
        "train": "training videos",
        "val": "validation videos",
        "test": "test videos",
        "epochs": "the most training epochs of each model; early stopping may end one sooner",
        "lr_step": "StepLR step in epochs, decay x0.1 (one late decay, so that MGN gets ~2,100 steps at the full "
        "rate; with --epochs at most this there is no decay)",
        "patience": "early stopping: end a model's training after N epochs without a better validation segment "
        "Type@AV (its best epoch is kept)",
        "min_epochs": "early stopping counts only after the first N epochs (MGN's class tokens stall for ~600 steps)",
        "seed": "seed of the data and training",
    }
    for name, text in scale_help.items():
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=default, metavar="N", help=f"{text} (default {default:,})"
        )
    parser.add_argument(
        "--tiny-models",
        action="store_true",
        help="tiny HAN and MGN (width 32, one block) for smoke tests: fast, but not the default configurations",
    )
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import check_at_least_one, early_stopping_from_args, resolve_device
    from avvp.demo import TINY_MODEL_OVERRIDES, DemoConfig, run_demo
    from avvp.errors import AvvpError
    from avvp.reports.demo import reference_lines

    check_at_least_one(args, "train", "val", "test", "epochs", "lr_step")
    if args.seed < 0:
        raise AvvpError(f"--seed {args.seed}: must be >= 0")
    config = DemoConfig(
        train=args.train,
        val=args.val,
        test=args.test,
        epochs=args.epochs,
        lr_step=args.lr_step,
        seed=args.seed,
        model_overrides=TINY_MODEL_OVERRIDES if args.tiny_models else {},
        **early_stopping_from_args(args),
    )
    result = run_demo(args.out, config, device=resolve_device(args.device))
    print()
    print(f"LLP-Synth test split ({config.test:,} videos), official metrics:")
    print(result.table)
    print()
    for line in reference_lines(result.rows):
        print(line)
    print()
    print(
        f"demo finished in {result.seconds:.0f} s; wrote {result.out_dir / 'results.json'} and {result.out_dir / 'report.md'}"
    )
    return 0
