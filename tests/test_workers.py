"""`avvp.workers.run_in_workers`: every job runs once, in a worker started once, with its output in its own log;
a failing job or a dying worker fails that job alone and the others go on."""

from __future__ import annotations

import os
from pathlib import Path

from avvp.errors import AvvpError
from avvp.workers import run_in_workers


def _work(job: str, device: str) -> None:
    """A job of the tests: 'ok-N' prints its worker's pid, 'bad' raises AvvpError, 'die' kills its worker."""
    print(f"job {job} on {device} in {os.getpid()}")
    if job == "bad":
        raise AvvpError("this job is bad")
    if job == "die":
        os._exit(3)


def _run(tmp_path: Path, names: list[str], devices: list[str]) -> dict[str, str | None]:
    outcomes: dict[str, str | None] = {}
    jobs = [(name, name, tmp_path / f"{name}.log") for name in names]
    run_in_workers(jobs, _work, devices, 1, lambda key, reason: outcomes.__setitem__(key, reason))
    return outcomes


def test_each_job_runs_once_with_its_output_in_its_log_and_workers_are_reused(tmp_path) -> None:
    names = [f"ok-{i}" for i in range(6)]
    assert _run(tmp_path, names, ["cpu", "cpu"]) == dict.fromkeys(names)
    pids = set()
    for name in names:
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"job {name} on cpu in ")
        pids.add(lines[0].split()[-1])
    assert len(pids) == 2  # six jobs, two worker processes


def test_a_failing_job_and_a_dying_worker_fail_only_their_job(tmp_path) -> None:
    outcomes = _run(tmp_path, ["ok-1", "bad", "die", "ok-2", "ok-3"], ["cpu", "cpu"])
    assert outcomes["ok-1"] is None and outcomes["ok-2"] is None and outcomes["ok-3"] is None
    assert outcomes["bad"] == f"this job is bad (log: {tmp_path / 'bad.log'})"
    assert outcomes["die"] == f"the worker process died (exit code 3) (log: {tmp_path / 'die.log'})"
    assert "error: this job is bad" in (tmp_path / "bad.log").read_text()
