"""The one rule for model scores (`avvp.scoring.check_scores`): what a model of avvp or the authors' code writes is
never refused, by any command; what can only be a mistake (NaN, infinity, negative values, values above 2) is.

A confident MGN (its heads' biases set high, so p_a, p_v and p_av are ~1) gives segment scores above 1 by design:
the authors' soft map is 1 + softmax over time, so a segment score lies in [p, 2p). It goes through predict (in the
authors' checkpoint format), evaluate, score, parse, the plots and a tiny demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli
from reference_metrics import reference_evaluate, reference_parse

from avvp.checkpoint import export_official, save_checkpoint
from avvp.data.annotations import load_split
from avvp.data.splits import load_split_data
from avvp.errors import AvvpError
from avvp.models import create_model
from avvp.scoring import SCORE_MAX, check_scores
from avvp.training import score_split

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIDENT_BIAS = 8.0  # sigmoid(8) = 0.9997: every class present, segment scores up to ~2
TINY = {"dim": 16, "depth_audio": 1, "depth_visual": 1, "depth_av": 1}


def make_confident(model: torch.nn.Module) -> torch.nn.Module:
    """An MGN whose three heads say every class is present (p ~ 1)."""
    with torch.no_grad():
        for head in (model.av_head, model.audio_head, model.visual_head):
            head.bias.fill_(CONFIDENT_BIAS)
    return model


@pytest.fixture(scope="module")
def confident_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The same confident MGN as avvp's checkpoint and as the authors' MGN_Net.pt (Softmax/Softmax)."""
    torch.manual_seed(0)
    model = make_confident(create_model("mgn", **TINY)).eval()
    folder = tmp_path_factory.mktemp("confident")
    save_checkpoint(folder / "mgn.safetensors", model)
    export_official(model, folder / "MGN_Net.pt")
    return {"ours": folder / "mgn.safetensors", "official": folder / "MGN_Net.pt"}


def _predict(capsys, tiny_llp: Path, checkpoint: Path, out: Path) -> Path:
    args = ["predict", "--checkpoint", checkpoint, "--features", tiny_llp / "feats", "--list"]
    status, _, err = cli(capsys, *args, tiny_llp / "AVVP_test_pd.csv", "--out", out, "--device", "cpu")
    assert status == 0, err
    return out


def test_a_confident_mgn_scores_segments_above_1_by_design(tiny_llp, confident_checkpoints, capsys, tmp_path):
    pred = np.load(_predict(capsys, tiny_llp, confident_checkpoints["official"], tmp_path / "pred.npz"))
    p_a = pred["audio_video"][:, None, :]
    assert p_a.min() > 0.999 and pred["audio"].max() > 1.05  # the case this module is about
    assert (pred["audio"] >= p_a - 1e-6).all() and (pred["audio"] < 2 * p_a).all()  # p (1 + softmax) in [p, 2p)
    assert pred["audio"].max() <= SCORE_MAX


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_predict_evaluate_and_score_accept_a_confident_mgn(tiny_llp, confident_checkpoints, capsys, tmp_path, kind):
    checkpoint = confident_checkpoints[kind]
    pred = _predict(capsys, tiny_llp, checkpoint, tmp_path / "pred.npz")
    args = ["evaluate", "--checkpoint", checkpoint, "--features", tiny_llp / "feats", "--annotations", tiny_llp]
    status, _, err = cli(capsys, *args, "--device", "cpu", "--json", tmp_path / "evaluate.json")
    assert status == 0, err
    status, _, err = cli(capsys, "score", pred, "--annotations", tiny_llp, "--json", tmp_path / "score.json")
    assert status == 0, err
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    assert json.loads((tmp_path / "score.json").read_text()) == evaluated
    # The official parse (threshold 0.5) of those scores, computed by the spec-written reference.
    split = load_split(tiny_llp, "test")
    arrays = np.load(pred)
    audio, visual = reference_parse(arrays["audio"], arrays["visual"], arrays["video"])
    expected = reference_evaluate(audio, visual, split.audio, split.visual)
    for level in ("segment", "event"):
        assert evaluated[level] == pytest.approx(expected[level]["scores"], abs=1e-9)


def test_train_scores_a_confident_mgn_and_refuses_a_diverged_one(tiny_llp):
    data = load_split_data(tiny_llp / "feats", tiny_llp, name="test")
    torch.manual_seed(0)
    model = make_confident(create_model("mgn", **TINY))
    scores, predictions = score_split(model, data, batch_size=4, device=torch.device("cpu"))
    assert predictions["audio"].max() > 1.05 and 0 <= scores.segment["type"] <= 100
    with torch.no_grad():
        model.audio_head.bias.fill_(float("nan"))
    with pytest.raises(AvvpError, match=r"on the test split: audio_video holds NaN or infinity for 8 video\(s\)"):
        score_split(model, data, batch_size=4, device=torch.device("cpu"))


def test_parse_accepts_a_confident_mgn(confident_checkpoints, tmp_path, capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("av")
    from avvp.video.synthetic import write_synthetic_video

    video = write_synthetic_video(tmp_path / "clip.mp4", 3.0)
    out = tmp_path / "parse"
    args = ["parse", video, "--checkpoint", confident_checkpoints["official"], "--out", out, "--random-weights"]
    status, _, err = cli(capsys, *args, "--device", "cpu")
    assert status == 0, err
    record = json.loads((out / "parse.json").read_text())
    assert np.max(record["segment_probabilities"]["audio"]) > 1.05
    # min(P_a, p_av) and the like: P_a reaches 2p, but p_av of MGN is a probability, so confidences stay in [0.5, 1]
    assert record["events"] and all(0.5 <= event["confidence"] <= 1 for event in record["events"])


def test_a_tiny_demo_with_a_confident_mgn_runs_through(tmp_path, capsys, monkeypatch):
    """Train's validation and test scoring, the demo's predictions and figures, and the plots that read PRED files
    all take the confident model's scores (its heads start confident; two tiny epochs keep them so)."""
    import avvp.training.loop

    def confident_create_model(name, **overrides):
        model = create_model(name, **overrides)
        return make_confident(model) if name == "mgn" else model

    monkeypatch.setattr(avvp.training.loop, "create_model", confident_create_model)
    out = tmp_path / "demo"
    scale = ["--train", "32", "--val", "12", "--test", "12", "--epochs", "2", "--seed", "3", "--tiny-models"]
    status, _, err = cli(capsys, "demo", "--out", out, *scale, "--device", "cpu")
    assert status == 0, err
    pred = out / "runs" / "mgn" / "test_predictions.npz"
    assert np.load(pred)["audio"].max() > 1.05
    video = str(np.load(pred)["filenames"][0])
    status, _, err = cli(capsys, "plot", "parse", pred, "--video", video, "--annotations", out / "data", "--out",
                         tmp_path / "parse.png")  # fmt: skip
    assert status == 0, err
    status, _, err = cli(capsys, "plot", "recall", out / "runs" / "mgn", "--out", tmp_path / "recall.png")
    assert status == 0, err


@pytest.mark.parametrize(
    ("value", "found"),
    [(np.nan, "NaN or infinity"), (np.inf, "NaN or infinity"), (-0.25, "[-0.25, "), (2.5, ", 2.5]"), (55.0, "55]")],
)
def test_the_mistakes_are_refused_with_one_line(value, found):
    arrays = {"audio": np.full((3, 10, 25), 0.5, np.float32), "video": np.full((3, 25), 1.5, np.float32)}
    arrays["audio"][1, 4, 7] = value
    with pytest.raises(AvvpError) as err:
        check_scores(arrays, ["a", "b", "c"], "pred.npz")
    message = str(err.value)
    assert message.startswith("pred.npz: audio holds ") and found in message and "e.g. b" in message
    assert "\n" not in message


def test_the_range_ends_are_accepted():
    arrays = {"audio": np.zeros((2, 10, 25), np.float32), "video": np.full((2, 25), SCORE_MAX, np.float32)}
    arrays["audio"][0] = 1.999
    check_scores(arrays, ["a", "b"], "pred.npz")
    check_scores({"audio": np.ones((2, 10, 25), bool), "visual": np.ones((2, 10, 25), np.int64)}, ["a", "b"], "x")
