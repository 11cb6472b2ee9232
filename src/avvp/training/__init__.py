"""Training with the authors' recipe: in-memory batches, validation each epoch, resume, DDP.

`train` (`avvp.training.loop`) reads top to bottom: set the run up (or resume it), then per epoch train, validate
and checkpoint, then score the best epoch on test. The whole split is held as tensors (ResNet-152 frames averaged per
second, which is the same model since the linear layer commutes with the mean), shuffled by an index permutation
drawn from a dedicated generator, so an epoch does no per-sample Python work. Each step is a `avvp.steps.TrainStep`.
Under `torchrun` each process takes its shard of every global batch and DistributedDataParallel averages the
gradients; the loss is scaled so that the result equals one process with the same global batch.

`avvp.training.persistence` reads and writes the run folder and last.pt; `avvp.training.stacked` trains several
runs of one configuration as one stacked model; `avvp.training.run` holds what a run holds while it trains.
"""

from avvp.recipe import TrainConfig
from avvp.training.loop import TrainResult, score_split, train
from avvp.training.persistence import LOCK_NAME, STACKED_NOISE, STATE_KEYS
from avvp.training.stacked import train_stacked

__all__ = [
    "LOCK_NAME",
    "STACKED_NOISE",
    "STATE_KEYS",
    "TrainConfig",
    "TrainResult",
    "score_split",
    "train",
    "train_stacked",
]
