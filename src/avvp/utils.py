"""Small shared helpers: atomic file writes (a killed process never leaves a half-written file) and progress bars
that only draw on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the result the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def interactive() -> bool:
    """Whether progress bars can redraw in place: stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any):
    """A tqdm bar, drawn only when `progress` and on a terminal: in a log file or CI, long work reports one line
    per step of its own (e.g. per epoch) instead of hundreds of redraws."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (progress and interactive()), **kwargs)
