"""Running a sweep's unfinished runs: in this process on one device, or in worker processes (`avvp.workers`), one
per device slot, with each job's log in OUT/logs/; with `--stack`, the seeds of a stackable row as one job."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avvp.errors import AvvpError
from avvp.models import registry
from avvp.run_folder import PidLock
from avvp.sweep.cluster import plugins_prefix, train_only
from avvp.sweep.plan import PlannedRun, run_status
from avvp.training import LOCK_NAME as TRAIN_LOCK

log = logging.getLogger(__name__)

LOCK_NAME = ".sweep.lock"


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
    processes (`avvp.workers`, which first import the modules of the models registered outside avvp) with their logs
    in OUT/logs/. With `stack`, the unfinished seeds of each row of a stackable model (its registry spec) are one
    job, trained together as one stacked model (`avvp.training.train_stacked`). A failed job is reported and the
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
            run_in_workers(
                entries, work, slots, threads, lambda name, *outcome: done(by_name[name], *outcome),
                # models registered here from Python, not through $AVVP_PLUGINS, are unknown to a spawned worker
                initializer=registry.import_modules, initargs=(registry.plugin_modules(),),
            )  # fmt: skip
        bar.close()
    return report


@dataclass(frozen=True)
class SweepJob:
    """What a worker trains in one go: one run, or the seeds of one row of a stackable model (MGN) stacked."""

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
    """One job per run, or with `stack` one per row of a stackable model (its unfinished seeds); records each run as
    trained or resumed in `report`."""
    groups: dict[str, list[tuple[PlannedRun, str]]] = {}
    for run, status in todo:
        stacked = stack and registry.get_spec(run.train.model).stackable
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
    from avvp.training import train_stacked

    def alone(run: PlannedRun) -> None:
        # Checked again under the run's lock: an `--only` process may have trained it since the sweep planned it.
        train_only(run, features=features, annotations=annotations, device=device)

    if len(job.runs) == 1:
        alone(job.runs[0])
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
            alone(run)
        except AvvpError as err:
            failures[run.name] = str(err)
    return failures


def _job_logs(
    jobs: list[SweepJob], log_dir: Path, features: Path, annotations: Path
) -> list[tuple[str, SweepJob, Path]]:
    """(name, job, log path) of each job; each log starts with the commands that would train its runs alone (a
    plugin's model with the $AVVP_PLUGINS that finds it)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for job in jobs:
        log_path = log_dir / f"{job.name}.log"
        try:
            plugin = plugins_prefix(job.runs)
        except AvvpError:  # a model registered in the script that runs the sweep: no command line can import it
            plugin = []
        commands = [
            plugin + train_command(r, features, annotations, "DEVICE", resume)
            for r, resume in zip(job.runs, job.resume)
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
    if config.noise_ratios is not None:
        command += ["--noise-ratios", config.noise_ratios]
    command += ["--denoise-from-epoch", str(config.denoise_from_epoch)]
    if resume:
        command.append("--resume")
    return command


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
