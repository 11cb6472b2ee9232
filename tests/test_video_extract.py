"""`avvp extract` on the real LLP video and on generated / broken videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("av")

from avvp.cli import main
from avvp.video.synthetic import write_synthetic_video
from avvp.video.vggish import build_vggish

FEATURE_SHAPES = {"vggish": (128,), "res152": (2048,), "r2plus1d_18": (512,)}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Random-initialised weight files in the published formats (two under published names, two plain)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), folder / "resnet152-394f9c45.pth")
    torch.save(torchvision.models.video.r2plus1d_18(weights=None).state_dict(), folder / "r2plus1d_18.pth")
    torch.save(build_vggish().state_dict(), folder / "vggish-10086976.pth")
    vectors, _ = torch.linalg.qr(torch.randn(128, 128))
    torch.save({"pca_eigen_vectors": vectors, "pca_means": torch.randn(128, 1)}, folder / "vggish_pca_params.pth")
    return folder


@pytest.fixture(scope="module")
def llp_extracted(llp_dir, weights_dir, tmp_path_factory):
    """Features of the real LLP video, extracted once with weight files (via a list file)."""
    work = tmp_path_factory.mktemp("llp_extract")
    video_list = work / "videos.txt"
    video_list.write_text(f"{llp_dir / 'BjCEufrlXm4.mp4'}\n")
    feats = work / "feats"
    status = main(
        ["extract", "--videos", str(video_list), "--out", str(feats), "--weights", str(weights_dir), "--no-progress"]
        + ["--device", "cpu"]
    )
    return status, video_list, feats


def _load(feats: Path, video_id: str) -> dict[str, np.ndarray]:
    return {folder: np.load(feats / folder / f"{video_id}.npy") for folder in FEATURE_SHAPES}


def test_llp_video_gives_official_shapes(llp_extracted):
    status, _, feats = llp_extracted
    assert status == 0
    features = _load(feats, "BjCEufrlXm4")
    assert features["vggish"].shape == (10, 128)
    assert features["res152"].shape == (80, 2048)
    assert features["r2plus1d_18"].shape == (10, 512)
    for array in features.values():
        assert array.dtype == np.float32 and np.isfinite(array).all()
    # PCA post-processing quantises to 8 bits, as the port does.
    audio = features["vggish"]
    assert audio.min() >= 0 and audio.max() <= 255 and np.array_equal(audio, np.round(audio))
    # Pooled after a ReLU, so non-negative; frames of a real video differ from each other.
    assert features["res152"].min() >= 0 and not np.allclose(features["res152"][0], features["res152"][-1])
    assert not (feats / "RANDOM_WEIGHTS.txt").exists()


def test_second_run_skips_done_videos(llp_extracted, weights_dir, capsys):
    _, video_list, feats = llp_extracted
    before = {p: p.stat().st_mtime_ns for p in feats.rglob("*.npy")}
    status = main(["extract", "--videos", str(video_list), "--out", str(feats), "--weights", str(weights_dir)])
    assert status == 0
    assert "0 extracted, 1 already done, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in feats.rglob("*.npy")} == before


def test_real_weights_refuse_a_random_weight_folder(llp_extracted, weights_dir, tmp_path, capsys):
    _, video_list, _ = llp_extracted
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "RANDOM_WEIGHTS.txt").write_text("random\n")
    assert main(["extract", "--videos", str(video_list), "--out", str(feats), "--weights", str(weights_dir)]) == 2
    assert "random-weight features" in capsys.readouterr().err


def test_bad_videos_are_reported_and_leave_nothing(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_synthetic_video(videos / "silent.mp4", 2.0, with_audio=False)
    (videos / "notavideo.mp4").write_bytes(b"this is not a video\n" * 50)
    full = write_synthetic_video(tmp_path / "long.mkv", 12.0)
    (videos / "cut.mkv").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # truncated download
    feats = tmp_path / "feats"
    status = main(
        ["extract", "--videos", str(videos), "--out", str(feats), "--random-weights", "--no-progress"]
        + ["--workers", "2"]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert "1 extracted, 0 already done, 2 failed" in captured.out
    assert "notavideo.mp4: not a readable video file" in captured.err
    assert "cut.mkv: truncated" in captured.err
    assert "RANDOM WEIGHTS" in captured.err
    assert "silent.mp4: no audio track; using silent audio" in captured.err
    # The silent video: 2 s -> 2 rows, 16 frames; silence gives one embedding repeated.
    features = _load(feats, "silent")
    assert [a.shape[0] for a in features.values()] == [2, 16, 2]
    assert all(a.shape[1:] == FEATURE_SHAPES[name] for name, a in features.items())
    np.testing.assert_array_equal(features["vggish"][0], features["vggish"][1])
    # Nothing at all from the bad ones, and no temporary files anywhere.
    written = sorted(p.relative_to(feats).as_posix() for p in feats.rglob("*") if p.is_file())
    assert written == ["RANDOM_WEIGHTS.txt", "r2plus1d_18/silent.npy", "res152/silent.npy", "vggish/silent.npy"]


def test_missing_weights_name_every_file_and_source(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AVVP_WEIGHTS", raising=False)
    video = write_synthetic_video(tmp_path / "clip.mp4", 1.0)
    status = main(
        ["extract", "--videos", str(tmp_path), "--out", str(tmp_path / "f"), "--weights", str(tmp_path / "no")]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    for name in ("resnet152.pth", "r2plus1d_18.pth", "vggish.pth", "vggish_pca_params.pth"):
        assert name in err
    assert "does not exist" in err and "torchvision's model zoo" in err and "torchvggish" in err
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet152.pth").write_bytes(b"")
    monkeypatch.setenv("AVVP_WEIGHTS", str(tmp_path / "weights"))
    assert main(["extract", "--videos", str(video), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "lacks r2plus1d_18.pth" in err and "resnet152.pth (or" not in err
    assert not (tmp_path / "f").exists()
