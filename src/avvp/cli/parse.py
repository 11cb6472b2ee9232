"""`avvp parse`: which events are heard, seen, or both, and when, in one raw video of any length."""

from __future__ import annotations

import argparse
from pathlib import Path

from avvp.cli.common import add_assign_args, add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parse",
        help="parse a raw video: audio, visual and audio-visual events over time",
        description="Extract LLP features from VIDEO, run a checkpoint over 10-second windows (overlapping, "
        "segment probabilities averaged where they overlap) and write OUT/parse.json, OUT/timeline.png and a "
        "summary. Needs `avvp[video]`.",
    )
    parser.add_argument("video", metavar="VIDEO", help="the video file to parse")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="avvp checkpoint or authors' .pt file")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: ./<video stem>_parse)")
    parser.add_argument(
        "--stride", type=int, default=5, help="seconds between the starts of successive 10-s windows (default: 5)"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="probability threshold of the parse rule (default: 0.5)"
    )
    from avvp.video.weights import add_weights_args

    add_weights_args(parser)
    add_assign_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from avvp.cli.common import resolve_device
    from avvp.data.classes import CLASSES
    from avvp.errors import AvvpError
    from avvp.models.registry import get_spec
    from avvp.reports.timeline import plot_timeline
    from avvp.utils import atomic_path
    from avvp.video.parse import parse_video
    from avvp.video.weights import RANDOM_WEIGHTS_WARNING, resolve_weights

    if args.stride < 1:
        raise AvvpError(f"--stride {args.stride}: must be at least 1 second")
    if not 0 < args.threshold < 1:
        raise AvvpError(f"--threshold {args.threshold}: must be between 0 and 1")
    video_path = Path(args.video)
    out = Path(args.out) if args.out else Path(f"{video_path.stem}_parse")
    device = resolve_device(args.device)
    source = resolve_weights(args)
    if source.random:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    result = parse_video(
        video_path,
        args.checkpoint,
        weights=source,
        device=device,
        stride=args.stride,
        threshold=args.threshold,
        unimodal_assign=args.unimodal_assign,
        crossmodal_assign=args.crossmodal_assign,
    )

    title = f"{video_path.name} ({result.num_seconds} s), {get_spec(result.model).title} {Path(args.checkpoint).name}"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "timeline.png") as png_tmp, atomic_path(out / "parse.json") as json_tmp:
        plot_timeline(png_tmp, result.events, result.num_seconds, title, CLASSES, random_weights=source.random)
        json_tmp.write_text(_compact_json(result.to_dict()), encoding="utf-8")

    events = result.events
    flag = "  [RANDOM WEIGHTS: not a real parse]" if source.random else ""
    audio_note = "" if result.has_audio else ", no audio track (parsed as silence)"
    print(
        f"{video_path.name}: {result.duration:.1f} s{audio_note}, {get_spec(result.model).title}, {len(events)} events{flag}"
    )
    for event in events[:20]:
        name = event.class_name.replace("_", " ")
        print(f"  {event.onset:>5d}-{event.offset:<5d}s  {name:<24s} {event.modality:<13s} {event.confidence:.2f}")
    if len(events) > 20:
        print(f"  ... and {len(events) - 20} more in {out / 'parse.json'}")
    print(f"wrote {out / 'parse.json'} and {out / 'timeline.png'}")
    return 0


def _compact_json(record: dict) -> str:
    """Indented JSON with every list of numbers on one line (per-second probabilities stay readable)."""
    import json
    import re

    def one_line(match: re.Match) -> str:
        return "[" + ", ".join(number.strip() for number in match.group(1).split(",")) + "]"

    return re.sub(r"\[\s*([-0-9.eE,\s]+?)\s*\]", one_line, json.dumps(record, indent=2)) + "\n"
