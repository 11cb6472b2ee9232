"""DDP: 2 gloo processes under torchrun give the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_noise_ratios

from avvp.cli import main
from avvp.data.features import load_features
from avvp.models import create_model

# A deterministic model (HAN without dropout) so that one process and two can be compared exactly; MGN always
# draws Gumbel noise in training (its audio CUG's cross-modal block is hard when the unimodal one is soft).
ARGS = ["--model", "han", "--dim", "64", "--dropout", "0", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]


def _modality_labels(tiny: Path, path: Path) -> Path:
    """The tiny training split's weak labels with the first label of every third video removed from the visual
    labels and of every fifth from the audio labels."""
    from avvp.data.annotations import load_split
    from avvp.data.modality_labels import write_modality_labels

    split = load_split(tiny, "train")
    audio, visual = split.labels.copy(), split.labels.copy()
    for table, step in ((visual, 3), (audio, 5)):
        for row in range(0, len(table), step):
            table[row, table[row].argmax()] = 0
    write_modality_labels(path, split.filenames, audio, visual)
    return path


CASES = ["weak-labels", "modality-labels", "cross-modal-free", "noise-ratios-0"]


@pytest.mark.parametrize("case", CASES)
def test_two_gloo_processes_match_one(tiny_llp: Path, tmp_path: Path, case: str) -> None:
    """Also in the cross-modal-free form (`--no-cross-modal`), which leaves the cross-modal attention without
    gradients: DDP must not wait for them."""
    common = ["--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), *ARGS]
    if case == "modality-labels":
        common += ["--modality-labels", str(_modality_labels(tiny_llp, tmp_path / "labels.csv"))]
    if case == "noise-ratios-0":  # JoMoLD's ranking pass runs on each shard and removes nothing
        common += ["--noise-ratios", str(write_noise_ratios(tmp_path / "noise.json")), "--denoise-from-epoch", "1"]
    cross_modal = case != "cross-modal-free"
    if not cross_modal:
        common.append("--no-cross-modal")
    assert main(["train", "--out", str(tmp_path / "single"), *common]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29517 + CASES.index(case)),  # one port per case: the last case's may still be closing
        "-m",
        "avvp",
        "train",
        "--out",
        str(tmp_path / "ddp"),
        *common,
    ]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    # Compare what the models compute. Parameters whose true gradient is zero (a bias added before a softmax over
    # the same axis) receive rounding noise of ~1e-9 that Adam normalises to steps of ~lr, so those parameters
    # differ between any two summation orders while the outputs do not.
    models = []
    for run in ("single", "ddp"):
        model = create_model("han", dim=64, dropout=0.0, cross_modal=cross_modal)
        model.load_state_dict(torch.load(tmp_path / run / "last.pt", weights_only=True)["model"])
        models.append(model.eval())
    ids = [line.split("\t")[0][:11] for line in (tiny_llp / "AVVP_train.csv").read_text().splitlines()[1:]]
    features = load_features(tiny_llp / "feats", ids)
    inputs = [torch.from_numpy(a) for a in (features.audio, features.res152, features.r2plus1d)]
    with torch.no_grad():
        one, two = (model(*inputs, cross_modal=cross_modal) for model in models)
    for key in ("p_av", "p_a", "p_v", "audio", "visual"):
        torch.testing.assert_close(getattr(two, key), getattr(one, key), rtol=1e-4, atol=1e-5, msg=key)
    # only rank 0 writes: one metrics line per epoch, one best checkpoint
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_one_mgn_step_on_unequal_shards_gives_the_whole_batch_gradient(tmp_path: Path) -> None:
    """2 gloo processes with shards of 3 and 2 videos: after DDP's averaging every gradient (the class-token terms
    included) equals that of one process on all 5 videos; and the two processes draw different noise."""
    from ddp_worker import GLOBAL_BATCH, MODEL, global_batch

    from avvp.distributed import DistributedContext
    from avvp.recipe import TrainConfig
    from avvp.steps import TrainStep, make_optimizer

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523"]
    result = subprocess.run(
        [*command, str(worker), str(tmp_path)], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    torch.manual_seed(0)
    model = create_model("mgn", **MODEL).eval()
    config = TrainConfig(model="mgn", precision="fp32")
    optimizer = make_optimizer(model, config.lr)
    stepper = TrainStep(model, optimizer, (), torch.zeros(0), config, torch.device("cpu"), "fp32", DistributedContext())
    stepper.step(*global_batch(), GLOBAL_BATCH)
    distributed = torch.load(tmp_path / "grads.pt", weights_only=True)
    single = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert distributed.keys() == single.keys()
    assert "audio_class_tokens" in single and single["audio_class_tokens"].abs().sum() > 0
    for name, grad in single.items():
        # atol: summation-order rounding (~1e-6 here); a term mis-scaled by the world size is off by half its size
        torch.testing.assert_close(distributed[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    noise = [torch.load(tmp_path / f"noise{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert not torch.equal(noise[0], noise[1])


def test_early_stopping_stops_every_process_at_rank_0s_decision(tiny_llp: Path, tmp_path: Path) -> None:
    """Rank 0 alone validates and decides to stop after epoch 4 (scripted scores, patience 2); rank 1 follows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    worker = Path(__file__).with_name("ddp_early_stop_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29529"]
    result = subprocess.run(
        [*command, str(worker), str(tiny_llp), str(tmp_path)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"epochs{rank}.txt").read_text() for rank in (0, 1)] == ["4", "4"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stopped"] is True


def _launch(rank: int, port: int, args: list[str]) -> subprocess.Popen:
    """One of 2 processes of a process group, as torchrun starts them: the store they meet at is served by the
    caller (`_store`), as torchrun's agent serves it, but nothing stops the other process once one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    command = [sys.executable, "-m", "avvp", "train", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_pair(port: int, args: list[str]) -> tuple[list[int], list[str]]:
    """Both processes of a pair (`_launch`) run to their end: their exit codes and stderr."""
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    processes = [_launch(rank, port, args) for rank in (0, 1)]
    try:
        ended = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()
        del store
    return [process.returncode for process in processes], [stderr for _, stderr in ended]


def test_an_error_on_the_main_process_alone_stops_the_other_with_it(tiny_llp: Path, tmp_path: Path) -> None:
    """A resume the main process refuses (the run folder was trained with another learning rate): the other
    process stops at once with that error, instead of waiting for a process that is gone."""
    common = ["--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), *ARGS, "--epochs", "1"]
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *common]) == 0
    args = ["--out", str(out), "--resume", *common, "--lr", "1e-3"]
    codes, stderrs = _run_pair(29531, args)
    errors = [stderr.strip().splitlines()[-1] for stderr in stderrs]
    assert codes == [2, 2], errors
    assert errors[0].startswith(f"avvp train: error: {out} was trained with other settings (lr:")
    assert errors[1] == errors[0].replace("error: ", "error: process 0 stopped: ", 1)


def test_a_loss_term_of_weight_0_is_refused_under_torchrun(tiny_llp: Path, tmp_path: Path) -> None:
    """A term of weight 0 leaves the weights only it trains without gradients (here HAN's modality attention, which
    only p_av uses), which DDP cannot synchronise: both processes stop with one line, before the run folder."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), *ARGS]
    args += ["--loss-weight", "p_av=0"]
    codes, stderrs = _run_pair(29535, args)
    assert codes == [2, 2], stderrs
    for stderr in stderrs:
        assert "a term of weight 0 (p_av) is not supported under torchrun" in stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_jomold_under_two_gloo_processes_counts_every_shards_removals(tiny_llp: Path, tmp_path: Path) -> None:
    """Each process ranks its own shard (n from the shard's positives); with every ratio 1 every positive label is
    removed whatever the shards, so the epoch's record, summed over the processes, counts every training label."""
    import json

    from avvp.data.annotations import load_split

    noise = write_noise_ratios(tmp_path / "noise.json", audio=1.0, visual=1.0)
    args = ["--out", str(tmp_path / "ddp"), "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp),
            *ARGS, "--noise-ratios", str(noise)]  # fmt: skip
    codes, errors = _run_pair(29547, args)
    assert codes == [0, 0], errors
    labels = int(load_split(tiny_llp, "train").labels.sum())
    records = [json.loads(line)["denoise"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["removed"] for r in records] == [{"audio": 0, "visual": 0}, {"audio": labels, "visual": labels}]
