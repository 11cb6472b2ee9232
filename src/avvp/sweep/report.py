"""A sweep's tables: one row per configuration from its finished runs' test scores, written as OUT/table.md (with
the event level and one line per run below) and OUT/table.csv."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError
from avvp.models import model_size
from avvp.reports.tables import ResultRow, RunSummary
from avvp.run_folder import read_run_record
from avvp.sweep.definitions import TABLE_TITLES, SweepConfig
from avvp.sweep.plan import PlannedRun
from avvp.utils import atomic_write_text


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
    title = TABLE_TITLES[kind] + _label_method(recipe or {})
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


def _label_method(train: dict[str, Any]) -> str:
    """The title's note of a label method the runs trained with (the table is then not the paper's)."""
    methods = [name for key, name in (("modality_labels", "modality labels"), ("noise_ratios", "JoMoLD denoising"))
               if train.get(key)]  # fmt: skip
    return f", with {' and '.join(methods)}" if methods else ""


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
    if train.get("loss_weights"):
        weights = ", ".join(f"{name} {weight:g}" for name, weight in train["loss_weights"].items())
        parts.append(f"loss weights {weights} (the other terms at their defaults)")
    if train.get("modality_labels"):
        parts.append(f"p_a and p_v trained on the modality labels {train['modality_labels']}")
    if train.get("noise_ratios"):
        parts.append(f"JoMoLD label denoising with the noise ratios {train['noise_ratios']} from epoch "
                     f"{train['denoise_from_epoch']}")  # fmt: skip
    parts.append(f"precision {train.get('precision', 'auto')}; the best val epoch is tested")
    return ", ".join(parts)


def _row_label(row: ResultRow) -> str:
    return " ".join([row.method, ", ".join(f"{title} {cell}" for title, cell in row.settings)]).rstrip()
