"""JoMoLD (`avvp estimate-noise`, `avvp train --noise-ratios`): the ratios and the removal rule on hand cases, the
NOISE.json refusals, and training with it: ratios of 0 equal plain training, the first-epoch schedule, resume,
and the removals' records against LLP-Synth's truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, write_noise_ratios

from avvp.denoise import NoiseRatios, class_means, noise_ratios, read_noise_ratios, removal_masks, true_noise_shares
from avvp.errors import AvvpError

TINY_HAN = ["--model", "han", "--dim", "32"]
TINY_MGN = ["--model", "mgn", "--dim", "32", "--depth-audio", "1", "--depth-visual", "1", "--depth-av", "1"]


# ------------------------------------------------------------------------------------------------ the rule


def _column(values, index: int = 0) -> torch.Tensor:
    """[B, 25] with `values` in class column `index` and zeros elsewhere."""
    table = torch.zeros(len(values), 25)
    table[:, index] = torch.tensor(values, dtype=torch.float32)
    return table


def test_the_rule_on_a_hand_batch() -> None:
    """Class 0, videos 0-5 visually positive, video 6 not; ratio 0.5: n = floor(0.5 x 6) = 3. Largest visual
    losses: videos 0, 1, 2; smallest audio losses among the positives: 4, 0, 2 (video 6's 0 does not count).
    Removed: 0 and 2. Video 1 has large losses in both modalities: kept (the rule is AND, not OR)."""
    visual_positive = _column([1, 1, 1, 1, 1, 1, 0]).bool()
    losses = {
        "visual": _column([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 9.0]),
        "audio_weak": _column([0.1, 9.0, 0.2, 0.3, 0.0, 8.0, 0.0]),
        "audio": torch.zeros(7, 25),
        "visual_weak": torch.zeros(7, 25),
    }
    positives = {"visual": visual_positive, "audio": torch.zeros(7, 25, dtype=torch.bool)}
    ratios = {"visual": torch.full((25,), 0.5), "audio": torch.full((25,), 0.5)}
    removed = removal_masks(losses, positives, ratios)
    assert removed["visual"][:, 0].tolist() == [True, False, True, False, False, False, False]
    assert not removed["visual"][:, 1:].any() and not removed["audio"].any()
    ratios["visual"][0] = 0.49  # n = floor(2.94) = 2: the 2 largest visual losses (0, 1) and smallest audio (4, 0)
    assert removal_masks(losses, positives, ratios)["visual"][:, 0].nonzero().flatten().tolist() == [0]


def test_the_audio_rule_is_the_mirror() -> None:
    """Class 3, four audio positives, ratio 0.5 (n = 2): largest audio losses 2, 3; smallest visual 3, 0: remove 3."""
    losses = {
        "audio": _column([0.1, 0.2, 2.0, 3.0], 3),
        "visual_weak": _column([0.1, 5.0, 6.0, 0.0], 3),
        "visual": torch.zeros(4, 25),
        "audio_weak": torch.zeros(4, 25),
    }
    positives = {"audio": _column([1, 1, 1, 1], 3).bool(), "visual": torch.zeros(4, 25, dtype=torch.bool)}
    ratios = {"audio": torch.full((25,), 0.5), "visual": torch.full((25,), 1.0)}
    removed = removal_masks(losses, positives, ratios)
    assert removed["audio"][:, 3].tolist() == [False, False, False, True]
    assert not removed["visual"].any()


def test_equal_losses_keep_the_batch_order() -> None:
    """Ties are broken by the batch order: with every loss equal, the first n positives are ranked first both
    ways, so they are the ones removed."""
    losses = {key: torch.ones(4, 25) for key in ("visual", "audio_weak", "audio", "visual_weak")}
    positives = {"visual": torch.ones(4, 25, dtype=torch.bool), "audio": torch.zeros(4, 25, dtype=torch.bool)}
    ratios = {"visual": torch.full((25,), 0.5), "audio": torch.zeros(25)}
    removed = removal_masks(losses, positives, ratios)["visual"]
    assert removed[:, 0].tolist() == [True, True, False, False] and removed.sum() == 2 * 25


# ------------------------------------------------------------------------------------------------ the ratios


def test_class_means_are_means_of_batch_means() -> None:
    probs = np.zeros((3, 25))
    probs[:, 0] = [0.2, 0.4, 0.9]
    assert class_means(probs, batch_size=2)[0] == pytest.approx((0.3 + 0.9) / 2)  # not the mean of all 3 (0.5)


def test_ratios_on_a_hand_case() -> None:
    """Class 0: 4 videos labelled, one not (p 0.0, lowering the mean). Mean of p = 0.4 (one batch); threshold 1.5:
    a labelled video is noisy when p x target < 0.6. Visual target 0.95: p 0.62 (0.589) is noisy, p 0.64 not."""
    labels = np.zeros((5, 25))
    labels[:4, 0] = 1
    probs = np.zeros((5, 25))
    probs[:, 0] = [0.3, 0.62, 0.64, 0.44, 0.0]
    target = 0.9 * labels + 0.05
    ratios = noise_ratios(probs, target, labels, threshold=1.5, batch_size=128)
    assert ratios[0] == pytest.approx(3 / 4)  # 0.285, 0.589, 0.418 below 0.6; 0.608 not
    assert (ratios[1:] == 0).all()  # classes no video carries: 0, not 0/0


def test_true_noise_shares() -> None:
    labels = np.zeros((2, 25))
    labels[:, 4] = 1
    audio = np.zeros((2, 10, 25), dtype=bool)
    audio[0, 3, 4] = True  # video 1's class 4 is not audible
    visual = np.ones((2, 10, 25), dtype=bool)
    shares = true_noise_shares(labels, audio, visual)
    assert shares["audio"][4] == 0.5 and shares["visual"][4] == 0.0 and shares["audio"][0] == 0.0


# ------------------------------------------------------------------------------------------------ NOISE.json


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"visual": lambda t: {k: v for k, v in t.items() if k != "Dog"}}, "visual: class Dog is missing"),
        ({"audio": lambda t: t | {"Speech": 1.5}}, "audio: Speech: ratio 1.5 is not a number in [0, 1]"),
        ({"audio": lambda t: t | {"Speech": -0.1}}, "audio: Speech: ratio -0.1 is not a number in [0, 1]"),
        ({"audio": lambda t: t | {"Unicorn": 0.1}}, "audio: unknown class 'Unicorn'"),
    ],
)
def test_noise_file_refusals(tmp_path: Path, edit: dict, message: str) -> None:
    path = write_noise_ratios(tmp_path / "noise.json", edit=edit)
    with pytest.raises(AvvpError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        read_noise_ratios(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_noise_file_stops_train_in_one_line_before_the_run_folder(
    synth_llp: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "noise.json"
    bad.write_text("{not json")
    out = tmp_path / "run"
    status, _, err = cli(capsys, *_train_args(synth_llp, out, 1), "--noise-ratios", bad, *TINY_HAN)
    assert status == 2 and "not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def synth_llp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LLP-Synth folder: its training truth is known (the removals' precision and recall)."""
    from avvp.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(train=32, val=8, test=8, seed=5), progress=False)
    return root


def _train_args(data: Path, out: Path, epochs: int) -> list:
    return ["train", "--features", data / "feats", "--annotations", data, "--out", out, "--epochs", epochs,
            "--batch-size", "8", "--device", "cpu"]  # fmt: skip


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("model", [TINY_HAN, TINY_MGN], ids=["han", "mgn"])
def test_every_ratio_0_equals_plain_training(synth_llp: Path, tmp_path: Path, capsys, model: list[str]) -> None:
    noise = write_noise_ratios(tmp_path / "zero.json")
    plain, denoised = tmp_path / "plain", tmp_path / "denoised"
    assert cli(capsys, *_train_args(synth_llp, plain, 2), *model)[0] == 0
    assert cli(capsys, *_train_args(synth_llp, denoised, 2), *model, "--noise-ratios", noise)[0] == 0
    a, b = _weights(plain), _weights(denoised)
    assert all(torch.equal(a[key], b[key]) for key in a)
    scores = [json.loads((out / "test_scores.json").read_text()) for out in (plain, denoised)]
    assert scores[0]["segment"] == scores[1]["segment"] and scores[0]["event"] == scores[1]["event"]
    records = _records(denoised)
    assert [r["denoise"]["removed"] for r in records] == [{"audio": 0, "visual": 0}] * 2  # the ranking pass ran
    assert [r["denoise"]["active"] for r in records] == [False, True]
    assert records[1]["denoise"]["precision"] == {"audio": None, "visual": None}  # nothing removed: undefined
    assert records[1]["denoise"]["recall"] == {"audio": 0.0, "visual": 0.0}  # none of the absent labels removed
    assert "denoise" not in _records(plain)[0]
    config = json.loads((denoised / "config.json").read_text())
    assert config["train"]["noise_ratios"] == str(noise.resolve())
    assert len(config["noise_ratios_sha256"]) == 64


def test_nothing_is_removed_before_the_first_epoch_of_denoising(synth_llp: Path, tmp_path: Path, capsys) -> None:
    """Ratios of 1 remove whatever the rule allows; by default from epoch 2 (the authors' effective schedule),
    and from epoch 1 with --denoise-from-epoch 1. The records say which removals the truth calls right."""
    noise = write_noise_ratios(tmp_path / "all.json", audio=1.0, visual=1.0)
    default, early = tmp_path / "default", tmp_path / "early"
    assert cli(capsys, *_train_args(synth_llp, default, 2), *TINY_HAN, "--noise-ratios", noise)[0] == 0
    assert cli(capsys, *_train_args(synth_llp, early, 1), *TINY_HAN, "--noise-ratios", noise,
               "--denoise-from-epoch", "1")[0] == 0  # fmt: skip
    first, second = (r["denoise"] for r in _records(default))
    assert first["removed"] == {"audio": 0, "visual": 0} and not first["active"]
    # ratio 1: n is every positive, so every positive label is among the n largest and the n smallest: all go
    from avvp.data.annotations import load_split

    labels = int(load_split(synth_llp, "train").labels.sum())
    assert second["active"] and second["removed"] == {"audio": labels, "visual": labels}
    for modality in ("audio", "visual"):
        absent = second["truly_absent"][modality]
        assert second["precision"][modality] == pytest.approx(100 * absent / labels)
        assert second["recall"][modality] == pytest.approx(100.0)
    assert second["truly_absent"]["audio"] + second["truly_absent"]["visual"] > 0  # audible-only, visible-only
    early_first = _records(early)[0]["denoise"]
    assert early_first["active"] and early_first["removed"] == {"audio": labels, "visual": labels}


def test_resume_with_denoising_equals_one_go_and_refuses_a_changed_file(
    synth_llp: Path, tmp_path: Path, capsys
) -> None:
    noise = write_noise_ratios(tmp_path / "noise.json", audio=0.5, visual=0.5)
    common = [*TINY_HAN, "--noise-ratios", noise, "--denoise-from-epoch", "1", "--lr-step", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli(capsys, *_train_args(synth_llp, straight, 2), *common)[0] == 0
    assert cli(capsys, *_train_args(synth_llp, resumed, 1), *common)[0] == 0
    write_noise_ratios(noise, audio=0.4, visual=0.5)  # another file at the same path
    status, _, err = cli(capsys, *_train_args(synth_llp, resumed, 2), *common, "--resume")
    assert status == 2 and "noise_ratios_sha256" in err
    write_noise_ratios(noise, audio=0.5, visual=0.5)
    assert cli(capsys, *_train_args(synth_llp, resumed, 2), *common, "--resume")[0] == 0
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [r["denoise"] for r in _records(straight)] == [r["denoise"] for r in _records(resumed)]


@pytest.mark.parametrize("flag", ["--stream", "--compile"])
def test_unsupported_paths_are_refused_in_one_line(synth_llp: Path, tmp_path: Path, capsys, flag: str) -> None:
    noise = write_noise_ratios(tmp_path / "zero.json")
    status, _, err = cli(capsys, *_train_args(synth_llp, tmp_path / "run", 1), *TINY_HAN, "--noise-ratios", noise, flag)
    assert status == 2 and f"--noise-ratios is not supported with {flag}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ estimate-noise


def test_estimate_noise_on_our_checkpoint_and_the_authors_han_format(synth_llp: Path, tmp_path: Path, capsys) -> None:
    estimator = tmp_path / "estimator"
    assert cli(capsys, *_train_args(synth_llp, estimator, 1), *TINY_HAN, "--no-cross-modal")[0] == 0
    ours = tmp_path / "ours.json"
    common = ["--features", synth_llp / "feats", "--annotations", synth_llp, "--device", "cpu", "--batch-size", "8"]
    status, out, _ = cli(
        capsys, "estimate-noise", "--checkpoint", estimator / "best.safetensors", "--out", ours, *common
    )
    assert status == 0 and "wrote" in out
    ratios = read_noise_ratios(ours)
    record = json.loads(ours.read_text())
    assert record["thresholds"] == {"audio": 0.6, "visual": 1.8} and record["videos"] == 32
    assert record["estimator"]["trained_cross_modal"] is False  # recorded by our safetensors
    assert set(record["true_shares"]) == {"audio", "visual"}
    assert ((ratios.audio >= 0) & (ratios.audio <= 1)).all() and ratios.visual.max() > 0
    # the same numbers by hand: the estimator's cross-modal-free p_a, p_v on the training split, in batches of 8
    from avvp.checkpoint import load_model
    from avvp.data.splits import load_split_data
    from avvp.denoise import estimate_ratios
    from avvp.inference import predict

    model, _ = load_model(estimator / "best.safetensors")
    data = load_split_data(synth_llp / "feats", synth_llp, "train")
    probs = predict(model, data.features, batch_size=8)
    audio, visual = estimate_ratios(probs["audio_video"], probs["visual_video"], data.split.labels, batch_size=8)
    np.testing.assert_allclose(ratios.audio, audio)
    np.testing.assert_allclose(ratios.visual, visual)
    # the authors' HAN format: the same weights exported, the same ratios
    official = tmp_path / "HAN.pt"
    assert (
        cli(capsys, "export", "--checkpoint", estimator / "best.safetensors", "--official", "--out", official)[0] == 0
    )
    theirs = tmp_path / "theirs.json"
    assert cli(capsys, "estimate-noise", "--checkpoint", official, "--out", theirs, *common)[0] == 0
    assert json.loads(theirs.read_text())["estimator"]["format"] == "official"
    np.testing.assert_allclose(read_noise_ratios(theirs).visual, ratios.visual)


def test_ratios_estimated_on_other_annotations_are_a_warning(synth_llp: Path, tmp_path: Path, capsys) -> None:
    noise = write_noise_ratios(tmp_path / "noise.json")
    for folder, warned in ((tmp_path / "elsewhere", True), (synth_llp, False)):
        noise.write_text(json.dumps(json.loads(noise.read_text()) | {"annotations": str(folder)}))
        out = tmp_path / f"run-{warned}"
        status, _, err = cli(capsys, *_train_args(synth_llp, out, 1), *TINY_HAN, "--noise-ratios", noise)
        assert status == 0
        warning = f"the noise ratios were estimated on the annotations in {folder}; this run trains on {synth_llp}"
        assert (warning in err) == warned, err


# ------------------------------------------------------------------------------------------------ MA's contrastive term


def test_the_contrastive_term_on_aligned_orthonormal_segments() -> None:
    """Audio = visual = 10 orthonormal segment features: cosine 1 on the diagonal, 0 off it. Each row's softmax
    of cosine / 0.2 gives e^5 / (e^5 + 9) to its own second and 1 / (e^5 + 9) to each other one; against the
    smoothed target (0.9, 0.1 / 9) the term is -log((0.9 e^5 + 0.1) / (e^5 + 9)), whatever the features' scale."""
    from avvp.models import ParseOutput
    from avvp.objective import contrastive_loss

    features = torch.eye(10, 16).unsqueeze(0).repeat(2, 1, 1) * torch.tensor([1.0, 3.0]).view(2, 1, 1)
    output = ParseOutput(
        p_av=torch.zeros(2, 25), p_a=torch.zeros(2, 25), p_v=torch.zeros(2, 25),
        audio=torch.zeros(2, 10, 25), visual=torch.zeros(2, 10, 25),
        extras={"audio_features": features, "visual_features": features},
    )  # fmt: skip
    e5 = np.exp(5.0)
    expected = -np.log((0.9 * e5 + 0.1) / (e5 + 9))
    np.testing.assert_allclose(contrastive_loss(output, None).numpy(), [expected, expected], rtol=1e-5)
    shifted = {"audio_features": features, "visual_features": features.roll(1, dims=1)}  # each second's partner moved
    assert (contrastive_loss(dataclasses.replace(output, extras=shifted), None) > 2).all()


def test_han_trains_with_the_contrastive_term(synth_llp: Path, tmp_path: Path, capsys) -> None:
    off, on = tmp_path / "off", tmp_path / "on"
    assert cli(capsys, *_train_args(synth_llp, off, 1), *TINY_HAN)[0] == 0
    assert cli(capsys, *_train_args(synth_llp, on, 1), *TINY_HAN, "--loss-weight", "contrastive=1")[0] == 0
    assert "contrastive" not in _records(off)[0]["loss"]  # weight 0 by default: not computed
    loss = _records(on)[0]["loss"]
    assert loss["contrastive"] > 0
    assert loss["total"] == pytest.approx(loss["p_av"] + loss["p_a"] + loss["p_v"] + loss["contrastive"])


# ------------------------------------------------------------------------------------------------ with MA's labels


class _FixedModel(torch.nn.Module):
    """Returns set video-level probabilities whatever the input (its cross-modal-free form included)."""

    def __init__(self, p_a: torch.Tensor, p_v: torch.Tensor) -> None:
        super().__init__()
        self.p_a, self.p_v = p_a, p_v

    def forward(self, audio, res152, r2plus1d, cross_modal: bool = True):
        from avvp.models import ParseOutput

        batch = len(self.p_a)
        zeros = torch.zeros(batch, 10, 25)
        return ParseOutput(p_av=self.p_a, p_a=self.p_a, p_v=self.p_v, audio=zeros, visual=zeros)


def test_with_modality_labels_the_other_modality_is_ranked_against_the_weak_label() -> None:
    """Four videos weakly labelled class 2 and visually positive; MA removed video 0's audio label. Video 0's p_a is
    0.01: against MA's audio target (0) its audio loss is the smallest, against the weak label (1) the largest.
    Visual ratio 0.5 (n = 2): the largest visual losses are videos 0 and 1; the smallest audio losses, ranked
    against the weak label, videos 2 and 1: only video 1 loses its visual label. MA's removal stays removed, and
    video 0 is no audio positive."""
    from avvp.denoise import Denoiser
    from avvp.recipe import TrainConfig

    weak = _column([1, 1, 1, 1], 2)
    audio = weak.clone()
    audio[0, 2] = 0  # MA: not audible
    labels = torch.stack([weak, audio, weak.clone()], dim=1)  # [4, 3, 25] (weak, audio, visual)
    p_a, p_v = _column([0.01, 0.6, 0.9, 0.5], 2), _column([0.1, 0.2, 0.8, 0.9], 2)
    ratios = NoiseRatios(np.zeros(25), np.full(25, 0.5), {})
    config = TrainConfig(model="han", denoise_from_epoch=1)
    denoiser = Denoiser(ratios, config, torch.device("cpu"), "fp32")
    denoiser.set_epoch(1)
    inputs = (torch.zeros(4, 10, 128), torch.zeros(4, 10, 2048), torch.zeros(4, 10, 512))
    rows = denoiser(_FixedModel(p_a, p_v), inputs, labels, torch.arange(4))
    assert rows[:, 2, 2].tolist() == [1, 0, 1, 1]  # visual: video 1 removed
    assert rows[:, 1, 2].tolist() == [0, 1, 1, 1]  # audio: MA's removal kept, nothing else (audio ratio 0)
    assert torch.equal(rows[:, 0], weak)
    assert denoiser.take_counts() == [0.0, 1.0, 0.0, 0.0]


def test_estimate_noise_reads_a_checkpoint_saved_as_the_jomold_authors_save_theirs(
    synth_llp: Path, tmp_path: Path, capsys
) -> None:
    """Their main.py saves the weights under 'model' beside the optimiser, the schedule and the random states,
    numpy's among them (an array): read without unpickling anything else."""
    import random

    from avvp.checkpoint import official_state_dict
    from avvp.models import create_model

    torch.manual_seed(0)
    model = create_model("han", dim=32, cross_modal=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    state = {"cuda_rng": torch.get_rng_state(), "random_rng": random.getstate(), "numpy_rng": np.random.get_state(),
             "model": official_state_dict(model), "optimizer": optimizer.state_dict(),
             "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 6, 0.25).state_dict(), "epochs": 25}  # fmt: skip
    path = tmp_path / "noise_estimater.pt"
    torch.save(state, path)
    out = tmp_path / "noise.json"
    common = ["--features", synth_llp / "feats", "--annotations", synth_llp, "--device", "cpu"]
    status, _, err = cli(capsys, "estimate-noise", "--checkpoint", path, "--out", out, *common)
    assert status == 0, err
    record = json.loads(out.read_text())
    assert record["estimator"]["format"] == "official" and record["estimator"]["trained_cross_modal"] is None


def test_n_is_the_floor_of_the_exact_product() -> None:
    """Ratio 1/41 of 41 positives is n = 1 (in float32, 1/41 x 41 rounds below 1 and n would be 0): the video with
    the largest visual loss, which also has the smallest audio loss, loses its visual label."""
    from avvp.denoise import Denoiser
    from avvp.recipe import TrainConfig

    videos = 41
    p_v = _column([0.05 + 0.9 * i / videos for i in range(videos)], 0)  # video 0: the lowest p_v, largest loss
    p_a = _column([0.99 - 0.5 * i / videos for i in range(videos)], 0)  # video 0: the highest p_a, smallest loss
    ratios = NoiseRatios(np.zeros(25), np.full(25, 1 / 41), {})
    denoiser = Denoiser(ratios, TrainConfig(model="han", denoise_from_epoch=1), torch.device("cpu"), "fp32")
    denoiser.set_epoch(1)
    inputs = (torch.zeros(videos, 10, 128), torch.zeros(videos, 10, 2048), torch.zeros(videos, 10, 512))
    rows = denoiser(_FixedModel(p_a, p_v), inputs, _column([1] * videos, 0), torch.arange(videos))
    assert rows[:, 2, 0].nonzero().flatten().tolist() == list(range(1, videos))  # video 0's visual label removed
    assert np.float32(1 / 41) * np.float32(41) < 1  # the float32 product this guards against


def test_denoise_from_epoch_without_noise_ratios_is_refused(synth_llp: Path, tmp_path: Path, capsys) -> None:
    status, _, err = cli(capsys, *_train_args(synth_llp, tmp_path / "run", 1), *TINY_HAN, "--denoise-from-epoch", "3")
    assert status == 2 and "--denoise-from-epoch 3: only with --noise-ratios" in err
    assert not (tmp_path / "run").exists()
