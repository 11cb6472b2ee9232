"""`avvp parse` end to end: the real LLP video, a generated 23-s video, a short silent one, a broken file."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("av")

from avvp.checkpoint import save_checkpoint
from avvp.cli import main
from avvp.models import create_model
from avvp.parse import MODALITIES, VideoProbabilities, build_events
from avvp.video.synthetic import write_synthetic_video

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_mgn.safetensors"
    save_checkpoint(path, create_model("mgn", dim=32, depth_audio=1, depth_visual=1, depth_av=1))
    return path


def _parse(video, checkpoint, out, *extra):
    return main(
        ["parse", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--random-weights"] + list(extra)
    )


def _check_record(out, num_seconds):
    record = json.loads((out / "parse.json").read_text())
    assert (out / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    assert record["random_weights"] is True and record["num_seconds"] == num_seconds
    assert record["model"]["name"] == "mgn"
    segments = record["segment_probabilities"]
    assert {name: np.array(values).shape for name, values in segments.items()} == {
        name: (num_seconds, 25) for name in ("audio", "visual", "video_filter")
    }
    for event in record["events"]:
        assert set(event) == {"class", "modality", "onset", "offset", "confidence"}
        assert event["modality"] in MODALITIES and 0 <= event["onset"] < event["offset"] <= num_seconds
        assert 0.5 <= event["confidence"] <= 1
    # The events are exactly the parse rule applied to the probabilities the file reports.
    probs = VideoProbabilities(
        np.array(segments["audio"]),
        np.array(segments["visual"]),
        np.array(segments["video_filter"]),
        np.zeros(25),
        np.zeros(25),
        np.zeros(25),
    )
    rebuilt = [e.to_dict() for e in build_events(probs)]
    assert [(e["class"], e["modality"], e["onset"], e["offset"]) for e in rebuilt] == [
        (e["class"], e["modality"], e["onset"], e["offset"]) for e in record["events"]
    ]
    return record


def test_parse_the_real_llp_video(llp_dir, checkpoint, tmp_path, capsys):
    out = tmp_path / "parse"
    assert _parse(llp_dir / "BjCEufrlXm4.mp4", checkpoint, out, "--device", "cpu") == 0
    captured = capsys.readouterr()
    record = _check_record(out, 10)
    assert record["has_audio"] is True and abs(record["duration"] - 10.03) < 0.01
    assert record["windows"]["starts"] == [0]
    assert "RANDOM WEIGHTS" in captured.out and "RANDOM WEIGHTS" in captured.err
    assert f"{len(record['events'])} events" in captured.out


def test_parse_a_generated_23_second_video_in_windows(checkpoint, tmp_path, capsys):
    video = write_synthetic_video(tmp_path / "shapes_and_tones.mp4", 23.0)
    out = tmp_path / "parse"
    assert _parse(video, checkpoint, out) == 0
    record = _check_record(out, 23)
    assert record["windows"] == {"length": 10, "stride": 5, "starts": [0, 5, 10, 13]}
    assert "shapes_and_tones.mp4: 23.0 s" in capsys.readouterr().out


def test_parse_video_in_python_returns_what_the_cli_writes(checkpoint, tmp_path, capsys):
    from avvp.video.parse import parse_video
    from avvp.video.weights import WeightSource

    video = write_synthetic_video(tmp_path / "shapes_and_tones.mp4", 12.0)
    out = tmp_path / "parse"
    assert _parse(video, checkpoint, out, "--stride", "3", "--device", "cpu") == 0
    result = parse_video(video, checkpoint, weights=WeightSource(folder=None, random=True), stride=3)
    assert result.to_dict() == json.loads((out / "parse.json").read_text())
    assert result.window_starts == [0, 2] and result.probabilities.audio.shape == (12, 25)
    assert f"{len(result.events)} events" in capsys.readouterr().out


def test_parse_a_short_video_without_audio(checkpoint, tmp_path, capsys):
    video = write_synthetic_video(tmp_path / "mute.mp4", 4.0, with_audio=False)
    out = tmp_path / "parse"
    assert _parse(video, checkpoint, out, "--stride", "3") == 0
    record = _check_record(out, 4)
    assert record["has_audio"] is False and record["windows"]["starts"] == [0]
    captured = capsys.readouterr()
    assert "no audio track" in captured.err and "no audio track" in captured.out


def test_parse_a_broken_file_writes_nothing(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    out = tmp_path / "parse"
    assert _parse(broken, checkpoint, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("avvp parse: error: ") and "broken.mp4" in err[-1]
    assert not out.exists()
