"""`avvp predict`: run a checkpoint (ours or the authors') over a list of videos and write PRED.npz."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_inference_args, add_skip_bad_rows_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict segment- and video-level probabilities for a list of videos",
        description="Run a checkpoint (avvp's .safetensors, or the authors' MGN_Net.pt / MMIL_Net.pt) over the videos "
        "of a list in the AVVP_*_pd.csv format; writes PRED.npz in the format `avvp score` reads.",
    )
    add_inference_args(parser)
    parser.add_argument("--list", required=True, metavar="CSV", help="list of videos (filename<TAB>event_labels)")
    parser.add_argument("--out", required=True, metavar="PRED.npz", help="predictions file to write")
    add_skip_bad_rows_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import resolve_device
    from avvp.data.annotations import read_weak_labels
    from avvp.inference import predict_videos, save_predictions
    from avvp.utils import output_path

    output_path(args.out)  # a path that cannot be written fails now, not after the predictions
    device = resolve_device(args.device)
    filenames = read_weak_labels(args.list, skip_bad_rows=args.skip_bad_rows).filenames
    predictions = predict_videos(
        args.checkpoint,
        args.features,
        filenames,
        device=device,
        batch_size=args.batch_size,
        precision=args.precision,
        unimodal_assign=args.unimodal_assign,
        crossmodal_assign=args.crossmodal_assign,
    )
    save_predictions(args.out, filenames, predictions)
    print(f"wrote {args.out}: {len(filenames)} videos")
    return 0
