"""`avvp score`: score any method's predictions (PRED.npz) on val or test with the official metrics."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, resolve_annotations


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a predictions file (PRED.npz) on val or test with the official LLP metrics",
        description="Score segment-level predictions with the official LLP metrics and print the ten numbers. "
        "PRED.npz holds filenames (N,), audio and visual (N, 10, 25) probabilities or 0/1 values, and optionally "
        "video (N, 25) video-level probabilities; the parse is (segment >= 0.5) AND (video >= 0.5 when given).",
    )
    parser.add_argument("predictions", metavar="PRED.npz", help="predictions file to score")
    parser.add_argument("--split", choices=["val", "test"], default="test", help="split to score (default: test)")
    add_annotations_arg(parser)
    parser.add_argument("--json", metavar="OUT", help="also write the scores (unrounded, percent) as JSON to OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.data.annotations import load_split
    from avvp.metrics import format_scores, scores_json
    from avvp.scoring import score_predictions
    from avvp.utils import atomic_write_text

    split = load_split(resolve_annotations(args.annotations), args.split, skip_bad_rows=args.skip_bad_rows)
    scores = score_predictions(args.predictions, split)
    print(format_scores(scores))
    if args.json:
        atomic_write_text(args.json, scores_json(scores))
    return 0
