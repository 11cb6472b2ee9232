"""Worker processes for many small jobs: each is started once, on its own device with its share of the CPU cores,
and takes one job after another, with each job's output in its own log file.

Starting a process per job costs seconds (importing torch, first use of the optimiser) that a small training run
does not amortise; a worker pays it once. A job that fails is reported with its reason and the others go on; a
worker that dies (killed, out of memory) fails its job and is replaced. Workers ignore Ctrl-C (the parent stops
them); a SIGTERM from the parent interrupts a job as Ctrl-C would interrupt `avvp train`, so its clean-up runs; a
worker whose parent is gone (killed with SIGKILL, say) interrupts its job the same way at once and exits, so that
a rerun of the sweep finds the run folder unlocked instead of a worker still training in it.

An optional `initializer(*initargs)` runs once in each worker before its first job (as multiprocessing.Pool's does),
e.g. to import what the parent process set up but a spawned worker would not have (models registered from Python).
If it fails, every job that worker takes fails with that reason.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
STOP_SECONDS = 5.0  # how long a stopped worker may take to finish before it is sent SIGTERM

Work = Callable[[Any, str], Any]  # (job, device) -> a picklable result; raises AvvpError on failure
Done = Callable[[str, Any, "str | None"], None]  # (key, result, reason): reason None when the job succeeded
Initializer = tuple["Callable[..., Any] | None", tuple]  # (function, its arguments), run once in each worker


@dataclass
class _Worker:
    process: multiprocessing.Process
    jobs: Any  # its multiprocessing.Queue of (key, job, log path), None to stop
    results: multiprocessing.connection.Connection  # its own pipe: a worker that dies cannot block the others
    exitcode: int | None = None  # of the worker this one replaced


def run_in_workers(
    jobs: Sequence[tuple[str, Any, Path]],
    work: Work,
    devices: Sequence[str],
    threads: int,
    on_done: Done,
    *,
    initializer: Callable[..., Any] | None = None,
    initargs: Sequence[Any] = (),
) -> None:
    """Run `work(job, device)` for every (key, job, log path) in `jobs`, one worker process per entry of `devices`.

    `work` must be picklable (a module-level function or a partial of one). `on_done(key, result, reason)` is
    called in this process as each job ends: the value `work` returned and None, or None and why it failed.
    `initializer(*initargs)` (picklable too) runs once in each worker, a replaced one included, before its first
    job; where it raises, each job of that worker fails with its error.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    start = functools.partial(_start, context, work, threads=threads, initializer=(initializer, tuple(initargs)))
    workers = [start(device) for device in devices]
    pending, busy = deque(jobs), {}  # busy: worker slot -> (key, log path)
    try:
        while pending or busy:
            for slot, worker in enumerate(workers):
                if slot not in busy and pending:
                    key, job, log_path = pending.popleft()
                    worker.jobs.put((key, job, str(log_path)))
                    busy[slot] = (key, log_path)
                    log.info("%s: started on %s (log %s)", key, devices[slot], log_path)
            ready = multiprocessing.connection.wait([workers[slot].results for slot in busy], timeout=POLL_SECONDS)
            for slot in [s for s in list(busy) if workers[s].results in ready]:
                key, log_path = busy.pop(slot)
                try:
                    _, result, reason = workers[slot].results.recv()
                except EOFError:  # the worker died during the job
                    workers[slot] = _replace(start, workers[slot], devices[slot])
                    code = workers[slot].exitcode
                    on_done(key, None, f"the worker process died (exit code {code}) (log: {log_path})")
                    continue
                on_done(key, result, None if reason is None else f"{reason} (log: {log_path})")
            for slot, worker in enumerate(workers):  # an idle worker that died
                if slot not in busy and not worker.process.is_alive():
                    workers[slot] = _replace(start, worker, devices[slot])
    finally:
        _stop(workers)


def _start(context: Any, work: Work, device: str, *, threads: int, initializer: Initializer) -> _Worker:
    jobs = context.Queue()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(work, device, threads, initializer, jobs, send), daemon=True)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(saved, str(threads)))  # the worker's BLAS and OpenMP see its share of cores
    try:
        process.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    send.close()  # this process only reads: the pipe ends when the worker does
    return _Worker(process, jobs, receive)


def _replace(start: Callable[[str], _Worker], dead: _Worker, device: str) -> _Worker:
    """A new worker in place of one that died; it carries the dead one's exit code."""
    dead.process.join()
    dead.results.close()
    worker = start(device)
    worker.exitcode = dead.process.exitcode
    return worker


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.is_alive():
            worker.jobs.put(None)
    for worker in workers:
        worker.process.join(timeout=STOP_SECONDS)
        if worker.process.is_alive():  # still training (an interrupted sweep): SIGTERM runs its clean-up
            worker.process.terminate()
            worker.process.join()
        worker.results.close()


def _serve(
    work: Work,
    device: str,
    threads: int,
    initializer: Initializer,
    jobs: Any,
    results: multiprocessing.connection.Connection,
) -> None:
    """A worker's loop: each job's output (stdout, stderr, logging) goes to its log file, /dev/null in between."""
    import torch

    from avvp.utils import interrupt_on_sigterm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    _redirect(os.devnull)
    try:
        with interrupt_on_sigterm():
            threading.Thread(target=_stop_when_orphaned, daemon=True).start()
            failed_start = _initialise(*initializer)
            if failed_start is not None:
                work = functools.partial(_refuse, failed_start)
            while (item := _next_job(jobs)) is not None:
                key, job, log_path = item
                results.send((key, *_run_logged(work, job, device, Path(log_path))))
    except (KeyboardInterrupt, BrokenPipeError):  # stopped by the parent, or the parent is gone
        pass


def _initialise(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> str | None:
    """Run the worker's initializer (its output goes to /dev/null); None, or why it failed in one line."""
    if initializer is None:
        return None
    try:
        initializer(*initargs)
    except AvvpError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 (whatever it raises fails this worker's jobs with its reason)
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return None


def _refuse(reason: str, job: Any, device: str) -> None:
    """The work of a worker whose initializer failed: every job fails with that reason."""
    raise AvvpError(f"the worker's initializer failed: {reason}")


def _stop_when_orphaned() -> None:
    """Wait (in a thread) for the parent process to end, then SIGTERM this worker: its job stops through its
    clean-up (locks released, temporaries removed) as if the parent had stopped it."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()  # returns once the parent is gone, however it ended
        os.kill(os.getpid(), signal.SIGTERM)


def _next_job(jobs: Any) -> tuple | None:
    """The next job, or None when told to stop or when the parent process is gone."""
    while True:
        try:
            return jobs.get(timeout=1.0)
        except queue.Empty:
            parent = multiprocessing.parent_process()
            if parent is not None and not parent.is_alive():
                return None


def _run_logged(work: Work, job: Any, device: str, log_path: Path) -> tuple[Any, str | None]:
    """Run one job with fds 1 and 2 on its log; (its result, None) or (None, why it failed)."""
    try:
        _redirect(log_path)
    except OSError as err:
        return None, f"cannot write the log {log_path}: {err.strerror or err}"
    try:
        return work(job, device), None
    except AvvpError as err:
        print(f"error: {err}", file=sys.stderr)
        return None, str(err)
    except Exception as err:  # noqa: BLE001 (a bug: its traceback goes to the log, its last line to the report)
        traceback.print_exc()
        return None, f"{type(err).__name__}: {err}"
    finally:
        _redirect(os.devnull)


def _redirect(path: str | Path) -> None:
    """Point fds 1 and 2 (and so print, logging and C-level output) at `path`, appending."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
