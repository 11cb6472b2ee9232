"""Sweeps that reproduce the MGN paper's tables: many training runs, resumable, on one or several devices.

`avvp sweep depth` trains HAN and the six MGN depth configurations of Table 1, `avvp sweep assign` the four
Softmax / Hard-Softmax combinations of Table 2, each for several seeds. Every run is an ordinary `avvp train`
run folder, OUT/<config>-seed<k>/, so a sweep is resumable by looking at the folders:

- test_scores.json present: the run is finished and reused;
- last.pt present (a run killed after at least one epoch): it continues from last.pt (`train(..., resume=True)`);
- anything else (killed before its first epoch ended): the folder is deleted and the run starts again.

A run folder whose config.json disagrees with the sweep (other epochs, seed, model, data ...) is never reused
silently: the sweep stops and says so. With one worker the runs train in this process; with several (`--workers N`
or `--devices a,b`) in worker processes (`avvp.workers`), each bound to one device and taking one run after another,
with each run's log in OUT/logs/. With `--stack`, the seeds of each MGN row train together as one stacked model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avvp.data.modality_labels import file_sha256
from avvp.errors import AvvpError
from avvp.models import model_size, paper_table_configs
from avvp.models.registry import config_to_dict, get_spec, make_config
from avvp.reports.tables import ResultRow, RunSummary
from avvp.run_folder import LABELS_HASH, SAFE_ON_RESUME, PidLock, read_run_record, stored_setting
from avvp.training import LOCK_NAME as TRAIN_LOCK
from avvp.training import TrainConfig
from avvp.utils import atomic_write_text

log = logging.getLogger(__name__)

SWEEP_KINDS = ("depth", "assign")
ASSIGN_TITLES = {"soft": "Softmax", "hard": "Hard-Softmax"}
# Files `avvp train` writes into a run folder (and its temporary files); a folder holding anything else is not
# deleted by a restart.
TEST_PREDICTIONS = "test_pred.npz"  # predictions of the best checkpoint on test, cached by `avvp plot recall`
LOCK_NAME = ".sweep.lock"


@dataclass(frozen=True)
class SweepConfig:
    """One row of a table: a model configuration, trained once per seed."""

    name: str  # run folder stem, e.g. "mgn-3-3-6" (runs are OUT/<name>-seed<k>)
    method: str  # "HAN" or "MGN", the table's Method column
    model: str  # "han" or "mgn"
    overrides: dict[str, Any]  # model config overrides
    settings: tuple[tuple[str, str], ...]  # the table's configuration columns, (title, cell)


def _mgn_name(overrides: dict[str, Any]) -> str:
    """`mgn-A-V-AV`, plus `-UNI-CROSS` assignment kinds unless both are soft (the paper's default)."""
    config = make_config("mgn", **overrides)
    name = f"mgn-{config.depth_audio}-{config.depth_visual}-{config.depth_av}"
    if (config.unimodal_assign, config.crossmodal_assign) != ("soft", "soft"):
        name += f"-{config.unimodal_assign}-{config.crossmodal_assign}"
    return name


def depth_configs() -> list[SweepConfig]:
    """Table 1: HAN and MGN at depths (1,1,2), (2,2,4), (3,3,6), (4,4,8), (3,3,3), (6,6,3)."""
    configs = []
    for _, model, overrides in paper_table_configs():
        if model == "han":
            configs.append(SweepConfig("han", "HAN", "han", {}, (("CUG depth", "–"), ("MCG depth", "–"))))
            continue
        cug = f"{overrides['depth_audio']}/{overrides['depth_visual']}"
        settings = (("CUG depth", cug), ("MCG depth", str(overrides["depth_av"])))
        configs.append(SweepConfig(_mgn_name(overrides), "MGN", "mgn", dict(overrides), settings))
    return configs


def assign_configs() -> list[SweepConfig]:
    """Table 2: Softmax or Hard-Softmax assignment in the CUG (unimodal) and the MCG (cross-modal), depths (3,3,6)."""
    configs = []
    for unimodal in ("soft", "hard"):
        for crossmodal in ("soft", "hard"):
            overrides = {
                "depth_audio": 3,
                "depth_visual": 3,
                "depth_av": 6,
                "unimodal_assign": unimodal,
                "crossmodal_assign": crossmodal,
            }
            settings = (("CUG assignment", ASSIGN_TITLES[unimodal]), ("MCG assignment", ASSIGN_TITLES[crossmodal]))
            configs.append(SweepConfig(_mgn_name(overrides), "MGN", "mgn", overrides, settings))
    return configs


def sweep_configs(kind: str, names: Sequence[str] | None = None) -> list[SweepConfig]:
    """The rows of sweep `kind` ('depth' or 'assign'), optionally only those named (in the table's order)."""
    if kind not in SWEEP_KINDS:
        raise AvvpError(f"unknown sweep {kind!r}; choose one of {', '.join(SWEEP_KINDS)}")
    configs = depth_configs() if kind == "depth" else assign_configs()
    if names:
        known = [config.name for config in configs]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise AvvpError(f"--configs: {', '.join(unknown)} not in the {kind} sweep; choose from {', '.join(known)}")
        configs = [config for config in configs if config.name in names]
    return configs


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a sweep: a configuration and a seed, in its own run folder."""

    config: SweepConfig
    seed: int
    train: TrainConfig  # the full training recipe of this run
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan_runs(
    configs: Sequence[SweepConfig],
    seeds: Sequence[int],
    out_dir: str | Path,
    base: TrainConfig,
    *,
    dim: int | None = None,
    modality_labels: str | None = None,
) -> list[PlannedRun]:
    """Every (configuration, seed) as a run under `out_dir`, seed-major so early results cover every row.

    Args:
        configs: the table rows.
        seeds: training seeds; each row is trained once per seed.
        out_dir: the sweep folder.
        base: recipe shared by every run (epochs, batch size, ...); model, seed and overrides are set per run.
        dim: model width for every run instead of each model's default (smaller for quick trials).
        modality_labels: a modality-label file for every run, or a template naming one per run with `{name}` (the
            row, e.g. han or mgn-3-3-6) and `{seed}`, e.g. labels/{name}-seed{seed}.csv (see `modality_label_file`).
    """
    if not seeds:
        raise AvvpError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise AvvpError(f"--seeds {','.join(map(str, seeds))}: a seed is listed twice")
    out_dir = Path(out_dir)
    runs = []
    for seed in seeds:
        for config in configs:
            overrides = dict(config.overrides) | ({"dim": dim} if dim is not None else {})
            labels = modality_label_file(modality_labels, config.name, seed) if modality_labels else None
            train = dataclasses.replace(
                base, model=config.model, seed=seed, model_overrides=overrides, modality_labels=labels
            )
            runs.append(PlannedRun(config, seed, train, out_dir / f"{config.name}-seed{seed}"))
    return runs


def modality_label_file(template: str, name: str, seed: int) -> str:
    """The modality-label file of one run: `template` with `{name}` and `{seed}` filled in, as an absolute path."""
    try:
        path = template.format(name=name, seed=seed)
    except (KeyError, IndexError, ValueError) as err:
        raise AvvpError(
            f"--modality-labels {template!r}: only {{name}} and {{seed}} can be filled in ({err})"
        ) from None
    return str(Path(path).resolve())


def check_modality_label_files(runs: Sequence[PlannedRun]) -> None:
    """Every run's modality-label file exists (before anything trains)."""
    files = sorted({run.train.modality_labels for run in runs if run.train.modality_labels})
    missing = [path for path in files if not Path(path).is_file()]
    if missing:
        raise AvvpError(f"--modality-labels: {len(missing)} file(s) not found: {', '.join(missing[:4])}")


# ----------------------------------------------------------------------------------------------------------------
# Run folders: finished, resumable or restarted


def _check_same_run(run: PlannedRun, features: Path, annotations: Path) -> list[str]:
    """Refuse a run folder made by another recipe, model or data: reusing it would mix results silently. Returns
    the settings that differ but are safe to change on resume (`SAFE_ON_RESUME`, e.g. a larger --epochs, never a
    smaller one): such a run continues from its last.pt under the sweep's settings.

    Models are compared by their resolved configs, so `mgn-3-3-6` of the depth sweep (assignments left at their
    defaults) is the same run as the Softmax / Softmax row of the assign sweep (assignments given).
    """
    stored = read_run_record(run.run_dir)
    if stored is None:
        return []
    expected = {"features": str(features), "annotations": str(annotations)}
    stored_train = stored.get("train", {})
    changed = [
        key
        for key, value in run.train.to_dict().items()
        if key != "model_overrides" and stored_setting(stored_train, key) != value
    ]
    fewer_epochs = "epochs" in changed and run.train.epochs < stored_train["epochs"]  # train would refuse it late
    safe = [key for key in changed if key in SAFE_ON_RESUME and not (key == "epochs" and fewer_epochs)]
    differences = [
        f"{key}={stored_setting(stored_train, key)!r} (sweep: {getattr(run.train, key)!r})"
        for key in changed
        if key not in safe
    ]
    model_config = config_to_dict(make_config(run.train.model, **run.train.model_overrides))
    stored_model = stored.get("model", {}).get("config")
    if stored_model != model_config:
        differences.append(f"model config {stored_model} (sweep: {model_config})")
    labels = run.train.modality_labels
    labels_hash = file_sha256(labels) if labels and Path(labels).is_file() else None
    if stored.get(LABELS_HASH) != labels_hash:
        differences.append(f"modality labels of SHA-256 {stored.get(LABELS_HASH)} (sweep: {labels_hash})")
    differences += [
        f"{key}={stored.get(key)!r} (sweep: {expected[key]!r})"
        for key in ("features", "annotations")
        if stored.get(key) != expected[key]
    ]
    if differences:
        raise AvvpError(
            f"{run.run_dir} was trained with {'; '.join(differences)}: use another --out for this sweep, or delete "
            "that folder"
        )
    return safe


def run_status(run: PlannedRun, features: Path, annotations: Path) -> str:
    """'done' (test_scores.json present), 'resume' (last.pt present), 'restart' (partial folder) or 'new'."""
    folder = run.run_dir
    if not folder.exists() or not any(folder.iterdir()):
        return "new"
    if _check_same_run(run, features, annotations):  # e.g. --epochs raised: a finished run trains on
        return "resume" if (folder / "last.pt").exists() else "restart"
    if (folder / "test_scores.json").exists():
        return "done"
    if (folder / "last.pt").exists():
        return "resume"
    return "restart"


# ----------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class SweepReport:
    """What a sweep did with each run."""

    reused: list[str] = dataclasses.field(default_factory=list)  # already finished
    trained: list[str] = dataclasses.field(default_factory=list)  # trained from scratch (including restarts)
    resumed: list[str] = dataclasses.field(default_factory=list)  # continued from last.pt
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # run name -> reason (and log path)


def worker_devices(devices: Sequence[str], workers: int | None) -> list[str]:
    """The device of each worker slot: one worker per device by default, or `workers` spread round-robin."""
    if not devices:
        raise AvvpError("no device to run on")
    count = len(devices) if workers is None else workers
    if count < 1:
        raise AvvpError(f"--workers {workers}: must be at least 1")
    return [devices[slot % len(devices)] for slot in range(count)]


def run_sweep(
    runs: Sequence[PlannedRun],
    *,
    features: str | Path,
    annotations: str | Path,
    slots: Sequence[str],
    progress: bool = True,
    stack: bool = False,
) -> SweepReport:
    """Train every unfinished run, on `slots` (one device per worker): in this process for one slot, else in worker
    processes (`avvp.workers`) with their logs in OUT/logs/. With `stack`, the unfinished seeds of each MGN row are
    one job, trained together as one stacked model (`avvp.training.train_stacked`). A failed job is reported and the
    others go on."""
    from avvp.utils import progress_bar

    features, annotations = Path(features).resolve(), Path(annotations).resolve()
    report = SweepReport()
    todo: list[tuple[PlannedRun, str]] = []
    for run in runs:  # check every folder first, so a mismatch stops the sweep before any training
        status = run_status(run, features, annotations)
        if status == "done":
            report.reused.append(run.name)
            PidLock(run.run_dir / TRAIN_LOCK, "another `avvp train`").remove_if_stale()  # a kill after its end
        else:
            todo.append((run, status))
    if report.reused:
        log.info("reusing %d finished run(s) in %s", len(report.reused), runs[0].run_dir.parent)
    out_dir = runs[0].run_dir.parent
    if not todo:  # a sweep killed after its last run left its lock: nothing else will remove it
        PidLock(out_dir / LOCK_NAME, "another sweep").remove_if_stale()
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(todo, stack, report)
    work = functools.partial(train_job, features=features, annotations=annotations)
    with PidLock(out_dir / LOCK_NAME, "another sweep"):
        bar = progress_bar(progress=progress, total=len(todo), desc="sweep", unit="run", position=0)

        def done(job: SweepJob, failures: dict[str, str] | None, reason: str | None) -> None:
            failures = {run.name: reason for run in job.runs} if reason is not None else failures or {}
            for name, why in failures.items():
                report.failed[name] = why
                log.error("%s failed: %s", name, why)
            bar.update(len(job.runs))

        if len(slots) == 1:
            for job in jobs:
                bar.set_postfix_str(job.name)
                log.info("%s: %s on %s", job.name, job.describe(), slots[0])
                try:
                    done(job, work(job, slots[0]), None)
                except AvvpError as err:
                    done(job, None, str(err))
        else:
            from avvp.workers import run_in_workers

            by_name = {job.name: job for job in jobs}
            entries = _job_logs(jobs, out_dir / "logs", features, annotations)
            threads = _threads_per_worker(len(slots))
            run_in_workers(entries, work, slots, threads, lambda name, *outcome: done(by_name[name], *outcome))
        bar.close()
    return report


@dataclass(frozen=True)
class SweepJob:
    """What a worker trains in one go: one run, or the seeds of one MGN row stacked."""

    runs: tuple[PlannedRun, ...]
    resume: tuple[bool, ...]  # per run: continue from its last.pt

    @property
    def name(self) -> str:
        if len(self.runs) == 1:
            return self.runs[0].name
        return f"{self.runs[0].config.name}-seed{'+'.join(str(run.seed) for run in self.runs)}"

    def describe(self) -> str:
        if len(self.runs) > 1:
            return f"training {len(self.runs)} runs stacked"
        return "resuming" if self.resume[0] else "training"


def make_jobs(todo: Sequence[tuple[PlannedRun, str]], stack: bool, report: SweepReport) -> list[SweepJob]:
    """One job per run, or with `stack` one per MGN row (its unfinished seeds); records each run as trained or
    resumed in `report`."""
    groups: dict[str, list[tuple[PlannedRun, str]]] = {}
    for run, status in todo:
        stacked = stack and get_spec(run.train.model).stackable
        groups.setdefault(run.config.name if stacked else run.name, []).append((run, status))
    jobs = []
    for group in groups.values():
        resume = tuple(_record_start(run, status, report) for run, status in group)
        jobs.append(SweepJob(tuple(run for run, _ in group), resume))
    return jobs


def _record_start(run: PlannedRun, status: str, report: SweepReport) -> bool:
    """Returns whether the run resumes from last.pt (a partial folder without it is cleared by `train`)."""
    if status == "restart":  # `train` clears the folder itself, under the folder's lock
        log.info("%s: unfinished and without last.pt; starting it again", run.name)
    resume = status == "resume"
    (report.resumed if resume else report.trained).append(run.name)
    return resume


def train_job(job: SweepJob, device: str, *, features: Path, annotations: Path) -> dict[str, str]:
    """Train a job: a single run as `avvp train` would (raising AvvpError if it fails), several together with
    `train_stacked`. If a stacked job stops on an error, its unfinished runs go on one at a time, so that one bad
    run fails alone; returns why each run that failed did (run name -> reason)."""
    from avvp.training import train, train_stacked

    def alone(run: PlannedRun, resume: bool) -> None:
        train(run.train, features=features, annotations=annotations, out_dir=run.run_dir, device=device, resume=resume)

    if len(job.runs) == 1:
        alone(job.runs[0], job.resume[0])
        return {}
    try:
        train_stacked([run.train for run in job.runs], features=features, annotations=annotations,
                      out_dirs=[run.run_dir for run in job.runs], device=device, resume=list(job.resume))  # fmt: skip
        return {}
    except AvvpError as err:
        log.warning("%s: stacked training stopped (%s); training its unfinished runs one at a time", job.name, err)
    failures = {}
    for run in job.runs:
        if (run.run_dir / "test_scores.json").exists():
            continue
        try:
            alone(run, (run.run_dir / "last.pt").exists())
        except AvvpError as err:
            failures[run.name] = str(err)
    return failures


def _job_logs(
    jobs: list[SweepJob], log_dir: Path, features: Path, annotations: Path
) -> list[tuple[str, SweepJob, Path]]:
    """(name, job, log path) of each job; each log starts with the commands that would train its runs alone."""
    log_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for job in jobs:
        log_path = log_dir / f"{job.name}.log"
        commands = [
            train_command(r, features, annotations, "DEVICE", resume) for r, resume in zip(job.runs, job.resume)
        ]
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write("".join(f"# alone: {' '.join(command)}\n" for command in commands))
        entries.append((job.name, job, log_path))
    return entries


def train_command(run: PlannedRun, features: Path, annotations: Path, device: str, resume: bool) -> list[str]:
    """The `python -m avvp train` command line of a run."""
    config = run.train
    command = [sys.executable, "-m", "avvp", "train", "--model", config.model]
    command += ["--features", str(features), "--annotations", str(annotations), "--out", str(run.run_dir)]
    command += ["--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--lr", repr(config.lr)]
    command += ["--lr-step", str(config.lr_step), "--lr-gamma", repr(config.lr_gamma), "--seed", str(config.seed)]
    command += ["--eval-batch-size", str(config.eval_batch_size), "--precision", config.precision]
    command += ["--device", device]
    if config.max_train_videos is not None:
        command += ["--max-train-videos", str(config.max_train_videos)]
    if config.patience is not None:
        command += ["--patience", str(config.patience), "--min-epochs", str(config.min_epochs)]
    for key, value in config.model_overrides.items():
        command += ["--model-arg", f"{key}={value}"]
    if not config.cross_modal:
        command.append("--no-cross-modal")
    for name, weight in config.loss_weights.items():
        command += ["--loss-weight", f"{name}={weight!r}"]
    if config.modality_labels is not None:
        command += ["--modality-labels", config.modality_labels]
    if resume:
        command.append("--resume")
    return command


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


# ----------------------------------------------------------------------------------------------------------------
# Results


def collect_rows(configs: Sequence[SweepConfig], runs: Sequence[PlannedRun]) -> list[ResultRow]:
    """One table row per configuration with the test scores of its finished runs (test_scores.json)."""
    rows = []
    for config in configs:
        seeds, segment, event = [], [], []
        mine = [run for run in runs if run.config == config]
        size = model_size(config.model, **_model_config(mine))
        for run in mine:
            path = run.run_dir / "test_scores.json"
            if not path.exists():
                continue
            try:
                scores = json.loads(path.read_text())
                segment.append(dict(scores["segment"]))
                event.append(dict(scores["event"]))
            except (OSError, json.JSONDecodeError, KeyError) as err:
                raise AvvpError(f"{path}: not a test_scores.json of avvp train ({err})") from err
            seeds.append(run.seed)
        rows.append(ResultRow(config.method, config.settings, size, tuple(seeds), tuple(segment), tuple(event)))
    return rows


def _model_config(runs: Sequence[PlannedRun]) -> dict[str, Any]:
    """The model configuration of a row: that of its finished runs (their config.json, so that `--table-only`
    counts the sizes of the models trained, whatever its own --dim), else the one planned."""
    stored = []
    for run in runs:
        record = read_run_record(run.run_dir) if (run.run_dir / "test_scores.json").exists() else None
        if record is not None and isinstance(record.get("model", {}).get("config"), dict):
            stored.append(record["model"]["config"])
    if any(config != stored[0] for config in stored):
        raise AvvpError(f"the runs of {runs[0].config.name} were trained with different model settings")
    return stored[0] if stored else dict(runs[0].train.model_overrides)


def collect_run_summaries(runs: Sequence[PlannedRun]) -> list[RunSummary]:
    """The finished runs' epochs, best epoch and validation curve (metrics.jsonl) and test Type@AV."""
    summaries = []
    for run in runs:
        scores_path, metrics_path = run.run_dir / "test_scores.json", run.run_dir / "metrics.jsonl"
        if not scores_path.exists():
            continue
        try:
            scores = json.loads(scores_path.read_text())
            records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            val = tuple(float(record["val"]["segment"]["type"]) for record in records)
            summary = RunSummary(
                run.name, len(val), bool(scores.get("stopped_early")), int(scores["best_epoch"]), val,
                float(scores["segment"]["type"]),
            )  # fmt: skip
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise AvvpError(f"{run.run_dir}: not a finished run of avvp train ({err})") from err
        summaries.append(summary)
    return summaries


def write_tables(
    out_dir: str | Path,
    kind: str,
    rows: Sequence[ResultRow],
    seeds: Sequence[int],
    *,
    recipe: dict[str, Any] | None = None,
    summaries: Sequence[RunSummary] = (),
) -> tuple[Path, Path]:
    """Write OUT/table.md (segment level, the paper's layout, with an event-level table below and, given
    `summaries`, one line per run showing its convergence) and OUT/table.csv; `recipe` (the `train` record of
    sweep.json) is stated under the title where given."""
    from avvp.reports.tables import csv_table, markdown_table, runs_table

    out_dir = Path(out_dir)
    title = "Table 1: CUG and MCG depths" if kind == "depth" else "Table 2: Softmax or Hard-Softmax assignment"
    seed_list = f"seed {seeds[0]} (one seed: no ±)" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    lines = [
        f"# {title}",
        "",
        (
            f"Test split, segment level, mean ± sample std over {seed_list}; best mean per "
            "column in bold. Model Size: float32 MB (10^6 bytes) and exact parameter counts."
        ),
        "",
    ]
    if recipe:
        lines += [f"Recipe: {describe_recipe(recipe)}.", ""]
    lines += [markdown_table(rows, level="segment")]
    incomplete = [
        f"{_row_label(row)} ({len(row.seeds)} of {len(seeds)})" for row in rows if len(row.seeds) < len(seeds)
    ]
    if incomplete:
        lines += [f"Rows with fewer finished seeds: {'; '.join(incomplete)}.", ""]
    lines += ["## Event level", "", markdown_table(rows, level="event")]
    if summaries:
        lines += [
            "## Runs",
            "",
            (
                "Whether each run reached a plateau: its validation segment-level Type@AV over the last four epochs "
                "it trained, their gain (their best minus the best before them), and its test Type@AV (of the best "
                "epoch)."
            ),
            "",
            runs_table(summaries),
        ]
    md_path, csv_path = out_dir / "table.md", out_dir / "table.csv"
    atomic_write_text(md_path, "\n".join(lines))
    atomic_write_text(csv_path, csv_table(rows))
    return md_path, csv_path


def describe_recipe(train: dict[str, Any]) -> str:
    """The training recipe of a sweep in words, from its sweep.json `train` record."""
    videos = train.get("max_train_videos")
    epochs = train["epochs"]
    parts = [
        f"{'all' if videos is None else f'the first {videos:,}'} training videos",
        f"at most {epochs} epoch{'' if epochs == 1 else 's'}, batch {train['batch_size']}, Adam {train['lr']:g}",
        f"StepLR x{train['lr_gamma']:g} every {train['lr_step']} epochs",
    ]
    if train.get("patience"):
        parts.append(f"early stopping after {train['patience']} epochs without a better val Type@AV, counted from "
                     f"the later of the best epoch and epoch {train.get('min_epochs', 0)}")  # fmt: skip
    if train.get("modality_labels"):
        parts.append(f"p_a and p_v trained on the modality labels {train['modality_labels']}")
    parts.append(f"precision {train.get('precision', 'auto')}; the best val epoch is tested")
    return ", ".join(parts)


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None where it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_sweep_recipe(out_dir: str | Path, runs: Sequence[PlannedRun] = ()) -> dict[str, Any] | None:
    """The `train` record of OUT/sweep.json, or None where there is none (or it cannot be read); a precision of
    'auto' is completed with what the finished `runs` resolved it to (their config.json), e.g. 'auto (fp32)'."""
    try:
        recipe = dict((_read_json(Path(out_dir) / "sweep.json") or {})["train"])
    except (KeyError, TypeError, ValueError):
        return None
    used = {(read_run_record(run.run_dir) or {}).get("precision") for run in runs if run.run_dir.is_dir()} - {None}
    if recipe.get("precision") == "auto" and used:
        recipe["precision"] = f"auto ({', '.join(sorted(used))})"
    return recipe


def _row_label(row: ResultRow) -> str:
    return f"{row.method} " + ", ".join(f"{title} {cell}" for title, cell in row.settings)


def write_sweep_record(
    out_dir: Path,
    kind: str,
    runs: Sequence[PlannedRun],
    features: Path,
    annotations: Path,
    modality_labels: str | None = None,
) -> None:
    """OUT/sweep.json: what the sweep is made of, for people and scripts looking at the folder later. Its run list
    keeps the runs of earlier commands on the same folder (other --configs or --seeds) and adds these;
    `modality_labels` is the sweep's --modality-labels as given (a template)."""
    planned = [{"name": run.name, "config": run.config.name, "seed": run.seed} for run in runs]
    earlier = (_read_json(out_dir / "sweep.json") or {}).get("runs", [])
    names = {entry["name"] for entry in planned}
    kept = [e for e in earlier if isinstance(e, dict) and e.get("name") not in names and "config" in e]
    record = {
        "kind": kind,
        "features": str(features),
        "annotations": str(annotations),
        "runs": kept + planned,
        "train": runs[0].train.to_dict()
        | {"model": None, "seed": None, "model_overrides": None, "modality_labels": modality_labels},
    }
    atomic_write_text(out_dir / "sweep.json", json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Test predictions of a finished run (for per-class recall)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's config.json (written by `avvp train`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise AvvpError(f"{run_dir}: no config.json; not a run folder of avvp train")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AvvpError(f"{path}: not valid JSON ({err})") from err


def _data_path(run_dir: Path, path: str | Path, flag: str) -> Path:
    """A run's data path, which must exist (else: pass `flag`)."""
    path = Path(path)
    if not path.exists():
        raise AvvpError(f"{run_dir}: its data {path} does not exist (moved?); pass {flag}")
    return path


def run_test_predictions(
    run_dir: str | Path,
    *,
    device: str = "cpu",
    features: str | Path | None = None,
    annotations: str | Path | None = None,
):
    """Scores of a run's best checkpoint on test, predicting once and caching RUN_DIR/test_pred.npz.

    The features and annotations are those recorded in the run's config.json unless given (data moved). The cache
    is used while it is newer than best.safetensors; a run folder without weights (kept by `avvp results`) is
    scored from its cache alone, without features.

    Returns:
        (split, scores): the test `Split` and the `Scores` of the cached predictions.
    """
    from avvp.data.annotations import load_split
    from avvp.inference import predict_videos, save_predictions
    from avvp.scoring import score_predictions

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint, cache = run_dir / "best.safetensors", run_dir / TEST_PREDICTIONS
    annotations = _data_path(run_dir, annotations or config["annotations"], "--annotations")
    split = load_split(annotations, "test")
    if not checkpoint.is_file():  # kept results (`avvp results`): the cached predictions alone
        if not cache.is_file():
            raise AvvpError(
                f"{run_dir}: neither best.safetensors nor {TEST_PREDICTIONS} (a run that has not finished an epoch, "
                "or results kept without predictions: `avvp results --predictions CONFIG`)"
            )
        return split, score_predictions(cache, split)
    if not cache.exists() or cache.stat().st_mtime < checkpoint.stat().st_mtime:
        features = _data_path(run_dir, features or config["features"], "--features")
        log.info("%s: predicting the test split with best.safetensors", run_dir)
        predictions = predict_videos(checkpoint, features, split.filenames, device=device)
        save_predictions(cache, split.filenames, predictions)
    return split, score_predictions(cache, split)
