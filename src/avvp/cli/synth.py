"""`avvp synth`: write LLP-Synth, a synthetic dataset in exactly the LLP layout."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from avvp.data.synth import SynthConfig

    defaults = SynthConfig()
    parser = subparsers.add_parser(
        "synth",
        help="generate LLP-Synth: features and annotation CSVs in exactly the LLP layout",
        description="Write a synthetic dataset with the real LLP label structure (classes per video, class "
        "frequencies, audible/visible shares, event lengths) to DIR/feats/{vggish,res152,r2plus1d_18} and "
        "DIR/AVVP_*.csv, so that every avvp command runs on it unchanged. The same seed gives byte-identical "
        "files. See docs/synth.md.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create (absent or empty)")
    parser.add_argument(
        "--train", type=int, metavar="N", default=defaults.train, help=f"training videos (default {defaults.train:,})"
    )
    parser.add_argument(
        "--val", type=int, metavar="N", default=defaults.val, help=f"validation videos (default {defaults.val:,})"
    )
    parser.add_argument(
        "--test", type=int, metavar="N", default=defaults.test, help=f"test videos (default {defaults.test:,})"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", default=defaults.seed, help=f"master seed (default {defaults.seed})"
    )
    parser.add_argument(
        "--cross-modal-leakage",
        type=float,
        metavar="X",
        default=defaults.cross_modal_leakage,
        help="an event also shows in the other modality's features at this fraction of its strength (default "
        f"{defaults.cross_modal_leakage}, calibrated; 0: an audible-only event leaves no visual trace, e.g. to "
        "measure label refinement)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="threads computing and writing features (default: 2 per core, max 8)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from avvp.cli.common import check_at_least_one
    from avvp.data.synth import SynthConfig, generate
    from avvp.errors import AvvpError

    check_at_least_one(args, "workers")
    if args.seed < 0:
        raise AvvpError(f"--seed {args.seed}: must be >= 0")
    config = dataclasses.replace(
        SynthConfig(),
        train=args.train,
        val=args.val,
        test=args.test,
        seed=args.seed,
        cross_modal_leakage=args.cross_modal_leakage,
    )
    summary = generate(args.out, config, overwrite=args.overwrite, workers=args.workers)
    sizes = ", ".join(f"{count:,} {split}" for split, count in summary["videos"].items())
    print(
        f"LLP-Synth (seed {summary['seed']}): {sizes} videos, {summary['feature_bytes'] / 1e9:.2f} GB of features "
        f"written to {summary['out']} in {summary['seconds']:.1f} s"
    )
    test_stats = summary["label_statistics"]["test"]
    if test_stats.get("videos"):
        print(
            f"test labels: {test_stats['classes_per_video']:.2f} classes per video; "
            f"{100 * test_stats['audible_and_visible']:.0f} % audible and visible, "
            f"{100 * test_stats['audible_only']:.0f} % audible only, {100 * test_stats['visible_only']:.0f} % visible "
            f"only; {test_stats['audio_segments_per_event']:.1f} audible / "
            f"{test_stats['visual_segments_per_event']:.1f} visible segments per event"
        )
    return 0
