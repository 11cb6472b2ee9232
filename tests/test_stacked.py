"""Stacked training (`avvp.training.train_stacked`, `avvp sweep --stack`): several runs of one configuration trained
at once are the runs trained alone, up to float rounding, once the shared noise is taken out; a stacked group
resumes exactly; what cannot be stacked is refused with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_noise_ratios

from avvp.checkpoint import load_model
from avvp.cli import main
from avvp.errors import AvvpError
from avvp.models.layers import hard_softmax
from avvp.recipe import TrainConfig
from avvp.training import train, train_stacked

NOISE_FREE = {  # drop-path / dropout off; the Gumbel sampling of MGN's hard assignment is replaced below
    "mgn": {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 2, "drop_path": 0.0},
    "han": {"dim": 64, "dropout": 0.0},
}


def _config(model: str, seed: int, epochs: int = 3, overrides: dict | None = None) -> TrainConfig:
    overrides = NOISE_FREE[model] if overrides is None else overrides
    return TrainConfig(model=model, seed=seed, epochs=epochs, batch_size=8, lr=3e-3, model_overrides=overrides)


def _paths(tiny: Path) -> dict:
    return {"features": tiny / "feats", "annotations": tiny, "device": "cpu", "progress": False}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _flat(record: dict, prefix: str = "") -> dict:
    """A nested dict of numbers as one flat dict (pytest.approx compares flat ones)."""
    flat = {}
    for key, value in record.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _val_probabilities(run_dir: Path, tiny: Path) -> torch.Tensor:
    model, _ = load_model(run_dir / "best.safetensors")
    names = sorted(p.stem for p in (tiny / "feats" / "vggish").glob("*.npy"))[:8]
    import numpy as np

    feats = [
        torch.as_tensor(np.stack([np.load(tiny / "feats" / sub / f"{n}.npy") for n in names]))
        for sub in ("vggish", "res152", "r2plus1d_18")
    ]
    with torch.no_grad():
        output = model.eval()(*feats)
    return torch.cat([output.p_av, output.p_a, output.p_v, output.audio.flatten(1), output.visual.flatten(1)], 1)


@pytest.fixture
def no_gumbel_noise(monkeypatch):
    """Gumbel sampling replaced by its noise-free one-hot, in runs alone and stacked alike."""
    monkeypatch.setattr(F, "gumbel_softmax", lambda logits, tau=1.0, hard=True, dim=-1: hard_softmax(logits, dim))


@pytest.mark.parametrize("model", ["mgn", "han"])
def test_stacked_runs_equal_the_runs_trained_alone(tiny_llp, tmp_path, no_gumbel_noise, model) -> None:
    seeds = (1, 2)
    for seed in seeds:
        train(_config(model, seed), out_dir=tmp_path / f"alone{seed}", **_paths(tiny_llp))
    stacked_dirs = [tmp_path / f"stacked{seed}" for seed in seeds]
    results = train_stacked([_config(model, s) for s in seeds], out_dirs=stacked_dirs, **_paths(tiny_llp))
    for seed, stacked, result in zip(seeds, stacked_dirs, results):
        alone = tmp_path / f"alone{seed}"
        for a, b in zip(_metrics(alone), _metrics(stacked), strict=True):
            assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
            # float rounding differs (batched products), and Adam's normalised step and the hard assignment's
            # argmax amplify it: seen up to 6e-5 relative; a run fed another run's batches is off by ~1e-2
            assert b["loss"] == pytest.approx(a["loss"], rel=5e-4)
            assert _flat(b["val"]) == pytest.approx(_flat(a["val"]), abs=1e-6)
        assert _flat(json.loads((stacked / "test_scores.json").read_text())) == pytest.approx(
            _flat(json.loads((alone / "test_scores.json").read_text())), abs=1e-6
        )
        torch.testing.assert_close(
            _val_probabilities(stacked, tiny_llp), _val_probabilities(alone, tiny_llp), atol=1e-3, rtol=0
        )  # fmt: skip (seen: up to 1e-4)
        assert result.best_epoch == json.loads((alone / "best.json").read_text())["metadata"]["epoch"]
        stacked_record = json.loads((stacked / "config.json").read_text())["stacked"]
        assert stacked_record["runs"] == [d.name for d in stacked_dirs]


def test_the_seeds_of_a_stacked_group_stay_different(tiny_llp, tmp_path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    train_stacked([_config("mgn", 1, 1), _config("mgn", 2, 1)], out_dirs=dirs, **_paths(tiny_llp))
    assert _metrics(dirs[0])[0]["loss"] != _metrics(dirs[1])[0]["loss"]
    assert not torch.equal(_val_probabilities(dirs[0], tiny_llp), _val_probabilities(dirs[1], tiny_llp))


def test_a_stacked_group_resumes_exactly(tiny_llp, tmp_path) -> None:
    """With the noise on: the shared stream is restored from last.pt, so 2 + 1 epochs equal 3 straight."""
    overrides = {"dim": 32, "depth_audio": 1, "depth_visual": 1, "depth_av": 1, "unimodal_assign": "hard"}
    straight = [tmp_path / "s1", tmp_path / "s2"]
    resumed = [tmp_path / "r1", tmp_path / "r2"]
    configs = [_config("mgn", seed, 3, overrides) for seed in (1, 2)]
    train_stacked(configs, out_dirs=straight, **_paths(tiny_llp))
    short = [dataclasses.replace(c, epochs=2) for c in configs]
    train_stacked(short, out_dirs=resumed, **_paths(tiny_llp))
    train_stacked(configs, out_dirs=resumed, resume=[True, True], **_paths(tiny_llp))
    for a, b in zip(straight, resumed):
        assert [m["loss"] for m in _metrics(a)] == [m["loss"] for m in _metrics(b)]
        assert torch.equal(_val_probabilities(a, tiny_llp), _val_probabilities(b, tiny_llp))
    more = dataclasses.replace(configs[0], epochs=4)  # the first run, resumed alone, keeps its note
    train(more, out_dir=resumed[0], resume=True, **_paths(tiny_llp))
    assert json.loads((resumed[0] / "config.json").read_text())["stacked"]["runs"] == ["r1", "r2"]


def test_runs_saved_at_different_epochs_catch_up(tiny_llp, tmp_path, no_gumbel_noise) -> None:
    """Run 1 saved after epoch 2, run 2 after epoch 1: run 2 trains epoch 2 alone, then both epoch 3 stacked; the
    result equals each run trained straight through, alone (noise taken out)."""
    straight = [tmp_path / "straight1", tmp_path / "straight2"]
    dirs = [tmp_path / "a", tmp_path / "b"]
    for seed, run_dir in zip((1, 2), straight):
        train(_config("mgn", seed, 3), out_dir=run_dir, **_paths(tiny_llp))
    train(_config("mgn", 1, 2), out_dir=dirs[0], **_paths(tiny_llp))
    train(_config("mgn", 2, 1), out_dir=dirs[1], **_paths(tiny_llp))
    train_stacked([_config("mgn", 1, 3), _config("mgn", 2, 3)], out_dirs=dirs, resume=[True, True],
                  **_paths(tiny_llp))  # fmt: skip
    for run_dir, reference in zip(dirs, straight):
        metrics, expected = _metrics(run_dir), _metrics(reference)
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        stacked = json.loads((run_dir / "config.json").read_text())["stacked"]["runs"]
        assert stacked == ["a", "b"]
        for a, b in zip(expected, metrics, strict=True):
            assert a["lr"] == b["lr"] and b["loss"] == pytest.approx(a["loss"], rel=5e-4)
        assert (run_dir / "test_scores.json").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [({"lr": 1e-3}, "lr"), ({"model_overrides": {"dim": 64}}, "model_overrides"), ({"stream": True}, "stream")],
)
def test_runs_that_cannot_be_stacked_are_refused(tiny_llp, tmp_path, change, named) -> None:
    configs = [_config("mgn", 1, 1), dataclasses.replace(_config("mgn", 2, 1), **change)]
    if named == "stream":
        configs = [dataclasses.replace(c, stream=True) for c in configs]
    with pytest.raises(AvvpError, match=named):
        train_stacked(configs, out_dirs=[tmp_path / "a", tmp_path / "b"], **_paths(tiny_llp))
    assert not (tmp_path / "a").exists()


def _sweep(tiny: Path, out: Path, *extra: str) -> int:
    return main(["sweep", "depth", "--features", str(tiny / "feats"), "--annotations", str(tiny), "--out", str(out),
                 "--seeds", "1,2", "--epochs", "1", "--batch-size", "8", "--dim", "32", "--configs", "mgn-1-1-2",
                 "--device", "cpu", *extra])  # fmt: skip


def test_sweep_stack_trains_each_rows_seeds_together(tiny_llp, tmp_path, capsys) -> None:
    assert _sweep(tiny_llp, tmp_path / "sweep", "--stack") == 0
    for seed in (1, 2):
        run_dir = tmp_path / "sweep" / f"mgn-1-1-2-seed{seed}"
        assert (run_dir / "test_scores.json").exists()
        record = json.loads((run_dir / "config.json").read_text())
        assert record["stacked"]["runs"] == ["mgn-1-1-2-seed1", "mgn-1-1-2-seed2"]
    assert "mgn-1-1-2-seed2: epoch 1/1" in capsys.readouterr().out


def test_sweep_stack_trains_han_rows_one_run_at_a_time(tiny_llp, tmp_path) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "depth", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out",
                 str(out), "--seeds", "1,2", "--epochs", "1", "--batch-size", "8", "--dim", "64", "--configs", "han",
                 "--device", "cpu", "--stack"]) == 0  # fmt: skip
    for seed in (1, 2):
        record = json.loads((out / f"han-seed{seed}" / "config.json").read_text())
        assert "stacked" not in record and (out / f"han-seed{seed}" / "test_scores.json").exists()


def test_one_bad_run_of_a_stacked_row_fails_alone(tiny_llp, tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert _sweep(tiny_llp, out, "--seeds", "2") == 0  # _sweep's --seeds 1,2 is overridden: the last flag wins
    bad = out / "mgn-1-1-2-seed2"
    (bad / "test_scores.json").unlink()
    (bad / "last.pt").write_bytes(b"")  # a damaged state: resuming it fails
    assert _sweep(tiny_llp, out, "--stack") == 1
    assert (out / "mgn-1-1-2-seed1" / "test_scores.json").exists()
    err = capsys.readouterr().err
    assert f"avvp sweep: run mgn-1-1-2-seed2 failed: {bad / 'last.pt'}: empty" in err
    assert "run mgn-1-1-2-seed1 failed" not in err


def test_sweep_stack_with_two_workers_trains_each_row_in_one_worker(tiny_llp, tmp_path) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "depth", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out",
                 str(out), "--seeds", "1,2", "--epochs", "1", "--batch-size", "8", "--dim", "32", "--configs",
                 "mgn-1-1-2,mgn-2-2-4", "--device", "cpu", "--stack", "--workers", "2"]) == 0  # fmt: skip
    for row in ("mgn-1-1-2", "mgn-2-2-4"):
        log = (out / "logs" / f"{row}-seed1+2.log").read_text()
        assert f"{row}-seed2: epoch 1/1" in log and log.count("# alone: ") == 2
        for seed in (1, 2):
            record = json.loads((out / f"{row}-seed{seed}" / "config.json").read_text())
            assert record["stacked"]["runs"] == [f"{row}-seed1", f"{row}-seed2"]


def test_stacked_jomold_runs_equal_the_runs_trained_alone(tiny_llp, tmp_path, no_gumbel_noise) -> None:
    """Seed 1 denoised with one file, seed 2 with another and seed 3 not at all (its weak labels stacked beside the
    others' (weak, audio, visual) rows): each run ranks its own batches with its own model, so the removals are
    those of the run trained alone, and so are the losses and scores (up to float rounding)."""
    files = {
        1: write_noise_ratios(tmp_path / "n1.json", 0.5, 0.5),
        2: write_noise_ratios(tmp_path / "n2.json", 0.3, 0.8),
        3: None,
    }
    configs = [
        dataclasses.replace(_config("mgn", seed), noise_ratios=str(path) if path else None, denoise_from_epoch=1)
        for seed, path in files.items()
    ]
    for config in configs:
        train(config, out_dir=tmp_path / f"alone{config.seed}", **_paths(tiny_llp))
    stacked_dirs = [tmp_path / f"stacked{seed}" for seed in files]
    train_stacked(configs, out_dirs=stacked_dirs, **_paths(tiny_llp))
    for seed, stacked in zip(files, stacked_dirs):
        alone = _metrics(tmp_path / f"alone{seed}")
        for a, b in zip(alone, _metrics(stacked), strict=True):
            assert b.get("denoise") == a.get("denoise")  # the same labels removed, epoch by epoch
            assert b["loss"] == pytest.approx(a["loss"], rel=5e-4)
            assert _flat(b["val"]) == pytest.approx(_flat(a["val"]), abs=1e-6)
    removed = [sum(m["denoise"]["removed"].values()) for m in _metrics(stacked_dirs[0])]
    assert all(count > 0 for count in removed)  # the rule acted in every epoch
    assert "denoise" not in _metrics(stacked_dirs[2])[0]
    assert json.loads((stacked_dirs[1] / "config.json").read_text())["train"]["noise_ratios"] == str(files[2])


def test_sweep_stack_denoises_each_seed_with_its_own_file(tiny_llp, tmp_path) -> None:
    template = str(tmp_path / "noise" / "{name}-seed{seed}.json")
    (tmp_path / "noise").mkdir()
    for seed, ratio in ((1, 0.5), (2, 0.25)):
        write_noise_ratios(tmp_path / "noise" / f"mgn-1-1-2-seed{seed}.json", ratio, ratio)
    out = tmp_path / "sweep"
    assert _sweep(tiny_llp, out, "--stack", "--noise-ratios", template, "--denoise-from-epoch", "1") == 0
    for seed in (1, 2):
        run_dir = out / f"mgn-1-1-2-seed{seed}"
        record = json.loads((run_dir / "config.json").read_text())
        assert record["stacked"]["runs"] == ["mgn-1-1-2-seed1", "mgn-1-1-2-seed2"]
        assert record["train"]["noise_ratios"] == template.format(name="mgn-1-1-2", seed=seed)
        assert _metrics(run_dir)[0]["denoise"]["active"]
