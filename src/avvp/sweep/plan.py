"""A sweep's runs: one per (row, seed), each an `avvp train` run folder OUT/<row>-seed<k>/, and what state each
folder is in (finished, resumable, to restart, or made by another recipe and refused)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avvp.data.modality_labels import file_sha256
from avvp.errors import AvvpError
from avvp.models.registry import config_fields, config_to_dict, get_spec, make_config
from avvp.run_folder import LABELS_HASH, SAFE_ON_RESUME, read_run_record, stored_setting
from avvp.sweep.definitions import SweepConfig
from avvp.training import TrainConfig

log = logging.getLogger(__name__)


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
        dim: model width for every run instead of each model's default (smaller for quick trials); a model whose
            config has no `dim` field (a plugin's, say) keeps its defaults.
        modality_labels: a modality-label file for every run, or a template naming one per run with `{name}` (the
            row, e.g. han or mgn-3-3-6) and `{seed}`, e.g. labels/{name}-seed{seed}.csv (see `modality_label_file`).
    """
    if not seeds:
        raise AvvpError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise AvvpError(f"--seeds {','.join(map(str, seeds))}: a seed is listed twice")
    models = {config.model for config in configs}
    with_dim = {model for model in models if "dim" in config_fields(get_spec(model))}
    if dim is not None and models - with_dim:
        log.info("--dim: %s without a 'dim' setting, trained at the default", ", ".join(sorted(models - with_dim)))
    out_dir = Path(out_dir)
    runs = []
    for seed in seeds:
        for config in configs:
            overrides = dict(config.overrides) | ({"dim": dim} if dim is not None and config.model in with_dim else {})
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
    """'done' (test_scores.json present), 'resume' (last.pt present), 'restart' (partial folder) or 'new' (no
    folder, or one holding only hidden entries: a lock, as `train` counts them)."""
    folder = run.run_dir
    if not folder.exists() or not any(not entry.name.startswith(".") for entry in folder.iterdir()):
        return "new"
    if _check_same_run(run, features, annotations):  # e.g. --epochs raised: a finished run trains on
        return "resume" if (folder / "last.pt").exists() else "restart"
    if (folder / "test_scores.json").exists():
        return "done"
    if (folder / "last.pt").exists():
        return "resume"
    return "restart"
