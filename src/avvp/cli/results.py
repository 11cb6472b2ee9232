"""`avvp results`: keep a sweep's small results (no weights, no features) where tables and figures are redrawn."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "results",
        help="copy a sweep's small results (no weights, no features) so tables and figures can be redrawn from them",
        description="Copy what a sweep's tables and figures are made from into DEST: every finished run's "
        "config.json, metrics.jsonl, test_scores.json and best.json; the test predictions (compressed) of the runs "
        "of --predictions; the sweep's sweep.json, table.md and table.csv; and its val/test annotation files under "
        "DEST/annotations/. Never weights or features. From DEST alone, `avvp sweep KIND --out DEST --table-only` "
        "rewrites the tables, and `avvp plot recall DEST/RUN... --annotations DEST/annotations` and "
        "`avvp plot tokens DEST/RUN...` redraw the figures.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a folder of avvp sweep (with sweep.json)")
    parser.add_argument("--to", required=True, metavar="DEST", help="folder to write (files there are replaced)")
    parser.add_argument(
        "--predictions",
        default="",
        metavar="CONFIGS",
        help="comma-separated configurations whose runs keep their test predictions, for `avvp plot recall` "
        "(e.g. han,mgn-3-3-6; computed from best.safetensors where not cached; about 1 MB a run). Default: none",
    )
    parser.add_argument("--features", metavar="PATH", help="the sweep's features, where they moved since training")
    parser.add_argument("--annotations", metavar="DIR", help="the sweep's annotations, where they moved since training")
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import resolve_device
    from avvp.results import keep_results

    configs = [name.strip() for name in args.predictions.split(",") if name.strip()]
    kept = keep_results(
        args.sweep_dir,
        args.to,
        predictions_for=configs,
        device=str(resolve_device(args.device)),
        features=args.features,
        annotations=args.annotations,
    )
    print(
        f"kept {len(kept.runs)} finished run(s) ({len(kept.predictions)} with test predictions) in {args.to}: "
        f"{kept.size_bytes / 1e6:.1f} MB"
    )
    if kept.skipped:
        print(f"left out, not finished: {', '.join(kept.skipped)}")
    return 0
