"""predict / evaluate / pack end to end on tiny data: file formats, pack == folder, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp.checkpoint import save_checkpoint
from avvp.cli import main
from avvp.models import create_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("mgn", dim=32, depth_audio=1, depth_visual=1, depth_av=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, metadata={"note": "test"})
    return path


@pytest.fixture(scope="module")
def packs(tiny_llp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packs")
    assert main(["pack", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(out)]) == 0
    return out


def _predict(checkpoint: Path, features: Path, tiny: Path, out: Path) -> dict[str, np.ndarray]:
    args = ["predict", "--checkpoint", str(checkpoint), "--features", str(features)]
    assert main([*args, "--list", str(tiny / "AVVP_test_pd.csv"), "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def test_predict_writes_score_format(tiny_llp: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    pred = _predict(tiny_checkpoint, tiny_llp / "feats", tiny_llp, tmp_path / "pred.npz")
    count = len((tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()) - 1
    assert pred["filenames"].shape == (count,)
    for key in ("audio", "visual"):
        assert pred[key].shape == (count, 10, 25) and pred[key].dtype == np.float32
    for key in ("video", "audio_video", "visual_video"):
        assert pred[key].shape == (count, 25)
        assert np.all((pred[key] >= 0) & (pred[key] <= 1))
    json_out = tmp_path / "scores.json"
    args = ["score", str(tmp_path / "pred.npz"), "--split", "test", "--annotations", str(tiny_llp)]
    assert main([*args, "--json", str(json_out)]) == 0
    scores = json.loads(json_out.read_text())
    assert set(scores) == {"segment", "event"}


def test_evaluate_equals_predict_then_score(tiny_llp: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    _predict(tiny_checkpoint, tiny_llp / "feats", tiny_llp, tmp_path / "pred.npz")
    args = ["score", str(tmp_path / "pred.npz"), "--split", "test", "--annotations", str(tiny_llp)]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--features", str(tiny_llp / "feats")]
    assert main([*args, "--split", "test", "--annotations", str(tiny_llp), "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())


def test_pack_and_folder_predict_identically(tiny_llp: Path, tiny_checkpoint: Path, packs: Path, tmp_path: Path):
    assert sorted(p.name for p in packs.iterdir()) == ["test.pack", "train.pack", "val.pack"]
    from_folder = _predict(tiny_checkpoint, tiny_llp / "feats", tiny_llp, tmp_path / "a.npz")
    from_packs = _predict(tiny_checkpoint, packs, tiny_llp, tmp_path / "b.npz")
    from_one_pack = _predict(tiny_checkpoint, packs / "test.pack", tiny_llp, tmp_path / "c.npz")
    for key in ("audio", "visual", "video", "audio_video", "visual_video"):
        np.testing.assert_array_equal(from_folder[key], from_packs[key])
        np.testing.assert_array_equal(from_folder[key], from_one_pack[key])


def test_pack_holds_pooled_features_and_is_safetensors(tiny_llp: Path, packs: Path) -> None:
    from safetensors.numpy import load_file

    from avvp.data.annotations import read_weak_labels, video_id
    from avvp.data.features import load_features

    ids = [video_id(f) for f in read_weak_labels(tiny_llp / "AVVP_val_pd.csv").filenames]
    arrays = load_file(packs / "val.pack")  # any safetensors reader can open a pack
    raw = load_features(tiny_llp / "feats", ids)
    np.testing.assert_array_equal(arrays["audio"], raw.audio)
    np.testing.assert_allclose(arrays["res152"], raw.res152.reshape(-1, 10, 8, 2048).mean(axis=2), rtol=1e-6)
    assert arrays["res152"].shape == (len(ids), 10, 2048)


def test_float16_pack_is_close(tiny_llp: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    pack = tmp_path / "test16.pack"
    args = ["pack", "--features", str(tiny_llp / "feats"), "--list", str(tiny_llp / "AVVP_test_pd.csv")]
    assert main([*args, "--out", str(pack), "--float16"]) == 0
    exact = _predict(tiny_checkpoint, tiny_llp / "feats", tiny_llp, tmp_path / "a.npz")
    approx = _predict(tiny_checkpoint, pack, tiny_llp, tmp_path / "b.npz")
    np.testing.assert_allclose(exact["audio"], approx["audio"], atol=2e-2)


def test_predict_errors_are_one_line(tiny_llp: Path, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "feats"
    for sub in ("vggish", "res152", "r2plus1d_18"):
        (bad / sub).mkdir(parents=True)
        for f in (tiny_llp / "feats" / sub).iterdir():
            (bad / sub / f.name).write_bytes(f.read_bytes())
    victim = max((bad / "res152").iterdir())
    np.save(victim, np.zeros((10, 2048), np.float32))  # wrong shape
    args = ["predict", "--checkpoint", str(tiny_checkpoint), "--features", str(bad), "--device", "cpu"]
    status = main([*args, "--list", str(tiny_llp / "AVVP_dataset_full.csv"), "--out", str(tmp_path / "p.npz")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # earlier lines are progress bars
    assert status == 2 and "Traceback" not in err
    assert last.startswith("avvp predict: error:") and victim.stem in last and "shape" in last
    assert not (tmp_path / "p.npz").exists()

    truncated = tmp_path / "broken.pack"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    args = ["predict", "--checkpoint", str(tiny_checkpoint), "--features", str(truncated), "--device", "cpu"]
    assert main([*args, "--list", str(tiny_llp / "AVVP_test_pd.csv"), "--out", str(tmp_path / "q.npz")]) == 2
    assert "broken.pack" in capsys.readouterr().err
