"""Reliability (docs/reliability.md): every bad input and fault gets one clear error, and no run, result or file
is ever lost or mixed. Each test reproduces a fault that the code before its fix got wrong.

Sections: bad inputs (predictions, checkpoints, files of the wrong kind, empty lists); the files avvp writes
(special files, full disks, killed writers, file modes, racing synths); training run folders (locks, resume
rules, damaged states, runs killed early, data checked first).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

from avvp import utils
from avvp.checkpoint import export_official, load_model, official_state_dict, save_checkpoint
from avvp.cli import main
from avvp.data import synth
from avvp.data.annotations import DENSE_FILES, SPLIT_FILES, load_split
from avvp.errors import AvvpError
from avvp.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ==================================================================================================== bad inputs

UNSAFE_ADVICE = ("weights_only=False", "`weights_only` set to `False`", "will likely succeed", "trust", "safe_globals")


class NotATensor:
    """A Python object in a checkpoint: torch.load(weights_only=True) refuses it."""


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mgn", dim=16, depth_audio=1, depth_visual=1, depth_av=1).eval()


@pytest.fixture(scope="module")
def mgn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, tiny_model())
    return path


@pytest.fixture(scope="module")
def test_split(tiny_llp: Path):
    return load_split(tiny_llp, "test")


@pytest.fixture
def annotations(tiny_llp: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny LLP annotation CSVs (no features)."""
    folder = tmp_path / "annotations"
    folder.mkdir()
    for name in (*SPLIT_FILES.values(), *DENSE_FILES.values()):
        shutil.copy(tiny_llp / name, folder / name)
    return folder


def error_line(err: str, command: str) -> str:
    """The one error line of a failed command (earlier lines may be progress bars), checked to be alone."""
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(f"avvp {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def save_predictions_file(path: Path, filenames, audio, visual, **extra) -> Path:
    np.savez(path, filenames=np.asarray(filenames), audio=audio, visual=visual, **extra)
    return path


def ground_truth_file(path: Path, split) -> Path:
    return save_predictions_file(path, split.filenames, split.audio.astype(np.float32), split.visual.astype(np.float32))


# ------------------------------------------------------------------ 1. predictions outside [0, 2]


def _out_of_range(count: int, case: str) -> tuple[str, dict[str, np.ndarray], str]:
    """(the bad key, the arrays of a predictions file, the range the error must state)."""
    rng = np.random.default_rng(0)
    probs = rng.random((count, 10, 25)).astype(np.float32)
    arrays = {"audio": probs, "visual": probs}
    if case == "audio in [-50, 50]":
        audio = rng.uniform(-50, 50, (count, 10, 25)).astype(np.float32)
        audio[0, 0, 0], audio[0, 0, 1] = -50, 50
        return "audio", arrays | {"audio": audio}, "[-50, 50]"
    if case == "video up to 10":
        video = rng.random((count, 25)).astype(np.float32)
        video[1, 3] = 10
        return "video", arrays | {"video": video}, "10]"
    if case == "logits":
        visual = np.linspace(-4, 3, count * 250, dtype=np.float32).reshape(count, 10, 25)
        return "visual", arrays | {"visual": visual}, "[-4, 3]"
    ints = np.zeros((count, 10, 25), np.int64)
    ints[0, 0, 0], ints[-1, 9, 24] = 5, -3
    return "audio", arrays | {"audio": ints}, "[-3, 5]"


@pytest.mark.parametrize("case", ["audio in [-50, 50]", "video up to 10", "logits", "ints 5 and -3"])
def test_score_rejects_predictions_outside_0_2(tiny_llp, test_split, tmp_path, capsys, case):
    key, arrays, found = _out_of_range(len(test_split.filenames), case)
    pred = save_predictions_file(tmp_path / "pred.npz", test_split.filenames, **arrays)
    status, out, err = cli(capsys, "score", pred, "--annotations", tiny_llp, "--json", tmp_path / "s.json")
    line = error_line(err, "score")
    assert status == 2 and out == "" and not (tmp_path / "s.json").exists()
    assert f"{pred}: {key} holds values in " in line and found in line and "outside [0, 2]" in line


@pytest.mark.parametrize("case", ["audio in [-50, 50]", "ints 5 and -3", "NaN"])
def test_evaluate_rejects_model_outputs_outside_0_2(tiny_llp, mgn_checkpoint, tmp_path, capsys, monkeypatch, case):
    """Whatever the model gives (here a stand-in model), evaluate scores only what the one rule accepts."""
    import types

    import avvp.checkpoint

    class BadModel(torch.nn.Module):
        def forward(self, audio, res152, r2plus1d):
            count = len(audio)
            if case == "NaN":
                arrays = {key: np.full((count, 10, 25), 0.5, np.float32) for key in ("audio", "visual")}
                arrays["audio"][0, 0, 0] = np.nan
            else:
                arrays = _out_of_range(count, case)[1]
            video = torch.full((count, 25), 0.5)
            segments = {key: torch.as_tensor(value).float() for key, value in arrays.items()}
            return types.SimpleNamespace(**segments, p_av=video, p_a=video, p_v=video)

    monkeypatch.setattr(avvp.checkpoint, "load_model", lambda *args, **kwargs: (BadModel(), {}))
    args = ["evaluate", "--checkpoint", mgn_checkpoint, "--features", tiny_llp / "feats", "--annotations", tiny_llp]
    status, out, err = cli(capsys, *args, "--device", "cpu", "--json", tmp_path / "s.json")
    line = error_line(err, "evaluate")
    assert status == 2 and "Segment-level" not in out and not (tmp_path / "s.json").exists()
    assert str(mgn_checkpoint) in line and f"audio holds {'NaN' if case == 'NaN' else 'values in'}" in line


# ------------------------------------------------------------------------ 2. non-finite weights


def test_load_model_rejects_nan_in_our_checkpoint(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.audio_proj.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model)
    with pytest.raises(AvvpError, match=r"nan\.safetensors: .*audio_proj\.weight .*NaN") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_load_model_rejects_inf_in_the_authors_checkpoint_naming_their_key(tmp_path):
    state_dict = official_state_dict(tiny_model())
    state_dict["fc_prob.bias"] = torch.full_like(state_dict["fc_prob.bias"], float("inf"))
    torch.save(state_dict, tmp_path / "MGN_Net.pt")
    with pytest.raises(AvvpError, match=r"MGN_Net\.pt: .*fc_prob\.bias .*inf"):
        load_model(tmp_path / "MGN_Net.pt")


def test_predict_and_evaluate_refuse_a_nan_checkpoint(tiny_llp, tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.audio_proj.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model)
    common = ["--checkpoint", path, "--features", tiny_llp / "feats", "--device", "cpu"]
    out = tmp_path / "pred.npz"
    status, _, err = cli(capsys, "predict", *common, "--list", tiny_llp / SPLIT_FILES["test"], "--out", out)
    assert status == 2 and "audio_proj.weight" in error_line(err, "predict") and not out.exists()
    status, stdout, err = cli(capsys, "evaluate", *common, "--annotations", tiny_llp)
    assert status == 2 and "audio_proj.weight" in error_line(err, "evaluate") and "Segment-level" not in stdout


# -------------------------------------------------------------------- 10. files of the wrong kind


def _features_copy(tiny_llp: Path, tmp_path: Path, video: str) -> Path:
    """A copy of the test videos' features, `video` included."""
    feats = tmp_path / "feats"
    split = load_split(tiny_llp, "test")
    for sub in ("vggish", "res152", "r2plus1d_18"):
        (feats / sub).mkdir(parents=True)
        for vid in split.video_ids:
            shutil.copy(tiny_llp / "feats" / sub / f"{vid}.npy", feats / sub / f"{vid}.npy")
    assert video in split.video_ids
    return feats


@pytest.mark.parametrize("kind", ["npz", "text"])
def test_feature_file_of_the_wrong_kind_says_what_it_is(tiny_llp, mgn_checkpoint, test_split, tmp_path, capsys, kind):
    video = test_split.video_ids[0]
    feats = _features_copy(tiny_llp, tmp_path, video)
    victim = feats / "vggish" / f"{video}.npy"
    if kind == "npz":
        with victim.open("wb") as handle:
            np.savez(handle, features=np.zeros((10, 128), np.float32))
    else:
        victim.write_text("0.1 0.2 0.3\n")
    args = ["predict", "--checkpoint", mgn_checkpoint, "--features", feats, "--device", "cpu"]
    out = tmp_path / "pred.npz"
    status, _, err = cli(capsys, *args, "--list", tiny_llp / SPLIT_FILES["test"], "--out", out)
    line = error_line(err, "predict")
    assert status == 2 and not out.exists()
    what = "a NumPy .npz archive" if kind == "npz" else "a text file"
    assert f"{victim}: not a readable .npy file: it is {what};" in line and "float32 (10, 128)" in line
    assert "pickle" not in line


@pytest.mark.parametrize("kind", ["npy", "text"])
def test_predictions_file_of_the_wrong_kind_says_what_it_is(tiny_llp, test_split, tmp_path, capsys, kind):
    pred = tmp_path / "pred.npz"
    if kind == "npy":
        with pred.open("wb") as handle:
            np.save(handle, test_split.audio.astype(np.float32))
    else:
        pred.write_text("filename\taudio\n")
    status, _, err = cli(capsys, "score", pred, "--annotations", tiny_llp)
    line = error_line(err, "score")
    what = "a NumPy .npy array" if kind == "npy" else "a text file"
    assert status == 2 and f"{pred} is {what}, not a .npz archive" in line and "filenames" in line
    assert "pickle" not in line


def test_object_array_in_predictions_names_the_key(tiny_llp, test_split, tmp_path, capsys):
    pred = save_predictions_file(
        tmp_path / "pred.npz",
        np.asarray(test_split.filenames, dtype=object),
        test_split.audio.astype(np.float32),
        test_split.visual.astype(np.float32),
    )
    status, _, err = cli(capsys, "score", pred, "--annotations", tiny_llp)
    line = error_line(err, "score")
    assert status == 2 and "filenames is an object array" in line and "This file contains pickled" not in line


# ------------------------------------------------------------------- 11. empty lists, empty dense files


def test_header_only_split_list_is_named(annotations, test_split, tmp_path, capsys):
    (annotations / SPLIT_FILES["test"]).write_text("filename\tevent_labels\n")
    pred = ground_truth_file(tmp_path / "pred.npz", test_split)
    status, _, err = cli(capsys, "score", pred, "--annotations", annotations)
    line = error_line(err, "score")
    assert status == 2 and f"{annotations / SPLIT_FILES['test']} lists no videos" in line
    assert "not in the test split" not in err and "in no split" not in err


def test_list_with_only_bad_rows_skipped_is_named(annotations, test_split, tmp_path, capsys):
    (annotations / SPLIT_FILES["test"]).write_text("filename\tevent_labels\nnot-a-video\tSpeech\n")
    pred = ground_truth_file(tmp_path / "pred.npz", test_split)
    status, _, err = cli(capsys, "score", pred, "--annotations", annotations, "--skip-bad-rows")
    assert status == 2 and "lists no videos" in error_line(err, "score")


def test_scoring_val_does_not_fail_on_an_empty_test_list(annotations, tmp_path, capsys):
    val = load_split(annotations, "val")
    (annotations / SPLIT_FILES["test"]).write_text("filename\tevent_labels\n")
    status, out, err = cli(capsys, "score", ground_truth_file(tmp_path / "pred.npz", val), "--split", "val",
                           "--annotations", annotations)  # fmt: skip
    assert status == 0 and "100.0" in out, err


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_header_only_dense_file_warns_naming_it(annotations, test_split, tmp_path, capsys, modality):
    dense = annotations / DENSE_FILES[modality]
    dense.write_text("filename\tonset\toffset\tevent_labels\n")
    pred = ground_truth_file(tmp_path / "pred.npz", test_split)
    status, out, err = cli(capsys, "score", pred, "--annotations", annotations)
    assert status == 0 and "Segment-level" in out
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:") and dense.name in line]
    assert len(warnings) == 1 and f"no {modality} event" in warnings[0], err
    other = annotations / DENSE_FILES["visual" if modality == "audio" else "audio"]
    assert other.name not in warnings[0]


def test_dense_file_with_events_gives_no_such_warning(tiny_llp, test_split, caplog):
    with caplog.at_level(logging.WARNING):
        load_split(tiny_llp, "test")
    assert not [record for record in caplog.records if "no audio event" in record.getMessage()]


# --------------------------------------------------------- 12. --skip-bad-rows where suggested; sidecars


def _list_with_a_bad_row(tiny_llp: Path, tmp_path: Path) -> Path:
    rows = (tiny_llp / SPLIT_FILES["test"]).read_text().splitlines()
    path = tmp_path / "list.csv"
    path.write_text("\n".join([rows[0], "not a filename\tSpeech", *rows[1:3]]) + "\n")
    return path


def test_predict_accepts_the_skip_bad_rows_it_suggests(tiny_llp, mgn_checkpoint, tmp_path, capsys):
    listing = _list_with_a_bad_row(tiny_llp, tmp_path)
    args = ["predict", "--checkpoint", mgn_checkpoint, "--features", tiny_llp / "feats", "--device", "cpu"]
    out = tmp_path / "pred.npz"
    status, _, err = cli(capsys, *args, "--list", listing, "--out", out)
    assert status == 2 and "--skip-bad-rows" in error_line(err, "predict")
    status, _, err = cli(capsys, *args, "--list", listing, "--out", out, "--skip-bad-rows")
    assert status == 0, err
    with np.load(out) as data:
        assert len(data["filenames"]) == 2


def test_pack_accepts_the_skip_bad_rows_it_suggests(tiny_llp, tmp_path, capsys):
    listing = _list_with_a_bad_row(tiny_llp, tmp_path)
    args = ["pack", "--features", tiny_llp / "feats", "--list", listing, "--out", tmp_path / "t.pack"]
    status, _, err = cli(capsys, *args)
    assert status == 2 and "--skip-bad-rows" in error_line(err, "pack")
    status, out, err = cli(capsys, *args, "--skip-bad-rows")
    assert status == 0 and "2 videos" in out, err


def _safetensors_with_record(path: Path, record: dict) -> Path:
    from safetensors.torch import save_file

    weights = {key: value.contiguous() for key, value in tiny_model().state_dict().items()}
    save_file(weights, str(path), metadata={"avvp_checkpoint": json.dumps(record)})
    return path


@pytest.mark.parametrize("problem", ["model", "classes"])
def test_bad_header_record_without_sidecar_names_only_existing_files(tmp_path, problem):
    record = {"model": "mgn", "config": tiny_model().config.to_dict()}
    record |= {"model": "xyz"} if problem == "model" else {"classes": ["Speech"]}
    path = _safetensors_with_record(tmp_path / "solo.safetensors", record)
    with pytest.raises(AvvpError) as err:
        load_model(path)
    message = str(err.value)
    assert "solo.json" not in message and str(path) in message and "header" in message


def test_bad_sidecar_is_named_when_it_is_where_the_record_came_from(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_model())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(path))  # no header record
    path.with_suffix(".json").write_text(json.dumps({"model": "xyz", "config": {}}))
    with pytest.raises(AvvpError, match=r"ckpt\.json: not an avvp checkpoint record"):
        load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(AvvpError, match=r"ckpt\.json is missing"):
        load_model(path)


# ----------------------------------------------------------------- 13. never suggest unsafe unpickling


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_with_python_objects_is_refused_without_unsafe_advice(tmp_path, legacy):
    path = tmp_path / "pickled.pt"
    state_dict = official_state_dict(tiny_model()) | {"extra": NotATensor()}
    torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(AvvpError) as err:
        load_model(path)
    message = str(err.value)
    assert f"{path} is not a plain tensor checkpoint" in message and "cannot be read safely" in message
    assert "NotATensor" in message and "\n" not in message and "\x1b" not in message
    assert not [advice for advice in UNSAFE_ADVICE if advice in message]


def test_blocked_global_is_refused_without_unsafe_advice(tmp_path, capsys, tiny_llp):
    import os

    path = tmp_path / "MGN_Net.pt"
    path.write_bytes(pickle.dumps(os.getcwd, protocol=2))  # harmless, and never called: it is refused
    args = ["evaluate", "--checkpoint", path, "--features", tiny_llp / "feats", "--annotations", tiny_llp]
    status, _, err = cli(capsys, *args)
    line = error_line(err, "evaluate")
    assert status == 2 and "not a plain tensor checkpoint" in line and "getcwd" in line
    assert not [advice for advice in UNSAFE_ADVICE if advice in line]


def test_truncated_torch_checkpoint_message_is_one_sentence(tmp_path):
    path = tmp_path / "MGN_Net.pt"
    torch.save(official_state_dict(tiny_model()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AvvpError, match=r"cannot read .*truncated or corrupt") as err:
        load_model(path)
    assert "internal miniz error" not in str(err.value) and "\n" not in str(err.value)


def test_features_given_as_a_npz_file_says_it_is_not_a_pack(tiny_llp, mgn_checkpoint, test_split, tmp_path, capsys):
    features = ground_truth_file(tmp_path / "feats.npz", test_split)
    args = ["predict", "--checkpoint", mgn_checkpoint, "--features", features, "--device", "cpu"]
    status, _, err = cli(capsys, *args, "--list", tiny_llp / SPLIT_FILES["test"], "--out", tmp_path / "pred.npz")
    assert status == 2 and f"{features} is a NumPy .npz archive, not an avvp pack" in error_line(err, "predict")


# ==================================================================================================== the files avvp writes
TINY_SYNTH = ["--train", "2", "--val", "1", "--test", "1", "--workers", "1"]


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """`avvp ARGS` in-process: (exit status, stderr)."""
    status, _, err = cli(capsys, *args)
    return status, err


def assert_one_line_error(status: int, err: str, *needles: object) -> str:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in lines[0]
    return lines[0]


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def plain_file_mode(folder: Path) -> int:
    """The mode a plain `open(..., 'w')` gives a new file here (0644 under the usual umask)."""
    probe = folder / "plain-probe"
    probe.write_text("x")
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def han_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "han.safetensors"
    save_checkpoint(path, create_model("han", dim=16))
    return path


@pytest.fixture(scope="module")
def predictions(tiny_llp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ground truth of tiny_llp's test split as PRED.npz."""
    split = load_split(tiny_llp, "test")
    path = tmp_path_factory.mktemp("pred") / "pred.npz"
    np.savez(path, filenames=np.asarray(split.filenames), audio=split.audio, visual=split.visual)
    return path


def predict(capsys, tiny_llp: Path, han_checkpoint: Path, out: Path) -> tuple[int, str]:
    return run(
        capsys,
        "predict",
        "--checkpoint",
        han_checkpoint,
        "--features",
        tiny_llp / "feats",
        "--list",
        tiny_llp / "AVVP_test_pd.csv",
        "--device",
        "cpu",
        "--out",
        out,
    )


def score_json(capsys, tiny_llp: Path, predictions: Path, out: Path) -> tuple[int, str]:
    return run(capsys, "score", predictions, "--annotations", tiny_llp, "--json", out)


# ------------------------------------------------- 5: two synth runs into one new folder cannot both succeed


def test_synth_refuses_a_folder_another_run_filled_while_it_was_generating(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    save_npy = synth._save_npy

    def other_run_finishes_first(path: Path, array: np.ndarray) -> None:
        if not out.exists():  # the other `avvp synth` moves its dataset into place now
            out.mkdir()
            (out / "theirs.txt").write_text("the other run's dataset")
        save_npy(path, array)

    monkeypatch.setattr(synth, "_save_npy", other_run_finishes_first)
    status, err = run(capsys, "synth", "--out", out, *TINY_SYNTH)
    assert_one_line_error(status, err, out, "another process")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]  # their dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder, no lock left


def test_lock_refuses_a_live_holder_after_waiting_and_takes_over_a_dead_ones(tmp_path):
    lock = tmp_path / ".data.lock"
    lock.write_text(f"{os.getppid()}\n")  # pytest's parent: alive (a pid alone: an earlier version's lock file)
    with (
        pytest.raises(AvvpError, match=rf"in use by another run \(pid {os.getppid()} on host {utils.LOCK_HOST}\)"),
        utils.PidLock(lock, "another run", wait=0.2),
    ):
        pass
    lock.write_text(run_child("import os; print(os.getpid())").stdout)  # left by a process that is gone
    with utils.PidLock(lock, "another run"):
        assert lock.read_text() == f"{os.getpid()} {utils.LOCK_HOST}\n"
    assert not lock.exists()
    dead = run_child("import os; print(os.getpid())").stdout.strip()
    lock.write_text(f"{dead} {utils.LOCK_HOST}\n")  # this machine's, of a process that is gone: taken over
    with utils.PidLock(lock, "another run"):
        assert lock.read_text() == f"{os.getpid()} {utils.LOCK_HOST}\n"


def test_a_lock_of_another_machine_is_never_taken_over(tmp_path):
    """A lock file naming another host (a process on another machine sharing the folder) stays, even where its pid
    is not alive here: the refusal names its pid and host and says how to clear it; `remove_if_stale` leaves it."""
    lock = tmp_path / ".train.lock"
    dead = run_child("import os; print(os.getpid())").stdout.strip()  # not alive here
    lock.write_text(f"{dead} node07.cluster\n")
    with pytest.raises(AvvpError) as refused, utils.PidLock(lock, "another run", wait=0.2):
        pass
    message = str(refused.value)
    assert "\n" not in message and f"pid {dead} on host node07.cluster, another machine" in message
    assert "once that process is gone" in message and f"delete {lock}" in message
    utils.PidLock(lock, "another run").remove_if_stale()
    assert lock.read_text() == f"{dead} node07.cluster\n"
    lock.write_text(f"{dead}\n")  # an earlier version's lock file, pid alone: this machine's, and dead
    utils.PidLock(lock, "another run").remove_if_stale()
    assert not lock.exists()


def test_a_lock_is_reentrant_within_its_process(tmp_path):
    """`sweep --only` holds a run's lock around `train`, which takes it again: the file stays until the outer one
    exits, and `remove_if_stale` leaves it."""
    lock = tmp_path / ".train.lock"
    with utils.PidLock(lock, "another run"):
        with utils.PidLock(lock, "another run"):
            assert lock.read_text() == f"{os.getpid()} {utils.LOCK_HOST}\n"
        assert lock.exists()
        utils.PidLock(lock, "another run").remove_if_stale()  # held by this process: kept
        assert lock.exists()
    assert not lock.exists()


# ------------------------------------------------- 6: a symlink is written through; no FIFO / device is replaced


def test_score_json_writes_through_a_symlink_to_its_target(tiny_llp, predictions, tmp_path, capsys):
    target = tmp_path / "kept" / "scores.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    status, err = score_json(capsys, tiny_llp, predictions, link)
    assert status == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert '"segment"' in target.read_text()
    assert hidden(tmp_path / "kept") == []


def test_score_json_refuses_a_fifo_and_leaves_it_alone(tiny_llp, predictions, tmp_path, capsys):
    fifo = tmp_path / "scores.json"
    os.mkfifo(fifo)
    status, err = score_json(capsys, tiny_llp, predictions, fifo)
    assert_one_line_error(status, err, fifo, "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert hidden(tmp_path) == []


def test_predict_refuses_a_device_node_directly_or_through_a_symlink(tiny_llp, han_checkpoint, tmp_path, capsys):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null's node
    except PermissionError:
        pytest.skip("creating a device node needs root")
    link = tmp_path / "pred.npz"
    link.symlink_to(device)
    for out in (device, link):
        status, err = predict(capsys, tiny_llp, han_checkpoint, out)
        assert_one_line_error(status, err, out, "character device")
        assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert link.is_symlink()
    assert hidden(tmp_path) == []


WRITERS = {
    "atomic_write_text": lambda path: utils.atomic_write_text(path, "x"),
    "atomic_torch_save": lambda path: utils.atomic_torch_save({"x": torch.zeros(2)}, path),
    "save_checkpoint": lambda path: save_checkpoint(path, create_model("han", dim=8)),
    "export_official": lambda path: export_official(create_model("han", dim=8), path),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_a_fifo_or_a_folder(writer, tmp_path):
    fifo, folder = tmp_path / "f.safetensors", tmp_path / "d.safetensors"
    os.mkfifo(fifo)
    folder.mkdir()
    with pytest.raises(AvvpError, match="FIFO"):
        WRITERS[writer](fifo)
    with pytest.raises(AvvpError, match="folder"):
        WRITERS[writer](folder)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "f.safetensors"]


# ------------------------------------------------- 9: cannot write: one line, no partial file


def test_predict_out_under_a_regular_file_is_one_line(tiny_llp, han_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "pred.npz"
    status, err = predict(capsys, tiny_llp, han_checkpoint, out)
    assert_one_line_error(status, err, out, "not a folder")
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_score_json_under_a_regular_file_is_one_line(tiny_llp, predictions, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "sub" / "scores.json"
    status, err = score_json(capsys, tiny_llp, predictions, out)
    assert_one_line_error(status, err, out, "not a folder")


def test_score_json_in_a_folder_without_write_permission_is_one_line(
    tiny_llp, predictions, tmp_path, monkeypatch, capsys
):
    def denied(*args, dir=None, **kwargs):  # what mkstemp meets in a read-only folder (root writes anyway)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "scores.json"
    status, err = score_json(capsys, tiny_llp, predictions, out)
    assert_one_line_error(status, err, out, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_predict_on_a_full_disk_leaves_no_partial_file(tiny_llp, han_checkpoint, tmp_path, monkeypatch, capsys):
    def savez_until_full(file, *args, **kwargs):
        file.write(b"PK\x03\x04 the first bytes")  # part of the archive reaches the disk
        _full_disk()

    monkeypatch.setattr(np, "savez", savez_until_full)
    out = tmp_path / "pred.npz"
    status, err = predict(capsys, tiny_llp, han_checkpoint, out)
    assert_one_line_error(status, err, out, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_score_json_on_a_full_disk_at_the_rename_leaves_no_partial_file(
    tiny_llp, predictions, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "scores.json"
    out.write_text("the previous scores")
    monkeypatch.setattr(os, "replace", _full_disk)
    status, err = score_json(capsys, tiny_llp, predictions, out)
    assert_one_line_error(status, err, out, "No space left on device")
    assert out.read_text() == "the previous scores"
    assert hidden(tmp_path) == []


def test_checkpoint_save_on_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    model = create_model("han", dim=8)
    monkeypatch.setattr(os, "replace", _full_disk)
    for save in (
        lambda: save_checkpoint(tmp_path / "best.safetensors", model),
        lambda: utils.atomic_torch_save({"model": model.state_dict()}, tmp_path / "last.pt"),
    ):
        with pytest.raises(AvvpError, match="No space left on device"):
            save()
        assert list(tmp_path.iterdir()) == []


def test_synth_on_a_full_disk_leaves_no_staging_folder(tmp_path, monkeypatch, capsys):
    def save_until_full(path: Path, array: np.ndarray) -> None:
        path.write_bytes(b"\x93NUMPY")
        _full_disk()

    monkeypatch.setattr(synth, "_save_npy", save_until_full)
    out = tmp_path / "data"
    status, err = run(capsys, "synth", "--out", out, *TINY_SYNTH)
    assert_one_line_error(status, err, out, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_synth_under_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "data"
    status, err = run(capsys, "synth", "--out", out, *TINY_SYNTH)
    assert_one_line_error(status, err, out, "not a folder")


# ------------------------------------------------- 14: temporaries of killed writers do not stay for ever


def killed_while_writing(path: Path) -> Path:
    """Kill a process in the middle of an atomic write of `path` (SIGKILL: no clean-up); returns its temporary."""
    child = run_child(
        "import os, signal, sys\n"
        "from avvp.utils import atomic_path\n"
        f"with atomic_path({str(path)!r}) as tmp:\n"
        "    tmp.write_text('half a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    (left,) = [p for p in path.parent.iterdir() if p.name != path.name]
    return left


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = killed_while_writing(tmp_path / "last.pt")
    match = re.search(r"-(\d+)-", dead.name)
    assert match, dead.name
    live = tmp_path / dead.name.replace(match.group(0), f"-{os.getppid()}-")  # a live process is writing it
    live.write_text("being written")
    reused = tmp_path / dead.name.replace(match.group(0), f"-{os.getpid()}-")  # left by a killed process whose
    reused.write_text("half a checkpoint")  # pid this process now has
    foreign = tmp_path / ".notes.tmp"  # not avvp's
    foreign.write_text("someone else's")
    with utils.atomic_path(tmp_path / "best.json") as ours:  # being written by this process
        ours.write_text("{}")
        assert sorted(utils.remove_stale_temporaries(tmp_path)) == sorted([dead, reused])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ours.name, foreign.name])


def test_the_next_write_of_a_file_removes_its_killed_temporary(tmp_path):
    killed_while_writing(tmp_path / "last.pt")
    utils.atomic_torch_save({"epoch": 2}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_synth_removes_the_staging_folder_of_a_killed_synth(tmp_path, capsys):
    child = run_child(
        "import os, signal\n"
        "from avvp.data import synth\n"
        "synth._save_npy = lambda path, array: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"synth.generate({str(tmp_path / 'first')!r}, synth.SynthConfig(train=2, val=1, test=1), progress=False)\n"
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert len(hidden(tmp_path)) == 1  # the killed run's staging folder
    status, err = run(capsys, "synth", "--out", tmp_path / "second", *TINY_SYNTH)
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second"]


def test_sigterm_during_synth_removes_its_staging_folder(tmp_path):
    out = tmp_path / "data"
    child = run_child(
        "import os, signal, sys\n"
        "from avvp.data import synth\n"
        "from avvp.cli import main\n"
        "synth._save_npy = lambda path, array: os.kill(os.getpid(), signal.SIGTERM)\n"
        f"sys.exit(main(['synth', '--out', {str(out)!r}, *{TINY_SYNTH!r}]))\n"
    )
    assert child.returncode == 130, child.stderr
    assert child.stderr.strip() == "avvp synth: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_any_command_as_ctrl_c_does(tiny_llp, tmp_path):
    """Every command, not only train, synth and sweep: a `kill` of `avvp pack` in the middle of its reads exits
    130 and leaves neither the pack nor its temporary (the kill campaign found pack dying at once, exit -15)."""
    out = tmp_path / "packs"
    child = run_child(
        "import os, signal, sys, time\n"
        "from avvp.data.features import FeatureFolder\n"
        "from avvp.cli import main\n"
        "FeatureFolder.read_video = lambda self, vid: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(0.2)\n"
        f"sys.exit(main(['pack', '--features', {str(tiny_llp / 'feats')!r}, '--annotations', {str(tiny_llp)!r},"
        f" '--out', {str(out)!r}]))\n"
    )
    assert child.returncode == 130, child.stderr
    assert child.stderr.strip().splitlines()[-1] == "avvp pack: interrupted"
    assert not out.exists() or list(out.iterdir()) == []


# ------------------------------------------------- 16: one mode for every file avvp writes


def test_every_checkpoint_file_has_the_mode_of_a_plain_file(tmp_path):
    model = create_model("han", dim=8)
    save_checkpoint(tmp_path / "best.safetensors", model)
    export_official(model, tmp_path / "MMIL_Net.pt")
    utils.atomic_torch_save({"epoch": 1}, tmp_path / "last.pt")
    utils.atomic_write_text(tmp_path / "config.json", "{}")
    expected = plain_file_mode(tmp_path)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["best.safetensors", "best.json", "MMIL_Net.pt", "last.pt", "config.json"], expected)


def test_synth_dataset_folder_has_the_mode_of_a_plain_folder(tmp_path, capsys):
    status, err = run(capsys, "synth", "--out", tmp_path / "data", *TINY_SYNTH)
    assert status == 0, err
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "data" / "AVVP_train.csv").stat().st_mode) == plain_file_mode(tmp_path)


# ==================================================================================================== training run folders

HAN = ["--model", "han", "--dim", "32", "--batch-size", "8", "--device", "cpu"]


def _train(tiny: Path, out: Path, *extra: str) -> int:
    return main(
        ["train", "--features", str(tiny / "feats"), "--annotations", str(tiny), "--out", str(out), *HAN, *extra]
    )


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def one_epoch(tiny_llp: Path, tmp_path: Path) -> Path:
    """A run folder after one finished epoch (of 1)."""
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "1") == 0
    return out


@pytest.mark.parametrize(
    "flags, difference",
    [
        (["--lr", "1e-3"], "lr: 0.0003 -> 0.001"),
        (["--batch-size", "4"], "batch_size: 8 -> 4"),
        (["--seed", "5"], "seed: 1 -> 5"),
        (["--dim", "64"], "model:"),
        (["--max-train-videos", "10"], "max_train_videos: None -> 10"),
        (["--cuda-graphs"], "cuda_graphs: False -> True"),
    ],
)
def test_resume_with_other_settings_is_refused_listing_them(tiny_llp, one_epoch, capsys, flags, difference):
    config_before = (one_epoch / "config.json").read_text()
    args = ["--epochs", "2", "--resume", *flags]
    if "--dim" in flags:  # replace the --dim of HAN
        args = ["--epochs", "2", "--resume"]
        status = main(
            ["train", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(one_epoch),
             "--model", "han", "--dim", "64", "--batch-size", "8", "--device", "cpu", *args]
        )  # fmt: skip
    else:
        status = _train(tiny_llp, one_epoch, *args)
    assert status == 2
    err = _error(capsys)
    assert "was trained with other settings" in err and difference in err
    assert (one_epoch / "config.json").read_text() == config_before
    assert len((one_epoch / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_with_another_dataset_is_refused(tiny_llp, one_epoch, tmp_path, capsys):
    """The data are compared as resolved paths: a symlink to the same features is the same dataset, a copy of the
    annotations elsewhere is another one."""
    link = tmp_path / "feats_link"
    link.symlink_to(tiny_llp / "feats", target_is_directory=True)
    args = ["train", "--annotations", str(tiny_llp), "--out", str(one_epoch), *HAN, "--resume"]
    assert main([*args, "--features", str(link), "--epochs", "2"]) == 0
    capsys.readouterr()
    other = tmp_path / "other_annotations"
    other.mkdir()
    for csv in tiny_llp.glob("*.csv"):
        (other / csv.name).write_bytes(csv.read_bytes())
    args = ["train", "--features", str(tiny_llp / "feats"), "--annotations", str(other), "--out", str(one_epoch)]
    assert main([*args, *HAN, "--resume", "--epochs", "3"]) == 2
    assert "annotations: " in _error(capsys)


def test_more_epochs_on_resume_is_allowed_and_recorded(tiny_llp, one_epoch):
    assert _train(tiny_llp, one_epoch, "--epochs", "3", "--resume") == 0
    records = [json.loads(line) for line in (one_epoch / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["resumed"] == {"after_epoch": 1, "changed": {"epochs": [1, 3]}}
    assert "resumed" not in records[0] and "resumed" not in records[2]
    config = json.loads((one_epoch / "config.json").read_text())
    assert config["train"]["epochs"] == 3
    assert config["resumed"] == [{"after_epoch": 1, "changed": {"epochs": [1, 3]}}]


def test_fewer_epochs_than_trained_is_refused(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "2") == 0
    assert _train(tiny_llp, out, "--epochs", "1", "--resume") == 2
    assert "has trained 2 epochs already" in _error(capsys)


def test_a_second_train_into_a_locked_folder_stops(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").write_text(f"{os.getppid()}\n")  # a live process that is not this one
    assert _train(tiny_llp, out, "--epochs", "1") == 2
    assert "in use by another `avvp train`" in _error(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]


def test_the_lock_is_held_while_training_and_released_after(tiny_llp, tmp_path, monkeypatch):
    import avvp.training.loop

    seen = []
    validate = avvp.training.loop._validate

    def spy(run, *args):
        seen.append((run.out_dir / ".train.lock").read_text().strip())
        return validate(run, *args)

    monkeypatch.setattr(avvp.training.loop, "_validate", spy)
    out = tmp_path / "run"
    assert _train(tiny_llp, out, "--epochs", "1") == 0
    assert seen == [f"{os.getpid()} {utils.LOCK_HOST}"]
    assert not (out / ".train.lock").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("damage", ["truncated", "empty", "malicious", "plain state dict", "text"])
def test_a_damaged_last_pt_is_one_clear_error(tiny_llp, one_epoch, tmp_path, capsys, damage):
    state = one_epoch / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "malicious":
        state.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    elif damage == "plain state dict":
        torch.save(torch.load(state, weights_only=True)["model"], state)
    else:
        state.write_text("not a checkpoint\n")
    assert _train(tiny_llp, one_epoch, "--epochs", "2", "--resume") == 2
    err = _error(capsys)
    assert str(state) in err and any(words in err for words in ("cannot read", "cannot be read", "training state"))
    assert "weights_only=False" not in err
    assert not marker.exists()


def test_a_last_pt_of_another_model_is_one_clear_error(tiny_llp, one_epoch, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(other),
                 "--model", "han", "--dim", "64", "--batch-size", "8", "--device", "cpu",
                 "--epochs", "1"]) == 0  # fmt: skip
    (one_epoch / "last.pt").write_bytes((other / "last.pt").read_bytes())
    assert _train(tiny_llp, one_epoch, "--epochs", "2", "--resume") == 2
    assert "does not fit this model" in _error(capsys)


def _killed_in_epoch_one(tiny: Path, out: Path, *flags: str) -> None:
    """What a run killed during epoch 1 leaves: its config.json (and a stale temporary)."""
    assert _train(tiny, out, "--epochs", "1", *flags) == 0
    for name in ("last.pt", "metrics.jsonl", "best.safetensors", "best.json", "test_scores.json"):
        (out / name).unlink()
    (out / ".last.pt.1234.tmp").write_bytes(b"partial")


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_run_killed_before_its_first_checkpoint_starts_again(tiny_llp, tmp_path, capsys, resume):
    out = tmp_path / "run"
    _killed_in_epoch_one(tiny_llp, out)
    assert _train(tiny_llp, out, "--epochs", "1", *resume) == 0
    assert "stopped before its first checkpoint; starting it again" in _error(capsys)
    assert (out / "test_scores.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_killed_run_of_another_configuration_is_not_cleared(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    _killed_in_epoch_one(tiny_llp, out, "--lr", "1e-3")
    assert _train(tiny_llp, out, "--epochs", "1") == 2
    assert "is not empty" in _error(capsys)
    assert (out / "config.json").exists()


def _linked_llp(tiny: Path, data: Path, *, but: str) -> Path:
    """`data`: the tiny LLP folder as symlinks to its items, except `but` (for the test to write its own)."""
    data.mkdir()
    for item in tiny.iterdir():
        if item.name != but:
            (data / item.name).symlink_to(item)
    return data


def test_a_missing_test_feature_stops_train_before_anything_is_written(tiny_llp, tmp_path, capsys):
    data = _linked_llp(tiny_llp, tmp_path / "llp", but="feats")
    test_id = (tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()[1].split("\t")[0][:11]
    for sub in ("vggish", "res152", "r2plus1d_18"):
        (data / "feats" / sub).mkdir(parents=True)
        for npy in (tiny_llp / "feats" / sub).iterdir():
            if not (sub == "r2plus1d_18" and npy.stem == test_id):
                (data / "feats" / sub / npy.name).symlink_to(npy)
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1") == 2
    err = _error(capsys)
    assert f"video {test_id}" in err and "r2plus1d_18" in err and "file not found" in err
    assert not out.exists()


def test_a_test_feature_of_the_wrong_shape_stops_train_before_anything_is_written(tiny_llp, tmp_path, capsys):
    data = tmp_path / "llp"
    shutil.copytree(tiny_llp, data)
    test_id = (tiny_llp / "AVVP_test_pd.csv").read_text().splitlines()[1].split("\t")[0][:11]
    np.save(data / "feats" / "vggish" / f"{test_id}.npy", np.zeros((9, 128), np.float32))
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1") == 2
    assert "shape (9, 128), expected (10, 128)" in _error(capsys)
    assert not out.exists()


def test_out_under_a_regular_file_is_one_clear_error(tiny_llp, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train(tiny_llp, blocker / "run", "--epochs", "1") == 2
    assert f"{blocker} is not a folder" in _error(capsys)


def test_train_takes_skip_bad_rows_as_its_error_suggests(tiny_llp, tmp_path, capsys):
    data = _linked_llp(tiny_llp, tmp_path / "llp", but="AVVP_train.csv")
    (data / "AVVP_train.csv").write_text((tiny_llp / "AVVP_train.csv").read_text() + "not a row\n")
    assert _train(data, tmp_path / "strict", "--epochs", "1") == 2
    assert "--skip-bad-rows" in _error(capsys)
    assert _train(data, tmp_path / "lenient", "--epochs", "1", "--skip-bad-rows") == 0
    config = json.loads((tmp_path / "lenient" / "config.json").read_text())
    assert config["train_videos"] == len((tiny_llp / "AVVP_train.csv").read_text().splitlines()) - 1


def test_a_restarted_run_keeps_the_users_hidden_files(tiny_llp, tmp_path, capsys):
    out = tmp_path / "run"
    _killed_in_epoch_one(tiny_llp, out)
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".notes.md").write_text("why this run\n")
    assert _train(tiny_llp, out, "--epochs", "1") == 0
    assert (out / ".git" / "HEAD").exists() and (out / ".notes.md").read_text() == "why this run\n"


def test_resume_after_a_half_written_metrics_line(tiny_llp, one_epoch, capsys):
    with open(one_epoch / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "lr": 0.0003, "lo')  # a kill (or a full disk) in the middle of a line
    assert _train(tiny_llp, one_epoch, "--epochs", "2", "--resume") == 0
    epochs = [json.loads(line)["epoch"] for line in (one_epoch / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize("stale", [("best.safetensors", "best.json"), ("best.safetensors",)])
def test_a_kill_between_last_pt_and_best_is_repaired_on_resume(tiny_llp, tmp_path, capsys, stale):
    """At learning rate 0 every epoch ties, so each is the best; a run whose best.safetensors stayed at epoch 1
    while last.pt reached epoch 2 gets epoch 2's best back from last.pt, the same bytes as never killed. A kill
    inside save_checkpoint leaves best.json new and best.safetensors old (the JSON is renamed first): the epoch
    is read from the weights file (found by bench/kill_campaign.py)."""
    run, older = tmp_path / "run", tmp_path / "older"
    assert _train(tiny_llp, run, "--epochs", "2", "--lr", "0") == 0
    assert _train(tiny_llp, older, "--epochs", "1", "--lr", "0") == 0
    whole = {name: (run / name).read_bytes() for name in ("best.safetensors", "best.json")}
    for name in stale:
        (run / name).write_bytes((older / name).read_bytes())
    (run / "test_scores.json").unlink()  # the kill came before the test
    capsys.readouterr()
    assert _train(tiny_llp, run, "--epochs", "2", "--lr", "0", "--resume") == 0
    assert "written again from last.pt" in _error(capsys)
    assert {name: (run / name).read_bytes() for name in whole} == whole
    assert json.loads((run / "test_scores.json").read_text())["best_epoch"] == 2


def test_a_corrupt_compressed_predictions_file_is_one_clear_error(tiny_llp, tmp_path, capsys):
    split = load_split(tiny_llp, "test")
    path = tmp_path / "pred.npz"
    probabilities = np.random.default_rng(0).random(split.audio.shape)  # incompressible: a long deflate stream
    np.savez_compressed(path, filenames=np.asarray(split.filenames), audio=probabilities, visual=probabilities)
    data = bytearray(path.read_bytes())
    start = data.index(b"audio.npy") + 60  # inside the compressed audio member: zlib fails before the CRC check
    data[start : start + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    status, _, err = cli(capsys, "score", path, "--annotations", tiny_llp)
    assert status == 2 and "not a readable .npz file" in error_line(err, "score")


def test_filenames_that_are_not_utf8_are_one_clear_error(tiny_llp, tmp_path, capsys):
    split = load_split(tiny_llp, "test")
    names = np.asarray([b"\xff\xfe" + name.encode() for name in split.filenames])
    path = save_predictions_file(tmp_path / "pred.npz", names, split.audio, split.visual)
    status, _, err = cli(capsys, "score", path, "--annotations", tiny_llp)
    assert status == 2 and "not UTF-8" in error_line(err, "score")


def test_a_dataset_retired_by_a_killed_synth_is_restored_not_deleted(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = utils._HOST
    retired = tmp_path / f".data.avvp-{host}-{dead.pid}-abc123.old"
    (retired / "data").mkdir(parents=True)
    (retired / "data" / "synth.json").write_text("{}")
    utils.remove_stale_temporaries(tmp_path)
    assert (tmp_path / "data" / "synth.json").read_text() == "{}"
    assert not retired.exists()


def test_a_lock_is_not_shared_by_two_threads_of_one_process(tmp_path: Path) -> None:
    """Re-entrant within a thread (train under sweep --only), but another thread of the process is refused as
    another process would be, and its lock (this process's pid) is never taken for a dead one's."""
    import threading

    lock_path = tmp_path / ".train.lock"
    outcome: list[str] = []
    with utils.PidLock(lock_path, "another run"):
        with utils.PidLock(lock_path, "another run"):  # the same thread: held again
            pass
        assert lock_path.exists()

        def other() -> None:
            try:
                with utils.PidLock(lock_path, "another run"):
                    outcome.append("held")
            except AvvpError as err:
                outcome.append(str(err))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(outcome) == 1 and f"in use by another run (pid {os.getpid()} on host {utils.LOCK_HOST})" in outcome[0]
    assert not lock_path.exists()
