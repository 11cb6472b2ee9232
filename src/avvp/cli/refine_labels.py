"""`avvp refine-labels`: decide per training video which weak labels are audible and which visible (label exchange)."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, add_assign_args, add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "refine-labels",
        help="modality-aware label refinement (MA's label exchange): audio and visual labels per training video",
        description="With a trained base model (HAN or MGN, ours or the authors'), decide for each weak label of each "
        "video whether it is audible and whether it is visible, by exchanging one modality's track with that of a "
        "partner video whose labels are disjoint (Wu & Yang, CVPR 2021): a label leaves the visual labels when, with "
        "the audio exchanged, the model's p_v and p_a for it both fall below the class threshold, and the audio labels "
        "likewise with the visual track exchanged. Writes LABELS.csv (filename, audio_labels, visual_labels) for "
        "`avvp train --modality-labels`, LABELS.evidence.csv (every decision with its probabilities and threshold) "
        "and LABELS.json (thresholds, counts, timing and, where the truth is known, the labels' precision and "
        "recall). See docs/label-refinement.md.",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="base model: avvp checkpoint or authors' .pt"
    )
    parser.add_argument(
        "--features", required=True, metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/), a pack, or a folder of packs",
    )  # fmt: skip
    add_annotations_arg(parser)
    parser.add_argument("--out", required=True, metavar="LABELS.csv", help="modality-label file to write")
    parser.add_argument(
        "--split", choices=["train", "val", "test"], default="train",
        help="videos to refine (default: train); val or test to measure the refinement against their dense "
        "annotations (partners are drawn within the split; the thresholds always come from the training split)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the partner draw (default: %(default)s)")
    parser.add_argument(
        "--threshold", type=float, default=0.5,
        help="a label is removed when both exchanged probabilities fall below THRESHOLD * err[c] / max err, err[c] "
        "the base model's training error on class c (default: the method's %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--error-cut", type=float, default=0.5,
        help="probability above which the base model counts as predicting a class when its per-class training "
        "error is measured (default: the method's %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=256, help="videos per batch, each scored 3 times (default: %(default)s)"
    )
    add_assign_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avvp.cli.common import check_at_least_one, resolve_annotations, resolve_device
    from avvp.errors import AvvpError
    from avvp.refine import refine_split, side_files

    check_at_least_one(args, "batch_size")
    for flag, value in (("--threshold", args.threshold), ("--error-cut", args.error_cut)):
        if not 0 <= value <= 1:
            raise AvvpError(f"{flag} {value}: must be in [0, 1]")
    summary = refine_split(
        args.checkpoint,
        args.features,
        resolve_annotations(args.annotations),
        args.out,
        split=args.split,
        seed=args.seed,
        threshold=args.threshold,
        error_cut=args.error_cut,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        skip_bad_rows=args.skip_bad_rows,
        assign={"unimodal_assign": args.unimodal_assign, "crossmodal_assign": args.crossmodal_assign},
    )
    print(describe(summary))
    evidence, record = side_files(Path(args.out))
    print(f"written {args.out}, {evidence} and {record}")
    return 0


def describe(summary: dict) -> str:
    """What a refinement did, in a few lines."""
    from avvp.models.registry import get_spec

    labels, removed = summary["labels"], summary["removed"]
    rate = 3 * summary["videos"] / summary["exchange_seconds"] if summary["exchange_seconds"] else float("inf")
    share = {modality: 100 * removed[modality] / max(labels, 1) for modality in removed}
    lines = [
        (
            f"{summary['split']}: {summary['videos']:,} videos, {labels:,} weak labels, refined by "
            f"{get_spec(summary['model']).title} in {summary['exchange_seconds']:.1f} s ({rate:,.0f} videos scored per "
            "second, 3 per video)"
        ),
        (
            f"removed {removed['audio']:,} audio labels ({share['audio']:.1f} %) and {removed['visual']:,} visual "
            f"labels ({share['visual']:.1f} %)"
        ),
    ]
    if summary["no_partner"]:
        lines.append(f"{len(summary['no_partner'])} video(s) without a disjoint partner kept their labels")
    quality = summary.get("quality")
    if quality:
        for modality in ("audio", "visual"):
            weak, refined = quality["weak"][modality], quality["refined"][modality]
            lines.append(
                f"{modality} labels against {quality['truth']}: precision {weak['precision']:.1f} -> "
                f"{refined['precision']:.1f}, recall {weak['recall']:.1f} -> {refined['recall']:.1f} (weak -> refined)"
            )
    return "\n".join(lines)
