"""One entry point for features: a folder in the official layout, a pack file, or a folder of packs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avvp.data.annotations import video_id
from avvp.data.features import FeatureFolder, Features
from avvp.data.packed import PACK_SUFFIX, Pack, open_pack, write_pack
from avvp.errors import AvvpError


class PackSet:
    """One or more packs read as one store (e.g. train.pack, val.pack and test.pack of `avvp pack`)."""

    def __init__(self, packs: list[Pack]) -> None:
        self.packs = packs
        self.where = {vid: (i, row) for i, pack in enumerate(packs) for row, vid in enumerate(pack.video_ids)}

    def check_present(self, video_ids: Sequence[str]) -> None:
        """Every video of `video_ids` is in one of the packs (whose arrays have their shapes by construction)."""
        missing = [vid for vid in video_ids if vid not in self.where]
        if missing:
            names = ", ".join(str(p.path) for p in self.packs)
            raise AvvpError(f"{len(missing)} video(s) are in none of the packs {names}, e.g. {', '.join(missing[:5])}")

    def load(self, video_ids: Sequence[str], *, pooled: bool = True, progress: bool = False) -> Features:
        """Features of `video_ids` (res152 is always per-second averaged in a pack), as float32 arrays."""
        if not pooled:
            raise AvvpError("packs hold ResNet-152 features averaged per second; the 80 frames are not in a pack")
        self.check_present(video_ids)
        locations = np.array([self.where[vid] for vid in video_ids], dtype=np.int64).reshape(-1, 2)  # (pack, row)
        out = {}
        for name in ("audio", "res152", "r2plus1d"):
            rows = np.empty((len(video_ids), *self.packs[0].arrays[name].shape[1:]), np.float32)
            for i, pack in enumerate(self.packs):
                chosen = np.flatnonzero(locations[:, 0] == i)
                if len(chosen):
                    rows[chosen] = pack.arrays[name][locations[chosen, 1]]
            out[name] = rows
        return Features(**out)


def open_features(path: str | Path) -> FeatureFolder | PackSet:
    """A feature store for `path`: an official-layout folder, a pack file, or a folder holding *.pack files."""
    path = Path(path)
    if path.is_file():
        return PackSet([open_pack(path)])
    if path.is_dir():
        if (path / "vggish").is_dir():
            return FeatureFolder(path)
        packs = sorted(path.glob(f"*{PACK_SUFFIX}"))
        if packs:
            return PackSet([open_pack(p) for p in packs])
    if not path.exists():
        raise AvvpError(f"features {path} do not exist")
    return FeatureFolder(path)  # raises a clear error naming the missing sub-folders


def pack_features(
    features_dir: str | Path,
    filenames: Sequence[str],
    out: str | Path,
    *,
    dtype: str = "float32",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Validate the features of the listed videos and write them as one pack (see `avvp.data.packed`)."""
    folder = FeatureFolder(features_dir)
    ids = [video_id(name) for name in filenames]
    return write_pack(out, ids, folder.read_video, dtype=dtype, workers=workers, progress=progress)
