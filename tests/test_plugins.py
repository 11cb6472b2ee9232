"""A third model from outside the package (tests/plugins/avvp_toy_plugin.py), found through AVVP_PLUGINS, runs
through every command that takes a model: train, --resume, predict, evaluate, refine-labels, sweep models with two
workers, plot recall and models; and from Python: avvp.list_models and avvp.load_model of its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

import avvp
from avvp.errors import AvvpError
from avvp.models import registry

PLUGIN_DIR = Path(__file__).parent / "plugins"
PLUGIN = "avvp_toy_plugin"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy_plugin(monkeypatch: pytest.MonkeyPatch):
    """AVVP_PLUGINS naming the toy plugin, its folder on the path (worker processes get both), and the registry as
    it was before, afterwards."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    sys.modules.pop(PLUGIN, None)  # imported anew, so that it registers into this registry
    yield
    sys.modules.pop(PLUGIN, None)


def _data(tiny: Path) -> list[str]:
    return ["--features", str(tiny / "feats"), "--annotations", str(tiny), "--device", "cpu"]


def _train(capsys, tiny: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    common = ["--batch-size", "8", "--epochs", "2", "--model-arg", "hidden=16"]
    return cli(capsys, "train", "--model", "toy", "--out", out, *_data(tiny), *common, *extra)


def test_a_plugin_model_runs_through_every_command(toy_plugin, tiny_llp: Path, tmp_path: Path, capsys) -> None:
    status, out, _ = cli(capsys, "models")
    toy = [line for line in out.splitlines() if line.startswith("  toy ")]
    assert (
        status == 0 and len(toy) == 1 and "TOY: Linear segment classifiers" in toy[0] and f"(plugin {PLUGIN})" in toy[0]
    )
    assert "hidden=64" in out

    run = tmp_path / "run"
    status, out, err = _train(capsys, tiny_llp, run)
    assert status == 0, err
    record = json.loads((run / "config.json").read_text())
    assert record["model"] == {"name": "toy", "config": {"hidden": 16}} and record["model_module"] == PLUGIN
    assert record["train"]["model_overrides"] == {"hidden": 16}
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert set(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["loss"]) == {"p_av", "p_a", "p_v",
                                                                                             "total"}  # fmt: skip

    status, out, err = _train(capsys, tiny_llp, run, "--resume", "--epochs", "3")
    assert status == 0, err
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    checkpoint = run / "best.safetensors"
    pred = tmp_path / "pred.npz"
    status, _, err = cli(capsys, "predict", "--checkpoint", checkpoint, "--features", tiny_llp / "feats",
                         "--list", tiny_llp / "AVVP_test_pd.csv", "--out", pred, "--device", "cpu")  # fmt: skip
    assert status == 0, err
    status, out, err = cli(
        capsys, "evaluate", "--checkpoint", checkpoint, *_data(tiny_llp), "--json", tmp_path / "s.json"
    )
    assert status == 0, err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["segment"] == json.loads((run / "test_scores.json").read_text())["segment"]  # the best epoch's

    labels = tmp_path / "labels.csv"
    status, out, err = cli(capsys, "refine-labels", "--checkpoint", checkpoint, *_data(tiny_llp), "--out", labels)
    assert status == 0, err
    assert "refined by TOY" in out and labels.is_file()

    figure = tmp_path / "recall.png"
    status, _, err = cli(capsys, "plot", "recall", run, "--out", figure, "--device", "cpu")
    assert status == 0, err
    assert figure.stat().st_size > 1000

    # From Python: the registry lists it, and its checkpoint loads as the model trained (its scores included).
    assert avvp.list_models()[:3] == ["mgn", "han", "toy"]
    model = avvp.load_model(checkpoint)
    assert type(model).__name__ == "ToyMIL" and model.name == "toy" and model.config.hidden == 16
    predictions = avvp.predict(model, tiny_llp / "feats", videos=_test_names(tiny_llp))
    stored = np.load(pred)
    for key in ("video", "audio", "visual"):
        np.testing.assert_array_equal(predictions[key], stored[key])
    assert avvp.evaluate(predictions, tiny_llp, "test").segment == scores["segment"]


def _test_names(tiny: Path) -> list[str]:
    return [line.split("\t")[0] for line in (tiny / "AVVP_test_pd.csv").read_text().splitlines()[1:]]


def test_sweep_models_trains_a_plugin_model_beside_han_in_two_workers(
    toy_plugin, tiny_llp: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "models", "--configs", "han,toy", "--out", out, *_data(tiny_llp), "--seeds", "1,2"]
    args += ["--epochs", "1", "--batch-size", "8", "--dim", "16", "--workers", "2"]
    status, _, err = cli(capsys, *args)
    assert status == 0, err
    assert {p.name for p in out.iterdir() if p.is_dir() and p.name != "logs"} == {
        "han-seed1", "han-seed2", "toy-seed1", "toy-seed2"
    }  # fmt: skip
    assert all((out / name / "test_scores.json").is_file() for name in ("han-seed1", "toy-seed2"))
    table = (out / "table.md").read_text()
    assert "| TOY " in table and "| HAN " in table


def test_a_checkpoint_of_a_plugin_that_is_not_loaded_is_one_clear_error(
    toy_plugin, tiny_llp: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert _train(capsys, tiny_llp, run, "--epochs", "1")[0] == 0
    env = {key: value for key, value in os.environ.items() if key != registry.PLUGINS_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "avvp", "evaluate", "--checkpoint", str(run / "best.safetensors"), *_data(tiny_llp)],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"comes from the plugin module '{PLUGIN}', which is not loaded" in lines[0]
    assert f"{registry.PLUGINS_ENV}={PLUGIN}" in lines[0]


def test_unknown_model_and_plugin_errors_are_one_line(monkeypatch, tiny_llp: Path, tmp_path: Path, capsys) -> None:
    status, _, err = cli(capsys, "train", "--model", "vit", "--out", tmp_path / "r", *_data(tiny_llp))
    assert status == 2 and err.count("\n") == 1
    assert "unknown model 'vit'; registered: mgn, han" in err
    assert not (tmp_path / "r").exists()

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setenv(registry.PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(AvvpError, match=r"\$AVVP_PLUGINS: cannot import the plugin module 'no_such_plugin_module'"):
        avvp.list_models()


def test_an_installed_packages_entry_point_registers_its_model(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """A package declaring `[project.entry-points."avvp.models"]` is found without AVVP_PLUGINS; a broken entry
    point is a warning, not the end of every command."""
    from importlib.metadata import EntryPoint

    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, PLUGIN, raising=False)
    points = [EntryPoint("toy", PLUGIN, registry.ENTRY_POINT_GROUP), EntryPoint("gone", "no_such_module", "x")]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: points if group == "avvp.models" else [])
    assert avvp.list_models() == ["mgn", "han", "toy"]
    assert "the avvp.models entry point gone (no_such_module) failed to load" in caplog.text
    sys.modules.pop(PLUGIN, None)


def test_a_model_is_recorded_under_the_module_that_registered_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """What worker processes and printed commands import is the module that called register_model, not the module
    of its factory (a plugin may register a class defined elsewhere, or name it lazily)."""
    from avvp.models import HANConfig

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    avvp.register_model("han-elsewhere", config=HANConfig, factory="avvp.models.han:HAN")
    assert registry.get_spec("han-elsewhere").module == __name__
    assert __name__ in registry.plugin_modules()
