"""`avvp evaluate`: predict a split with a checkpoint, then score it with the official metrics."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, add_inference_args, resolve_annotations


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="predict a split with a checkpoint and score it (predict + score in one command)",
        description="Predict the val or test split with a checkpoint (ours or the authors') and print the ten "
        "official numbers.",
    )
    add_inference_args(parser)
    parser.add_argument("--split", choices=["val", "test"], default="test", help="split to score (default: test)")
    add_annotations_arg(parser)
    parser.add_argument("--json", metavar="OUT", help="also write the scores (unrounded, percent) as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import resolve_device
    from avvp.data.annotations import load_split
    from avvp.inference import predict_videos
    from avvp.metrics import evaluate, format_scores, parse_predictions, scores_json

    device = resolve_device(args.device)
    split = load_split(resolve_annotations(args.annotations), args.split, skip_bad_rows=args.skip_bad_rows)
    predictions = predict_videos(
        args.checkpoint,
        args.features,
        split.filenames,
        device=device,
        batch_size=args.batch_size,
        precision=args.precision,
        unimodal_assign=args.unimodal_assign,
        crossmodal_assign=args.crossmodal_assign,
    )
    pred_audio, pred_visual = parse_predictions(predictions["audio"], predictions["visual"], predictions["video"])
    scores = evaluate(pred_audio, pred_visual, split.audio, split.visual)
    print(format_scores(scores))
    if args.json:
        from avvp.utils import atomic_write_text

        atomic_write_text(args.json, scores_json(scores))
    return 0
