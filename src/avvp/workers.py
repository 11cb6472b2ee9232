"""Worker processes for many small jobs: each is started once, on its own device with its share of the CPU cores,
and takes one job after another, with each job's output in its own log file.

Starting a process per job costs seconds (importing torch, first use of the optimiser) that a small training run
does not amortise; a worker pays it once. A job that fails is reported with its reason and the others go on; a
worker that dies (killed, out of memory) fails its job and is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process
    jobs: Any  # its multiprocessing.Queue of (key, job, log path), None to stop
    results: Any  # the reading end of its own pipe of (key, reason): a worker that dies cannot block the others


def run_in_workers(
    jobs: Sequence[tuple[str, Any, Path]],
    work: Callable[[Any, str], None],
    devices: Sequence[str],
    threads: int,
    on_done: Callable[[str, str | None], None],
) -> None:
    """Run `work(job, device)` for every (key, job, log path) in `jobs`, one worker process per entry of `devices`.

    `work` must be picklable (a module-level function or a partial of one); it reports a failure by raising
    AvvpError. `on_done(key, reason)` is called in this process as each job ends (reason None when it succeeded).
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    workers = [_start(context, work, device, threads) for device in devices]
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
                try:
                    key, reason = workers[slot].results.recv()
                except EOFError:  # died: handled below
                    continue
                log_path = busy.pop(slot)[1]
                on_done(key, None if reason is None else f"{reason} (log: {log_path})")
            _replace_dead(workers, busy, context, work, devices, threads, on_done)
    finally:
        _stop(workers)


def _start(context, work, device: str, threads: int) -> _Worker:
    jobs = context.Queue()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(work, device, threads, jobs, send), daemon=True)
    process.start()
    send.close()  # this process only reads: the pipe ends when the worker does
    return _Worker(process, jobs, receive)


def _replace_dead(workers, busy, context, work, devices, threads, on_done) -> None:
    """A worker that died fails its job and is replaced."""
    for slot, worker in enumerate(workers):
        if worker.process.is_alive():
            continue
        worker.process.join()
        if slot in busy:
            key, log_path = busy.pop(slot)
            on_done(key, f"the worker process died (exit code {worker.process.exitcode}) (log: {log_path})")
        worker.results.close()
        workers[slot] = _start(context, work, devices[slot], threads)


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.is_alive():
            worker.jobs.put(None)
    for worker in workers:
        worker.process.join(timeout=5)
        if worker.process.is_alive():  # still training: an interrupted sweep
            worker.process.terminate()
            worker.process.join()
        worker.results.close()


def _serve(work, device: str, threads: int, jobs, results) -> None:  # results: the writing end of the pipe
    """A worker's loop: each job's output (stdout, stderr, logging) goes to its log file."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    while (item := jobs.get()) is not None:
        key, job, log_path = item
        results.send((key, _run_logged(work, job, device, Path(log_path))))


def _run_logged(work, job, device: str, log_path: Path) -> str | None:
    """Run one job with fds 1 and 2 on its log; None, or why it failed."""
    with open(log_path, "a", encoding="utf-8") as handle:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            work(job, device)
            return None
        except AvvpError as err:
            print(f"error: {err}", file=sys.stderr)
            return str(err)
        except Exception as err:  # noqa: BLE001 (a bug: its traceback goes to the log, its last line to the report)
            traceback.print_exc()
            return f"{type(err).__name__}: {err}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
