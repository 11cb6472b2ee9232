"""Stacked training: several runs of one configuration (typically the seeds of a sweep row) trained at once as one
stacked model (`avvp.steps.StackedTrainStep`), each writing the run folder `train` writes."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from avvp.errors import AvvpError
from avvp.recipe import TrainConfig
from avvp.steps import StackedTrainStep, TrainStep
from avvp.training.loop import (
    TrainResult,
    _check_early_stop,
    _denoise_record,
    _denoiser,
    _end_epoch,
    _epoch_batches,
    _open_board,
    _result,
    _set_denoise_epoch,
    _set_up,
    _test,
    _train_tensors,
    _validate,
)
from avvp.training.persistence import _save_state
from avvp.training.run import DataSources, Display, Run, Standing, Stepper
from avvp.training.tensorboard import TensorBoard, require_tensorboard
from avvp.utils import progress_bar


@dataclass
class _Member:
    """One of the runs trained stacked."""

    run: Run
    standing: Standing
    stepper: Stepper  # over the training tensors shared by the runs
    seconds: float = 0.0  # the training time of the stacked epochs it took part in
    board: TensorBoard | None = None  # its TensorBoard writer, with `tensorboard`

    def trains(self, epoch: int) -> bool:
        """Whether this run trains `epoch` (runs saved at different epochs catch up in turn)."""
        return self.standing.start_epoch <= epoch <= self.run.config.epochs and not self.standing.stopped


def train_stacked(
    configs: Sequence[TrainConfig],
    *,
    features: str | Path,
    annotations: str | Path,
    out_dirs: Sequence[str | Path],
    device: torch.device | str = "cpu",
    resume: Sequence[bool] | None = None,
    progress: bool = True,
    tensorboard: str | Path | None = None,
) -> list[TrainResult]:
    """Train several runs of one configuration at once as one stacked model (typically the seeds of a sweep row).

    The configs may differ only in seed, epochs, modality labels and noise ratios (JoMoLD: each run's ranking pass
    is its own model's, outside the stacked call). Each run writes the run folder `train` writes, from the same
    initial weights and shuffled batches as when trained alone; its steps are `avvp.steps.StackedTrainStep`s, whose
    maths is each run's own but whose drop-path, dropout and Gumbel noise comes from one stream shared by the runs
    (config.json lists them under "stacked"). `resume[i]` resumes run i from its last.pt; runs saved at different
    epochs catch up in turn. The training time of a stacked epoch is counted for each of its runs. With
    `tensorboard`, a folder, each run writes its TensorBoard scalars as `train` does, into the subfolder named as its
    run folder (`tensorboard/<run folder's name>`, so these names must differ).
    """
    _check_stackable(configs)
    boards = _board_folders(tensorboard, out_dirs)
    with contextlib.ExitStack() as held:
        sources = DataSources(Path(features), Path(annotations))
        set_up = _set_up_runs(configs, sources, out_dirs, device, resume or [False] * len(configs), progress, held)
        steppers = _share_training_tensors([run for run, _ in set_up])
        members = [
            _Member(run, standing, stepper, board=_open_board(run, standing, board, held))
            for (run, standing), stepper, board in zip(set_up, steppers, boards)
        ]
        first = min(member.standing.start_epoch for member in members)
        last = max(member.run.config.epochs for member in members)
        for epoch in range(first, last + 1):
            active = [member for member in members if member.trains(epoch)]
            if not active:
                break
            _stacked_epoch(active, epoch)
        scores = [_test(member.run, member.standing) for member in members]
    return [_result(member.run, member.standing, test, member.seconds) for member, test in zip(members, scores)]


def _check_stackable(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise AvvpError("no run to train")
    first = dataclasses.replace(configs[0], seed=0, epochs=1, modality_labels=None, noise_ratios=None).to_dict()
    for config in configs[1:]:
        other = dataclasses.replace(config, seed=0, epochs=1, modality_labels=None, noise_ratios=None).to_dict()
        differences = [key for key, value in first.items() if other[key] != value]
        if differences:
            raise AvvpError(
                f"stacked runs must differ only in seed, epochs, modality labels and noise ratios, not in "
                f"{', '.join(differences)}"
            )
    unsupported = [flag for flag in ("stream", "compile", "cuda_graphs") if getattr(configs[0], flag)]
    if unsupported:
        raise AvvpError(f"stacked runs: {', '.join(unsupported)} not supported; train these runs one at a time")


def _board_folders(tensorboard: str | Path | None, out_dirs: Sequence[str | Path]) -> list[Path | None]:
    """Each run's TensorBoard folder: `tensorboard/<its run folder's name>` (none without `tensorboard`); checked
    before any run folder is touched."""
    if tensorboard is None:
        return [None] * len(out_dirs)
    require_tensorboard()
    names = [Path(out_dir).name for out_dir in out_dirs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AvvpError(
            f"stacked runs writing TensorBoard scalars need run folders of different names, not {', '.join(repeated)}"
        )
    return [Path(tensorboard) / name for name in names]


def _set_up_runs(
    configs: Sequence[TrainConfig],
    sources: DataSources,
    out_dirs: Sequence[str | Path],
    device: torch.device | str,
    resume: Sequence[bool],
    progress: bool,
    held: contextlib.ExitStack,
) -> list[tuple[Run, Standing]]:
    """Each run set up (or resumed) as `train` does, the first loading the train and val splits for all."""
    set_up: list[tuple[Run, Standing]] = []
    names = [Path(out_dir).name for out_dir in out_dirs]
    for config, out_dir, resumed in zip(configs, out_dirs, resume, strict=True):
        splits = (set_up[0][0].data.train, set_up[0][0].data.val) if set_up else None
        display = Display(progress, label=f"{Path(out_dir).name}: ")
        set_up.append(_set_up(config, sources, Path(out_dir), device, resumed, display, held, splits, names))
    return set_up


def _share_training_tensors(runs: list[Run]) -> list[Stepper]:
    """One set of training features for all the runs, each with its own labels and `TrainStep`."""
    if runs[0].ctx.enabled:
        raise AvvpError("stacked runs train in one process, not under torchrun")
    tensors, _, index_device = _train_tensors(runs[0])
    steppers = []
    for run in runs:
        labels = torch.as_tensor(run.data.targets, dtype=torch.float32).to(index_device)
        optimizer = run.learner.optimizer
        step = TrainStep(run.learner.model, optimizer, tensors, labels, run.config, run.device, run.precision, run.ctx)
        step.denoiser = _denoiser(run)
        steppers.append(Stepper(step, index_device))
    return steppers


def _stacked_epoch(members: list[_Member], epoch: int) -> None:
    """One epoch of every run in `members`, stacked; then each run's validation, early-stop decision and last.pt."""
    started = time.perf_counter()
    ends = _train_stacked_epoch(members, epoch)
    elapsed = time.perf_counter() - started
    for member, (losses, lr) in zip(members, ends):
        member.seconds += elapsed
        denoised = _denoise_record(member.run, member.stepper.train_step, epoch)
        best = _validate(member.run, member.standing, epoch, losses, lr, elapsed, started, member.board, denoised)
        _check_early_stop(member.run, member.standing, epoch)
        _save_state(member.run, member.standing, epoch, best)


def _train_stacked_epoch(members: list[_Member], epoch: int) -> list[tuple[dict[str, float], float]]:
    """One epoch of every run in `members`, stacked, each in its own random order; their mean losses and lr."""
    batches = [_epoch_batches(member.run, member.stepper.index_device) for member in members]
    for member in members:
        _set_denoise_epoch(member.stepper.train_step, epoch)
    stacked = StackedTrainStep([member.stepper.train_step for member in members])  # type: ignore[misc]
    first = members[0].run
    desc = f"epoch {epoch}/{first.config.epochs} ({len(members)} runs stacked)"
    for step in progress_bar(range(len(batches[0])), progress=first.display.progress, desc=desc, unit="step"):
        stacked([run_batches[step] for run_batches in batches], len(batches[0][step]))
    return [_end_epoch(member.run, member.stepper.train_step, epoch) for member in members]
