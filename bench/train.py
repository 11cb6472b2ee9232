"""Training throughput on LLP-Synth: videos/s and epoch time, MGN (default config) and HAN, several batch sizes.

    python bench/train.py                      # 10,000 training videos, 1 epoch per row, batch 16 and 64
    python bench/train.py --videos 2000 --device cuda --compile

Data: LLP-Synth generated once into --data (cached; 10,000 videos take ~7 GB as .npy) and packed (the fast path).
Each row runs `avvp.training.train` for --epochs epochs (validation on the val split each epoch, as in the recipe) and
reads the per-epoch timings it records in metrics.jsonl. Prints a table with the device.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from avvp.data.annotations import SPLIT_FILES, read_weak_labels
from avvp.data.store import pack_features
from avvp.data.synth import SynthConfig, generate, load_config
from avvp.training import TrainConfig, train

# The issue's target for MGN at batch 16 on a 2-core CPU (bench/README.md). No figure for the authors' loop is
# printed: it was measured once with their code and no record was kept.
CPU_TARGET = "target on a 2-core CPU: MGN at batch 16 >= 140 videos/s"


def prepare_data(root: Path, videos: int, seed: int) -> Path:
    """LLP-Synth with `videos` training videos (649 val, 1,200 test like LLP), packed; returns the pack folder."""
    config = SynthConfig(train=videos, val=649, test=1200, seed=seed)
    if load_config(root) != config:
        print(f"generating LLP-Synth ({videos} train videos) into {root} ...", file=sys.stderr)
        generate(root, config, overwrite=True)
    packs = root / "packs"
    for split in ("train", "val", "test"):
        pack = packs / f"{split}.pack"
        if not pack.exists():
            filenames = read_weak_labels(root / SPLIT_FILES[split]).filenames
            pack_features(root / "feats", filenames, pack)
    return packs


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=10000, help="training videos (default: 10000, as LLP)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per row (default: 1)")
    parser.add_argument("--batch-sizes", default="16,64", help="comma-separated batch sizes (default: 16,64)")
    parser.add_argument("--models", default="mgn,han", help="comma-separated models (default: mgn,han)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32 or bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--cuda-graphs", action="store_true", help="capture the whole training step in a CUDA graph")
    parser.add_argument("--data", type=Path, default=Path("bench/.data/synth"), help="LLP-Synth cache folder")
    parser.add_argument("--seed", type=int, default=0, help="LLP-Synth seed")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    packs = prepare_data(args.data, args.videos, args.seed)
    rows = []
    for model in args.models.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            config = TrainConfig(
                model=model,
                epochs=args.epochs,
                batch_size=batch_size,
                precision=args.precision,
                compile=args.compile,
                cuda_graphs=args.cuda_graphs,
            )
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train(
                    config,
                    features=packs,
                    annotations=args.data,
                    out_dir=Path(tmp) / "run",
                    device=device,
                    progress=False,
                )
                total = time.perf_counter() - start
                records = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
            last = records[-1]  # the first epoch includes warm-up (and compilation)
            rows.append(
                (
                    model,
                    batch_size,
                    last["videos_per_second"],
                    last["train_seconds"],
                    last["epoch_seconds"] - last["train_seconds"],
                    total,
                )
            )
    print(
        f"\ndevice: {device_name(device)}; torch {torch.__version__}; {args.videos} training videos; "
        f"precision {args.precision}; compile {args.compile}; CUDA graphs {args.cuda_graphs}"
    )
    print(f"{'model':<6} {'batch':>5} {'videos/s':>9} {'train epoch s':>14} {'val s':>7} {'run s':>7}")
    for model, batch, vps, train_s, val_s, total in rows:
        print(f"{model:<6} {batch:>5} {vps:>9.0f} {train_s:>14.1f} {val_s:>7.2f} {total:>7.1f}")
    if device.type == "cpu":
        print(CPU_TARGET)
    shutil.rmtree(args.data / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
