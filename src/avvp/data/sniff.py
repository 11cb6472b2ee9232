"""What a file is, from its first bytes (never its suffix), for errors that say what was found and what was
expected: a `.npz` saved under a `.npy` name, a text file given as PRED.npz."""

from __future__ import annotations

import zipfile
from pathlib import Path

NPY = "a NumPy .npy array"
NPZ = "a NumPy .npz archive"
TORCH_ZIP = "a PyTorch checkpoint (torch.save)"
SAFETENSORS = "a safetensors file"  # what avvp checkpoints and packs are
_TEXT_BYTES = frozenset(b"\t\n\r\f")


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return "a zip archive that cannot be read (truncated or corrupt?)"
    if all(name.endswith(".npy") for name in names):
        return NPZ
    if any(name.endswith("data.pkl") for name in names):
        return TORCH_ZIP
    return "a zip archive"


def file_kind(path: str | Path) -> str:
    """A phrase naming what `path` holds: `NPY`, `NPZ`, "a text file", "a Python pickle", "an empty file", ..."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return "a file that cannot be read"
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"\x80"):
        return "a Python pickle"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if len(head) >= 9 and head[8:9] == b"{":
        return SAFETENSORS
    if b"\x00" not in head and all(byte >= 32 or byte in _TEXT_BYTES for byte in head):
        return "a text file"
    return "a binary file of unknown format"
