"""Speed of the label exchange (`avvp.refine.exchange_scores`): exchanged videos scored per second by HAN and MGN
(3,3,6) at the papers' widths, on random features of the real shapes (the models' speed does not depend on the
values), and the partner draw for an LLP-sized training split.

    .venv/bin/python bench/refine_labels.py --videos 2048 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from avvp.data.classes import NUM_CLASSES
from avvp.data.features import Features
from avvp.models import create_model
from avvp.refine import draw_partners, exchange_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2048, help="videos refined per model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="videos per batch (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    features = Features(
        rng.normal(size=(args.videos, 10, 128)).astype(np.float32),
        rng.random((args.videos, 10, 2048), dtype=np.float32),
        rng.random((args.videos, 10, 512), dtype=np.float32),
    )
    labels = np.zeros((10_000, NUM_CLASSES), np.float32)  # LLP's training split size, 1-3 classes per video
    for row in range(len(labels)):
        labels[row, rng.choice(NUM_CLASSES, size=int(rng.integers(1, 4)), replace=False)] = 1
    started = time.perf_counter()
    draw_partners(labels, seed=0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"partners of 10,000 videos: {time.perf_counter() - started:.2f} s")
    partners = rng.permutation(args.videos)
    for name, overrides in (("HAN", {}), ("MGN (3,3,6)", {})):
        model = create_model("han" if name == "HAN" else "mgn", **overrides).to(args.device)
        exchange_scores(model, features, partners[: args.batch_size], batch_size=args.batch_size, device=args.device)
        started = time.perf_counter()
        exchange_scores(model, features, partners, batch_size=args.batch_size, device=args.device)
        seconds = time.perf_counter() - started
        print(f"{name}: {args.videos:,} videos in {seconds:.1f} s: {args.videos / seconds:,.0f} videos refined per "
              f"second ({3 * args.videos / seconds:,.0f} forward passes of a video per second)")  # fmt: skip


if __name__ == "__main__":
    main()
