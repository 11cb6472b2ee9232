"""Small shared helpers: safe file writes, the temporaries and locks they use, and progress bars that only draw
on a terminal.

Every file avvp writes goes through `atomic_path` (or a helper built on it), which gives all writers the same
rules: the data goes to a temporary file beside the target and is renamed into place only once complete (a killed
process never leaves a half-written file); a symlink is written through to its target; anything that is not a
regular file (a folder, FIFO, device, socket) is refused, never replaced; a failure of the file system (no
permission, a parent that is a file, a full disk) is one `AvvpError` line naming the path; every file gets the
mode of a plain new file (0644 under the usual umask); the data and then the rename are fsync'ed before the write is
over, so a file reported as written survives a power cut. Temporaries are named `.NAME.avvp-HOST-PID-XXXXXXXX.tmp`,
so those of killed processes can be told from those of live ones and removed (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avvp.errors import AvvpError
from avvp.faults import fault_point

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open(..., "w") gives a new file
FOLDER_MODE = 0o777 & ~_UMASK  # what mkdir gives a new folder
_OWN_TEMPORARIES: set[str] = set()  # names of the temporaries this process is writing (all are made here)
LOCK_HOST = "".join(socket.gethostname().split()) or "localhost"  # this machine, as lock files name it
_HOST = re.sub(r"[^A-Za-z0-9]", "", LOCK_HOST)[:32] or "host"  # the same machine, as temporaries' names spell it
# `.NAME.avvp-HOST-PID-XXXXXXXX.KIND`: files being written (tmp), synth's folders being filled (staging) or
# deleted (old). HOST and PID tell whether the writer is gone.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.avvp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.(?:tmp|staging|old)")
# The temporaries of avvp versions before the host and pid were in the name (2026-11-26): `.NAME.XXXXXXXX.tmp` and
# `.NAME.XXXXXXXX.npz` (files), `.ID.XXXXXXXX.npy.tmp` (extracted features), `.NAME.synth-XXXXXXXX` and
# `.NAME.old-XXXXXXXX` (synth's folders), XXXXXXXX being tempfile's 8 random characters. Nothing tells whether
# their writer is alive, so they are removed only once untouched for LEGACY_AGE seconds.
_LEGACY_TEMPORARY = re.compile(
    r"\.(?P<name>.+?)\.(?:(?P<folder>synth|old)-[a-z0-9_]{8}|[a-z0-9_]{8}(?P<suffix>\.tmp|\.npz|\.npy\.tmp))"
)
LEGACY_AGE = 3600.0  # no avvp version took an hour to write a file, and synth touched its folder every video
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFREG: "a file",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link that does not resolve (a loop)",
}

# ----------------------------------------------------------------------------------------------- outputs


def output_path(path: str | Path, *, folder: bool = False) -> Path:
    """Where writing `path` really goes: `path` itself, or its final target where it is a symlink.

    Raises a one-line AvvpError where `path` cannot be an output: it exists as something other than a regular
    file (with `folder`, a folder), e.g. a FIFO or a device node, which avvp never replaces; or a parent is a file.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    shown = f"{path} (a link to {target})" if path.is_symlink() else str(path)
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        for parent in target.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise AvvpError(f"cannot write {shown}: {parent} is not a folder") from None
                break
        return target
    except OSError as err:
        raise AvvpError(f"cannot write {shown}: {err.strerror or err}") from None
    wanted = stat.S_IFDIR if folder else stat.S_IFREG
    if stat.S_IFMT(mode) == wanted:
        return target
    kind = _KINDS.get(stat.S_IFMT(mode), "a special file")
    if folder or stat.S_ISDIR(mode):
        raise AvvpError(f"cannot write {shown}: it is {kind}, not a {'folder' if folder else 'file'}")
    raise AvvpError(f"cannot write {shown}: it is {kind}, not a regular file; avvp writes regular files only")


def write_error(path: str | Path, err: OSError) -> AvvpError:
    """The one-line error for a failed write of `path` (no permission, a full disk, ...)."""
    return AvvpError(f"cannot write {path}: {err.strerror or err}")


def _temporary_prefix(name: str) -> str:
    return f".{name}.avvp-{_HOST}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (a symlink's target) to write; on success it is renamed to `path`,
    on failure removed. The rules every writer follows are in the module docstring.

    An OSError of the body about the temporary (or about no file: a failed write) becomes an AvvpError; one about
    another file (a failed read) passes unchanged.
    """
    shown = Path(path)
    target = output_path(shown)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, name=target.name)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=_temporary_prefix(target.name), suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise write_error(shown, err) from None
    tmp = Path(name)
    _OWN_TEMPORARIES.add(tmp.name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # after the body: mkstemp makes 0600 files, and a writer may have made it anew
        output_path(shown)  # still a regular file or absent
        sync_file(tmp)  # the data on disk before the name points at them
        fault_point(target.name)
        os.replace(tmp, target)
        sync_folder(target.parent)  # the rename itself on disk
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None and str(err.filename) != str(tmp):
            raise
        raise write_error(shown, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _OWN_TEMPORARIES.discard(tmp.name)


def sync_file(path: str | Path) -> None:
    """fsync a written file: its data are on disk when this returns."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: str | Path) -> None:
    """fsync a folder: the names created, renamed or removed in it are on disk when this returns (a no-op where the
    system cannot open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # file systems that do not sync folders
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` atomically. Serialised in memory first: torch's own file writer turns a full disk into an
    unreadable RuntimeError."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def temporary_folder(path: Path, kind: str) -> Path:
    """A new empty folder beside `path` named as a temporary of this process (`kind`: 'staging' or 'old'), with the
    mode of a plain folder; removed by `remove_stale_temporaries` once this process is gone."""
    folder = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path.name), suffix=f".{kind}", dir=path.parent))
    _OWN_TEMPORARIES.add(folder.name)
    os.chmod(folder, FOLDER_MODE)  # mkdtemp makes 0700 folders
    return folder


def remove_stale_temporaries(folder: str | Path, *, name: str | None = None) -> list[Path]:
    """Remove the temporaries that avvp processes killed while writing left in `folder` (of file `name` only,
    where given); returns them. Only those of this host whose writer is gone: never one a live process is
    writing, nor one of another machine sharing the folder. Those of versions without the pid in the name are
    removed once untouched for `LEGACY_AGE` seconds."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        stale = _stale_target(entry)
        if stale is None or (name is not None and stale[0] != name):
            continue
        target, retired = Path(folder) / stale[0], stale[1]
        if retired and not target.exists() and os.path.isdir(os.path.join(entry.path, "data")):
            # a dataset retired by a process killed before its replacement was in place: put it back
            os.replace(os.path.join(entry.path, "data"), target)
            log.warning("%s: restored the previous content, left aside by a killed avvp process", target)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # removed by another process meanwhile
        except OSError as err:
            log.warning("cannot remove %s, left by a killed avvp process: %s", entry.path, err.strerror or err)
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d unfinished file(s) or folder(s) of killed avvp processes in %s", len(removed), folder)
    return removed


def _stale_target(entry: os.DirEntry) -> tuple[str, bool] | None:
    """Where `entry` is a temporary whose writer is gone: the name of the file or folder it was written for, and
    whether it is a retired dataset (synth's 'old' folder). Else None."""
    match = _TEMPORARY.fullmatch(entry.name)
    if match:
        if match["host"] != _HOST or entry.name in _OWN_TEMPORARIES or pid_alive(int(match["pid"])):
            return None  # another machine's, or being written (our pid: else an earlier process's)
        return match["name"], entry.name.endswith(".old")
    match = _LEGACY_TEMPORARY.fullmatch(entry.name)
    if match is None or entry.is_dir(follow_symlinks=False) != bool(match["folder"]):
        return None
    if time.time() - _last_change(entry.path) < LEGACY_AGE:
        return None
    return match["name"] + (".npy" if match["suffix"] == ".npy.tmp" else ""), match["folder"] == "old"


def _last_change(path: str) -> float:
    """The newest modification time of `path` and, for a folder, of everything under it."""
    newest = os.lstat(path).st_mtime
    for folder, folders, files in os.walk(path):
        for name in folders + files:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                continue
    return newest


# ----------------------------------------------------------------------------------------- processes, locks


def pid_alive(pid: int) -> bool:
    """Whether another live process has this pid."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


_HELD_LOCKS: dict[tuple[int, int, str], int] = {}  # (pid, thread, lock file) held -> how many PidLocks hold it


class PidLock:
    """A lock file naming its owner, `PID HOST` (one line, e.g. `4242 node07`), created exclusively.

    A lock left by a dead process of this machine is taken over; a lock of another machine (sharing the folder
    on a network file system) never is, since its pid cannot be checked from here: the error says to delete the
    file once that process is known to be gone. A lock file of avvp versions before the host was recorded holds
    the pid alone and is read as this machine's. A live owner makes it wait up to `wait` seconds, then raise a
    one-line AvvpError saying that `subject` (default: the lock's folder) is in use by `holder` (e.g. "another
    sweep"), naming the owner's pid and host. Within one thread the lock is re-entrant: a PidLock on a file this
    thread already holds (e.g. `train` under `avvp sweep --only`, which holds the run's lock around it) holds it
    too, and the file goes when the outermost one exits; another thread of the process is refused as another
    process would be.
    """

    def __init__(self, path: str | Path, holder: str, *, subject: str | Path | None = None, wait: float = 0.0) -> None:
        self.path = Path(path)
        self.holder = holder
        self.subject = subject if subject is not None else self.path.parent
        self.wait = wait

    @property
    def _key(self) -> tuple[int, int, str]:
        """This lock in `_HELD_LOCKS`; with the pid, so that a forked child holds none of its parent's locks, and the
        thread, so that two threads (a notebook's, a service's) do not share one."""
        return os.getpid(), threading.get_ident(), os.path.abspath(self.path)

    def __enter__(self) -> PidLock:  # noqa: PYI034
        if self._key in _HELD_LOCKS:
            _HELD_LOCKS[self._key] += 1
            return self
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                owner = self._owner()
                if self._stale(owner):
                    self._take_over(owner)  # left by a killed process (empty: killed before writing its pid)
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise AvvpError(self._in_use(owner)) from None
            except OSError as err:
                raise AvvpError(f"cannot create {self.path}: {err.strerror or err}") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {LOCK_HOST}\n")
            _HELD_LOCKS[self._key] = 1
            return self

    def __exit__(self, *exc: object) -> None:
        _HELD_LOCKS[self._key] -= 1
        if _HELD_LOCKS[self._key] == 0:
            del _HELD_LOCKS[self._key]
            self.path.unlink(missing_ok=True)

    def remove_if_stale(self) -> None:
        """Remove the lock where a killed process of this machine left it, without taking it (a live owner's, or
        another machine's, stays): for a command that finds nothing left to do under it."""
        if self.path.exists() and self._key not in _HELD_LOCKS:
            owner = self._owner()
            if self._stale(owner):
                self._take_over(owner)

    def _in_use(self, owner: tuple[int, str] | None) -> str:
        """The one-line refusal: who holds the lock, and how to clear it once that process is gone."""
        if owner is None:
            return f"{self.subject} is in use by {self.holder} (pid unknown); wait for it, or delete {self.path}"
        pid, host = owner
        if host != LOCK_HOST:
            return (
                f"{self.subject} is in use by {self.holder} (pid {pid} on host {host}, another machine: whether it "
                f"still runs cannot be checked from here); wait for it, or once that process is gone (e.g. "
                f"`ssh {host} ps -p {pid}` finds nothing, or its job has ended) delete {self.path}"
            )
        return (
            f"{self.subject} is in use by {self.holder} (pid {pid} on host {host}); wait for it, or delete "
            f"{self.path} if that process is gone"
        )

    def _stale(self, owner: tuple[int, str] | None) -> bool:
        """Whether the lock file was left by a process of this machine that is gone (empty: killed before it wrote
        its pid). Another machine's lock is never stale here: its pid means nothing on this machine."""
        if owner is None:
            return self._age() > 5.0
        pid, host = owner
        return host == LOCK_HOST and pid != os.getpid() and not pid_alive(pid)  # this process: another thread's

    def _owner(self) -> tuple[int, str] | None:
        """(pid, host) of the lock file; a pid alone (earlier versions) is this machine's; None where unreadable."""
        try:
            fields = self.path.read_text().split()
            if len(fields) in (1, 2):
                return int(fields[0]), fields[1] if len(fields) == 2 else LOCK_HOST
        except (OSError, ValueError):
            pass
        return None

    def _age(self) -> float:
        """Seconds since the lock file was made (infinite where it is gone: nothing to wait for)."""
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return math.inf
        except OSError:
            return 0.0

    def _take_over(self, owner: tuple[int, str] | None) -> None:
        if self._owner() != owner:
            return  # taken meanwhile by another process
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            raise AvvpError(f"cannot remove {self.path}, left by a killed process: {err.strerror or err}") from None


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (a `kill`, a job scheduler's stop) raises KeyboardInterrupt as Ctrl-C does, so
    the clean-up code of the interrupted work runs. Once: a further SIGTERM while that clean-up runs (a sweep worker
    is stopped both by its parent and by its own orphan watch) is ignored instead of cutting the clean-up short;
    SIGKILL still ends the process. Only in the main thread, and only where SIGTERM has no handler of its own."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the process is stopping already
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -------------------------------------------------------------------------------------------- progress


def interactive() -> bool:
    """Whether progress bars can redraw in place: stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """'m:ss' (or 'h:mm:ss' from an hour), rounded to the second; negative durations read 0:00."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any):
    """A tqdm bar, drawn only when `progress` and on a terminal: in a log file or CI, long work reports one line
    per step of its own (e.g. per epoch) instead of hundreds of redraws."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (progress and interactive()), **kwargs)
