"""The run folder and last.pt: opening a run folder (new, resumed or emptied after a kill), resuming from last.pt
(repairing a best checkpoint a kill left behind), the run record (config.json), metrics.jsonl, test_scores.json and
the saved training state with every process's random streams.

Files are written atomically (metrics.jsonl lines appended and synced), so that a killed run resumes exactly
(docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avvp import __version__, faults
from avvp.checkpoint import safe_torch_load, save_checkpoint, saved_epoch
from avvp.data.modality_labels import file_sha256
from avvp.distributed import fail_together, gather
from avvp.errors import AvvpError
from avvp.metrics import Scores
from avvp.models.registry import config_to_dict, spec_of
from avvp.run_folder import (
    LABELS_HASH,
    NOISE_HASH,
    PidLock,
    clear_partial_run,
    compare_runs,
    foreign_files,
    read_run_record,
)
from avvp.training.run import Run, Standing
from avvp.utils import atomic_torch_save, atomic_write_text, output_path, remove_stale_temporaries, write_error

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"  # held in the run folder while a process writes it
STACKED_NOISE = "one drop-path/dropout/Gumbel stream shared by these runs"  # config.json's note of stacked runs
STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "best_epoch", "best_val_type")  # of last.pt
# (last.pt also holds "stopped": the run ended by early stopping; absent in states of older versions)


# ------------------------------------------------------------------------------------------------ opening


def _claim_run_folder(
    out_dir: Path, record: dict[str, Any], resume: bool, standing: Standing, held: contextlib.ExitStack
) -> bool:
    """Create the run folder, take its lock (into `held`) and decide from what it holds whether the run is new or
    resumed (`_open_run_folder`); the main process's part of the set-up."""
    _make_run_folder(out_dir)
    held.enter_context(PidLock(out_dir / LOCK_NAME, "another `avvp train`"))
    remove_stale_temporaries(out_dir)  # left by a process killed while writing (it logs what it removes)
    return _open_run_folder(out_dir, record, resume, standing)


def _open_run_folder(out_dir: Path, record: dict[str, Any], resume: bool, standing: Standing) -> bool:
    """Create the run folder or check what it holds (under its lock); returns whether to resume from last.pt.

    A folder with last.pt resumes (with --resume) only under the same configuration, safe settings aside
    (`avvp.run_folder.SAFE_ON_RESUME`: recorded in `standing.resumed_changes`). A folder killed before its first
    checkpoint that holds only run files of the same configuration is emptied and the run starts again."""
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
        standing.resumed_changes = safe
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


# ------------------------------------------------------------------------------------------------ resuming


def _resume(run: Run, standing: Standing) -> None:
    """Restore the weights, optimiser, schedule, random streams and best epoch from last.pt."""
    state = _read_state(run.state_path)
    epoch = state["epoch"]
    if epoch > run.config.epochs:
        raise AvvpError(f"{run.out_dir} has trained {epoch} epochs already; --epochs {run.config.epochs} is fewer")
    _restore_learner(run, state)
    standing.start_epoch, standing.best_epoch, standing.best_type = (
        epoch + 1,
        state["best_epoch"],
        state["best_val_type"],
    )
    standing.last_epoch, standing.stopped = epoch, bool(state.get("stopped", False))
    if run.ctx.is_main:
        _tidy_resumed_folder(run, standing)
    log.info("resuming %s at epoch %d (best so far: epoch %d)", run.out_dir, standing.start_epoch, standing.best_epoch)


def _restore_learner(run: Run, state: dict[str, Any]) -> None:
    """The weights, optimiser, schedule and random streams of last.pt; one clear error where they do not fit."""
    learner = run.learner
    try:
        learner.model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AvvpError(f"{run.state_path} does not fit this model and optimiser ({first})") from None
    _set_rng_state(state["rng"], run)


def _tidy_resumed_folder(run: Run, standing: Standing) -> None:
    """The main process's part of a resume: stale test scores go, a stopped run says so, a best checkpoint a kill
    left behind is written again, and metric lines of epochs to be trained again are dropped."""
    if not standing.stopped and standing.start_epoch <= run.config.epochs:
        (run.out_dir / "test_scores.json").unlink(missing_ok=True)  # a finished run trained on (--epochs raised)
    if standing.stopped:
        print(f"{run.out_dir} stopped early after epoch {standing.last_epoch}; nothing left to train", flush=True)
    if standing.best_epoch == standing.last_epoch:
        _repair_best(run, standing.last_epoch)
    _truncate_metrics(run.metrics_path, standing.start_epoch)


def _repair_best(run: Run, epoch: int) -> None:
    """A kill after last.pt but before best.safetensors of its epoch leaves an older best (best.json may already
    be the new one: it is renamed first): the weights just loaded are the best ones, so both are written again.
    The epoch is read from the record inside best.safetensors, the file the test and users load."""
    if saved_epoch(run.out_dir / "best.safetensors") != epoch:
        lines = run.metrics_path.read_text().splitlines() if run.metrics_path.exists() else []
        records = [json.loads(line) for line in lines if _epoch_of(line) == epoch]
        val = records[-1]["val"] if records else None
        metadata = {"epoch": epoch, "val": val, "train": run.config.to_dict()}
        save_checkpoint(run.out_dir / "best.safetensors", run.learner.model, metadata=metadata)
        log.warning("%s: best.safetensors of epoch %d was not written; written again from last.pt", run.out_dir, epoch)


def _read_state(path: Path) -> dict[str, Any]:
    """last.pt, loaded without running any pickled code; one clear error for anything else."""
    if path.stat().st_size == 0:
        raise AvvpError(f"{path}: empty; not a training state (delete it to start the run again)")
    state = safe_torch_load(path)  # on the CPU; loading into the model and optimiser moves it to the device
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise AvvpError(f"{path}: not a training state written by avvp train (no {', '.join(missing)})")
    return state


# ------------------------------------------------------------------------------------------------ the run record


def _run_record(run: Run) -> dict[str, Any]:
    """What config.json says about the run (with modality labels, also their file's SHA-256)."""
    record = {
        "avvp_version": __version__,
        "train": run.config.to_dict(),
        "model": {"name": run.config.model, "config": config_to_dict(run.learner.model.config)},
        "model_module": spec_of(run.learner.model).module,
        "features": str(run.sources.features.resolve()),
        "annotations": str(run.sources.annotations.resolve()),
        "device": str(run.device),
        "precision": run.precision,
        "world_size": run.ctx.world_size,
        "train_videos": run.data.videos,
    }
    if run.config.modality_labels is not None:
        record[LABELS_HASH] = file_sha256(run.config.modality_labels)
    if run.config.noise_ratios is not None:
        record[NOISE_HASH] = file_sha256(run.config.noise_ratios)
    return record


def _write_run_record(
    run: Run, standing: Standing, record: dict[str, Any], resumed: bool, stacked_with: Sequence[str]
) -> None:
    """config.json: how the run is trained, and the runs it is stacked with; a resumed run keeps its history of
    safe changes (adding this one's) and, trained alone now, the note of the runs it was stacked with before."""
    stored = (read_run_record(run.out_dir) or {}) if resumed else {}
    history = stored.get("resumed", [])
    stacked = {"runs": list(stacked_with), "noise": STACKED_NOISE} if stacked_with else stored.get("stacked")
    if stacked:
        record["stacked"] = stacked
    if standing.resumed_changes:
        history = [*history, {"after_epoch": standing.start_epoch - 1, "changed": standing.resumed_changes}]
    if history:
        record["resumed"] = history
    atomic_write_text(run.out_dir / "config.json", json.dumps(record, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ per epoch


def _save_state(run: Run, standing: Standing, epoch: int, best: dict[str, Any] | None) -> None:
    """last.pt: everything `--resume` needs to continue exactly (every process's random stream included); then,
    where `epoch` is the best so far (`best`: its record), best.safetensors. A failed write on the main process
    stops every process."""
    rng = _rng_state(run)
    with fail_together(run.ctx):
        if not run.ctx.is_main:
            return
        learner = run.learner
        state = {
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": learner.scheduler.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "best_epoch": standing.best_epoch,
            "best_val_type": standing.best_type,
            "stopped": standing.stopped,
        }
        atomic_torch_save(state, run.state_path)
        if best is not None:  # after last.pt: a kill between the two is repaired on resume
            save_checkpoint(run.out_dir / "best.safetensors", learner.model, metadata=best)


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


def _write_test_scores(run: Run, standing: Standing, scores: Scores) -> None:
    """test_scores.json: the best epoch's test scores, which epoch that was (from best.json) and how the run ended."""
    meta = json.loads((run.out_dir / "best.json").read_text()).get("metadata", {})
    payload = {
        "segment": scores.segment,
        "event": scores.event,
        "best_epoch": meta.get("epoch"),
        "last_epoch": standing.last_epoch,  # the last epoch trained
        "stopped_early": standing.stopped,
    }
    atomic_write_text(run.out_dir / "test_scores.json", json.dumps(payload, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ random streams


def _rng_state(run: Run) -> dict[str, Any]:
    """The shuffle generator's state and every process's torch (and CUDA) random state, by rank."""
    local = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(run.device)
    by_rank = gather(local, run.ctx)
    state = {"shuffle": run.learner.shuffle.get_state(), "torch": [s["torch"] for s in by_rank]}
    if "cuda" in local:
        state["cuda"] = [s["cuda"] for s in by_rank]
    return state


def _set_rng_state(state: dict[str, Any], run: Run) -> None:
    run.learner.shuffle.set_state(state["shuffle"])
    torch.set_rng_state(_for_rank(state["torch"], run))
    if run.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_for_rank(state["cuda"], run), run.device)


def _for_rank(states: list[torch.Tensor] | torch.Tensor, run: Run) -> torch.Tensor:
    """This process's saved random state (a single tensor in files written before states were kept per rank)."""
    if isinstance(states, torch.Tensor):
        return states
    if len(states) != run.ctx.world_size:
        raise AvvpError(
            f"{run.state_path} was written by {len(states)} process(es); resume it with as many, "
            f"not {run.ctx.world_size}"
        )
    return states[run.ctx.rank]
