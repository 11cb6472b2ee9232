"""Packed features: one memory-mappable file per split holding the three feature arrays.

The file is a valid safetensors file (readable by any safetensors reader) with tensors `audio` [N,10,128],
`res152` [N,10,2048] (the 80 ResNet-152 frames already averaged per second: the same model up to float
rounding, since the model's first linear layer commutes with the mean) and `r2plus1d` [N,10,512], and the
video ids in its metadata. avvp reads it with `numpy.memmap`, so opening is instant and only the rows used are
read. float16 storage is optional and approximate (about 3 significant digits).
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avvp.data.features import pool_res152
from avvp.data.sniff import SAFETENSORS, file_kind
from avvp.errors import AvvpError

PACK_FORMAT = "avvp-pack"
PACK_SUFFIX = ".pack"
PACK_SHAPES = {"audio": (10, 128), "res152": (10, 2048), "r2plus1d": (10, 512)}
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}
_ALIGN = 64


@dataclass(frozen=True)
class Pack:
    """An open pack: memory-mapped arrays and the video ids of their rows."""

    path: Path
    video_ids: list[str]
    arrays: dict[str, np.ndarray]  # name -> memmap [N, 10, dim]
    dtype: str

    def rows(self, video_ids: list[str]) -> np.ndarray:
        """Row indices of `video_ids`, or a clear error naming missing videos."""
        index = {vid: i for i, vid in enumerate(self.video_ids)}
        missing = [vid for vid in video_ids if vid not in index]
        if missing:
            raise AvvpError(f"{self.path}: {len(missing)} video(s) not in this pack, e.g. {', '.join(missing[:5])}")
        return np.fromiter((index[vid] for vid in video_ids), dtype=np.int64, count=len(video_ids))


def _header(video_ids: list[str], dtype: str, extra: dict[str, str] | None = None) -> tuple[bytes, dict]:
    code, np_dtype = _DTYPES[dtype]
    count = len(video_ids)
    header: dict = {
        "__metadata__": {
            "format": PACK_FORMAT,
            "version": "1",
            "dtype": dtype,
            "res152": "mean of the 8 frames of each second",
            "video_ids": json.dumps(video_ids),
            **(extra or {}),
        }
    }
    offset = 0
    for name, shape in PACK_SHAPES.items():
        size = count * int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        header[name] = {"dtype": code, "shape": [count, *shape], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-(8 + len(raw))) % _ALIGN)
    return raw, header


def write_pack(
    path: str | Path,
    video_ids: list[str],
    read_video,
    *,
    dtype: str = "float32",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a pack atomically; `read_video(video_id)` returns validated (audio, res152 [80 or 10], r2plus1d)."""
    from avvp.utils import atomic_path, progress_bar

    if dtype not in _DTYPES:
        raise AvvpError(f"pack dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    path = Path(path)
    raw, header = _header(list(video_ids), dtype)
    data_start = 8 + len(raw)
    total = data_start + max(spec["data_offsets"][1] for name, spec in header.items() if name != "__metadata__")
    np_dtype = _DTYPES[dtype][1]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            handle.truncate(total)
        maps = {
            name: np.memmap(
                tmp, dtype=np_dtype, mode="r+", offset=data_start + spec["data_offsets"][0], shape=tuple(spec["shape"])
            )
            for name, spec in header.items()
            if name != "__metadata__" and spec["shape"][0] > 0
        }

        def fill(item: tuple[int, str]) -> None:
            row, vid = item
            audio, res152, r2plus1d = read_video(vid)
            if res152.shape[0] != PACK_SHAPES["res152"][0]:
                res152 = pool_res152(res152)
            for name, array in (("audio", audio), ("res152", res152), ("r2plus1d", r2plus1d)):
                maps[name][row] = array

        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
            items = list(enumerate(video_ids))
            for _ in progress_bar(
                pool.map(fill, items), progress=progress, total=len(items), desc=f"pack {path.name}", unit="video"
            ):
                pass
        for array in maps.values():
            array.flush()
        maps.clear()  # close the memory maps before the file is renamed
    return path


def open_pack(path: str | Path) -> Pack:
    """Open a pack for reading (memory-mapped), with clear errors for files that are not packs."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 1 << 30:
                raise ValueError("header length out of range")
            header = json.loads(handle.read(length))
        meta = header.get("__metadata__", {})
        if meta.get("format") != PACK_FORMAT:
            raise ValueError("not an avvp pack (no avvp-pack metadata)")
        dtype = meta["dtype"]
        np_dtype = _DTYPES[dtype][1]
        video_ids = json.loads(meta["video_ids"])
        size = path.stat().st_size
        arrays = {}
        for name in PACK_SHAPES:
            spec = header[name]
            start, stop = spec["data_offsets"]
            if 8 + length + stop > size:
                raise ValueError(f"file is truncated ({size} bytes, {name} needs {8 + length + stop})")
            shape = tuple(spec["shape"])
            arrays[name] = (
                np.memmap(path, dtype=np_dtype, mode="r", offset=8 + length + start, shape=shape)
                if shape[0] > 0
                else np.zeros(shape, np_dtype)
            )
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError) as err:
        kind = file_kind(path)
        if kind != SAFETENSORS:  # a pack is one; anything else is named for what it is
            raise AvvpError(f"{path} is {kind}, not an avvp pack (write one with `avvp pack`)") from err
        raise AvvpError(f"{path}: cannot read as an avvp pack: {err}") from err
    return Pack(path, video_ids, arrays, dtype)
