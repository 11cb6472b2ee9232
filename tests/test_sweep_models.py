"""`avvp sweep models`: registered models at their default configurations, one row each, resumable; a model
registered from Python (not through $AVVP_PLUGINS) is known to the sweep's worker processes too."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from avvp.cli import main
from avvp.models import registry
from avvp.sweep import plan_runs, sweep_configs
from avvp.training import TrainConfig

PLUGIN = '''
"""A plugin model for the tests: HAN's network under another name, registered by importing this module."""
import dataclasses

from avvp.models import HANConfig, register_model


@dataclasses.dataclass(frozen=True)
class PlugConfig(HANConfig):
    """HAN's settings."""


def build(config):
    from avvp.models.han import HAN

    return HAN(config)


register_model("plughan", config=PlugConfig, factory=build, title="PlugHAN", about="HAN under another name")
'''


def _sweep(tiny_llp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", "models", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(out),
        "--epochs", "1", "--dim", "8", "--max-train-videos", "16", "--seeds", "1", "--device", "cpu", *extra,
    ]  # fmt: skip


def _table_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on sys.path that registers 'plughan' when imported, and imported here, from Python: not named by
    $AVVP_PLUGINS, so a spawned worker knows the model only if the sweep tells it to import the module. The
    registry is restored afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "sweep_test_plugin.py").write_text(PLUGIN)
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "sweep_test_plugin", raising=False)
    import sweep_test_plugin  # noqa: F401 (registers the model)

    yield "sweep_test_plugin"
    sys.modules.pop("sweep_test_plugin", None)


def test_models_rows_are_the_named_models_at_their_defaults():
    han, mgn = sweep_configs("models", ["han", "mgn", "han"])
    assert (han.name, han.method, han.model, han.overrides, han.settings) == ("han", "HAN", "han", {}, ())
    assert (mgn.name, mgn.method, mgn.model) == ("mgn", "MGN", "mgn")
    assert [config.name for config in sweep_configs("models")] == registry.list_models()


def test_dim_leaves_a_model_without_a_dim_setting_at_its_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    @dataclasses.dataclass(frozen=True)
    class NoDim:
        hidden: int = 4

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model("nodim", config=NoDim, factory=lambda config: None)
    runs = plan_runs(sweep_configs("models", ["han", "nodim"]), [1], tmp_path, TrainConfig(), dim=8)
    assert [(run.name, run.train.model_overrides) for run in runs] == [("han-seed1", {"dim": 8}), ("nodim-seed1", {})]


def test_sweep_models_trains_each_model_then_reuses_the_finished_runs(tiny_llp: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    args = _sweep(tiny_llp, out, "--configs", "han,mgn")
    assert main(args) == 0
    assert "0 run(s) reused, 2 trained, 0 resumed, 0 failed" in capsys.readouterr().out
    for name in ("han-seed1", "mgn-seed1"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["model"]["config"]["dim"] == 8 and (out / name / "test_scores.json").is_file(), name
    mgn = json.loads((out / "mgn-seed1" / "config.json").read_text())["model"]["config"]
    assert {key: value for key, value in mgn.items() if key != "dim"} == {
        key: value for key, value in registry.config_to_dict(registry.make_config("mgn")).items() if key != "dim"
    }  # the defaults: no override but --dim
    rows = _table_rows(out)
    assert list(rows[0])[:4] == ["method", "size_mb", "parameters", "released_size_mb"]  # no configuration columns
    assert [(row["method"], row["seeds"]) for row in rows] == [("HAN", "1"), ("MGN", "1")]
    table = (out / "table.md").read_text()
    assert table.startswith("# Registered models at their default configurations\n")
    assert "| Method | Model Size (MB) | Parameters | Audio | Visual |" in table
    assert "| HAN | " in table and "| MGN | " in table
    record = json.loads((out / "sweep.json").read_text())
    assert record["kind"] == "models" and [run["config"] for run in record["runs"]] == ["han", "mgn"]

    kept = {name: (out / name / "test_scores.json").stat().st_mtime_ns for name in ("han-seed1", "mgn-seed1")}
    assert main(args) == 0
    assert "2 run(s) reused, 0 trained, 0 resumed, 0 failed" in capsys.readouterr().out
    assert {name: (out / name / "test_scores.json").stat().st_mtime_ns for name in kept} == kept

    # `avvp results` keeps the sweep; its table is rewritten from the kept folder alone
    dest = tmp_path / "kept"
    assert main(["results", str(out), "--to", str(dest), "--predictions", "mgn"]) == 0
    assert (dest / "mgn-seed1" / "test_pred.npz").is_file() and not (dest / "han-seed1" / "test_pred.npz").exists()
    (dest / "table.md").unlink()
    assert main(["sweep", "models", "--out", str(dest), "--configs", "han,mgn", "--seeds", "1", "--table-only"]) == 0
    assert (dest / "table.md").read_text() == table


def test_an_unknown_model_is_one_error_line_listing_the_registered_ones(tiny_llp: Path, tmp_path: Path, capsys):
    assert main(_sweep(tiny_llp, tmp_path / "sweep", "--configs", "han,nosuch")) == 2
    err = capsys.readouterr().err.strip()
    registered = ", ".join(registry.list_models())  # mgn, han
    assert "\n" not in err and f"--configs: unknown model nosuch; registered: {registered} " in err, err
    assert not (tmp_path / "sweep").exists()


def test_workers_know_a_model_registered_from_python(plugin_module: str, tiny_llp: Path, tmp_path: Path, capsys):
    """Two worker processes train the plugin's model and MGN: the workers import the plugin's module first."""
    assert plugin_module in registry.plugin_modules()
    out = tmp_path / "sweep"
    assert main(_sweep(tiny_llp, out, "--configs", "plughan,mgn", "--workers", "2")) == 0, capsys.readouterr().err
    assert [(row["method"], row["seeds"]) for row in _table_rows(out)] == [("PlugHAN", "1"), ("MGN", "1")]
    config = json.loads((out / "plughan-seed1" / "config.json").read_text())
    assert config["model"]["name"] == "plughan"
    log = (out / "logs" / "plughan-seed1.log").read_text()
    assert f"# alone: {registry.PLUGINS_ENV}={plugin_module} " in log and "--model plughan" in log


def test_stack_stacks_the_seeds_of_the_stackable_models_only(tiny_llp: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    assert main(_sweep(tiny_llp, out, "--configs", "mgn,han", "--seeds", "1,2", "--stack")) == 0
    for seed in (1, 2):
        mgn = json.loads((out / f"mgn-seed{seed}" / "config.json").read_text())
        assert mgn["stacked"]["runs"] == ["mgn-seed1", "mgn-seed2"]
        assert "stacked" not in json.loads((out / f"han-seed{seed}" / "config.json").read_text())
    assert [(row["method"], row["seeds"]) for row in _table_rows(out)] == [("MGN", "1;2"), ("HAN", "1;2")]
