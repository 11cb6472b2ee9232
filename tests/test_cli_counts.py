"""Count flags (`avvp.cli.common.check_at_least_one`): a value below 1 is one error line naming the flag and its
value, before anything is read or written, in every command that takes one."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli

DATA = ["--features", "{tmp}/feats", "--annotations", "{tmp}"]
CHECKPOINT = ["--checkpoint", "{tmp}/none.safetensors", *DATA]
COMMANDS = {
    "synth": ["synth", "--out", "{tmp}/out"],
    "estimate-noise": ["estimate-noise", *CHECKPOINT, "--out", "{tmp}/out/noise.json"],
    "refine-labels": ["refine-labels", *CHECKPOINT, "--out", "{tmp}/out/labels.csv"],
    "sweep": ["sweep", "depth", *DATA, "--out", "{tmp}/out"],
    "demo": ["demo", "--out", "{tmp}/out"],
    "train": ["train", *DATA, "--out", "{tmp}/out"],
}
CASES = [
    ("synth", "--workers"),
    ("estimate-noise", "--batch-size"),
    ("estimate-noise", "--max-train-videos"),
    ("refine-labels", "--batch-size"),
    ("sweep", "--epochs"),
    ("sweep", "--batch-size"),
    ("sweep", "--lr-step"),
    ("sweep", "--max-train-videos"),
    ("sweep", "--patience"),
    ("demo", "--val"),
    ("demo", "--lr-step"),
    ("train", "--patience"),
]


@pytest.mark.parametrize(("command", "flag"), CASES)
@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_count_below_1_is_one_line(tmp_path: Path, capsys, command: str, flag: str, value: str) -> None:
    args = [arg.format(tmp=tmp_path) for arg in COMMANDS[command]]
    status, _, err = cli(capsys, *args, flag, value)
    assert status == 2
    assert err.strip().splitlines() == [f"avvp {command}: error: {flag} {value}: must be at least 1"]
    assert not (tmp_path / "out").exists()
