"""The committed results (docs/results) redraw the committed tables and figures exactly, without weights or data:
`avvp sweep KIND --table-only` and the `avvp plot` commands of docs/results/figures/commands.json, run on a copy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from avvp.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SWEEPS = sorted(str(path.parent.relative_to(RESULTS)) for path in RESULTS.rglob("sweep.json"))  # those kept so far
COMMANDS = RESULTS / "figures" / "commands.json"
FIGURES = sorted(json.loads(COMMANDS.read_text())) if COMMANDS.exists() else []


@pytest.fixture(scope="module")
def results_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("results") / "results"
    shutil.copytree(RESULTS, copy)
    return copy


@pytest.mark.parametrize("name", SWEEPS)
def test_tables_regenerate_from_the_kept_runs(results_copy: Path, name: str) -> None:
    folder = results_copy / name
    assert not [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".pt")], "weights in docs/results"
    committed = {table: (folder / table).read_text() for table in ("table.md", "table.csv")}
    for table in committed:
        (folder / table).unlink()
    record = json.loads((folder / "sweep.json").read_text())  # the sweep's kind and rows (a sweep of some rows)
    configs = ",".join(dict.fromkeys(run["config"] for run in record["runs"]))
    assert main(["sweep", record["kind"], "--out", str(folder), "--configs", configs, "--table-only"]) == 0
    assert {name: (folder / name).read_text() for name in committed} == committed


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_regenerate_from_the_kept_runs(results_copy: Path, figure: str, monkeypatch) -> None:
    args = json.loads((results_copy / "figures" / "commands.json").read_text())[figure]
    out = Path(args[args.index("--out") + 1])
    committed = (results_copy / out.with_suffix(".csv")).read_text()
    (results_copy / out.with_suffix(".csv")).unlink()
    (results_copy / out).unlink()
    monkeypatch.chdir(results_copy)  # the commands name the kept folders relative to docs/results
    assert main(args) == 0
    assert (results_copy / out.with_suffix(".csv")).read_text() == committed
    assert (results_copy / out).stat().st_size > 0


def test_the_results_are_kept_and_stay_small() -> None:
    assert "depth" in SWEEPS, "docs/results/depth (avvp results of the depth sweep) is missing"
    assert {"recall", "tokens"} <= set(FIGURES), f"{COMMANDS} must draw Figures 1 and 2"
    for name in SWEEPS:
        assert os.path.isdir(RESULTS / name / "annotations"), f"docs/results/{name}/annotations is missing"
    total = sum(path.stat().st_size for path in RESULTS.rglob("*") if path.is_file())
    assert total < 20e6, f"docs/results holds {total / 1e6:.1f} MB; keep it under 20 MB"
