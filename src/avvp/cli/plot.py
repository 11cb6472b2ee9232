"""`avvp plot recall|tokens|parse`: the paper's figures (per-class recall, class tokens) and one video's parse."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, add_device_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="figures: per-class recall of runs, class-token scores of a run, one video's parse",
        description="Draw a PNG and write its numbers as CSV beside it (FILE.png -> FILE.csv).",
    )
    kinds = parser.add_subparsers(dest="plot_kind", metavar="KIND", required=True)

    recall = kinds.add_parser(
        "recall",
        help="event-level recall of every class, audio / visual / audio-visual, one colour per run (Figure 1)",
        description="Per-class event-level recall on the test split of each run's best checkpoint. The test "
        "predictions are computed once per run and cached as RUN_DIR/test_pred.npz.",
    )
    recall.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders of avvp train / avvp sweep")
    recall.add_argument(
        "--labels",
        help="comma-separated legend labels, one per RUN_DIR (default: folder names); runs with the same label (the "
        "seeds of one model) are combined: their mean recall, with the lowest and highest",
    )
    recall.add_argument("--out", required=True, metavar="FILE.png", help="PNG to write (the CSV goes beside it)")
    recall.add_argument("--title", help="figure title (default: 'Event-level recall per class (test split)')")
    recall.add_argument("--features", metavar="PATH", help="features, where they moved since training")
    recall.add_argument("--annotations", metavar="DIR", help="annotation folder, where it moved since training")
    add_device_arg(recall)
    recall.set_defaults(func=run_recall)

    tokens = kinds.add_parser(
        "tokens",
        help="precision / recall / F1 of the audio and visual class tokens over training (Figure 2)",
        description="Class-token precision, recall and F1 on the val split after each epoch, against training steps, "
        "read from RUN_DIR/metrics.jsonl (MGN runs). Per video, class token c counts as found when its head's "
        "probability on the video's grouped token (p_a or p_v) is >= 0.5, and as right when c occurs in that "
        "modality's ground truth; counts are pooled over the videos. A second row reads the same tokens against "
        "each video's weak labels (the labels MGN trains on), drawn when every run recorded it (runs of avvp "
        "before 2026-12-06 did not: the figure then has the first row only, and a note says so). Several RUN_DIRs "
        "(seeds) are combined: mean, with a band from the lowest to the highest.",
    )
    tokens.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="MGN run folders of avvp train / avvp sweep")
    tokens.add_argument("--title", help="figure title (default: the run folder names)")
    tokens.add_argument("--out", required=True, metavar="FILE.png", help="PNG to write (the CSV goes beside it)")
    tokens.set_defaults(func=run_tokens)

    parse = kinds.add_parser(
        "parse",
        help="one video's parse against its ground truth: audio and visual tracks of each class over 10 segments",
        description="For one val or test video of a predictions file: each class that is predicted or true, its "
        "audio and visual segments coloured hit / false alarm / miss, with the segment probabilities.",
    )
    parse.add_argument("predictions", metavar="PRED.npz", help="predictions file (avvp predict, or test_pred.npz)")
    parse.add_argument("--video", required=True, metavar="ID", help="the video: its filename or 11-character id")
    add_annotations_arg(parse)
    parse.add_argument("--out", required=True, metavar="FILE.png", help="PNG to write (the CSV goes beside it)")
    parse.add_argument("--threshold", type=float, default=0.5, help="parse threshold (default: 0.5, official)")
    parse.add_argument("--title", help="first line of the title (default: '<video>: prediction vs ground truth')")
    parse.set_defaults(func=run_parse)

    for sub in (recall, tokens, parse):
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print details")


def _check_png(out: str) -> None:
    from avvp.errors import AvvpError

    if not out.lower().endswith(".png"):
        raise AvvpError(f"--out {out}: give a .png file name (the CSV is written beside it)")


def run_recall(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from avvp.cli.common import resolve_device
    from avvp.errors import AvvpError
    from avvp.reports.plots import RECALL_TRACKS, plot_class_recall
    from avvp.sweep import run_test_predictions

    _check_png(args.out)
    labels = (
        [label.strip() for label in args.labels.split(",")] if args.labels else [Path(d).name for d in args.run_dirs]
    )
    if len(labels) != len(args.run_dirs):
        raise AvvpError(f"--labels: {len(labels)} label(s) for {len(args.run_dirs)} run folder(s)")
    if not args.labels and len(set(labels)) != len(labels):  # only given labels combine runs
        raise AvvpError("two run folders share a name: pass --labels (runs given the same label are combined)")
    device = str(resolve_device(args.device))
    recalls: dict[str, dict[str, list]] = {}
    events: dict[str, np.ndarray] = {}
    for label, run_dir in zip(labels, args.run_dirs):
        _, scores = run_test_predictions(run_dir, device=device, features=args.features, annotations=args.annotations)
        counts = {track: scores.event_counts[track] for track in RECALL_TRACKS}
        truth = {track: (c.tp + c.fn).sum(axis=0) for track, c in counts.items()}  # test events per class [25]
        if events and any((events[t] != truth[t]).any() for t in RECALL_TRACKS):
            raise AvvpError(f"{run_dir}: scored on other test annotations than the runs before it")
        events = truth
        for track, c in counts.items():
            recalls.setdefault(label, {}).setdefault(track, []).append(c.class_recall())
        print(f"{label} ({Path(run_dir).name}): test event-level Audio {scores.event['audio']:.1f}, "
              f"Visual {scores.event['visual']:.1f}, Audio-Visual {scores.event['audio_visual']:.1f}")  # fmt: skip
    arrays = {
        label: {track: np.stack(values) for track, values in by_track.items()} for label, by_track in recalls.items()
    }
    png, csv_file = plot_class_recall(arrays, args.out, events=events, **({"title": args.title} if args.title else {}))
    print(f"wrote {png} and {csv_file}")
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avvp.reports.plots import has_weak_reading, load_token_history, plot_token_curves

    _check_png(args.out)
    histories = [load_token_history(run_dir) for run_dir in args.run_dirs]
    names = ", ".join(Path(run_dir).name for run_dir in args.run_dirs)
    title = args.title or f"Class tokens of {names}"
    png, csv_file = plot_token_curves(histories, args.out, title=title)
    for run_dir, history in zip(args.run_dirs, histories):
        last = history[-1]
        line = (
            f"{Path(run_dir).name}, epoch {last['epoch']} (step {last['steps']}): token F1 against the dense truth: "
            f"audio {last['audio']['f1']:.1f}, visual {last['visual']['f1']:.1f}"
        )
        if has_weak_reading(history):
            weak = last["weak"]
            line += f"; against the weak labels: audio {weak['audio']['f1']:.1f}, visual {weak['visual']['f1']:.1f}"
        print(line)
    lacking = [
        Path(run_dir).name for run_dir, history in zip(args.run_dirs, histories) if not has_weak_reading(history)
    ]
    if lacking:
        print(
            f"note: {', '.join(lacking)} recorded no weak-label reading (runs of avvp before 2026-12-06); the figure "
            "has the dense-truth reading only"
        )
    print(f"wrote {png} and {csv_file}")
    return 0


def run_parse(args: argparse.Namespace) -> int:
    from avvp.cli.common import resolve_annotations
    from avvp.data.annotations import load_split, video_id
    from avvp.errors import AvvpError
    from avvp.reports.plots import plot_video_parse
    from avvp.scoring import read_predictions

    _check_png(args.out)
    if not 0 < args.threshold < 1:
        raise AvvpError(f"--threshold {args.threshold}: must be between 0 and 1")
    annotations = resolve_annotations(args.annotations)
    names, arrays = read_predictions(args.predictions)
    rows = [i for i, name in enumerate(names) if args.video in (name, video_id(name))]
    if len(rows) != 1:
        what = "not in" if not rows else f"matches {len(rows)} videos of"
        raise AvvpError(f"{args.predictions}: video {args.video!r} {what} the file; give its full filename")
    row = rows[0]
    filename = names[row]
    for split_name in ("test", "val"):
        split = load_split(annotations, split_name, skip_bad_rows=args.skip_bad_rows)
        if filename in split.filenames:
            index = split.filenames.index(filename)
            break
    else:
        raise AvvpError(f"{filename}: not in the val or test split of {annotations}, so it has no dense ground truth")
    png, csv_file = plot_video_parse(
        args.out,
        filename=filename,
        audio_probs=arrays["audio"][row],
        visual_probs=arrays["visual"][row],
        gt_audio=split.audio[index],
        gt_visual=split.visual[index],
        video_probs=arrays["video"][row] if "video" in arrays else None,
        threshold=args.threshold,
        title=args.title,
    )
    print(f"wrote {png} and {csv_file}")
    return 0
