"""Sweeps on a cluster: one run of a sweep per process (`avvp sweep KIND ... --only RUN`), and the commands that
train each unfinished run that way (`--print-commands`), for a scheduler's array job on many machines.

Each `--only` process holds its run folder's lock (`RUN/.train.lock`, the one `avvp train` takes) from the check
of the folder to the end of its training; there is no sweep-wide lock, so any number of them work in one sweep
folder at once, and a second one on the same run stops with one line naming the holder's pid and host. The lock
of a process on another machine is never taken over (`avvp.utils.PidLock`). OUT/sweep.json is written by
`--print-commands` (and by a plain sweep); an `--only` process writes it only where there is none, never over
another's. `--only` trains and prints what it did; `--table-only` collects the finished runs into the tables.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from avvp.errors import AvvpError
from avvp.models import registry
from avvp.run_folder import PidLock
from avvp.sweep.plan import PlannedRun, run_status
from avvp.training import LOCK_NAME as TRAIN_LOCK
from avvp.training import TrainConfig

log = logging.getLogger(__name__)

ONLY_HOLDER = "another `avvp train` or `avvp sweep --only`"
# TrainConfig fields a sweep sets per run
PER_RUN = ("model", "seed", "model_overrides", "modality_labels", "noise_ratios")


def select_run(runs: Sequence[PlannedRun], name: str) -> PlannedRun:
    """The run of the sweep named `name` (its folder's name, e.g. mgn-3-3-6-seed2); any other name is one error
    line listing a few of the sweep's runs."""
    for run in runs:
        if run.name == name:
            return run
    names = [run.name for run in runs]
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    raise AvvpError(
        f"--only {name}: not a run of this sweep; its runs (<config>-seed<k>, from --configs and --seeds): {shown}"
    )


def train_only(run: PlannedRun, *, features: Path, annotations: Path, device: str) -> str:
    """Train one run of a sweep in this process, with a sweep's rules (a finished run is reused, a killed one
    resumes from its last.pt or starts again, a folder of another recipe is refused), under the run folder's lock
    held from the check of the folder to the end of the training. Returns 'reused', 'trained' or 'resumed'."""
    from avvp.training import train

    try:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvvpError(f"cannot create the run folder {run.run_dir}: {err.strerror or err}") from None
    with PidLock(run.run_dir / TRAIN_LOCK, ONLY_HOLDER):
        status = run_status(run, features, annotations)  # again, under the lock: another process may have trained it
        if status == "done":
            return "reused"
        if status == "restart":  # `train` clears the folder itself
            log.info("%s: unfinished and without last.pt; starting it again", run.name)
        train(run.train, features=features, annotations=annotations, out_dir=run.run_dir, device=device,
              resume=status == "resume")  # fmt: skip
    return "resumed" if status == "resume" else "trained"


def only_commands(
    kind: str,
    runs: Sequence[PlannedRun],
    todo: Sequence[PlannedRun],
    *,
    features: Path,
    annotations: Path,
    dim: int | None = None,
    modality_labels: str | None = None,
    noise_ratios: str | None = None,
    device: str | None = None,
) -> list[str]:
    """One shell command line per run of `todo`: `avvp sweep KIND ... --only RUN` with every setting of the sweep
    `runs` (absolute paths, so that it runs from any folder), prefixed with the $AVVP_PLUGINS that finds its models
    where it is set or where a model of the sweep comes from a plugin. `device` (as given, unresolved: the
    machine that runs the command resolves 'auto') is carried where given."""
    base = runs[0].train
    flags = ["--features", str(Path(features).resolve()), "--annotations", str(Path(annotations).resolve())]
    flags += ["--out", str(runs[0].run_dir.parent.resolve())]
    flags += ["--configs", ",".join(dict.fromkeys(run.config.name for run in runs))]
    flags += ["--seeds", ",".join(str(seed) for seed in dict.fromkeys(run.seed for run in runs))]
    flags += ["--epochs", str(base.epochs), "--batch-size", str(base.batch_size), "--lr", repr(base.lr)]
    flags += ["--lr-step", str(base.lr_step), "--lr-gamma", repr(base.lr_gamma), "--precision", base.precision]
    for name, weight in base.loss_weights.items():
        flags += ["--loss-weight", f"{name}={weight!r}"]
    if base.max_train_videos is not None:
        flags += ["--max-train-videos", str(base.max_train_videos)]
    if base.patience is not None:
        flags += ["--patience", str(base.patience), "--min-epochs", str(base.min_epochs)]
    if dim is not None:
        flags += ["--dim", str(dim)]
    if modality_labels is not None:
        flags += ["--modality-labels", str(Path(modality_labels).absolute())]  # a template: {name} stays
    if noise_ratios is not None:
        flags += ["--noise-ratios", str(Path(noise_ratios).absolute())]
    flags += ["--denoise-from-epoch", str(base.denoise_from_epoch)]
    if device is not None:
        flags += ["--device", device]
    _check_carried(base)
    prefix = plugins_prefix(runs)
    command = [sys.executable, "-m", "avvp", "sweep", kind, *flags]
    return [" ".join(prefix + [shlex.quote(word) for word in [*command, "--only", run.name]]) for run in todo]


def _check_carried(base: TrainConfig) -> None:
    """The flags of `only_commands` give the sweep's whole recipe: no setting `avvp sweep` has no flag for."""
    carried = TrainConfig(
        epochs=base.epochs, batch_size=base.batch_size, lr=base.lr, lr_step=base.lr_step, lr_gamma=base.lr_gamma,
        precision=base.precision, max_train_videos=base.max_train_videos, patience=base.patience,
        min_epochs=base.min_epochs, loss_weights=dict(base.loss_weights), denoise_from_epoch=base.denoise_from_epoch,
    )  # fmt: skip
    lost = [
        key
        for key, value in base.to_dict().items()
        if key not in PER_RUN and carried.to_dict()[key] != value  # e.g. eval_batch_size, set from Python
    ]
    if lost:
        raise AvvpError(
            f"the sweep's {', '.join(lost)}: `avvp sweep` has no flag for them, so no command can carry them"
        )


def plugins_prefix(runs: Sequence[PlannedRun]) -> list[str]:
    """`AVVP_PLUGINS=...` (one shell word) naming the modules of $AVVP_PLUGINS and those that register the
    sweep's models outside avvp (`registry.plugin_modules`, a model registered from Python too); [] where none."""
    outside = set(registry.plugin_modules())
    modules = registry.plugin_modules_from_env()
    for model in dict.fromkeys(run.train.model for run in runs):
        spec = registry.get_spec(model)
        if spec.builtin:
            continue
        if spec.module not in outside:  # registered in the script that runs the sweep: no command can import it
            raise AvvpError(
                f"model {model} is registered in {spec.module}, which another process cannot import: move it into a "
                f"module and name that module in ${registry.PLUGINS_ENV}"
            )
        modules.append(spec.module)
    modules = list(dict.fromkeys(modules))
    return [f"{registry.PLUGINS_ENV}={shlex.quote(','.join(modules))}"] if modules else []
