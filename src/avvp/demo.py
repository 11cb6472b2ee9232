"""`avvp demo`: the whole method on LLP-Synth in minutes, HAN and MGN side by side.

Generates LLP-Synth (cached: a folder whose synth.json matches is reused), packs it, trains HAN and MGN in
their default configurations with one recipe (the authors' batch and learning rate, fewer videos, one late StepLR
decay, validation-based early stopping), scores both on the synthetic test split with the broadcast oracle as a
reference, and writes results.json, report.md and figures. The default scale gives MGN as many of the ~3,000 steps it needs
to converge as fit and keeps the whole demo within 10 minutes on a 2-core CPU (docs/demo.md).

Layout of the output folder:

    DIR/data/              LLP-Synth in the LLP layout, plus packs/ (the cache; kept between runs)
    DIR/runs/{han,mgn}/    the training runs (config.json, metrics.jsonl, best.safetensors, test_predictions.npz)
    DIR/figures/           training_curves.png, test_video_{han,mgn}.png (+ CSV)
    DIR/results.json, DIR/report.md

A new run builds runs/, figures/, results.json and report.md in a staging folder and moves them into place at
the end, so an interrupted run leaves the previous results whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avvp.data.synth import SPLITS, SynthConfig
from avvp.models.registry import get_spec
from avvp.utils import format_duration

if TYPE_CHECKING:
    import torch

    from avvp.data.annotations import Split
    from avvp.data.features import Features
    from avvp.reports.demo import DemoRow

log = logging.getLogger(__name__)

MODELS = ("han", "mgn")  # training and table order (baseline first)
RESULT_MODEL_ORDER = ("mgn", "han")  # key order in results.json
AUTHORS_EPOCHS = 40  # the authors' recipe's epochs and StepLR step
AUTHORS_LR_STEP = 10
AUTHORS_TRAIN_VIDEOS = 10_000  # LLP's training split
# Tiny models for smoke tests (`--tiny-models`): the same code paths in a fraction of the time.
TINY_MODEL_OVERRIDES = {
    "han": {"dim": 32, "ff_dim": 32},
    "mgn": {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1},
}
# The demo's scale and recipe (docs/demo.md, "The recipe": chosen over two training seeds)
DEMO_TRAIN = 3000  # 188 steps an epoch
DEMO_EPOCHS = 13  # at most 2,444 steps
DEMO_LR_STEP = 11  # 2,068 steps at 3e-4, then at most 376 at 3e-5
DEMO_PATIENCE = 3
DEMO_MIN_EPOCHS = 4  # ~750 steps: past the ~600 that MGN's class tokens take to separate
VALIDATION_COST = 0.4  # a validation batch of 16 videos costs about this share of a training step (forward only)
OUTPUTS = ("runs", "figures", "results.json", "report.md")  # what a run replaces (data/ is the cache)
STAGING_PREFIX = ".demo-"  # a run builds its outputs in DIR/.demo-XXXX, then moves them into place


@dataclass(frozen=True)
class DemoConfig:
    """Scale and recipe of the demo, the same for both models, chosen by measurement (docs/demo.md): MGN's class
    tokens start at zero and need ~600 steps at the full rate before its grouping forms, and MGN needs ~3,000 steps
    at the full rate to come near its level, so the learning rate decays once, late (within the 10 minutes, ~2,100
    steps at the full rate and ~380 at a tenth of it); early stopping ends HAN (at
    its best after a few epochs) long before the last epoch. The defaults fit in 10 minutes on a quiet 2-core CPU."""

    train: int = DEMO_TRAIN  # LLP-Synth training videos (LLP: 10,000)
    val: int = 300  # validation videos (model selection and early stopping every epoch)
    test: int = 600  # test videos (the reported numbers)
    epochs: int = DEMO_EPOCHS  # at most: early stopping may end a model sooner
    lr_step: int = DEMO_LR_STEP  # StepLR step in epochs: one decay x0.1, late
    patience: int = DEMO_PATIENCE  # early stopping: epochs without a better validation Type@AV
    min_epochs: int = DEMO_MIN_EPOCHS  # ... counted only after this many (MGN stalls at first)
    seed: int = 0  # seed of LLP-Synth and of training
    batch_size: int = 16  # the recipe's
    lr: float = 3e-4  # the recipe's
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> config fields (tests)

    def synth_config(self) -> SynthConfig:
        return dataclasses.replace(SynthConfig(), train=self.train, val=self.val, test=self.test, seed=self.seed)

    def train_config(self, model: str):
        from avvp.training import TrainConfig

        return TrainConfig(
            model=model,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_step=self.lr_step,
            seed=self.seed,
            precision="fp32",
            patience=self.patience,
            min_epochs=self.min_epochs,
            model_overrides=dict(self.model_overrides.get(model, {})),
        )

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train // self.batch_size)

    def scale_text(self) -> str:
        """One line saying how the recipe was scaled."""
        return (
            f"Scale: LLP-Synth {self.train:,} train / {self.val:,} val / {self.test:,} test videos (seed {self.seed}); "
            f"the authors' recipe ({AUTHORS_TRAIN_VIDEOS:,} videos x {AUTHORS_EPOCHS} epochs, StepLR every "
            f"{AUTHORS_LR_STEP}) scaled to {self.train:,} videos x at most {self.epochs} epochs "
            f"({self.steps_per_epoch:,} steps each), StepLR x0.1 after epoch {self.lr_step}, early stopping after "
            f"{self.patience} epochs without a better validation Type@AV (counted from epoch {self.min_epochs}); "
            f"batch {self.batch_size}, Adam lr {self.lr:g}, fp32; the same recipe for both models."
        )


@dataclass(frozen=True)
class TimePlan:
    """What the demo expects to spend, from a training step of each model timed at the start."""

    step_seconds: dict[str, float]  # model -> seconds per training step, measured here
    epoch_seconds: dict[str, float]  # model -> expected wall seconds of one epoch (training + validation)
    epochs: int  # the most epochs each model trains

    def training_seconds(self, models: Sequence[str]) -> float:
        """The most the training of `models` takes (early stopping only shortens it)."""
        return sum(self.epochs * self.epoch_seconds[model] for model in models)

    def time_left(self, model: str) -> Callable[[int, float], float]:
        """The ETA of `model`'s epoch lines: its epochs left at its mean epoch time so far, plus the most the models
        trained after it take."""
        later = self.training_seconds(MODELS[MODELS.index(model) + 1 :])
        return lambda epoch, mean: (self.epochs - epoch) * mean + later

    def text(self) -> str:
        steps = ", ".join(f"{get_spec(m).title} {1000 * s:.0f} ms" for m, s in self.step_seconds.items())
        return (
            f"Time: a training step takes {steps} here (timed now); each model trains at most {self.epochs} epochs: "
            f"at most ~{format_duration(self.training_seconds(list(self.step_seconds)))} of training, less where "
            "early stopping ends a model sooner."
        )


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` wrote and its numbers."""

    out_dir: Path
    results: dict[str, Any]  # the content of results.json
    table: str  # the side-by-side table as printed
    rows: list[DemoRow]  # its rows: HAN, MGN, the oracle
    video_filename: str  # the test video of the timeline figures
    seconds: float  # the whole demo, wall clock
    data_reused: bool  # the LLP-Synth cache matched and was reused


def prepare_data(data_dir: Path, config: SynthConfig, *, progress: bool = True) -> tuple[Path, bool]:
    """LLP-Synth for `config` in `data_dir`, packed per split; reused when its synth.json matches.

    Returns:
        (the folder of packs, whether the cache was reused).
    """
    from avvp.data.annotations import SPLIT_FILES, read_weak_labels
    from avvp.data.store import pack_features
    from avvp.data.synth import GENERATOR_VERSION, folder_version, generate, load_config

    packs = data_dir / "packs"
    pack_paths = {split: packs / f"{split}.pack" for split in SPLITS}
    reused = load_config(data_dir) == config
    if not reused:
        version = folder_version(data_dir)
        if version is not None and version != GENERATOR_VERSION:
            print(f"{data_dir} holds LLP-Synth v{version}: regenerating it as v{GENERATOR_VERSION}")
        log.info("generating LLP-Synth into %s", data_dir)
        generate(data_dir, config, overwrite=True, progress=progress)
    for split, pack_path in pack_paths.items():
        if not pack_path.exists():  # packs are written atomically: one that exists is whole
            reused = False
            filenames = read_weak_labels(data_dir / SPLIT_FILES[split]).filenames
            pack_features(data_dir / "feats", filenames, pack_path, progress=progress)
    return packs, reused


def plan_time(config: DemoConfig, device: torch.device) -> TimePlan:
    """Time one training step of each model here and expect each epoch to cost its steps plus validation."""
    from avvp.steps import time_train_step

    steps = {model: time_train_step(config.train_config(model), device) for model in MODELS}
    val_batches = -(-config.val // config.batch_size)
    per_epoch = config.steps_per_epoch + VALIDATION_COST * val_batches
    return TimePlan(steps, {model: seconds * per_epoch for model, seconds in steps.items()}, config.epochs)


def pick_video(audio: np.ndarray, visual: np.ndarray) -> int:
    """A test video worth a timeline: the first with 2+ classes and an event that is not the same in both
    modalities over all 10 s (else the first with any event, else 0).

    Args:
        audio, visual: [N, 10, 25] bool ground truth.
    """
    classes = (audio | visual).any(1)  # [N, C]
    differs = (audio != visual).any(1).any(1)  # [N]
    for candidates in ((classes.sum(1) >= 2) & differs, classes.any(1)):
        if candidates.any():
            return int(np.flatnonzero(candidates)[0])
    return 0


def run_demo(
    out_dir: str | os.PathLike, config: DemoConfig = DemoConfig(), *, device: Any = "cpu", progress: bool = True
) -> DemoResult:
    """Generate (or reuse) LLP-Synth, train HAN and MGN, score them on test, write results.json and report.md.

    Args:
        out_dir: the demo folder (created if absent); its data/ cache is reused, its runs and report replaced.
        config: the scale.
        device: a torch device (or its name) to train on.
        progress: progress bars.
    """
    import torch

    from avvp.data.annotations import load_split
    from avvp.data.store import open_features
    from avvp.reports import demo as report

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    print(config.scale_text())
    plan = plan_time(config, device)
    print(plan.text(), flush=True)
    packs, reused = prepare_data(out_dir / "data", config.synth_config(), progress=progress)
    print(f"LLP-Synth: {'reused the cache in' if reused else 'generated into'} {out_dir / 'data'}")

    for stale in out_dir.glob(f"{STAGING_PREFIX}*"):  # left by a killed run (an interrupted one cleans up)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        test_split = load_split(out_dir / "data", "test")
        test_features = open_features(packs).load(test_split.video_ids, pooled=True)
        rows: dict[str, report.DemoRow] = {}
        histories: dict[str, list[dict[str, Any]]] = {}  # keyed by model title
        test_predictions: dict[str, dict[str, np.ndarray]] = {}
        for model in MODELS:
            run_dir = staging / "runs" / model
            rows[model], histories[get_spec(model).title], test_predictions[model] = _train_and_score(
                model, config, packs, out_dir / "data", run_dir, test_split, test_features, device, progress, plan
            )
        oracle = _oracle_row(test_split)
        table_rows = [*(rows[model] for model in MODELS), oracle]
        table = report.text_table(table_rows)
        video_filename, video_pngs = _write_figures(staging / "figures", histories, test_split, test_predictions)
        dataset = {"train": config.train, "val": config.val, "test": config.test, "seed": config.seed}
        payload = report.results_payload(dataset, {m: rows[m] for m in RESULT_MODEL_ORDER}, oracle)
        seconds = _write_results(staging, payload, config, table_rows, video_filename, video_pngs, started)
        _move_outputs(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DemoResult(out_dir, payload, table, table_rows, video_filename, seconds, reused)


def _train_and_score(
    model: str,
    config: DemoConfig,
    packs: Path,
    annotations: Path,
    run_dir: Path,
    test_split: Split,
    test_features: Features,
    device: torch.device,
    progress: bool,
    plan: TimePlan,
) -> tuple[DemoRow, list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train one model into `run_dir`, predict the test split with its best checkpoint and score it.

    Returns:
        (its table row, its training history, its test predictions).
    """
    from avvp.inference import save_predictions
    from avvp.metrics import evaluate, parse_predictions
    from avvp.reports import demo as report
    from avvp.training import train

    title = get_spec(model).title
    print(f"training {title} (at most {config.epochs} epochs on {config.train:,} videos, device {device}) ...")
    result = train(
        config.train_config(model),
        features=packs,
        annotations=annotations,
        out_dir=run_dir,
        device=device,
        progress=progress,
        time_left=plan.time_left(model),
    )
    predictions = _predict_best(run_dir, test_features, test_split.filenames, device)
    save_predictions(run_dir / "test_predictions.npz", test_split.filenames, predictions)
    (run_dir / "last.pt").unlink(missing_ok=True)  # resume state: not needed for a finished demo run
    pred_audio, pred_visual = parse_predictions(predictions["audio"], predictions["visual"], predictions["video"])
    scores = evaluate(pred_audio, pred_visual, test_split.audio, test_split.visual)
    row = report.DemoRow(title, scores.segment, scores.event, result.parameters, result.train_seconds)
    return row, report.read_history(run_dir), predictions


def _oracle_row(test_split: Split) -> DemoRow:
    """The broadcast oracle's table row: the reference a model should approach."""
    from avvp.data.synth import broadcast_oracle
    from avvp.metrics import evaluate
    from avvp.reports import demo as report

    oracle_audio, oracle_visual = broadcast_oracle(test_split)
    oracle_scores = evaluate(oracle_audio, oracle_visual, test_split.audio, test_split.visual)
    return report.DemoRow(report.ORACLE_TITLE, oracle_scores.segment, oracle_scores.event)


def _write_figures(
    figures: Path,
    histories: dict[str, list[dict[str, Any]]],
    test_split: Split,
    test_predictions: dict[str, dict[str, np.ndarray]],
) -> tuple[str, dict[str, str]]:
    """The training curves and one test video's timeline per model, in `figures`.

    Returns:
        (the test video's filename, model title -> its timeline's path relative to the demo folder).
    """
    from avvp.reports import demo as report
    from avvp.reports.plots import plot_video_parse

    figures.mkdir()
    report.plot_training_curves(histories, figures / "training_curves.png")
    index = pick_video(test_split.audio, test_split.visual)
    video_filename = test_split.filenames[index]
    video_pngs = {}
    for model in MODELS:
        png = figures / f"test_video_{model}.png"
        plot_video_parse(
            png,
            filename=f"{get_spec(model).title}, {video_filename}",
            audio_probs=test_predictions[model]["audio"][index],
            visual_probs=test_predictions[model]["visual"][index],
            gt_audio=test_split.audio[index],
            gt_visual=test_split.visual[index],
            video_probs=test_predictions[model]["video"][index],
        )
        video_pngs[get_spec(model).title] = f"figures/{png.name}"
    return video_filename, video_pngs


def _write_results(
    staging: Path,
    payload: dict[str, Any],
    config: DemoConfig,
    table_rows: list[DemoRow],
    video_filename: str,
    video_pngs: dict[str, str],
    started: float,
) -> float:
    """Write results.json and report.md into `staging`; returns the demo's wall-clock seconds (in report.md)."""
    from avvp.reports import demo as report
    from avvp.utils import atomic_write_text

    atomic_write_text(staging / "results.json", report.results_json(payload))
    seconds = time.perf_counter() - started
    atomic_write_text(
        staging / "report.md",
        report.report_markdown(
            scale_text=config.scale_text(),
            rows=table_rows,
            curves_png="figures/training_curves.png",
            video_pngs=video_pngs,
            video_filename=video_filename,
            total_seconds=seconds,
        ),
    )
    return seconds


def _predict_best(run_dir: Path, features, filenames: list[str], device) -> dict[str, np.ndarray]:
    """Test-split scores of a run's best checkpoint (the one `train` scored), checked as every model's scores."""
    from avvp.checkpoint import load_model
    from avvp.inference import predict
    from avvp.precision import resolve_precision

    checkpoint = run_dir / "best.safetensors"
    model, _ = load_model(checkpoint, map_location=device)
    precision = resolve_precision("auto", device)
    return predict(
        model, features, device=device, precision=precision, names=filenames, where=f"scores of {checkpoint}"
    )


def _move_outputs(staging: Path, out_dir: Path) -> None:
    """Replace the previous run's outputs with the staged ones (the data cache stays)."""
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(staging / name, target)
