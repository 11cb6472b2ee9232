"""A test-only fault hook: kill this process in the middle of a write, to prove that every write survives it.

Inert unless one of its environment variables is set (`bench/kill_campaign.py` sets them; nothing else should):

    AVVP_FAULT_KILL_AT_WRITE=N   the N-th write point this process reaches SIGKILLs it, there and then
    AVVP_FAULT_TRACE=PATH        every write point appends its label (the file written) to PATH
    AVVP_FAULT_MARK=PATH         the kill first creates PATH, and is skipped where PATH exists: one kill per
                                 command, however many worker processes inherit the variables

A write point is a moment where a kill is the worst it can be: an atomic write's temporary complete but not yet
renamed, half a line appended to metrics.jsonl, a dataset set aside but not yet replaced.
"""

from __future__ import annotations

import os
import signal
import threading

KILL_AT_ENV = "AVVP_FAULT_KILL_AT_WRITE"
TRACE_ENV = "AVVP_FAULT_TRACE"
MARK_ENV = "AVVP_FAULT_MARK"

_lock = threading.Lock()
_reached = 0


def armed() -> bool:
    """Whether the hook is on in this process (the environment names a kill or a trace)."""
    return bool(os.environ.get(KILL_AT_ENV) or os.environ.get(TRACE_ENV))


def fault_point(label: str) -> None:
    """One write point, named by `label`: traced, and where it is the N-th, this process is SIGKILLed."""
    global _reached
    if not armed():
        return
    with _lock:
        _reached += 1
        reached = _reached
        trace = os.environ.get(TRACE_ENV)
        if trace:
            with open(trace, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()} {reached} {label}\n")
    if str(reached) == os.environ.get(KILL_AT_ENV) and _first_kill():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_kill() -> bool:
    """Whether this process is the first to be killed (AVVP_FAULT_MARK created now, or not asked for)."""
    mark = os.environ.get(MARK_ENV)
    if not mark:
        return True
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
