"""A sweep's runs: one per (row, seed), each an `avvp train` run folder OUT/<row>-seed<k>/, and what state each
folder is in (finished, resumable, to restart, or made by another recipe and refused)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avvp.data.modality_labels import file_sha256
from avvp.denoise import check_supported as check_denoise_supported
from avvp.denoise import read_noise_ratios
from avvp.errors import AvvpError
from avvp.models.registry import config_fields, config_to_dict, get_spec, make_config
from avvp.objective import resolve_weights
from avvp.run_folder import LABELS_HASH, NOISE_HASH, SAFE_ON_RESUME, read_run_record, stored_setting
from avvp.sweep.definitions import SweepConfig
from avvp.training import TrainConfig

log = logging.getLogger(__name__)

# The files a sweep gives each run (a TrainConfig field, a path): the flag, its content's hash in config.json
# (compared on reuse) and what it is, in words.
RUN_FILES = {
    "modality_labels": ("--modality-labels", LABELS_HASH, "modality labels"),
    "noise_ratios": ("--noise-ratios", NOISE_HASH, "noise ratios"),
}


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
    noise_ratios: str | None = None,
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
            row, e.g. han or mgn-3-3-6) and `{seed}`, e.g. labels/{name}-seed{seed}.csv (see `run_file`).
        noise_ratios: JoMoLD's NOISE.json for every run (`base.denoise_from_epoch` on), or a template as
            `modality_labels`.

    Raises AvvpError, before anything trains, for a loss weight (`base.loss_weights`) naming no term of a model of
    the sweep, and for noise ratios given to a model that cannot be denoised.
    """
    if not seeds:
        raise AvvpError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise AvvpError(f"--seeds {','.join(map(str, seeds))}: a seed is listed twice")
    models = {config.model for config in configs}
    for model in sorted(models):
        resolve_weights(model, base.loss_weights)
    with_dim = {model for model in models if "dim" in config_fields(get_spec(model))}
    if dim is not None and models - with_dim:
        log.info("--dim: %s without a 'dim' setting, trained at the default", ", ".join(sorted(models - with_dim)))
    out_dir = Path(out_dir)
    runs = []
    for seed in seeds:
        for config in configs:
            overrides = dict(config.overrides) | ({"dim": dim} if dim is not None and config.model in with_dim else {})
            files = {
                field: run_file(RUN_FILES[field][0], template, config.name, seed) if template else None
                for field, template in (("modality_labels", modality_labels), ("noise_ratios", noise_ratios))
            }
            train = dataclasses.replace(base, model=config.model, seed=seed, model_overrides=overrides, **files)
            if train.noise_ratios is not None:
                check_denoise_supported(train)
            runs.append(PlannedRun(config, seed, train, out_dir / f"{config.name}-seed{seed}"))
    return runs


def run_file(flag: str, template: str, name: str, seed: int) -> str:
    """The file of one run that `flag` (--modality-labels, --noise-ratios) gives: `template` with `{name}` and
    `{seed}` filled in, as an absolute path."""
    try:
        path = template.format(name=name, seed=seed)
    except (KeyError, IndexError, ValueError) as err:
        raise AvvpError(f"{flag} {template!r}: only {{name}} and {{seed}} can be filled in ({err})") from None
    return str(Path(path).resolve())


def check_run_files(runs: Sequence[PlannedRun]) -> None:
    """Every run's modality-label and noise-ratio files exist, and the noise ratios are valid (before anything
    trains); one error line naming the flag and the first files missing."""
    for field, (flag, _, _) in RUN_FILES.items():
        files = sorted({getattr(run.train, field) for run in runs if getattr(run.train, field)})
        missing = [path for path in files if not Path(path).is_file()]
        if missing:
            raise AvvpError(f"{flag}: {len(missing)} file(s) not found: {', '.join(missing[:4])}")
        if field == "noise_ratios":
            for path in files:
                read_noise_ratios(path)


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
    for field, (_, hash_key, what) in RUN_FILES.items():
        path = getattr(run.train, field)
        digest = file_sha256(path) if path and Path(path).is_file() else None
        if stored.get(hash_key) != digest:
            differences.append(f"{what} of SHA-256 {stored.get(hash_key)} (sweep: {digest})")
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
