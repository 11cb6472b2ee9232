"""Kill campaign: kill avvp commands at random moments, rerun them the documented way until they finish, and
compare what they leave with a run that was never killed (issue 22, docs/reliability.md).

    .venv/bin/python bench/kill_campaign.py --short --out /tmp/kc        # CI (tests/test_kill_campaign.py)
    .venv/bin/python bench/kill_campaign.py --kills 200 --out /tmp/kc    # the figures of docs/reliability.md

Commands (tiny sizes, CPU; `avvp train` with the default two threads, sweep workers with one each):
  train-mgn, train-han   `avvp train`, rerun with --resume
  sweep-workers          `avvp sweep depth --workers 2` (MGN and HAN rows), rerun as it was
  sweep-stack            `avvp sweep depth --stack` (one MGN row, three seeds), rerun as it was
  synth                  `avvp synth --overwrite`, rerun as it was
  pack                   `avvp pack --annotations`, rerun as it was

Each trial starts the command in a fresh folder and, until it finishes, picks one way to stop it: SIGKILL (for a
sweep, of the whole process group or of the parent alone, then waiting for its workers to go), SIGTERM to the
process, SIGINT to the process group (Ctrl-C), each at a moment drawn uniformly between the start-up (the time
Python takes to import torch and avvp) and the baseline's duration; or a SIGKILL inside a write, through the
test-only fault hook `avvp.faults` (the N-th write point, N drawn over the baseline's write points). After
--max-kills kills in a trial the command runs to its end. The final outputs are compared with the baseline:

- weights (best.safetensors, every tensor of last.pt) and test_scores.json, best.json: bit for bit;
- metrics.jsonl and config.json, sweep.json: every field but the timing ones (TIMING_FIELDS);
- tables (table.md, table.csv), LLP-Synth folders and packs: byte for byte; no other file left behind
  (temporaries, locks); a sweep's logs/ are not compared (they record every attempt, by design).

A stacked sweep resumes exactly only when its runs had saved the same epoch when killed; a trial where a kill
left them at different epochs and whose result differs is counted as "same maths, other noise" (promised),
not as a difference. Also checked on every stop: an interrupted command exits with 130 (SIGTERM, SIGINT) and
prints no traceback, a rerun never fails, and no process of the command outlives it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

TIMING_FIELDS = ("train_seconds", "videos_per_second", "epoch_seconds")  # metrics.jsonl, per epoch
DATA = ["--train", "64", "--val", "8", "--test", "8", "--workers", "1"]  # the training commands' data
BIG = ["--train", "600", "--val", "50", "--test", "50"]  # what synth writes and pack reads
TINY_MGN = ["--dim", "32", "--depth-audio", "1", "--depth-visual", "1", "--depth-av", "2"]
STOPS = ("SIGKILL", "SIGKILL", "SIGKILL", "SIGTERM", "SIGINT", "fault", "fault")  # drawn uniformly
SETTLE_S = 60  # how long the processes of a stopped command may take to go


@dataclass
class Case:
    """One command of the campaign: its arguments in folder `work` (the output is `work/out`), and how it is rerun."""

    name: str
    args: list[str]
    imports: str  # what the command imports before it does anything: its start-up
    resume: list[str] = field(default_factory=list)  # added to the rerun
    sweep: bool = False  # a process group with workers: SIGKILL of the group or of the parent alone
    stacked: bool = False
    previous: bool = False  # the output folder holds an older dataset when the command starts (synth --overwrite)


def cases(data: Path, big: Path) -> dict[str, Case]:
    """The campaign's commands; `data` is a tiny LLP-Synth folder, `big` a larger one (for pack)."""
    feats, ann = str(data / "feats"), str(data)
    train = ["train", "--features", feats, "--annotations", ann, "--out", "{out}", "--batch-size", "8"]
    sweep = ["sweep", "depth", "--features", feats, "--annotations", ann, "--out", "{out}", "--batch-size", "8"]
    sweep += ["--dim", "32", "--device", "cpu", "--lr-step", "2"]
    torch_imports = "import torch, avvp.cli, avvp.training"
    return {
        "train-mgn": Case(
            "train-mgn",
            [*train, "--model", "mgn", *TINY_MGN, "--epochs", "6", "--lr-step", "3", "--device", "cpu"],
            torch_imports,
            resume=["--resume"],
        ),
        "train-han": Case(
            "train-han",
            [*train, "--model", "han", "--dim", "64", "--epochs", "4", "--lr-step", "2", "--device", "cpu"],
            torch_imports,
            resume=["--resume"],
        ),
        "sweep-workers": Case(
            "sweep-workers",
            [*sweep, "--configs", "mgn-1-1-2,han", "--seeds", "1,2", "--epochs", "3", "--workers", "2"],
            torch_imports,
            sweep=True,
        ),
        "sweep-stack": Case(
            "sweep-stack",
            [*sweep, "--configs", "mgn-1-1-2", "--seeds", "1,2,3", "--epochs", "4", "--stack"],
            torch_imports,
            sweep=True,
            stacked=True,
        ),
        "synth": Case(
            "synth",
            ["synth", "--out", "{out}", *BIG, "--seed", "3", "--workers", "2", "--overwrite"],
            "import avvp.cli, avvp.data.synth",
            previous=True,
        ),
        "pack": Case(
            "pack",
            ["pack", "--features", str(big / "feats"), "--annotations", str(big), "--out", "{out}", "--workers", "2"],
            "import avvp.cli, avvp.data.packed",
        ),
    }


# ---------------------------------------------------------------- running and stopping a command


@dataclass
class Attempt:
    stop: str | None  # what was sent ("SIGKILL group", "fault 7", ...), None for a run left alone
    rc: int
    seconds: float
    stderr: str
    lingered: int  # processes of the command still alive SETTLE_S after it stopped


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def settle(pgid: int) -> int:
    """Wait up to SETTLE_S for the group to empty; kill and count whatever is left."""
    deadline = time.monotonic() + SETTLE_S
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    if left:
        os.killpg(pgid, signal.SIGKILL)
        while group_members(pgid):
            time.sleep(0.1)
    return len(left)


def run(args: list[str], log: Path, stop: tuple[str, float] | None, fault_at: int | None) -> Attempt:
    """Run `avvp ARGS` in its own process group; `stop` = (how, after seconds) sends a signal then."""
    env = dict(os.environ)
    env.pop("AVVP_FAULT_TRACE", None)
    mark = log.with_suffix(".fault")
    mark.unlink(missing_ok=True)
    if fault_at is not None:
        env.update(AVVP_FAULT_KILL_AT_WRITE=str(fault_at), AVVP_FAULT_MARK=str(mark))
    started = time.monotonic()
    with open(log, "a") as out, open(log.with_suffix(".err"), "w+") as err:
        out.write(f"$ avvp {' '.join(args)}  # stop: {stop or fault_at}\n")
        out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "avvp", *args], stdout=out, stderr=err, env=env, start_new_session=True
        )
        sent = None
        if stop is not None:
            how, after = stop
            try:
                proc.wait(timeout=after)
            except subprocess.TimeoutExpired:
                send(proc.pid, how)
                sent = how
        rc = proc.wait()
        seconds = time.monotonic() - started
        lingered = settle(proc.pid)
        err.seek(0)
        stderr = err.read()
        out.write(stderr)
    label = sent or (f"fault {fault_at}" if mark.exists() else None)  # a worker's kill: the sweep goes on
    return Attempt(label, rc, seconds, stderr, lingered)


def send(pid: int, how: str) -> None:
    if how == "SIGKILL group":
        os.killpg(pid, signal.SIGKILL)
    elif how == "SIGKILL parent" or how == "SIGKILL":
        os.kill(pid, signal.SIGKILL)
    elif how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
    elif how == "SIGINT":
        os.killpg(pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    else:
        raise ValueError(how)


# ---------------------------------------------------------------- comparing with the baseline


def compare(base: Path, out: Path) -> list[str]:
    """Every difference between the output `out` and the baseline `base` (folders or files), as sentences."""
    if base.is_file():
        return [] if base.read_bytes() == out.read_bytes() else [f"{out.name}: bytes differ"]
    diffs = []
    names = {p.relative_to(base) for p in base.rglob("*") if "logs" not in p.relative_to(base).parts}
    found = {p.relative_to(out) for p in out.rglob("*") if "logs" not in p.relative_to(out).parts}
    diffs += [f"{name}: not in the baseline (left behind)" for name in sorted(found - names)]
    diffs += [f"{name}: missing" for name in sorted(names - found)]
    for name in sorted(names & found):
        if (base / name).is_file():
            diffs += [f"{name}: {d}" for d in compare_file(base / name, out / name)]
    return diffs


def compare_file(base: Path, out: Path) -> list[str]:
    if base.suffix == ".pt":
        a, b = (torch.load(p, weights_only=True, map_location="cpu") for p in (base, out))
        return same(a, b, "")
    if base.name == "metrics.jsonl":
        a, b = (base.read_text().splitlines(), out.read_text().splitlines())
        if len(a) != len(b):
            return [f"{len(b)} lines, the baseline {len(a)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(untimed(x), untimed(y), f"line {i + 1}")]
    if base.suffix == ".json" and base.name != "test_scores.json" and base.name != "best.json":
        return same(json.loads(base.read_text()), json.loads(out.read_text()), "")
    return [] if base.read_bytes() == out.read_bytes() else ["bytes differ"]


def untimed(line: str) -> object:
    record = json.loads(line)
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def same(a: object, b: object, where: str) -> list[str]:
    """Differences between two nested values; tensors must be equal bit for bit (dtype, shape, every bit)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {b.dtype}{list(b.shape)}, the baseline {a.dtype}{list(a.shape)}"]
        return [] if torch.equal(bits(a), bits(b)) else [f"{where}: tensor differs"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, b))}, the baseline {sorted(map(str, a))}"]
        return [d for k in a for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{where}: {b!r}, the baseline {a!r}"]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (so that -0.0 differs from 0.0 and a NaN equals itself)."""
    return tensor.contiguous().view(torch.uint8) if tensor.is_floating_point() and tensor.dim() else tensor


def saved_epochs(out: Path) -> set[int]:
    """The epochs of the last.pt files of a sweep folder (runs without one count as epoch 0)."""
    epochs = set()
    for run_dir in (p for p in out.iterdir() if p.is_dir() and p.name != "logs"):
        last = run_dir / "last.pt"
        try:
            epochs.add(int(torch.load(last, weights_only=True, map_location="cpu")["epoch"]) if last.exists() else 0)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError):  # left unreadable
            epochs.add(-1)
    return epochs


# ---------------------------------------------------------------- the campaign


@dataclass
class Tally:
    trials: int = 0
    kills: Counter = field(default_factory=Counter)
    reruns: int = 0
    identical: int = 0
    other_noise: int = 0
    differences: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def fill(args: list[str], out: Path) -> list[str]:
    return [str(out) if a == "{out}" else a for a in args]


@dataclass
class Baseline:
    out: Path  # what the uninterrupted command left
    seconds: float
    writes: int  # write points of its busiest process (the fault hook's range)
    startup: float  # seconds before the command does anything: no kill is drawn earlier


def prepare(case: Case, work: Path, data: Path) -> Path:
    """A fresh folder for one run of `case`; its output path (holding an older dataset where the case says)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if case.previous:
        shutil.copytree(data, work / "out")
    return work / "out"


def baseline(case: Case, root: Path, data: Path) -> Baseline:
    """The uninterrupted run, with the fault hook tracing its write points."""
    out = prepare(case, root / case.name / "baseline", data)
    trace = out.parent / "writes.txt"
    env = {**os.environ, "AVVP_FAULT_TRACE": str(trace)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "avvp", *fill(case.args, out)], capture_output=True, text=True, check=False, env=env
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"kill_campaign: the baseline of {case.name} failed: {proc.stderr.strip()[-500:]}")
    per_process = Counter(line.split()[0] for line in trace.read_text().splitlines()) if trace.exists() else {}
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", case.imports], check=True)
    return Baseline(out, seconds, max(per_process.values(), default=0), time.monotonic() - started)


def trial(case: Case, work: Path, data: Path, base: Baseline, rng: random.Random, max_kills: int):
    """One trial: (stops sent, reruns, differences, findings, whether the runs of a stacked sweep were left at
    different epochs by a kill)."""
    out, log = prepare(case, work, data), work / "log.txt"
    kills, findings, reruns, uneven = Counter(), [], 0, False
    while True:
        args = fill(case.args + (case.resume if reruns else []), out)
        stop, fault_at = pick_stop(case, base, rng) if sum(kills.values()) < max_kills else (None, None)
        attempt = run(args, log, stop, fault_at)
        findings += check(attempt, lambda: out.exists() and not compare(base.out, out))
        if attempt.stop is None:
            if attempt.rc == 0 or reruns > max_kills + 5:
                break
            findings.append(f"exit {attempt.rc} without a kill: {error_line(attempt.stderr)}")
        else:
            kills[attempt.stop.split()[0] if attempt.stop.startswith("fault") else attempt.stop] += 1
        if case.stacked and out.exists() and len(saved_epochs(out) - {0}) > 1:
            uneven = True
        reruns += 1
    diffs = compare(base.out, out) if attempt.rc == 0 else ["did not finish"]
    return kills, reruns, diffs, findings, uneven


def pick_stop(case: Case, base: Baseline, rng: random.Random):
    how = rng.choice(STOPS)
    if how == "fault":
        return None, rng.randint(1, max(1, base.writes))
    if how == "SIGKILL" and case.sweep:
        how = rng.choice(("SIGKILL group", "SIGKILL parent"))
    return (how, rng.uniform(base.startup, max(base.startup, base.seconds))), None


def check(attempt: Attempt, finished: Callable[[], bool]) -> list[str]:
    """What a stop or a rerun did that the docs do not promise. A SIGTERM or SIGINT that comes once the command
    has written everything, while Python shuts down, ends the process with the signal's status (-15, -2): nothing
    was left to clean up, so that is no finding (`finished()`: the output already equals the baseline; compared
    only for such a stop)."""
    found = []
    if attempt.stop in ("SIGTERM", "SIGINT") and attempt.rc not in (130, 0) and not finished():
        found.append(f"{attempt.stop}: exit {attempt.rc} (expected 130): {error_line(attempt.stderr)}")
    if "Traceback" in attempt.stderr:
        found.append(f"{attempt.stop or 'a run left alone'}: a traceback: {error_line(attempt.stderr)}")
    if attempt.lingered:
        found.append(f"{attempt.stop}: {attempt.lingered} process(es) still alive {SETTLE_S} s after")
    return found


def error_line(text: str) -> str:
    """The line of stderr that says what went wrong: the last `avvp ...: error` line, else the last line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("avvp ") or "Error" in line]
    return (errors or lines or ["(nothing on stderr)"])[-1][:400]


def campaign(args: argparse.Namespace) -> dict[str, Tally]:
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, big = root / "data", root / "data-big"
    for folder, sizes in ((data, DATA), (big, [*BIG, "--workers", "2"])):
        if not (folder / "synth.json").exists():
            subprocess.run(
                [sys.executable, "-m", "avvp", "synth", "--out", str(folder), *sizes, "--overwrite"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    chosen = cases(data, big)
    names = args.cases.split(",") if args.cases else list(chosen)
    rng = random.Random(args.seed)
    budget = {name: args.kills // len(names) + (i < args.kills % len(names)) for i, name in enumerate(names)}
    tallies: dict[str, Tally] = {}
    for name in names:
        base = baseline(chosen[name], root, data)
        print(
            f"{name}: baseline {base.seconds:.1f} s, start-up {base.startup:.1f} s, {base.writes} write points",
            flush=True,
        )
        tallies[name] = run_trials(chosen[name], root, data, base, rng, budget[name], args)
    return tallies


def run_trials(case: Case, root: Path, data: Path, base: Baseline, rng: random.Random, budget: int, args) -> Tally:
    tally = Tally()
    while sum(tally.kills.values()) < budget:
        left = min(args.max_kills, budget - sum(tally.kills.values()))
        work = root / case.name / f"trial{tally.trials:03d}"
        kills, reruns, diffs, findings, uneven = trial(case, work, data, base, rng, left)
        tally.trials += 1
        tally.kills.update(kills)
        tally.reruns += reruns
        tally.findings += [f"trial {tally.trials - 1}: {f}" for f in findings]
        noise = bool(diffs) and case.stacked and uneven
        if not diffs:
            tally.identical += 1
        elif noise:
            tally.other_noise += 1
        else:
            tally.differences += [f"trial {tally.trials - 1}: {d}" for d in diffs]
        status = "identical" if not diffs else ("same maths, other noise" if noise else "DIFFERS")
        print(
            f"{case.name} trial {tally.trials - 1}: {dict(kills)}, {reruns} reruns, {status}"
            + "".join(f"\n  finding: {f}" for f in findings)
            + "".join(f"\n  diff: {d}" for d in diffs[:5]),
            flush=True,
        )
        if not args.keep and not diffs and not findings:
            shutil.rmtree(work, ignore_errors=True)
    return tally


def report(tallies: dict[str, Tally]) -> str:
    rows = [
        "| command | trials | kills sent | of which | reruns | identical | same maths, other noise | differences | findings |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in tallies.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(t.kills.items()))
        rows.append(
            f"| {name} | {t.trials} | {sum(t.kills.values())} | {kinds} | {t.reruns} | {t.identical} | "
            f"{t.other_noise} | {len(t.differences)} | {len(t.findings)} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder (data, baselines, trials, report.json)")
    parser.add_argument("--kills", type=int, default=200, help="kills to send in all, shared out over the commands")
    parser.add_argument("--max-kills", type=int, default=4, help="kills per trial before it may finish (default 4)")
    parser.add_argument(
        "--cases", help=f"comma-separated commands (default: all): {', '.join(cases(Path('.'), Path('.')))}"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and kinds (default 0)")
    parser.add_argument(
        "--short",
        action="store_true",
        help="the CI campaign: 8 kills over train-mgn, synth, pack and sweep-workers (about 2 minutes on 2 cores)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep every trial's folder (default: the baselines and the trials with a difference or a finding)",
    )
    args = parser.parse_args()
    if args.short:
        args.kills, args.max_kills, args.cases = 8, 2, args.cases or "train-mgn,synth,pack,sweep-workers"
    started = time.monotonic()
    tallies = campaign(args)
    table = report(tallies)
    print(f"\n{table}\n\n{time.monotonic() - started:.0f} s; torch {torch.__version__}")
    record = {name: {**vars(t), "kills": dict(t.kills)} for name, t in tallies.items()}
    (Path(args.out) / "report.json").write_text(json.dumps(record, indent=2) + "\n")
    bad = [name for name, t in tallies.items() if t.differences or t.findings]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
