"""GPU-only checks (run on a CUDA machine; there is no GPU in CI): CUDA-graph training equals eager training, and
fp32 vs bf16 agreement of the official metrics for a trained checkpoint.

    python bench/gpu_checks.py graphs                      # eager vs --cuda-graphs, HAN without dropout
    python bench/gpu_checks.py precision RUN_DIR DATA_DIR  # fp32 vs bf16 scores of RUN_DIR/best.safetensors
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from avvp.data.annotations import load_split
from avvp.data.store import open_features
from avvp.data.synth import SynthConfig, generate
from avvp.inference import predict
from avvp.metrics import evaluate, parse_predictions
from avvp.models import create_model
from avvp.training import TrainConfig, train

DEVICE = os.environ.get("AVVP_BENCH_DEVICE", "cuda")  # cpu only to smoke-test this script without a GPU


def check_graphs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, SynthConfig(train=320, val=64, test=64, seed=3), progress=False)
        outputs = {}
        for graphs in (False, True):
            config = TrainConfig(
                model="han",
                epochs=3,
                lr_step=1,
                model_overrides={"dim": 64, "dropout": 0.0},
                precision="fp32",
                cuda_graphs=graphs,
            )
            run = Path(tmp) / f"run-{graphs}"
            train(config, features=data / "feats", annotations=data, out_dir=run, device=DEVICE, progress=False)
            model = create_model("han", dim=64, dropout=0.0).to(DEVICE)
            model.load_state_dict(torch.load(run / "last.pt", weights_only=True)["model"])
            split = load_split(data, "val")
            outputs[graphs] = predict(
                model, open_features(data / "feats").load(split.video_ids, pooled=True), device=DEVICE
            )
        worst = max(float(abs(outputs[True][k] - outputs[False][k]).max()) for k in outputs[True])
        print(f"CUDA graphs vs eager, HAN 3 epochs: max |difference| of the val probabilities = {worst:.2e}")
        # MGN (stochastic: Gumbel noise, drop path) just has to train with finite, falling loss under graphs.
        config = TrainConfig(model="mgn", epochs=3, cuda_graphs=True)
        run = Path(tmp) / "mgn"
        train(config, features=data / "feats", annotations=data, out_dir=run, device=DEVICE, progress=False)
        print((run / "metrics.jsonl").read_text().count("\n"), "MGN epochs with CUDA graphs completed")


def check_precision(run_dir: Path, data: Path) -> None:
    from avvp.checkpoint import load_model

    model, _ = load_model(run_dir / "best.safetensors", map_location=DEVICE)
    for split_name in ("val", "test"):
        split = load_split(data, split_name)
        features = open_features(data / "packs").load(split.video_ids)
        scores = {}
        for precision in ("fp32", "bf16"):
            out = predict(model, features, device=DEVICE, precision=precision)
            scores[precision] = evaluate(
                *parse_predictions(out["audio"], out["visual"], out["video"]), split.audio, split.visual
            )
        for level in ("segment", "event"):
            diffs = {
                k: getattr(scores["bf16"], level)[k] - getattr(scores["fp32"], level)[k] for k in scores["fp32"].segment
            }
            print(f"{split_name} {level}: bf16 - fp32 = " + ", ".join(f"{k} {v:+.2f}" for k, v in diffs.items()))


if __name__ == "__main__":
    if sys.argv[1] == "graphs":
        check_graphs()
    else:
        check_precision(Path(sys.argv[2]), Path(sys.argv[3]))
