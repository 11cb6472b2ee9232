"""Not speed: how well one second's features tell its classes, audio against visual (docs/experiments.md, Table 2).

    python bench/segment_probe.py --features DATA/packs --annotations DATA [--steps 300] [--out FILE.json]

On LLP-Synth, whose training truth is regenerated from its seed, a linear classifier per modality (25 sigmoid
outputs, BCE, full-batch Adam) is fitted on every training segment's raw features (audio: VGGish, 128; visual:
ResNet-152 averaged per second and R(2+1)D, 2,560) against that segment's dense truth, and scored on the test
split's segments: among the segments that hold a class, the share whose highest-scoring class is one of them (what
a one-hot class assignment needs), and the segment-level F-score at 0.5 pooled over segments and classes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from avvp.data.splits import load_split_data
from avvp.data.synth import training_truth


def fit(features: torch.Tensor, truth: torch.Tensor, steps: int, seed: int = 0) -> torch.nn.Linear:
    """A linear layer fitted with BCE on standardised features (full batch, Adam 1e-2)."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(features.shape[1], truth.shape[1])
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(layer(features), truth)
        loss.backward()
        optimizer.step()
    return layer


def scores(logits: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    held = truth.any(dim=1)
    top = logits.argmax(dim=1)
    top_right = truth[torch.arange(len(truth)), top].bool()
    found = logits > 0
    tp = (found & truth.bool()).sum().item()
    fp, fn = (found & ~truth.bool()).sum().item(), (~found & truth.bool()).sum().item()
    return {"top_class_right": 100 * top_right[held].float().mean().item(), "f1": 100 * 2 * tp / (2 * tp + fp + fn)}


def segments(data, truth: np.ndarray) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per modality: features [N * 10, D] and truth [N * 10, 25]."""
    features = data.features
    visual = np.concatenate([features.res152, features.r2plus1d], axis=2)  # [N, 10, 2560]
    out = {}
    for name, values, dense in (("audio", features.audio, truth[0]), ("visual", visual, truth[1])):
        x = torch.from_numpy(values.reshape(-1, values.shape[-1]).astype(np.float32))
        out[name] = (x, torch.from_numpy(dense.reshape(-1, 25).astype(np.float32)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="LLP-Synth features (folder or packs)")
    parser.add_argument("--annotations", type=Path, required=True, help="the LLP-Synth folder")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default: 300)")
    parser.add_argument("--out", type=Path, help="also write the scores as JSON")
    args = parser.parse_args()
    train = load_split_data(args.features, args.annotations, "train")
    truth = training_truth(args.annotations, train.split.filenames, train.split.labels)
    if truth is None:
        raise SystemExit(f"{args.annotations}: not LLP-Synth of this version (no training truth)")
    test = load_split_data(args.features, args.annotations, "test")
    fitted, evaluated = segments(train, truth), segments(test, (test.split.audio, test.split.visual))
    results = {}
    for modality in ("audio", "visual"):
        x, y = fitted[modality]
        mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6
        layer = fit((x - mean) / std, y, args.steps)
        test_x, test_y = evaluated[modality]
        with torch.no_grad():
            results[modality] = scores(layer((test_x - mean) / std), test_y) | {
                "train": scores(layer((x - mean) / std), y)
            }
        print(f"{modality}: {results[modality]}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
