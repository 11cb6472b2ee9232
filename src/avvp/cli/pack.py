"""`avvp pack`: pack a split's features into one memory-mappable file (the fast path)."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_skip_bad_rows_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pack",
        help="pack features of a list (or of every split) into memory-mappable files",
        description="Validate features once (shapes, dtype, NaN/inf) and write one memory-mappable file per list, "
        "with the ResNet-152 frames averaged per second (10x2048: the same model up to float rounding). "
        "`train`, `predict`, `evaluate` and the sweeps accept a pack file, or a folder of packs, wherever they "
        "accept a features folder.",
    )
    parser.add_argument("--features", required=True, metavar="DIR", help="features folder in the official layout")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", metavar="CSV", help="pack the videos of this list (filename<TAB>event_labels)")
    target.add_argument(
        "--annotations",
        metavar="DIR",
        help="pack every split: AVVP_train.csv, AVVP_val_pd.csv and AVVP_test_pd.csv of this folder",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="with --list: the pack file to write; with --annotations: a folder for train.pack, val.pack, test.pack",
    )
    parser.add_argument(
        "--float16",
        action="store_true",
        help="store float16 (half the size; approximate: about 3 significant digits, predictions may differ slightly)",
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel readers (default: 2 x cores, at most 8)")
    add_skip_bad_rows_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avvp.data.annotations import SPLIT_FILES, read_weak_labels
    from avvp.data.store import pack_features

    dtype = "float16" if args.float16 else "float32"
    if args.list:
        jobs = [(Path(args.list), Path(args.out))]
    else:
        folder = Path(args.annotations)
        jobs = [(folder / SPLIT_FILES[name], Path(args.out) / f"{name}.pack") for name in ("train", "val", "test")]
    for list_path, out_path in jobs:
        filenames = read_weak_labels(list_path, skip_bad_rows=args.skip_bad_rows).filenames
        pack_features(args.features, filenames, out_path, dtype=dtype, workers=args.workers)
        size = out_path.stat().st_size / 1e6
        print(f"wrote {out_path}: {len(filenames)} videos, {size:.1f} MB ({dtype})")
    return 0
