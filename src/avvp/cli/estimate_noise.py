"""`avvp estimate-noise`: JoMoLD's per-class noise ratios from an estimator trained without cross-modal exchange."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, add_assign_args, add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate-noise",
        help="JoMoLD's noise ratios: per class, the share of weak labels to remove in each modality (NOISE.json)",
        description="Run an estimator (a model trained on the weak labels with `avvp train --no-cross-modal`; ours "
        "or the authors' HAN) over the training split in its cross-modal-free form and eval mode. For each class c, "
        "a video labelled c counts as visually noisy when p_v[c] times its smoothed visual target (0.95) falls below "
        "--v-thres times the mean of p_v[c] (a mean of per-batch means over all training videos, labelled or not), "
        "and as audio-noisy when p_a[c] falls below --a-thres times the mean of p_a[c]; the ratio is their number "
        "over the videos labelled c (0 for a class no training video carries), as Cheng et al. (ECCV 2022) compute "
        "it. Writes NOISE.json: {'audio': {class: ratio}, 'visual': {class: ratio}}, the thresholds, the estimator "
        "(path, SHA-256) and, for LLP-Synth, the true share of each class's weak labels absent in each modality. "
        "`avvp train --noise-ratios NOISE.json` trains with it. See docs/jomold.md.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="EST", help="estimator: avvp checkpoint or authors' .pt")
    parser.add_argument(
        "--features", required=True, metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/), a pack, or a folder of packs",
    )  # fmt: skip
    add_annotations_arg(parser)
    parser.add_argument("--out", required=True, metavar="NOISE.json", help="noise-ratio file to write")
    parser.add_argument(
        "--a-thres", type=float, default=0.6, help="audio threshold (default: the authors' %(default)s)"
    )
    parser.add_argument(
        "--v-thres", type=float, default=1.8, help="visual threshold (default: the authors' %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128,
        help="videos per batch; the class means are means of per-batch means, so this matters a little "
        "(default: the authors' %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-train-videos", type=int, metavar="N",
        help="the first N training videos only: those `avvp train --max-train-videos N` trains on",
    )  # fmt: skip
    add_assign_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import check_at_least_one, resolve_annotations, resolve_device
    from avvp.denoise import estimate_noise
    from avvp.errors import AvvpError

    check_at_least_one(args, "batch_size", "max_train_videos")
    for flag, value in (("--a-thres", args.a_thres), ("--v-thres", args.v_thres)):
        if not value > 0:
            raise AvvpError(f"{flag} {value}: must be above 0")
    ratios = estimate_noise(
        args.checkpoint,
        args.features,
        resolve_annotations(args.annotations),
        args.out,
        thresholds={"audio": args.a_thres, "visual": args.v_thres},
        batch_size=args.batch_size,
        max_train_videos=args.max_train_videos,
        device=resolve_device(args.device),
        skip_bad_rows=args.skip_bad_rows,
        assign={"unimodal_assign": args.unimodal_assign, "crossmodal_assign": args.crossmodal_assign},
    )
    print(
        f"wrote {args.out}: mean ratio audio {ratios.audio.mean():.3f}, visual {ratios.visual.mean():.3f} over "
        f"{ratios.extra['videos']} training videos"
    )
    return 0
