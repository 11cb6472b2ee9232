"""Sweeps on a cluster: `avvp sweep KIND ... --only RUN` trains one run of a sweep per process (several processes in
one sweep folder at once, one lock per run), `--print-commands` prints that command for every unfinished run, and
`--table-only` collects the runs into the tables."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from avvp.cli import build_parser, main
from avvp.cli.sweep import plan_from_args
from avvp.models import registry
from avvp.utils import LOCK_HOST

pytestmark = pytest.mark.usefixtures("one_thread")

GO_ENV = "AVVP_TEST_WAIT_FOR"
PLUGIN = "avvp_wait_plugin"
PLUGIN_SOURCE = f'''
"""A plugin model for the tests: HAN under another name, whose first forward waits until the file ${GO_ENV} names
exists (at most a minute), so that a test decides when its training goes on."""
import dataclasses
import os
import time

from avvp.models import HANConfig, register_model

waited = False


@dataclasses.dataclass(frozen=True)
class WaitConfig(HANConfig):
    """HAN's settings."""


def build(config):
    from avvp.models.han import HAN

    class WaitHAN(HAN):
        def forward(self, *args, **kwargs):
            global waited
            go, deadline = os.environ.get("{GO_ENV}"), time.monotonic() + 60
            while go and not waited and not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.05)
            waited = True
            return super().forward(*args, **kwargs)

    return WaitHAN(config)


register_model("waithan", config=WaitConfig, factory=build, title="WaitHAN", about="HAN that waits for a file")
'''


def _sweep(kind: str, tiny_llp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", kind, "--features", str(tiny_llp / "feats"), "--annotations", str(tiny_llp), "--out", str(out),
        "--epochs", "1", "--dim", "16", "--batch-size", "8", *extra,
    ]  # fmt: skip


def _environ(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: one thread each (two processes share the cores), no plugin unless given."""
    environ = {key: value for key, value in os.environ.items() if key != registry.PLUGINS_ENV}
    return environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | extra


def _start(args: list[str], **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "avvp", *args]
    return subprocess.Popen(command, env=_environ(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_line(line: str, **env: str) -> subprocess.Popen:
    """A printed command line run as a shell would: its leading NAME=VALUE words are the environment."""
    words = shlex.split(line)
    assignments = {}
    while "=" in words[0] and not words[0].startswith("/"):
        name, value = words.pop(0).split("=", 1)
        assignments[name] = value
    environ = _environ(**env) | assignments
    return subprocess.Popen(words, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _table_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def wait_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The 'waithan' plugin in a folder on the path, named by $AVVP_PLUGINS here; yields what a subprocess needs
    beside the printed command (PYTHONPATH, and the file its first forward waits for). The registry is restored."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGIN)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    sys.modules.pop(PLUGIN, None)
    yield {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
           GO_ENV: str(tmp_path / "go")}  # fmt: skip
    sys.modules.pop(PLUGIN, None)


def test_two_only_processes_train_disjoint_runs_and_table_only_collects_them(tiny_llp: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    common = ("--configs", "han,mgn-1-1-2", "--seeds", "1", "--device", "cpu")
    first, second = (_start(_sweep("depth", tiny_llp, out, *common, "--only", name)) for name in
                     ("han-seed1", "mgn-1-1-2-seed1"))  # fmt: skip
    for process, name in ((first, "han-seed1"), (second, "mgn-1-1-2-seed1")):
        status, stdout, err = _finish(process)
        assert status == 0, err
        assert f"--only {name}: trained" in stdout
        assert (out / name / "test_scores.json").is_file() and _epochs(out / name) == [1]
    assert not (out / "table.md").exists()  # --only trains; the tables are --table-only's
    assert sorted(p.name for p in out.iterdir()) == ["han-seed1", "mgn-1-1-2-seed1", "sweep.json"]  # no lock left
    assert not any(path.name.endswith(".lock") for path in out.rglob(".*"))
    record = json.loads((out / "sweep.json").read_text())  # written by the first, left alone by the other
    assert [run["name"] for run in record["runs"]] == ["han-seed1", "mgn-1-1-2-seed1"]
    assert main(_sweep("depth", tiny_llp, out, "--configs", "han,mgn-1-1-2", "--seeds", "1", "--table-only")) == 0
    assert [(row["method"], row["seeds"]) for row in _table_rows(out)] == [("HAN", "1"), ("MGN", "1")]


def test_the_same_run_started_twice_at_once_trains_once_and_the_other_stops_in_one_line(
    wait_plugin: dict[str, str], tiny_llp: Path, tmp_path: Path, capsys
):
    """Both processes start at once on one run; the one that takes the run's lock waits in its first step until
    the test lets it go, so the other always finds the lock held: it stops at once, with one line naming the
    holder's pid and host, and the holder trains the run exactly once. The printed command carries the plugin."""
    out = tmp_path / "sweep"
    assert main(_sweep("models", tiny_llp, out, "--configs", "waithan", "--seeds", "1", "--device", "cpu",
                       "--print-commands")) == 0  # fmt: skip
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{registry.PLUGINS_ENV}={PLUGIN} ") and line.endswith(" --only waithan-seed1")
    processes = [_start_line(line, **wait_plugin) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(process.poll() is None for process in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = next(process for process in processes if process.poll() is not None)
        holder = next(process for process in processes if process is not stopped)
        assert (out / "waithan-seed1" / ".train.lock").read_text() == f"{holder.pid} {LOCK_HOST}\n"
        status, stdout, err = _finish(stopped)
        assert status == 2 and stdout == "", err
        assert err.count("\n") == 1 and err.startswith("avvp sweep: error: "), err
        assert f"in use by another `avvp train` or `avvp sweep --only` (pid {holder.pid} on host {LOCK_HOST})" in err
        Path(wait_plugin[GO_ENV]).touch()
        status, stdout, err = _finish(holder)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert status == 0 and "--only waithan-seed1: trained" in stdout, err
    run = out / "waithan-seed1"
    assert _epochs(run) == [1] and "resumed" not in json.loads((run / "config.json").read_text())
    assert not (run / ".train.lock").exists()


def test_a_lock_of_another_host_stops_only_while_a_dead_pid_of_this_host_is_cleared(
    tiny_llp: Path, tmp_path: Path, capsys
):
    """`--only` finds its run locked by a process of another machine whose pid is not alive here: it stops in one
    line naming pid and host and how to clear the lock, and leaves the lock and the folder; a lock of a dead process
    of this machine is taken over and the run trains. `--only` never rewrites an existing sweep.json."""
    out = tmp_path / "sweep"
    assert main(_sweep("depth", tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1,2", "--print-commands")) == 0
    record = (out / "sweep.json").read_bytes()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    pid = dead.stdout.decode().strip()  # a process of this machine that is gone
    lock = out / "mgn-1-1-2-seed1" / ".train.lock"
    lock.parent.mkdir()
    lock.write_text(f"{pid} node07.cluster\n")
    only = _sweep("depth", tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1", "--device", "cpu")
    capsys.readouterr()
    assert main([*only, "--only", "mgn-1-1-2-seed1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(pid {pid} on host node07.cluster, another machine" in err
    assert "once that process is gone" in err and f"delete {lock}" in err
    assert sorted(p.name for p in lock.parent.iterdir()) == [".train.lock"]
    assert lock.read_text() == f"{pid} node07.cluster\n"

    lock.write_text(f"{pid} {LOCK_HOST}\n")  # this machine's, of a process that is gone
    assert main([*only, "--only", "mgn-1-1-2-seed1"]) == 0
    assert "--only mgn-1-1-2-seed1: trained" in capsys.readouterr().out
    assert (lock.parent / "test_scores.json").is_file() and not lock.exists()
    assert (out / "sweep.json").read_bytes() == record  # print-commands' record (seeds 1,2), not --only's (seed 1)


def test_print_commands_parse_back_to_the_same_runs_with_every_setting(tiny_llp: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    labels = tmp_path / "labels.csv"
    labels.write_text("not read before training\n")
    flags = ["--configs", "mgn-1-1-2,han", "--seeds", "3,1", "--lr", "1e-3", "--lr-step", "2", "--precision", "fp32",
             "--max-train-videos", "16", "--patience", "2", "--min-epochs", "1", "--modality-labels", str(labels),
             "--device", "cpu"]  # fmt: skip
    args = _sweep("depth", tiny_llp, out, *flags, "--print-commands")
    assert main(args) == 0
    printed, err = capsys.readouterr()
    lines = printed.splitlines()
    assert "4 command(s), one per unfinished run of 4" in err
    original = plan_from_args(build_parser().parse_args(args))[2]
    assert len(lines) == len(original)
    for line, run in zip(lines, original, strict=True):
        words = shlex.split(line)
        assert words[:3] == [sys.executable, "-m", "avvp"]  # no $AVVP_PLUGINS: built-in models, none set
        parsed = build_parser().parse_args(words[3:])
        assert parsed.only == run.name and parsed.device == "cpu" and not parsed.print_commands
        again = {planned.name: planned for planned in plan_from_args(parsed)[2]}
        assert again[run.name].train == run.train and again[run.name].config == run.config
        assert again[run.name].run_dir == run.run_dir.resolve()
        assert [planned.name for planned in again.values()] == [planned.name for planned in original]
    assert json.loads((out / "sweep.json").read_text())["train"]["lr_step"] == 2


def test_print_commands_carry_the_plugins_the_sweep_needs(
    wait_plugin: dict[str, str], tiny_llp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """$AVVP_PLUGINS as set, and the module of a plugin's model registered from Python (not through it)."""
    args = _sweep("models", tiny_llp, tmp_path / "sweep", "--configs", "han,waithan", "--seeds", "1",
                  "--print-commands")  # fmt: skip
    monkeypatch.setenv(registry.PLUGINS_ENV, f"{PLUGIN},json")  # set: carried as set
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{registry.PLUGINS_ENV}={PLUGIN},json ") for line in lines)
    monkeypatch.delenv(registry.PLUGINS_ENV)  # waithan stays registered from Python (imported above)
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{registry.PLUGINS_ENV}={PLUGIN} ") for line in lines)
    assert main(_sweep("depth", tiny_llp, tmp_path / "plain", "--configs", "han", "--print-commands")) == 0
    assert all(line.startswith(sys.executable) for line in capsys.readouterr().out.splitlines())


def test_a_printed_command_run_twice_finds_its_run_finished(tiny_llp: Path, tmp_path: Path, capsys):
    out = tmp_path / "sweep"
    args = _sweep("depth", tiny_llp, out, "--configs", "mgn-1-1-2", "--seeds", "1", "--device", "cpu")
    assert main([*args, "--print-commands"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    status, stdout, err = _finish(_start_line(line))
    assert status == 0 and "--only mgn-1-1-2-seed1: trained" in stdout, err
    scores = out / "mgn-1-1-2-seed1" / "test_scores.json"
    written = scores.stat().st_mtime_ns
    status, stdout, err = _finish(_start_line(line))
    assert status == 0 and "--only mgn-1-1-2-seed1: finished already, nothing to do" in stdout, err
    assert scores.stat().st_mtime_ns == written
    assert main([*args, "--print-commands"]) == 0
    printed, err = capsys.readouterr()
    assert printed == "" and "every run of" in err and "is finished: no command to print" in err
    assert main([*args, "--table-only"]) == 0


def test_only_refuses_a_name_not_in_the_sweep_and_the_flags_of_several_processes(
    tiny_llp: Path, tmp_path: Path, capsys
):
    out = tmp_path / "sweep"
    args = _sweep("depth", tiny_llp, out, "--seeds", "1,2")
    assert main([*args, "--only", "mgn-9-9-9-seed1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only mgn-9-9-9-seed1: not a run of this sweep" in err
    assert "han-seed1, mgn-1-1-2-seed1, mgn-2-2-4-seed1, mgn-3-3-6-seed1, mgn-4-4-8-seed1, ... (14 in all)" in err
    for flags in (["--workers", "2"], ["--devices", "cpu,cpu"], ["--stack"], ["--table-only"]):
        for cluster in (["--only", "han-seed1"], ["--print-commands"]):
            assert main([*args, *flags, *cluster]) == 2
            assert f"not with {flags[0]}" in capsys.readouterr().err
    assert not out.exists()
