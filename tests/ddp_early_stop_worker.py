"""Run under torchrun by tests/test_distributed.py: `avvp.training.train` with early stopping on 2 gloo processes.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_early_stop_worker.py TINY_LLP OUT

Only rank 0 validates; its validation Type@AV is scripted (best at epoch 2, then worse), so with patience 2 it
decides to stop after epoch 4. Every rank writes the epochs it trained to OUT/epochs<rank>.txt: a rank that did not
follow rank 0's decision would train on alone and wait for the other forever (the test's timeout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import avvp.training
import avvp.training.loop
from avvp.distributed import leave
from avvp.recipe import TrainConfig

SCRIPT = [10, 20, 15, 15, 12, 30, 40, 50]  # validation Type@AV per epoch (rank 0)


def main(tiny: Path, out: Path) -> None:
    real = avvp.training.loop.score_split
    scores_left = iter(SCRIPT)

    def scripted(model, data, **kwargs):
        scores, predictions = real(model, data, **kwargs)
        if data.split.name == "val":
            scores.segment["type"] = next(scores_left)
        return scores, predictions

    avvp.training.loop.score_split = scripted
    config = TrainConfig(model="han", epochs=8, batch_size=8, patience=2, model_overrides={"dim": 32, "ff_dim": 32})
    result = avvp.training.train(
        config, features=tiny / "feats", annotations=tiny, out_dir=out / "run", device="cpu", progress=False
    )
    (out / f"epochs{os.environ['RANK']}.txt").write_text(str(result.epochs_trained))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    leave(0)  # as `python -m avvp` leaves under torchrun
