"""`avvp.workers.run_in_workers`: every job runs once, in a worker started once, with its output in its own log;
a failing job or a dying worker fails that job alone and the others go on; a worker whose parent is gone exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from avvp.errors import AvvpError
from avvp.workers import run_in_workers


def _work(job: str, device: str) -> str:
    """A job of the tests: 'ok-N' prints its worker's pid and thread setting, 'bad' raises AvvpError, 'die' kills
    its worker."""
    print(f"job {job} on {device} in {os.getpid()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if job == "bad":
        raise AvvpError("this job is bad")
    if job == "die":
        os._exit(3)
    return f"result of {job}"


def _run(tmp_path: Path, names: list[str], devices: list[str]) -> dict[str, tuple]:
    outcomes: dict[str, tuple] = {}
    jobs = [(name, name, tmp_path / f"{name}.log") for name in names]
    run_in_workers(jobs, _work, devices, 1, lambda key, *outcome: outcomes.__setitem__(key, outcome))
    return outcomes


def test_each_job_runs_once_with_its_output_in_its_log_and_workers_are_reused(tmp_path) -> None:
    names = [f"ok-{i}" for i in range(6)]
    assert _run(tmp_path, names, ["cpu", "cpu"]) == {name: (f"result of {name}", None) for name in names}
    pids = set()
    for name in names:
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"job {name} on cpu in ")
        assert lines[0].endswith("OMP_NUM_THREADS=1")  # each worker's share of the cores
        pids.add(lines[0].split()[-2])
    assert len(pids) == 2  # six jobs, two worker processes


def test_a_failing_job_and_a_dying_worker_fail_only_their_job(tmp_path) -> None:
    outcomes = _run(tmp_path, ["ok-1", "bad", "die", "ok-2", "ok-3"], ["cpu", "cpu"])
    for name in ("ok-1", "ok-2", "ok-3"):
        assert outcomes[name] == (f"result of {name}", None)
    assert outcomes["bad"] == (None, f"this job is bad (log: {tmp_path / 'bad.log'})")
    assert outcomes["die"] == (None, f"the worker process died (exit code 3) (log: {tmp_path / 'die.log'})")
    assert "error: this job is bad" in (tmp_path / "bad.log").read_text()


_SETUP: dict[str, str] = {}  # what the initializer left in a worker


def _setup(mark_file: str, tag: str) -> None:
    """The tests' initializer: records its worker's pid (once per call) and leaves `tag` for the jobs."""
    with open(mark_file, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    _SETUP["tag"] = tag


def _tagged(job: str, device: str) -> tuple[str | None, int]:
    return _SETUP.get("tag"), os.getpid()


def _broken_setup() -> None:
    raise ModuleNotFoundError("No module named 'gone'\nmore lines")


def test_the_initializer_runs_once_in_each_worker_before_its_jobs(tmp_path) -> None:
    marks = tmp_path / "initialised"
    outcomes: dict[str, tuple] = {}
    jobs = [(f"job-{i}", f"job-{i}", tmp_path / f"job-{i}.log") for i in range(6)]
    run_in_workers(jobs, _tagged, ["cpu", "cpu"], 1, lambda key, *outcome: outcomes.__setitem__(key, outcome),
                   initializer=_setup, initargs=(str(marks), "ready"))  # fmt: skip
    assert all(reason is None and result[0] == "ready" for result, reason in outcomes.values()), outcomes
    initialised = marks.read_text().split()
    assert len(initialised) == 2 and {str(result[1]) for result, _ in outcomes.values()} == set(initialised)


def test_a_failing_initializer_fails_each_job_of_its_worker_with_its_reason(tmp_path) -> None:
    outcomes: dict[str, tuple] = {}
    jobs = [(name, name, tmp_path / f"{name}.log") for name in ("ok-1", "ok-2", "ok-3")]
    run_in_workers(jobs, _work, ["cpu", "cpu"], 1, lambda key, *outcome: outcomes.__setitem__(key, outcome),
                   initializer=_broken_setup)  # fmt: skip
    reason = "the worker's initializer failed: ModuleNotFoundError: No module named 'gone'"
    assert outcomes == {
        name: (None, f"{reason} (log: {tmp_path / f'{name}.log'})") for name in ("ok-1", "ok-2", "ok-3")
    }
    assert f"error: {reason}" in (tmp_path / "ok-1.log").read_text()


def _slow(job: object, device: str) -> None:
    """Writes the worker's pid (the test reads it), then trains for ten minutes; its clean-up leaves a mark."""
    pid_file = Path(os.environ["AVVP_TEST_PID_FILE"])
    pid_file.write_text(str(os.getpid()))
    try:
        time.sleep(600)
    finally:
        pid_file.with_name("cleaned up").write_text("yes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _parent(tmp_path: Path) -> subprocess.Popen:
    """A process running `run_in_workers` with two workers, one busy with `_slow`, the other idle."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[1])\nfrom test_workers import _slow\n"
        "from avvp.workers import run_in_workers\nif __name__ == '__main__':\n"
        "    run_in_workers([('slow', None, Path(sys.argv[2]))], _slow, ['cpu', 'cpu'], 1, print)\n"
    )
    env = dict(os.environ, AVVP_TEST_PID_FILE=str(tmp_path / "pid"))
    return subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path / "slow.log")],
                            env=env)  # fmt: skip


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def _wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_workers_exit_when_their_parent_is_killed(tmp_path) -> None:
    parent = _parent(tmp_path)
    assert _wait_for(lambda: (tmp_path / "pid").exists())
    workers = [child for child in _children(parent.pid) if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]
    assert len(workers) == 2
    parent.kill()
    parent.wait()
    # both notice within seconds: the idle one, and the busy one through its job's clean-up (a sweep's rerun
    # would otherwise find its run folder locked by a worker still training)
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10.0)
    assert (tmp_path / "cleaned up").exists()


def test_sigterm_to_the_parent_stops_busy_workers_through_their_clean_up(tmp_path) -> None:
    parent = _parent(tmp_path)
    assert _wait_for(lambda: (tmp_path / "pid").exists())
    busy = int((tmp_path / "pid").read_text())
    os.kill(parent.pid, 15)  # no handler in this parent: it dies, the busy worker is orphaned like a killed sweep
    parent.wait()
    os.kill(busy, 15)  # what `_stop` sends: the job is interrupted as Ctrl-C would, and the worker exits
    assert _wait_for(lambda: not _alive(busy), 10.0)
    assert (tmp_path / "cleaned up").exists()  # as Ctrl-C would: the run folder's lock is released
    assert "Traceback" not in (tmp_path / "slow.log").read_text()
