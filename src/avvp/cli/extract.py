"""`avvp extract`: VGGish / ResNet-152 / R(2+1)D-18 features of raw videos, in the official LLP layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from avvp.cli.common import add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract LLP features (vggish, res152, r2plus1d_18) from raw videos",
        description="Decode videos and write FEATS/vggish/<id>.npy [L,128], FEATS/res152/<id>.npy [8L,2048] and "
        "FEATS/r2plus1d_18/<id>.npy [L,512] for an L-second video (<id> = the file stem). Videos already done are "
        "skipped; a bad video is reported at the end (exit status 1) and leaves no files. Needs `avvp[video]`.",
    )
    parser.add_argument(
        "--videos",
        required=True,
        metavar="DIR_OR_LIST",
        help="a video, a folder of videos, or a text file with one video path a line",
    )
    parser.add_argument("--out", required=True, metavar="FEATS", help="features folder to write (official layout)")
    parser.add_argument(
        "--workers", type=int, default=2, help="videos decoded in parallel, ahead of the networks (default: 2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from avvp.video.weights import add_weights_args

    add_weights_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from avvp.cli.common import resolve_device
    from avvp.video.extract import extract_videos, list_videos
    from avvp.video.weights import RANDOM_WEIGHTS_WARNING, resolve_weights

    source = resolve_weights(args)
    if source.random:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    videos = list_videos(args.videos)
    out = Path(args.out)
    report = extract_videos(
        videos, out, source, device=resolve_device(args.device), workers=args.workers, progress=not args.no_progress
    )
    print(
        f"extract: {len(report.done)} extracted, {len(report.skipped)} already done, {len(report.failed)} failed "
        f"-> {out}" + (" (RANDOM WEIGHTS)" if source.random else "")
    )
    for _, reason in report.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    return 1 if report.failed else 0
