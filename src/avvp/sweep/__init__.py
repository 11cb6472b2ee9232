"""Sweeps that reproduce the MGN paper's tables, or compare registered models: many training runs, resumable, on one
or several devices.

`avvp sweep depth` trains HAN and the six MGN depth configurations of Table 1, `avvp sweep assign` the four
Softmax / Hard-Softmax combinations of Table 2, `avvp sweep models` registered models (a plugin's too) at their
default configurations, each for several seeds. Every run is an ordinary `avvp train`
run folder, OUT/<config>-seed<k>/, so a sweep is resumable by looking at the folders:

- test_scores.json present: the run is finished and reused;
- last.pt present (a run killed after at least one epoch): it continues from last.pt (`train(..., resume=True)`);
- anything else (killed before its first epoch ended): the folder is deleted and the run starts again.

A run folder whose config.json disagrees with the sweep (other epochs, seed, model, data ...) is never reused
silently: the sweep stops and says so. With one worker the runs train in this process; with several (`--workers N`
or `--devices a,b`) in worker processes (`avvp.workers`), each bound to one device and taking one run after another,
with each run's log in OUT/logs/; the workers import the modules of the models registered outside avvp
(`registry.plugin_modules`) before their first run. With `--stack`, the seeds of each row of a stackable model (MGN)
train together as one stacked model.

On a cluster, `--only RUN` trains one run of the sweep in its own process (several at once in one folder, each
under its run folder's lock) and `--print-commands` prints that command for every unfinished run, for a
scheduler's array job (`cluster`).

The parts: `definitions` (the rows of each kind), `plan` (runs and the state of their folders), `runner` (training
them), `cluster` (one run per process), `report` (the tables), `record` (OUT/sweep.json) and `predictions` (a
finished run's cached test predictions).
"""

from avvp.sweep.cluster import only_commands, select_run, train_only
from avvp.sweep.definitions import (
    ASSIGN_TITLES,
    SWEEP_KINDS,
    TABLE_TITLES,
    SweepConfig,
    assign_configs,
    depth_configs,
    model_configs,
    sweep_configs,
)
from avvp.sweep.plan import PlannedRun, check_run_files, plan_runs, run_file, run_status
from avvp.sweep.predictions import TEST_PREDICTIONS, read_run_config, run_test_predictions
from avvp.sweep.record import read_sweep_recipe, write_sweep_record
from avvp.sweep.report import collect_rows, collect_run_summaries, describe_recipe, write_tables
from avvp.sweep.runner import (
    LOCK_NAME,
    SweepJob,
    SweepReport,
    make_jobs,
    run_sweep,
    train_command,
    train_job,
    worker_devices,
)

__all__ = [
    "ASSIGN_TITLES",
    "LOCK_NAME",
    "SWEEP_KINDS",
    "TABLE_TITLES",
    "TEST_PREDICTIONS",
    "PlannedRun",
    "SweepConfig",
    "SweepJob",
    "SweepReport",
    "assign_configs",
    "check_run_files",
    "collect_rows",
    "collect_run_summaries",
    "depth_configs",
    "describe_recipe",
    "make_jobs",
    "model_configs",
    "only_commands",
    "plan_runs",
    "read_run_config",
    "read_sweep_recipe",
    "run_file",
    "run_status",
    "run_sweep",
    "run_test_predictions",
    "select_run",
    "sweep_configs",
    "train_command",
    "train_job",
    "train_only",
    "worker_devices",
    "write_sweep_record",
    "write_tables",
]
