"""Training with the authors' recipe (spec section 3): in-memory batches, validation each epoch, resume, DDP.

`train` reads top to bottom: set the run up (or resume it), then per epoch train, validate and checkpoint, then
score the best epoch on test. The whole split is held as tensors (ResNet-152 frames averaged per second, which is
the same model since the linear layer commutes with the mean), shuffled by an index permutation drawn from a
dedicated generator, so an epoch does no per-sample Python work. Each step is a `avvp.steps.TrainStep`. Under
`torchrun` each process takes its shard of every global batch and DistributedDataParallel averages the gradients;
the loss is scaled so that the result equals one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avvp import __version__, faults
from avvp.checkpoint import load_model, safe_torch_load, save_checkpoint, saved_epoch
from avvp.data.annotations import load_split
from avvp.data.modality_labels import file_sha256, training_targets
from avvp.data.splits import SplitData, StreamedBatches, check_split_features, feature_tensors, load_split_data
from avvp.distributed import (
    DistributedContext,
    close_distributed,
    fail_together,
    gather,
    init_distributed,
    seed_noise,
    sum_over_processes,
)
from avvp.errors import AvvpError
from avvp.inference import predict, resolve_precision
from avvp.metrics import Scores, evaluate, format_scores, parse_predictions
from avvp.models import count_parameters
from avvp.models.registry import config_to_dict, create_model, resolve, spec_of
from avvp.objective import resolve_weights
from avvp.recipe import TrainConfig
from avvp.run_folder import LABELS_HASH, PidLock, clear_partial_run, compare_runs, foreign_files, read_run_record
from avvp.steps import GraphedTrainStep, StackedTrainStep, TrainStep, make_optimizer
from avvp.utils import (
    atomic_torch_save,
    atomic_write_text,
    format_duration,
    output_path,
    progress_bar,
    remove_stale_temporaries,
    write_error,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"  # held in the run folder while a process writes it
STACKED_NOISE = "one drop-path/dropout/Gumbel stream shared by these runs"  # config.json's note of stacked runs
STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "best_epoch", "best_val_type")  # of last.pt
# (last.pt also holds "stopped": the run ended by early stopping; absent in states of older versions)

__all__ = ["TrainConfig", "TrainResult", "score_split", "train", "train_stacked"]


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    best_epoch: int
    best_val_type: float
    test_scores: Scores | None
    train_seconds: float
    parameters: int
    epochs_trained: int = 0  # the last epoch trained (fewer than config.epochs where early stopping ended the run)


TimeLeft = Callable[[int, float], float]  # (epoch just done, mean wall seconds per epoch) -> seconds left


@dataclass
class _Run:
    """What a run holds from one epoch to the next."""

    config: TrainConfig
    out_dir: Path
    features: Path
    annotations: Path
    device: torch.device
    precision: str
    ctx: DistributedContext
    model: nn.Module  # the plain model (validation, checkpoints)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    shuffle: torch.Generator  # the epoch permutations, the same on every process
    train_data: SplitData
    val_data: SplitData | None  # main process only
    targets: np.ndarray  # [N, 25] weak labels of the training videos, or [N, 3, 25] with modality labels
    stepper: TrainStep | GraphedTrainStep
    progress: bool
    skip_bad_rows: bool
    index_device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # the training tensors' device
    start_epoch: int = 1
    best_epoch: int = 0
    best_type: float = -math.inf
    resumed_changes: dict[str, list[Any]] = field(default_factory=dict)  # safe settings changed by this resume
    label: str = ""  # printed before each epoch line where several runs train together
    stopped: bool = False  # early stopping ended the run (saved in last.pt)
    last_epoch: int = 0  # the last epoch trained
    epoch_walls: list[float] = field(default_factory=list)  # wall seconds of each epoch trained here (train + val)
    time_left: TimeLeft | None = None  # the ETA of each epoch line (`train`'s argument)

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


def train(
    config: TrainConfig,
    *,
    features: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    val_features: str | Path | None = None,
    skip_bad_rows: bool = False,
    time_left: TimeLeft | None = None,
) -> TrainResult:
    """Train one model with `config`, validating each epoch; keeps the best epoch and scores it on test.

    Writes into `out_dir`: config.json, metrics.jsonl (one line per epoch), best.safetensors/.json (best validation
    segment-level Type@AV; on ties the later epoch, as the authors' `>=`), last.pt (full state for `--resume`),
    test_scores.json. Validation and test are scored in fp32 whatever the training precision, as `avvp evaluate`.
    `skip_bad_rows` skips malformed rows of the annotation files (with a warning) instead of stopping. With
    `config.patience`, the run ends early once `config.stops_after` says so (the best epoch is still the one kept
    and tested; last.pt records the stop, so `--resume` does not train on). `time_left` gives the ETA printed on
    each epoch line (default: the epochs left of this run at the mean epoch time).
    """
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        held.callback(close_distributed)  # the process group too (last: after the lock)
        paths = (Path(features), Path(annotations), Path(out_dir))
        run = _set_up(config, *paths, device, resume, progress, val_features, skip_bad_rows, held)
        run.stepper, run.time_left = _make_stepper(run), time_left
        train_seconds = 0.0
        for epoch in range(run.start_epoch, config.epochs + 1):
            if run.stopped:
                break
            started = time.perf_counter()
            losses, lr = _train_epoch(run, epoch)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            with fail_together(run.ctx):  # the main process validates; an error there stops every process
                best = _validate(run, epoch, losses, lr, seconds, started) if run.ctx.is_main else None
            _check_early_stop(run, epoch)
            _save_state(run, epoch, best)
        with fail_together(run.ctx):
            test_scores = _test(run) if run.ctx.is_main else None
    parameters = count_parameters(run.model)
    return TrainResult(
        run.out_dir, run.best_epoch, run.best_type, test_scores, train_seconds, parameters, run.last_epoch
    )


def train_stacked(
    configs: Sequence[TrainConfig],
    *,
    features: str | Path,
    annotations: str | Path,
    out_dirs: Sequence[str | Path],
    device: torch.device | str = "cpu",
    resume: Sequence[bool] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train several runs of one configuration at once as one stacked model (typically the seeds of a sweep row).

    The configs may differ only in seed and epochs. Each run writes the run folder `train` writes, from the same
    initial weights and shuffled batches as when trained alone; its steps are `avvp.steps.StackedTrainStep`s, whose
    maths is each run's own but whose drop-path, dropout and Gumbel noise comes from one stream shared by the runs
    (config.json lists them under "stacked"). `resume[i]` resumes run i from its last.pt; runs saved at different
    epochs catch up in turn. The training time of a stacked epoch is counted for each of its runs.
    """
    _check_stackable(configs)
    with contextlib.ExitStack() as held:
        runs: list[_Run] = []
        names = [Path(out_dir).name for out_dir in out_dirs]
        for config, out_dir, resumed in zip(configs, out_dirs, resume or [False] * len(configs), strict=True):
            data = (runs[0].train_data, runs[0].val_data) if runs else None
            paths = (Path(features), Path(annotations), Path(out_dir))
            runs.append(_set_up(config, *paths, device, resumed, progress, None, False, held, data, names))
        _share_training_tensors(runs)
        seconds = {id(run): 0.0 for run in runs}
        for epoch in range(min(run.start_epoch for run in runs), max(run.config.epochs for run in runs) + 1):
            active = [run for run in runs if run.start_epoch <= epoch <= run.config.epochs and not run.stopped]
            if not active:
                break
            started = time.perf_counter()
            ends = _train_stacked_epoch(active, epoch)
            elapsed = time.perf_counter() - started
            for run, (losses, lr) in zip(active, ends):
                seconds[id(run)] += elapsed
                best = _validate(run, epoch, losses, lr, elapsed, started)
                _check_early_stop(run, epoch)
                _save_state(run, epoch, best)
        scores = [_test(run) for run in runs]
    return [
        TrainResult(
            run.out_dir,
            run.best_epoch,
            run.best_type,
            test,
            seconds[id(run)],
            count_parameters(run.model),
            run.last_epoch,
        )
        for run, test in zip(runs, scores)
    ]


def _check_stackable(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise AvvpError("no run to train")
    first = dataclasses.replace(configs[0], seed=0, epochs=1, modality_labels=None).to_dict()
    for config in configs[1:]:
        other = dataclasses.replace(config, seed=0, epochs=1, modality_labels=None).to_dict()
        differences = [key for key, value in first.items() if other[key] != value]
        if differences:
            raise AvvpError(
                f"stacked runs must differ only in seed, epochs and modality labels, not in {', '.join(differences)}"
            )
    unsupported = [flag for flag in ("stream", "compile", "cuda_graphs") if getattr(configs[0], flag)]
    if unsupported:
        raise AvvpError(f"stacked runs: {', '.join(unsupported)} not supported; train these runs one at a time")


def _share_training_tensors(runs: list[_Run]) -> None:
    """One set of training features for all the runs, each with its own labels and `TrainStep`."""
    if runs[0].ctx.enabled:
        raise AvvpError("stacked runs train in one process, not under torchrun")
    tensors, _ = _train_tensors(runs[0])
    for run in runs:
        run.label = f"{run.out_dir.name}: "
        run.index_device = runs[0].index_device
        labels = torch.as_tensor(run.targets, dtype=torch.float32).to(run.index_device)
        run.stepper = TrainStep(
            run.model, run.optimizer, tensors, labels, run.config, run.device, run.precision, run.ctx
        )


def _train_stacked_epoch(runs: list[_Run], epoch: int) -> list[tuple[dict[str, float], float]]:
    """One epoch of every run in `runs`, stacked, each in its own random order; their mean losses and lr."""
    batches = [_epoch_batches(run) for run in runs]
    stacked = StackedTrainStep([run.stepper for run in runs])  # type: ignore[misc]
    desc = f"epoch {epoch}/{runs[0].config.epochs} ({len(runs)} runs stacked)"
    for step in progress_bar(range(len(batches[0])), progress=runs[0].progress, desc=desc, unit="step"):
        stacked([run_batches[step] for run_batches in batches], len(batches[0][step]))
    return [_end_epoch(run, epoch) for run in runs]


# ------------------------------------------------------------------------------------------------ set-up


def _set_up(
    config: TrainConfig,
    features: Path,
    annotations: Path,
    out_dir: Path,
    device: torch.device | str,
    resume: bool,
    progress: bool,
    val_features: str | Path | None,
    skip_bad_rows: bool,
    held: contextlib.ExitStack,
    data: tuple[SplitData, SplitData | None] | None = None,
    stacked_with: Sequence[str] = (),
) -> _Run:
    """The run's model, optimiser and data (`data`: the train and val splits when already loaded), resumed from
    last.pt with `resume`; config.json written (noting `stacked_with`, the run folders trained stacked with it).
    The step is made afterwards (`_make_stepper`).

    Every split's features are checked before the run folder is touched; the main process then takes the folder's
    lock (into `held`) and decides, from what the folder holds, whether the run is new or resumed."""
    device, ctx = _device_and_context(torch.device(device))
    with fail_together(ctx):  # an error on any process (its data; the run folder, on the main one) stops all
        if data is None:
            data = _load_data(config, features, annotations, val_features, skip_bad_rows, ctx)
        train_data, val_data = data
        torch.manual_seed(config.seed)  # the same initial weights on every process
        model = create_model(config.model, cross_modal=config.cross_modal, **config.model_overrides).to(device)
        resolve_weights(config.model, config.loss_weights)  # an unknown loss term stops the run before its folder
        seed_noise(config.seed, ctx)
        optimizer = make_optimizer(model, config.lr, capturable=config.cuda_graphs and device.type == "cuda")
        run = _Run(
            config=config,
            out_dir=out_dir,
            features=features,
            annotations=annotations,
            device=device,
            precision=resolve_precision(config.precision, device),
            ctx=ctx,
            model=model,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma),
            shuffle=torch.Generator().manual_seed(config.seed),
            train_data=train_data,
            val_data=val_data,
            targets=_training_targets(config, annotations, train_data, skip_bad_rows),
            stepper=None,  # type: ignore[arg-type]  # made once the state is restored (`_make_stepper`)
            progress=progress,
            skip_bad_rows=skip_bad_rows,
        )
        record = _run_record(run)
        if ctx.is_main:
            _make_run_folder(out_dir)
            held.enter_context(PidLock(out_dir / LOCK_NAME, "another `avvp train`"))
            remove_stale_temporaries(out_dir)  # left by a process killed while writing (it logs what it removes)
            resume = _open_run_folder(run, record, resume)
    resumed = gather(resume, ctx)[0]  # the main process's decision
    with fail_together(ctx):  # a damaged last.pt, a failed write
        if resumed:
            _resume(run)
        if ctx.is_main:
            _write_run_record(run, record, resumed, stacked_with)
    return run


def _load_data(
    config: TrainConfig,
    features: Path,
    annotations: Path,
    val_features: str | Path | None,
    skip_bad_rows: bool,
    ctx: DistributedContext,
) -> tuple[SplitData, SplitData | None]:
    """The training split and (main process) the validation split; the test split's features are checked, since
    it is scored after the last epoch: fail now, not then."""
    load = functools.partial(load_split_data, annotations=annotations, skip_bad_rows=skip_bad_rows)
    train_data = load(features, name="train", limit=config.max_train_videos, stream=config.stream)
    val_data = load(Path(val_features or features), name="val") if ctx.is_main else None
    if ctx.is_main:
        check_split_features(features, annotations, "test", skip_bad_rows=skip_bad_rows)
    return train_data, val_data


def _training_targets(config: TrainConfig, annotations: Path, data: SplitData, skip_bad_rows: bool) -> np.ndarray:
    """The training labels: the weak labels [N, 25], or with `config.modality_labels` the (weak, audio, visual)
    labels [N, 3, 25] from that file, checked against the whole training split."""
    if config.modality_labels is None:
        return np.asarray(data.split.labels, dtype=np.float32)
    full = load_split(annotations, "train", skip_bad_rows=skip_bad_rows)
    return training_targets(config.modality_labels, full, data.split)


def _device_and_context(device: torch.device) -> tuple[torch.device, DistributedContext]:
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device, ctx


def _open_run_folder(run: _Run, record: dict[str, Any], resume: bool) -> bool:
    """Create the run folder or check what it holds (under its lock); returns whether to resume from last.pt.

    A folder with last.pt resumes (with --resume) only under the same configuration, safe settings aside
    (`avvp.run_folder.SAFE_ON_RESUME`: recorded in `run.resumed_changes`). A folder killed before its first
    checkpoint that holds only run files of the same configuration is emptied and the run starts again."""
    out_dir = run.out_dir
    if not any(not p.name.startswith(".") for p in out_dir.iterdir()):
        return False  # new (or holding only this tool's hidden leftovers)
    stored = read_run_record(out_dir)
    refused, safe = compare_runs(stored, record) if stored is not None else (["no config.json"], {})
    if (out_dir / "last.pt").exists():
        if not resume:
            raise AvvpError(f"{out_dir} is not empty: pass --resume to continue that run, or choose another --out")
        if refused:
            raise AvvpError(
                f"{out_dir} was trained with other settings ({'; '.join(refused)}): resume it with those, or "
                "choose another --out"
            )
        run.resumed_changes = safe
        return True
    foreign = foreign_files(out_dir)
    if not refused and not foreign:
        log.warning("%s: a run of this configuration stopped before its first checkpoint; starting it again", out_dir)
        clear_partial_run(out_dir)
        return False
    holds = f" (the folder holds {', '.join(foreign)})" if foreign else ""
    if resume:
        raise AvvpError(f"{out_dir / 'last.pt'} does not exist{holds}: nothing to resume")
    raise AvvpError(f"{out_dir} is not empty{holds}: pass --resume to continue that run, or choose another --out")


def _make_run_folder(out_dir: Path) -> None:
    output_path(out_dir, folder=True)  # not a file, FIFO or device, nor under a file
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvvpError(f"cannot create the run folder {out_dir}: {err.strerror or err}") from None


def _resume(run: _Run) -> None:
    """Restore the weights, optimiser, schedule, random streams and best epoch from last.pt."""
    state = _read_state(run.state_path)
    if state["epoch"] > run.config.epochs:
        raise AvvpError(
            f"{run.out_dir} has trained {state['epoch']} epochs already; --epochs {run.config.epochs} is fewer"
        )
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AvvpError(f"{run.state_path} does not fit this model and optimiser ({first})") from None
    _set_rng_state(state["rng"], run)
    run.start_epoch, run.best_epoch, run.best_type = state["epoch"] + 1, state["best_epoch"], state["best_val_type"]
    run.last_epoch, run.stopped = state["epoch"], bool(state.get("stopped", False))
    if run.ctx.is_main and not run.stopped and run.start_epoch <= run.config.epochs:
        (run.out_dir / "test_scores.json").unlink(missing_ok=True)  # a finished run trained on (--epochs raised)
    if run.stopped and run.ctx.is_main:
        print(f"{run.out_dir} stopped early after epoch {state['epoch']}; nothing left to train", flush=True)
    if run.ctx.is_main and run.best_epoch == state["epoch"]:
        _repair_best(run, state["epoch"])
    if run.ctx.is_main:
        _truncate_metrics(run.metrics_path, run.start_epoch)
    log.info("resuming %s at epoch %d (best so far: epoch %d)", run.out_dir, run.start_epoch, run.best_epoch)


def _repair_best(run: _Run, epoch: int) -> None:
    """A kill after last.pt but before best.safetensors of its epoch leaves an older best (best.json may already
    be the new one: it is renamed first): the weights just loaded are the best ones, so both are written again.
    The epoch is read from the record inside best.safetensors, the file the test and users load."""
    if saved_epoch(run.out_dir / "best.safetensors") != epoch:
        lines = run.metrics_path.read_text().splitlines() if run.metrics_path.exists() else []
        records = [json.loads(line) for line in lines if _epoch_of(line) == epoch]
        val = records[-1]["val"] if records else None
        metadata = {"epoch": epoch, "val": val, "train": run.config.to_dict()}
        save_checkpoint(run.out_dir / "best.safetensors", run.model, metadata=metadata)
        log.warning("%s: best.safetensors of epoch %d was not written; written again from last.pt", run.out_dir, epoch)


def _write_run_record(run: _Run, record: dict[str, Any], resumed: bool, stacked_with: Sequence[str]) -> None:
    """config.json: how the run is trained, and the runs it is stacked with; a resumed run keeps its history of
    safe changes (adding this one's) and, trained alone now, the note of the runs it was stacked with before."""
    stored = (read_run_record(run.out_dir) or {}) if resumed else {}
    history = stored.get("resumed", [])
    stacked = {"runs": list(stacked_with), "noise": STACKED_NOISE} if stacked_with else stored.get("stacked")
    if stacked:
        record["stacked"] = stacked
    if run.resumed_changes:
        history = [*history, {"after_epoch": run.start_epoch - 1, "changed": run.resumed_changes}]
    if history:
        record["resumed"] = history
    atomic_write_text(run.out_dir / "config.json", json.dumps(record, indent=2) + "\n")


def _read_state(path: Path) -> dict[str, Any]:
    """last.pt, loaded without running any pickled code; one clear error for anything else."""
    if path.stat().st_size == 0:
        raise AvvpError(f"{path}: empty; not a training state (delete it to start the run again)")
    state = safe_torch_load(path)  # on the CPU; loading into the model and optimiser moves it to the device
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise AvvpError(f"{path}: not a training state written by avvp train (no {', '.join(missing)})")
    return state


def _run_record(run: _Run) -> dict[str, Any]:
    """What config.json says about the run (with modality labels, also their file's SHA-256)."""
    record = {
        "avvp_version": __version__,
        "train": run.config.to_dict(),
        "model": {"name": run.config.model, "config": config_to_dict(run.model.config)},
        "model_module": spec_of(run.model).module,
        "features": str(run.features.resolve()),
        "annotations": str(run.annotations.resolve()),
        "device": str(run.device),
        "precision": run.precision,
        "world_size": run.ctx.world_size,
        "train_videos": len(run.train_data.split.filenames),
    }
    if run.config.modality_labels is not None:
        record[LABELS_HASH] = file_sha256(run.config.modality_labels)
    return record


def _train_tensors(run: _Run) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The training features (on the device once when they fit; none when streaming) and labels."""
    labels = torch.as_tensor(run.targets, dtype=torch.float32)
    tensors: tuple[torch.Tensor, ...] = ()
    if not run.config.stream:
        tensors = feature_tensors(run.train_data, run.device)
        labels = labels.to(tensors[0].device)
        run.index_device = tensors[0].device
    return tensors, labels


def _make_stepper(run: _Run) -> TrainStep | GraphedTrainStep:
    """The step over the training tensors, through torch.compile and DDP where asked for."""
    tensors, labels = _train_tensors(run)
    step_model: nn.Module = run.model
    if run.config.compile:
        step_model = torch.compile(step_model)
    if run.ctx.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        # The cross-modal-free form leaves the cross-modal modules without gradients: DDP must not wait for them.
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=device_ids, find_unused_parameters=not run.config.cross_modal
        )
    stepper = TrainStep(step_model, run.optimizer, tensors, labels, run.config, run.device, run.precision, run.ctx)
    return GraphedTrainStep.create(stepper) if run.config.cuda_graphs else stepper


# ------------------------------------------------------------------------------------------------ epochs


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, float], float]:
    """One pass over the training split in a fresh random order; returns the mean loss terms and the epoch's
    learning rate (the schedule steps once per epoch, afterwards)."""
    config, ctx = run.config, run.ctx
    batches = _epoch_batches(run)
    bar = progress_bar(
        range(len(batches)), progress=run.progress and ctx.is_main, desc=f"epoch {epoch}/{config.epochs}", unit="step"
    )
    if config.stream:
        for step, inputs in zip(bar, _streamed(run, batches)):
            run.stepper.step(*(t.to(run.device, non_blocking=True) for t in inputs), len(batches[step]))
    else:
        for step in bar:
            batch = batches[step]
            run.stepper(batch[ctx.rank :: ctx.world_size], len(batch))  # this process's shard
    return _end_epoch(run, epoch)


def _epoch_batches(run: _Run) -> list[torch.Tensor]:
    """The epoch's batches of video indices, in a fresh random order from the run's shuffle generator."""
    run.model.train()
    count, size = len(run.train_data.split.filenames), run.config.batch_size
    order = torch.randperm(count, generator=run.shuffle).to(run.index_device)
    return [order[i * size : (i + 1) * size] for i in range(math.ceil(count / size))]


def _end_epoch(run: _Run, epoch: int) -> tuple[dict[str, float], float]:
    """The epoch's mean loss terms (stopping on a non-finite one) and learning rate; steps the schedule."""
    count, ctx = len(run.train_data.split.filenames), run.ctx
    sums = run.stepper.take_sums()
    if not all(math.isfinite(v) for v in sums.values()):
        raise AvvpError(
            f"training diverged: the loss is not finite in epoch {epoch} ({run.out_dir}); "
            "try --precision fp32 or a lower --lr"
        )
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return _mean_losses(sums, count, ctx, run.stepper), lr


def _streamed(run: _Run, batches: list[torch.Tensor]) -> torch.utils.data.DataLoader:
    """This process's shard of every batch, read from disk by DataLoader workers."""
    data, ctx = run.train_data, run.ctx
    shards = [b[ctx.rank :: ctx.world_size].numpy() for b in batches]
    dataset = StreamedBatches(data.features_path, data.split.video_ids, run.targets, shards)
    return torch.utils.data.DataLoader(  # its own generator: the global one feeds dropout and Gumbel noise
        dataset,
        batch_size=None,
        num_workers=run.config.loader_workers,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(run.config.seed),
    )


def _mean_losses(
    sums: dict[str, float], count: int, ctx: DistributedContext, stepper: TrainStep | GraphedTrainStep
) -> dict[str, float]:
    """Mean of each loss term over the epoch's videos (summed over processes), and `total`, their weighted sum."""
    keys = sorted(sums)
    values = sum_over_processes(torch.tensor([sums[k] for k in keys], dtype=torch.float64), ctx)
    means = {k: float(v) / count for k, v in zip(keys, values)}
    means["total"] = stepper.objective.total(means)
    return means


def _validate(
    run: _Run, epoch: int, losses: dict[str, float], lr: float, seconds: float, started: float
) -> dict[str, Any] | None:
    """Score the validation split, append the epoch to metrics.jsonl and print one line; returns the metadata of
    best.safetensors when this epoch is the best so far (ties: the later epoch), else None."""
    scores, predictions = score_split(run.model, run.val_data, batch_size=run.config.eval_batch_size, device=run.device)
    count = len(run.train_data.split.filenames)
    record: dict[str, Any] = {
        "epoch": epoch,
        "steps": epoch * math.ceil(count / run.config.batch_size),  # optimiser steps so far
        "lr": lr,
        "loss": losses,
        "val": {"segment": scores.segment, "event": scores.event},
        "train_seconds": seconds,
        "videos_per_second": count / seconds,
        "epoch_seconds": time.perf_counter() - started,
    }
    if run.resumed_changes:  # the first epoch after a resume that changed safe settings says so
        record["resumed"] = {"after_epoch": run.start_epoch - 1, "changed": run.resumed_changes}
        run.resumed_changes = {}
    validation_record = spec_of(run.model).validation_record  # e.g. MGN's class tokens against the truth (Figure 2)
    if validation_record is not None:
        record |= resolve(validation_record)(predictions, run.val_data.split)
    _append_jsonl(run.metrics_path, record)
    type_score = scores.segment["type"]
    message = (
        f"{run.label}epoch {epoch}/{run.config.epochs}: loss {losses['total']:.4f}, "
        f"val segment Type@AV {type_score:.2f} Event@AV {scores.segment['event']:.2f} ({seconds:.0f} s)"
    )
    best = None
    if type_score >= run.best_type:  # the authors keep the latest of equal epochs
        run.best_type, run.best_epoch = type_score, epoch
        best = {"epoch": epoch, "val": record["val"], "train": run.config.to_dict()}
        message += " (best)"
    if run.progress:
        print(message + _eta_text(run, epoch, time.perf_counter() - started), flush=True)  # also in logs and CI
    return best


def _eta_text(run: _Run, epoch: int, wall: float) -> str:
    """' · ETA m:ss' after an epoch that took `wall` seconds: `run.time_left`, or the epochs left of this run (an
    upper bound where early stopping may end it sooner)."""
    run.epoch_walls.append(wall)
    mean = sum(run.epoch_walls) / len(run.epoch_walls)
    left = run.time_left(epoch, mean) if run.time_left else (run.config.epochs - epoch) * mean
    return f" · ETA {format_duration(left)}"


def _check_early_stop(run: _Run, epoch: int) -> None:
    """Record `epoch` as trained and decide (on the main process, which knows the best epoch) whether early stopping
    ends the run after it."""
    run.last_epoch = epoch
    stop = run.config.stops_after(epoch, run.best_epoch) if run.ctx.is_main else False
    run.stopped = bool(gather(stop, run.ctx)[0])
    if run.stopped and run.ctx.is_main and run.progress:
        print(
            f"{run.label}early stop after epoch {epoch}: no better validation Type@AV for {run.config.patience} "
            f"epochs (best: epoch {run.best_epoch}, {run.best_type:.2f})",
            flush=True,
        )


def _save_state(run: _Run, epoch: int, best: dict[str, Any] | None) -> None:
    """last.pt: everything `--resume` needs to continue exactly (every process's random stream included); then,
    where `epoch` is the best so far (`best`: its record), best.safetensors. A failed write on the main process
    stops every process."""
    rng = _rng_state(run)
    with fail_together(run.ctx):
        if not run.ctx.is_main:
            return
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "best_epoch": run.best_epoch,
            "best_val_type": run.best_type,
            "stopped": run.stopped,
        }
        atomic_torch_save(state, run.state_path)
        if best is not None:  # after last.pt: a kill between the two is repaired on resume
            save_checkpoint(run.out_dir / "best.safetensors", run.model, metadata=best)


def _test(run: _Run) -> Scores:
    """Score the best epoch's checkpoint on the test split (fp32) into test_scores.json, and print the scores."""
    model, _ = load_model(run.out_dir / "best.safetensors", map_location=run.device)
    test_data = load_split_data(run.features, run.annotations, "test", skip_bad_rows=run.skip_bad_rows)
    scores, _ = score_split(model, test_data, batch_size=run.config.eval_batch_size, device=run.device)
    meta = json.loads((run.out_dir / "best.json").read_text()).get("metadata", {})
    payload = {
        "segment": scores.segment,
        "event": scores.event,
        "best_epoch": meta.get("epoch"),
        "last_epoch": run.last_epoch,  # the last epoch trained
        "stopped_early": run.stopped,
    }
    atomic_write_text(run.out_dir / "test_scores.json", json.dumps(payload, indent=2) + "\n")
    print(format_scores(scores))
    return scores


# ------------------------------------------------------------------------------------------------ helpers


def score_split(
    model: nn.Module, data: SplitData, *, batch_size: int, device: torch.device
) -> tuple[Scores, dict[str, Any]]:
    """Predict a whole split in batches (fp32, as `avvp evaluate` does, whatever the training precision) and score
    it with the official metrics; scores outside the one rule (`avvp.scoring.check_scores`: a diverged model's NaN)
    are an AvvpError naming the split."""
    split = data.split
    predictions = predict(
        model,
        data.features,
        batch_size=batch_size,
        device=device,
        precision="fp32",
        names=split.filenames,
        where=f"the model's scores on the {split.name} split",
    )
    pred_audio, pred_visual = parse_predictions(predictions["audio"], predictions["visual"], predictions["video"])
    return evaluate(pred_audio, pred_visual, split.audio, split.visual), predictions


def _rng_state(run: _Run) -> dict[str, Any]:
    """The shuffle generator's state and every process's torch (and CUDA) random state, by rank."""
    local = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(run.device)
    by_rank = gather(local, run.ctx)
    state = {"shuffle": run.shuffle.get_state(), "torch": [s["torch"] for s in by_rank]}
    if "cuda" in local:
        state["cuda"] = [s["cuda"] for s in by_rank]
    return state


def _set_rng_state(state: dict[str, Any], run: _Run) -> None:
    run.shuffle.set_state(state["shuffle"])
    torch.set_rng_state(_for_rank(state["torch"], run))
    if run.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_for_rank(state["cuda"], run), run.device)


def _for_rank(states: list[torch.Tensor] | torch.Tensor, run: _Run) -> torch.Tensor:
    """This process's saved random state (a single tensor in files written before states were kept per rank)."""
    if isinstance(states, torch.Tensor):
        return states
    if len(states) != run.ctx.world_size:
        raise AvvpError(
            f"{run.state_path} was written by {len(states)} process(es); resume it with as many, "
            f"not {run.ctx.world_size}"
        )
    return states[run.ctx.rank]


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    try:
        line = json.dumps(record) + "\n"
        with open(path, "a", encoding="utf-8") as handle:
            if faults.armed():  # the test-only hook: a kill with half the line written
                handle.write(line[: len(line) // 2])
                handle.flush()
                faults.fault_point(path.name)
                line = line[len(line) // 2 :]
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise write_error(path, err) from None


def _epoch_of(line: str) -> int | None:
    """The epoch of a metrics.jsonl line; None for a line a killed process left half-written."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("epoch") if isinstance(record, dict) else None


def _truncate_metrics(path: Path, start_epoch: int) -> None:
    """Drop metric lines of epochs that will be run again (written after the last saved state)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if (_epoch_of(line) or start_epoch) < start_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
