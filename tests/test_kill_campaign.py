"""Crash consistency: the short kill campaign (bench/kill_campaign.py --short) kills train, synth, pack and a
sweep with two workers at random moments and inside writes, reruns each the documented way and finds every
result as docs/reliability.md promises it; and the test-only fault hook it uses (avvp.faults)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "kill_campaign.py"


def test_the_short_kill_campaign_finds_every_result_as_promised(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--short", "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"train-mgn", "synth", "pack", "sweep-workers"}
    for name, tally in report.items():
        assert sum(tally["kills"].values()) == 2, name  # --short: 8 kills, 2 per command
        assert tally["identical"] == tally["trials"] and not tally["differences"] and not tally["findings"], name


def _write_three(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom pathlib import Path\nfrom avvp.utils import atomic_write_text\n"
        "for i in range(3):\n    atomic_write_text(Path(sys.argv[1]) / f'f{i}.txt', 'x')\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AVVP_FAULT_")}
    return subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**environ, **env}, check=False)


def test_the_fault_hook_kills_at_the_nth_write_once_per_mark_and_is_inert_otherwise(tmp_path: Path) -> None:
    mark, trace = tmp_path / "mark", tmp_path / "trace.txt"
    (tmp_path / "a").mkdir()
    killed = _write_three(tmp_path / "a", AVVP_FAULT_KILL_AT_WRITE="2", AVVP_FAULT_MARK=str(mark))
    assert killed.returncode == -signal.SIGKILL and mark.exists()
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names[1:] == ["f0.txt"] and names[0].startswith(".f1.txt.avvp-")  # f1 complete, not renamed
    (tmp_path / "b").mkdir()
    spared = _write_three(
        tmp_path / "b", AVVP_FAULT_KILL_AT_WRITE="2", AVVP_FAULT_MARK=str(mark), AVVP_FAULT_TRACE=str(trace)
    )
    assert spared.returncode == 0 and sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "f0.txt",
        "f1.txt",
        "f2.txt",
    ]
    assert [line.split()[1:] for line in trace.read_text().splitlines()] == [
        ["1", "f0.txt"],
        ["2", "f1.txt"],
        ["3", "f2.txt"],
    ]
    (tmp_path / "c").mkdir()
    assert _write_three(tmp_path / "c").returncode == 0 and len(list((tmp_path / "c").iterdir())) == 3
