"""The training loop: `train` sets a run up (or resumes it), then per epoch trains, validates and checkpoints, then
scores the best epoch on test.

The whole split is held as tensors, shuffled by an index permutation drawn from a dedicated generator, so an epoch
does no per-sample Python work. Each step is a `avvp.steps.TrainStep`. Under `torchrun` each process takes its shard
of every global batch and DistributedDataParallel averages the gradients. The run folder and last.pt are
`avvp.training.persistence`'s; stacked training (`avvp.training.stacked`) reuses the set-up and per-epoch steps here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avvp.checkpoint import load_model
from avvp.data.annotations import load_split
from avvp.data.modality_labels import training_targets
from avvp.data.splits import SplitData, StreamedBatches, check_split_features, feature_tensors, load_split_data
from avvp.data.synth import training_truth
from avvp.denoise import Denoiser, NoiseRatios, read_noise_ratios
from avvp.denoise import check_supported as check_denoise_supported
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
from avvp.inference import predict
from avvp.metrics import Scores, evaluate, format_scores, parse_predictions
from avvp.models import count_parameters
from avvp.models.registry import create_model, resolve, spec_of
from avvp.objective import model_terms, resolve_weights
from avvp.precision import resolve_precision
from avvp.recipe import TrainConfig
from avvp.steps import GraphedTrainStep, TrainStep, make_optimizer
from avvp.training.persistence import (
    _append_jsonl,
    _claim_run_folder,
    _resume,
    _run_record,
    _save_state,
    _write_run_record,
    _write_test_scores,
)
from avvp.training.run import (
    DataSources,
    Display,
    Learner,
    Run,
    Standing,
    Stepper,
    TimeLeft,
    TrainingData,
)
from avvp.training.tensorboard import TensorBoard, require_tensorboard
from avvp.utils import format_duration, progress_bar

log = logging.getLogger(__name__)


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
    tensorboard: str | Path | None = None,
) -> TrainResult:
    """Train one model with `config`, validating each epoch; keeps the best epoch and scores it on test.

    Writes into `out_dir`: config.json, metrics.jsonl (one line per epoch), best.safetensors/.json (best validation
    segment-level Type@AV; on ties the later epoch, as the authors' `>=`), last.pt (full state for `--resume`),
    test_scores.json. Validation and test are scored in fp32 whatever the training precision, as `avvp evaluate`.
    `skip_bad_rows` skips malformed rows of the annotation files (with a warning) instead of stopping. With
    `config.patience`, the run ends early once `config.stops_after` says so (the best epoch is still the one kept
    and tested; last.pt records the stop, so `--resume` does not train on). `time_left` gives the ETA printed on
    each epoch line (default: the epochs left of this run at the mean epoch time). `tensorboard`, a folder, also
    gets each epoch as TensorBoard scalars (`avvp.training.tensorboard`; a run option, not a setting: it changes no
    result, so it is not in config.json and a resumed run may add, change or drop it).
    """
    if tensorboard is not None:
        require_tensorboard()  # before the run folder is touched
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        held.callback(close_distributed)  # the process group too (last: after the lock)
        val_path = Path(val_features) if val_features else None
        sources = DataSources(Path(features), Path(annotations), val_path, skip_bad_rows)
        display = Display(progress, time_left=time_left)
        run, standing = _set_up(config, sources, Path(out_dir), device, resume, display, held)
        board = _open_board(run, standing, tensorboard, held)
        stepper = _make_stepper(run)
        train_seconds = 0.0
        for epoch in range(standing.start_epoch, config.epochs + 1):
            if standing.stopped:
                break
            started = time.perf_counter()
            losses, lr = _train_epoch(run, stepper, epoch)
            denoised = _denoise_record(run, stepper.train_step, epoch)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            with fail_together(run.ctx):  # the main process validates; an error there stops every process
                best = (
                    _validate(run, standing, epoch, losses, lr, seconds, started, board, denoised)
                    if run.ctx.is_main
                    else None
                )
            _check_early_stop(run, standing, epoch)
            _save_state(run, standing, epoch, best)
        with fail_together(run.ctx):
            test_scores = _test(run, standing) if run.ctx.is_main else None
    return _result(run, standing, test_scores, train_seconds)


def _result(run: Run, standing: Standing, test_scores: Scores | None, train_seconds: float) -> TrainResult:
    parameters = count_parameters(run.learner.model)
    return TrainResult(
        run.out_dir,
        standing.best_epoch,
        standing.best_type,
        test_scores,
        train_seconds,
        parameters,
        standing.last_epoch,
    )


# ------------------------------------------------------------------------------------------------ set-up


def _set_up(
    config: TrainConfig,
    sources: DataSources,
    out_dir: Path,
    device: torch.device | str,
    resume: bool,
    display: Display,
    held: contextlib.ExitStack,
    splits: tuple[SplitData, SplitData | None] | None = None,
    stacked_with: Sequence[str] = (),
) -> tuple[Run, Standing]:
    """The run's model, optimiser and data (`splits`: the train and val splits when already loaded), resumed from
    last.pt with `resume`; config.json written (noting `stacked_with`, the run folders trained stacked with it).
    The step is made afterwards (`_make_stepper`).

    Every split's features are checked before the run folder is touched; the main process then takes the folder's
    lock (into `held`) and decides, from what the folder holds, whether the run is new or resumed."""
    device, ctx = _device_and_context(torch.device(device))
    standing = Standing()
    with fail_together(ctx):  # an error on any process (its data; the run folder, on the main one) stops all
        run = _make_run(config, sources, out_dir, device, ctx, display, splits)
        record = _run_record(run)
        if ctx.is_main:
            resume = _claim_run_folder(out_dir, record, resume, standing, held)
    resumed = gather(resume, ctx)[0]  # the main process's decision
    with fail_together(ctx):  # a damaged last.pt, a failed write
        if resumed:
            _resume(run, standing)
        if ctx.is_main:
            _write_run_record(run, standing, record, resumed, stacked_with)
    return run, standing


def _make_run(
    config: TrainConfig,
    sources: DataSources,
    out_dir: Path,
    device: torch.device,
    ctx: DistributedContext,
    display: Display,
    splits: tuple[SplitData, SplitData | None] | None,
) -> Run:
    """The run's data (loaded unless given as `splits`), its learner and its resolved precision."""
    train_data, val_data = _load_splits(config, sources, ctx) if splits is None else splits
    learner = _make_learner(config, device, ctx)
    precision = resolve_precision(config.precision, device)
    data = TrainingData(
        train_data, val_data, _training_targets(config, sources, train_data), *_noise(config, sources, train_data)
    )
    return Run(config, out_dir, sources, device, precision, ctx, data, learner, display)


def _make_learner(config: TrainConfig, device: torch.device, ctx: DistributedContext) -> Learner:
    """The model (the same initial weights on every process), Adam, StepLR and the shuffle generator; each process's
    noise stream is seeded once the model is built."""
    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = create_model(config.model, cross_modal=config.cross_modal, **config.model_overrides).to(device)
    weights = resolve_weights(config.model, config.loss_weights)  # an unknown term stops the run before its folder
    defaults = {term.name: term.weight for term in model_terms(config.model)}
    turned_off = [name for name, weight in weights.items() if weight == 0 and defaults[name] != 0]
    if ctx.enabled and turned_off:
        raise AvvpError(
            f"--loss-weight: a term of weight 0 ({', '.join(turned_off)}) is not "
            "supported under torchrun: the weights only it trains would get no gradient, which DDP cannot sync; "
            "give it a small weight instead, or train in one process"
        )
    seed_noise(config.seed, ctx)
    optimizer = make_optimizer(model, config.lr, capturable=config.cuda_graphs and device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    return Learner(model, optimizer, scheduler, torch.Generator().manual_seed(config.seed))


def _load_splits(
    config: TrainConfig, sources: DataSources, ctx: DistributedContext
) -> tuple[SplitData, SplitData | None]:
    """The training split and (main process) the validation split; the test split's features are checked, since
    it is scored after the last epoch: fail now, not then."""
    features, annotations, skip_bad_rows = sources.features, sources.annotations, sources.skip_bad_rows
    load = functools.partial(load_split_data, annotations=annotations, skip_bad_rows=skip_bad_rows)
    train_data = load(features, name="train", limit=config.max_train_videos, stream=config.stream)
    val_data = load(sources.val_features or features, name="val") if ctx.is_main else None
    if ctx.is_main:
        check_split_features(features, annotations, "test", skip_bad_rows=skip_bad_rows)
    return train_data, val_data


def _training_targets(config: TrainConfig, sources: DataSources, data: SplitData) -> np.ndarray:
    """The training labels: the weak labels [N, 25], or with `config.modality_labels` the (weak, audio, visual)
    labels [N, 3, 25] from that file, checked against the whole training split."""
    if config.modality_labels is None:
        return np.asarray(data.split.labels, dtype=np.float32)
    full = load_split(sources.annotations, "train", skip_bad_rows=sources.skip_bad_rows)
    return training_targets(config.modality_labels, full, data.split)


def _noise(
    config: TrainConfig, sources: DataSources, data: SplitData
) -> tuple[NoiseRatios | None, tuple[np.ndarray, np.ndarray] | None]:
    """JoMoLD's ratios (`--noise-ratios`), checked, and, for LLP-Synth, which weak labels of the training videos are
    audible and which visible (regenerated from its seed: the removals' precision and recall in metrics.jsonl)."""
    if config.noise_ratios is None:
        return None, None
    ratios = read_noise_ratios(config.noise_ratios)
    check_denoise_supported(config)
    if config.denoise_from_epoch > config.epochs:
        log.warning("--denoise-from-epoch %d is after the last epoch (%d): no label will be removed",
                    config.denoise_from_epoch, config.epochs)  # fmt: skip
    estimated_on = ratios.extra.get("annotations")
    if isinstance(estimated_on, str) and Path(estimated_on).resolve() != sources.annotations.resolve():
        log.warning("%s: the noise ratios were estimated on the annotations in %s; this run trains on %s",
                    config.noise_ratios, estimated_on, sources.annotations)  # fmt: skip
    truth = training_truth(sources.annotations, data.split.filenames, data.split.labels)
    return ratios, None if truth is None else (truth[0].any(axis=1), truth[1].any(axis=1))


def _open_board(
    run: Run, standing: Standing, log_dir: str | Path | None, held: contextlib.ExitStack
) -> TensorBoard | None:
    """The run's TensorBoard writer into `log_dir`: the main process's (None on the others, and without `log_dir`),
    hiding events logged from the first epoch trained now on, and closed with `held` however the run ends."""
    if log_dir is None:
        return None
    with fail_together(run.ctx):  # a folder that cannot be created stops every process
        if not run.ctx.is_main:
            return None
        weights = resolve_weights(run.config.model, run.config.loss_weights)
        board = TensorBoard(Path(log_dir), standing.start_epoch, weights)
        held.callback(board.close)
    return board


def _device_and_context(device: torch.device) -> tuple[torch.device, DistributedContext]:
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device, ctx


def _train_tensors(run: Run) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.device]:
    """The training features (on the device once when they fit; none when streaming), the labels, and the device
    they are on."""
    labels = torch.as_tensor(run.data.targets, dtype=torch.float32)
    if run.config.stream:
        return (), labels, torch.device("cpu")
    tensors = feature_tensors(run.data.train, run.device)
    return tensors, labels.to(tensors[0].device), tensors[0].device


def _make_stepper(run: Run) -> Stepper:
    """The step over the training tensors, through torch.compile and DDP where asked for."""
    tensors, labels, index_device = _train_tensors(run)
    step_model: nn.Module = run.learner.model
    if run.config.compile:
        step_model = torch.compile(step_model)
    if run.ctx.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        # The cross-modal-free form leaves the cross-modal modules without gradients: DDP must not wait for them.
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=device_ids, find_unused_parameters=not run.config.cross_modal
        )
    optimizer = run.learner.optimizer
    step = TrainStep(step_model, optimizer, tensors, labels, run.config, run.device, run.precision, run.ctx)
    step.denoiser = _denoiser(run)
    return Stepper(GraphedTrainStep.create(step) if run.config.cuda_graphs else step, index_device)


def _denoiser(run: Run) -> Denoiser | None:
    """JoMoLD's label denoising for the run's steps (`--noise-ratios`; None without)."""
    if run.data.noise is None:
        return None
    return Denoiser(run.data.noise, run.config, run.device, run.precision, run.data.truth)


def _set_denoise_epoch(step: TrainStep | GraphedTrainStep, epoch: int) -> None:
    """Switch the step's JoMoLD removals on or off for `epoch` (nothing without a denoiser)."""
    denoiser = getattr(step, "denoiser", None)
    if denoiser is not None:
        denoiser.set_epoch(epoch)


# ------------------------------------------------------------------------------------------------ epochs


def _train_epoch(run: Run, stepper: Stepper, epoch: int) -> tuple[dict[str, float], float]:
    """One pass over the training split in a fresh random order; returns the mean loss terms and the epoch's
    learning rate (the schedule steps once per epoch, afterwards)."""
    config, ctx, step = run.config, run.ctx, stepper.train_step
    batches = _epoch_batches(run, stepper.index_device)
    _set_denoise_epoch(step, epoch)
    bar = progress_bar(
        range(len(batches)),
        progress=run.display.progress and ctx.is_main,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="step",
    )
    if config.stream:
        for index, inputs in zip(bar, _streamed(run, batches)):
            step.step(*(t.to(run.device, non_blocking=True) for t in inputs), len(batches[index]))
    else:
        for index in bar:
            batch = batches[index]
            step(batch[ctx.rank :: ctx.world_size], len(batch))  # this process's shard
    return _end_epoch(run, step, epoch)


def _epoch_batches(run: Run, index_device: torch.device) -> list[torch.Tensor]:
    """The epoch's batches of video indices, in a fresh random order from the run's shuffle generator."""
    run.learner.model.train()
    count, size = run.data.videos, run.config.batch_size
    order = torch.randperm(count, generator=run.learner.shuffle).to(index_device)
    return [order[i * size : (i + 1) * size] for i in range(math.ceil(count / size))]


def _end_epoch(run: Run, step: TrainStep | GraphedTrainStep, epoch: int) -> tuple[dict[str, float], float]:
    """The epoch's mean loss terms (stopping on a non-finite one) and learning rate; steps the schedule."""
    sums = step.take_sums()
    if not all(math.isfinite(v) for v in sums.values()):
        raise AvvpError(
            f"training diverged: the loss is not finite in epoch {epoch} ({run.out_dir}); "
            "try --precision fp32 or a lower --lr"
        )
    lr = run.learner.optimizer.param_groups[0]["lr"]
    run.learner.scheduler.step()
    return _mean_losses(sums, run.data.videos, run.ctx, step), lr


def _denoise_record(run: Run, step: TrainStep | GraphedTrainStep, epoch: int) -> dict[str, Any]:
    """The epoch's JoMoLD record (metrics.jsonl `denoise`; summed over processes): the labels removed per modality
    and, for LLP-Synth, the share of them the truth says are absent in that modality (precision) and the share of
    the weak labels absent in that modality that were removed (recall), in percent."""
    denoiser = getattr(step, "denoiser", None)
    if denoiser is None:
        return {}
    counts = sum_over_processes(torch.tensor(denoiser.take_counts(), dtype=torch.float64), run.ctx).tolist()
    removed = {"audio": int(counts[0]), "visual": int(counts[1])}
    record: dict[str, Any] = {
        "from_epoch": run.config.denoise_from_epoch,
        "active": denoiser.removes_in(epoch),
        "removed": removed,
    }
    if run.data.truth is not None:
        labelled = np.asarray(run.data.train.split.labels) > 0
        absent = {m: int((labelled & ~truth).sum()) for m, truth in zip(("audio", "visual"), run.data.truth)}
        right = {"audio": counts[2], "visual": counts[3]}
        record["truly_absent"] = absent
        # None where undefined (nothing removed, nothing absent): not to be read as 0 % right
        record["precision"] = {m: 100.0 * right[m] / removed[m] if removed[m] else None for m in removed}
        record["recall"] = {m: 100.0 * right[m] / absent[m] if absent[m] else None for m in removed}
    return {"denoise": record}


def _streamed(run: Run, batches: list[torch.Tensor]) -> torch.utils.data.DataLoader:
    """This process's shard of every batch, read from disk by DataLoader workers."""
    data, ctx = run.data.train, run.ctx
    shards = [b[ctx.rank :: ctx.world_size].numpy() for b in batches]
    dataset = StreamedBatches(data.features_path, data.split.video_ids, run.data.targets, shards)
    return torch.utils.data.DataLoader(  # its own generator: the global one feeds dropout and Gumbel noise
        dataset,
        batch_size=None,
        num_workers=run.config.loader_workers,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(run.config.seed),
    )


def _mean_losses(
    sums: dict[str, float], count: int, ctx: DistributedContext, step: TrainStep | GraphedTrainStep
) -> dict[str, float]:
    """Mean of each loss term over the epoch's videos (summed over processes), and `total`, their weighted sum."""
    keys = sorted(sums)
    values = sum_over_processes(torch.tensor([sums[k] for k in keys], dtype=torch.float64), ctx)
    means = {k: float(v) / count for k, v in zip(keys, values)}
    means["total"] = step.objective.total(means)
    return means


# ------------------------------------------------------------------------------------------------ validation


def _validate(
    run: Run,
    standing: Standing,
    epoch: int,
    losses: dict[str, float],
    lr: float,
    seconds: float,
    started: float,
    board: TensorBoard | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Score the validation split, append the epoch to metrics.jsonl (with `extra`, the epoch's training records
    beside the losses, e.g. JoMoLD's `denoise`) and `board`, and print one line; returns the metadata of
    best.safetensors when this epoch is the best so far (ties: the later epoch), else None."""
    model, val_data = run.learner.model, run.data.val
    scores, predictions = score_split(model, val_data, batch_size=run.config.eval_batch_size, device=run.device)
    record = _epoch_record(run, epoch, losses, lr, scores, seconds, started) | (extra or {})
    if standing.resumed_changes:  # the first epoch after a resume that changed safe settings says so
        record["resumed"] = {"after_epoch": standing.start_epoch - 1, "changed": standing.resumed_changes}
        standing.resumed_changes = {}
    validation_record = spec_of(model).validation_record  # e.g. MGN's class tokens against the truth (Figure 2)
    model_record = resolve(validation_record)(predictions, val_data.split) if validation_record is not None else {}
    record |= model_record
    _append_jsonl(run.metrics_path, record)
    if board is not None:
        board.write_epoch(record, model_record.keys())
    type_score = scores.segment["type"]
    message = (
        f"{run.display.label}epoch {epoch}/{run.config.epochs}: loss {losses['total']:.4f}, "
        f"val segment Type@AV {type_score:.2f} Event@AV {scores.segment['event']:.2f} ({seconds:.0f} s)"
    )
    best = None
    if type_score >= standing.best_type:  # the authors keep the latest of equal epochs
        standing.best_type, standing.best_epoch = type_score, epoch
        best = {"epoch": epoch, "val": record["val"], "train": run.config.to_dict()}
        message += " (best)"
    if run.display.progress:  # also in logs and CI
        print(message + _eta_text(run, standing, epoch, time.perf_counter() - started), flush=True)
    return best


def _epoch_record(
    run: Run, epoch: int, losses: dict[str, float], lr: float, scores: Scores, seconds: float, started: float
) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl: its training (`seconds` of it, from `started`) and validation scores."""
    count = run.data.videos
    return {
        "epoch": epoch,
        "steps": epoch * math.ceil(count / run.config.batch_size),  # optimiser steps so far
        "lr": lr,
        "loss": losses,
        "val": {"segment": scores.segment, "event": scores.event},
        "train_seconds": seconds,
        "videos_per_second": count / seconds,
        "epoch_seconds": time.perf_counter() - started,
    }


def _eta_text(run: Run, standing: Standing, epoch: int, wall: float) -> str:
    """' · ETA m:ss' after an epoch that took `wall` seconds: the display's `time_left`, or the epochs left of this
    run (an upper bound where early stopping may end it sooner)."""
    standing.epoch_walls.append(wall)
    mean = sum(standing.epoch_walls) / len(standing.epoch_walls)
    time_left = run.display.time_left
    left = time_left(epoch, mean) if time_left else (run.config.epochs - epoch) * mean
    return f" · ETA {format_duration(left)}"


def _check_early_stop(run: Run, standing: Standing, epoch: int) -> None:
    """Record `epoch` as trained and decide (on the main process, which knows the best epoch) whether early stopping
    ends the run after it."""
    standing.last_epoch = epoch
    stop = run.config.stops_after(epoch, standing.best_epoch) if run.ctx.is_main else False
    standing.stopped = bool(gather(stop, run.ctx)[0])
    if standing.stopped and run.ctx.is_main and run.display.progress:
        print(
            f"{run.display.label}early stop after epoch {epoch}: no better validation Type@AV for "
            f"{run.config.patience} epochs (best: epoch {standing.best_epoch}, {standing.best_type:.2f})",
            flush=True,
        )


# ------------------------------------------------------------------------------------------------ test


def _test(run: Run, standing: Standing) -> Scores:
    """Score the best epoch's checkpoint on the test split (fp32) into test_scores.json, and print the scores."""
    model, _ = load_model(run.out_dir / "best.safetensors", map_location=run.device)
    sources = run.sources
    test_data = load_split_data(sources.features, sources.annotations, "test", skip_bad_rows=sources.skip_bad_rows)
    scores, _ = score_split(model, test_data, batch_size=run.config.eval_batch_size, device=run.device)
    _write_test_scores(run, standing, scores)
    print(format_scores(scores))
    return scores


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
