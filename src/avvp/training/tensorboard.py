"""TensorBoard scalars of a training run (`avvp train --tensorboard DIR`): each epoch's line of metrics.jsonl as the
scalars TensorBoard plots, the convention of this field's training scripts. metrics.jsonl stays the record.

Tags, each at step = the epoch (1, 2, ...: metrics.jsonl's `epoch`):

- `loss/total`: the weighted sum of the terms, metrics.jsonl's `loss.total`;
- `loss/<term>` (p_av, p_a, p_v and the model's own, e.g. MGN's audio_tokens): the term's epoch mean times its
  weight, as it enters the total, so the curves add up to `loss/total`; only weighted (metrics.jsonl keeps the
  unweighted means; with the default weights, all 1, the two are the same);
- `val/segment/<metric>`, `val/event/<metric>` (audio, visual, audio_visual, type, event): the validation scores;
- `val/<key>/...`: the numbers of the model's own validation record (MGN: `val/tokens/audio/f1`, ...);
- `lr`: the epoch's learning rate; `time/train_seconds`, `time/epoch_seconds`, `time/videos_per_second`;
- with JoMoLD (`--noise-ratios`): `denoise/removed/<modality>`, and for LLP-Synth `denoise/precision/<modality>`
  and `denoise/recall/<modality>` (metrics.jsonl's `denoise`; an epoch where one is undefined, null there, has none).

Only the main process writes (under torchrun the others have no writer). The writer is opened once the run folder
is claimed and the run set up or resumed, and closed however the run ends (an error or Ctrl-C included); each epoch
is flushed as it is written, so TensorBoard shows it at once and a kill loses at most that epoch. It is opened with
`purge_step` = the first epoch the run trains now: TensorBoard then hides what earlier writers of DIR logged at that
epoch or later (a killed run's epochs after its last saved one), so a resumed run shows each epoch once; a new run
purges from epoch 1 (a run killed before its first checkpoint starts again from scratch).

The `tensorboard` package is optional (`pip install tensorboard`, or the `tensorboard` extra) and imported only when a run asks for it;
its absence is one AvvpError, raised before the run folder is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avvp.errors import AvvpError
from avvp.utils import output_path, write_error

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

INSTALL = 'pip install tensorboard (in a checkout of avvp: pip install -e ".[tensorboard]")'
TIMES = ("train_seconds", "epoch_seconds", "videos_per_second")  # metrics.jsonl keys logged as time/<key>


def require_tensorboard() -> None:
    """Raise one AvvpError, saying how to install it, where the `tensorboard` package cannot be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise AvvpError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None


class TensorBoard:
    """A run's TensorBoard writer: one call per epoch, from the epoch's metrics.jsonl record."""

    def __init__(self, log_dir: Path, start_epoch: int, weights: Mapping[str, float]) -> None:
        """Open `log_dir` (created where missing), hiding events earlier writers logged at `start_epoch` or later;
        `weights` are the loss terms' weights (`avvp.objective.resolve_weights`)."""
        from torch.utils.tensorboard import SummaryWriter

        target = output_path(log_dir, folder=True)  # not a file, nor under one
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AvvpError(f"cannot create the TensorBoard folder {log_dir}: {err.strerror or err}") from None
        self.log_dir = log_dir
        self.weights = dict(weights)
        self.writer: SummaryWriter = SummaryWriter(str(log_dir), purge_step=start_epoch)

    def scalars(self, record: Mapping[str, Any], model_keys: Iterable[str] = ()) -> dict[str, float]:
        """The tags and values of one metrics.jsonl record (`model_keys`: the keys of the model's own validation
        record in it)."""
        loss = record["loss"]
        scalars = {"loss/total": loss["total"]}
        scalars |= {f"loss/{term}": self.weights[term] * value for term, value in loss.items() if term != "total"}
        for level in ("segment", "event"):
            scalars |= {f"val/{level}/{metric}": value for metric, value in record["val"][level].items()}
        for key in model_keys:
            scalars |= _numbers(record[key], f"val/{key}")
        scalars["lr"] = record["lr"]
        scalars |= {f"time/{key}": record[key] for key in TIMES}
        for key in ("removed", "precision", "recall"):  # JoMoLD's removals
            scalars |= _numbers(record.get("denoise", {}).get(key), f"denoise/{key}")
        return scalars

    def write_epoch(self, record: Mapping[str, Any], model_keys: Iterable[str] = ()) -> None:
        """Log one epoch's record at step = its epoch, and flush it to disk."""
        try:
            for tag, value in self.scalars(record, model_keys).items():
                self.writer.add_scalar(tag, value, global_step=record["epoch"])
            self.writer.flush()
        except OSError as err:
            raise write_error(self.log_dir, err) from None

    def close(self) -> None:
        self.writer.close()


def _numbers(value: Any, tag: str) -> dict[str, float]:
    """The numbers in a nested record, each tagged by its path (`tag/key/...`); other values are left out."""
    if isinstance(value, Mapping):
        return {name: number for key, item in value.items() for name, number in _numbers(item, f"{tag}/{key}").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {tag: float(value)}
    return {}
