"""Where MGN's class grouping puts the segments: not speed, the measurements behind Table 2's section of
docs/experiments.md (why a Hard-Softmax CUG loses the audio track on LLP-Synth).

Two parts:

    python bench/mgn_assignment.py truth --annotations [LABEL=]DIR ... [--out FILE.json]
    python bench/mgn_assignment.py runs --features F --annotations DIR --run LABEL=CHECKPOINT ... [--out FILE.json]

`truth`: per annotation folder (LLP-Synth's, real LLP's ../shared/llp) and split (val, test), how many segments
of each modality's dense truth hold one class and how many two or more, and the ceiling of a parse that gives each
segment at most one class (every other truth kept): its segment-level F-score by the official metric. (At the
segment level it does not matter which class of a segment is kept.) Also Figure 2's two readings (per video, token
c found or not) of two ideal token sets: tokens that are exactly the modality's truth, read against the weak labels,
and tokens that are exactly the weak labels, read against the modality's truth.

`runs`: per MGN checkpoint, on the test split, the class grouping of each modality's CUG. For every segment, the
assignment over the 25 class groups is recomputed from the grouping's inputs (a forward hook: the same logits
the model computes; Softmax over the groups), and the segment is taken as assigned to its largest group (for a
Hard-Softmax CUG this is the one-hot the model uses). Measured over all test segments:
- `weak`: the share assigned to a class among the video's weak labels;
- `present`: the share assigned to a class the model's own video-level probability of that modality calls present
  (p >= 0.5): with a Hard-Softmax CUG only such a segment can be predicted at all;
- `truth`: of the segments with a class in that modality's truth, the share assigned to one of those classes;
- `entropy`: the mean entropy of the assignment over the groups, in bits (uniform over 25: 4.64);
- `groups/video`: the distinct groups a video's 10 segments go to; `groups`: the groups any test segment goes
  to; `top`: the share of all test segments in the most used group, and that group's class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from avvp.checkpoint import load_model
from avvp.data.annotations import load_split
from avvp.data.classes import CLASSES
from avvp.data.splits import feature_tensors, load_split_data
from avvp.metrics import evaluate, token_scores
from avvp.models.registry import unwrap

MODALITIES = ("audio", "visual")


# ---------------------------------------------------------------------------------------------------------- truth
def one_class_per_segment(truth: np.ndarray) -> np.ndarray:
    """[N, 10, 25] bool -> the same with each segment keeping only its lowest-index class."""
    first = np.argmax(truth, axis=2)  # [N, 10]
    kept = np.zeros_like(truth)
    np.put_along_axis(kept, first[..., None], True, axis=2)
    return kept & truth


def truth_record(label: str, annotations: Path, split_name: str) -> dict:
    split = load_split(annotations, split_name)
    record = {"annotations": label, "folder": str(annotations), "split": split_name, "videos": len(split.filenames)}
    for modality in MODALITIES:
        classes = getattr(split, modality).sum(axis=2)  # [N, 10] classes per segment
        record[modality] = {
            "segments": int(classes.size),
            "with_a_class": int((classes >= 1).sum()),
            "with_two_or_more": int((classes >= 2).sum()),
            "videos_with_two_or_more": int((classes >= 2).any(axis=1).sum()),
        }
    ceiling = evaluate(
        one_class_per_segment(split.audio), one_class_per_segment(split.visual), split.audio, split.visual
    )
    record["one_class_ceiling"] = {track: ceiling.segment[track] for track in ("audio", "visual", "type")}
    record["token_readings"] = {  # Figure 2's two readings of two ideal token sets (docs/experiments.md)
        modality: {
            "modality_truth_vs_weak_labels": token_scores(getattr(split, modality).any(axis=1), split.labels),
            "weak_labels_vs_modality_truth": token_scores(split.labels, getattr(split, modality)),
        }
        for modality in MODALITIES
    }
    return record


def print_readings(records: list[dict]) -> None:
    print("\n| annotations | split | tokens | reading | precision | recall | F1 |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    names = {
        "modality_truth_vs_weak_labels": ("exactly the modality's truth", "against the weak labels"),
        "weak_labels_vs_modality_truth": ("exactly the weak labels", "against the modality's truth"),
    }
    for record in records:
        for modality in MODALITIES:
            for key, (tokens, reading) in names.items():
                scores = record["token_readings"][modality][key]
                print(
                    f"| {record['annotations']} | {record['split']} | {modality}: {tokens} | {reading} | "
                    f"{scores['precision']:.1f} | {scores['recall']:.1f} | {scores['f1']:.1f} |"
                )


def print_truth(records: list[dict]) -> None:
    print(
        "| annotations | split | modality | segments with a class | with 2+ classes | share of those "
        "| videos with one | one-class ceiling (segment F) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for record in records:
        for modality in MODALITIES:
            counts = record[modality]
            share = 100 * counts["with_two_or_more"] / max(counts["with_a_class"], 1)
            print(
                f"| {record['annotations']} | {record['split']} ({record['videos']}) | {modality} | "
                f"{counts['with_a_class']} | {counts['with_two_or_more']} | {share:.1f} % | "
                f"{counts['videos_with_two_or_more']} | {record['one_class_ceiling'][modality]:.1f} |"
            )


# ----------------------------------------------------------------------------------------------------------- runs
class AssignmentProbe:
    """Records, per forward, the assignment over the groups of one `Assignment` module: [B, groups, segments]."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        groups, x = inputs
        logits = module.q_proj(groups) @ module.k_proj(x).transpose(1, 2) * module.scale  # as Assignment.forward
        self.batches.append(logits.softmax(dim=1).detach())

    def result(self) -> np.ndarray:
        self.handle.remove()
        return torch.cat(self.batches).numpy()


def assignment_stats(assign: np.ndarray, present: np.ndarray, weak: np.ndarray, truth: np.ndarray) -> dict:
    """assign [N, 25, 10] (Softmax over the groups), present / weak [N, 25] bool, truth [N, 10, 25] bool."""
    chosen = assign.argmax(axis=1)  # [N, 10]: each segment's group
    rows = np.arange(len(chosen))[:, None]
    with_truth = truth.any(axis=2)  # [N, 10]
    entropy = -(assign * np.log2(np.clip(assign, 1e-12, None))).sum(axis=1)  # [N, 10]
    counts = np.bincount(chosen.ravel(), minlength=assign.shape[1])
    return {
        "weak": 100 * float(weak[rows, chosen].mean()),
        "present": 100 * float(present[rows, chosen].mean()),
        "truth": 100 * float(truth[rows, np.arange(chosen.shape[1])[None, :], chosen][with_truth].mean()),
        "entropy": float(entropy.mean()),
        "groups_per_video": float(np.mean([len(np.unique(row)) for row in chosen])),
        "groups": int((counts > 0).sum()),
        "top": 100 * float(counts.max() / counts.sum()),
        "top_class": CLASSES[int(counts.argmax())],
    }


def run_record(
    label: str, checkpoint: Path, features: Path, annotations: Path, authors_assign: tuple[str, str] | None = None
) -> dict:
    """One checkpoint's record; `authors_assign` (CUG, MCG kinds) for an authors' checkpoint, which records none."""
    model, info = load_model(checkpoint)
    if info["format"] == "official" and authors_assign is not None:
        model, info = load_model(checkpoint, unimodal_assign=authors_assign[0], crossmodal_assign=authors_assign[1])
    config = info["config"]
    data = load_split_data(features, annotations, "test")
    inner = unwrap(model)
    probes = {m: AssignmentProbe(getattr(inner, f"{m}_cug").class_grouping.assign) for m in MODALITIES}
    audio, res152, r2plus1d = feature_tensors(data, torch.device("cpu"))
    probs = {"audio": [], "visual": []}
    with torch.no_grad():
        for start in range(0, len(audio), 128):
            part = slice(start, start + 128)
            output = model(audio[part], res152[part], r2plus1d[part])
            probs["audio"].append(output.p_a)
            probs["visual"].append(output.p_v)
    split = data.split
    record = {
        "label": label,
        "checkpoint": str(checkpoint),
        "model": info["model"],
        "unimodal_assign": config["unimodal_assign"],
        "crossmodal_assign": config["crossmodal_assign"],
    }
    for modality in MODALITIES:
        present = torch.cat(probs[modality]).numpy() >= 0.5
        record[modality] = assignment_stats(
            probes[modality].result(), present, split.labels.astype(bool), getattr(split, modality)
        )
    return record


def print_runs(records: list[dict]) -> None:
    print("| run | CUG | modality | weak | present | truth | entropy (bits) | groups/video | groups | top |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for record in records:
        for modality in MODALITIES:
            s = record[modality]
            print(
                f"| {record['label']} | {record['unimodal_assign']} | {modality} | {s['weak']:.1f} | "
                f"{s['present']:.1f} | {s['truth']:.1f} | {s['entropy']:.2f} | {s['groups_per_video']:.2f} | "
                f"{s['groups']} | {s['top']:.1f} ({s['top_class']}) |"
            )


# ------------------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parts = parser.add_subparsers(dest="part", required=True)
    truth = parts.add_parser("truth", help="multi-class segments in the dense truth, and the one-class ceiling")
    truth.add_argument(
        "--annotations",
        nargs="+",
        required=True,
        metavar="[LABEL=]DIR",
        help="annotation folders, each optionally named",
    )
    runs = parts.add_parser("runs", help="where trained MGN checkpoints assign the test segments")
    runs.add_argument("--features", type=Path, required=True, help="the test split's features (folder or packs)")
    runs.add_argument("--annotations", type=Path, required=True, metavar="DIR", help="annotation folder")
    runs.add_argument("--run", action="append", required=True, metavar="LABEL=CHECKPOINT", help="repeatable")
    runs.add_argument(
        "--authors-assign",
        metavar="CUG,MCG",
        help="the assignment kinds of the authors' checkpoints among the runs, e.g. hard,soft (their files record "
        "none; ours record theirs, and this does not apply to them)",
    )
    for part in (truth, runs):
        part.add_argument("--out", type=Path, help="also write the records as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.part == "truth":
        folders = [item.partition("=")[::2] if "=" in item else (item, item) for item in args.annotations]
        records = [truth_record(label, Path(folder), name) for label, folder in folders for name in ("val", "test")]
        print_truth(records)
        print_readings(records)
    else:
        records = []
        for item in args.run:
            label, _, checkpoint = item.partition("=")
            kinds = tuple(args.authors_assign.split(",")) if args.authors_assign else None
            records.append(run_record(label, Path(checkpoint), args.features, args.annotations, kinds))
        print_runs(records)
    if args.out:
        args.out.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
