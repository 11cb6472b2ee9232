"""Pretrained weights for the feature networks, from local files only.

A weights folder (``--weights DIR`` or ``$AVVP_WEIGHTS``) holds four PyTorch state-dict files. Each may
carry our plain name or the name it is published under:

| what | plain name | published name (example) |
| --- | --- | --- |
| torchvision ResNet-152 (ImageNet) | resnet152.pth | resnet152-394f9c45.pth |
| torchvision R(2+1)D-18 (Kinetics-400) | r2plus1d_18.pth | r2plus1d_18-91a641e6.pth |
| VGGish, torchvggish port format | vggish.pth | vggish-10086976.pth |
| VGGish PCA parameters (port format) | vggish_pca_params.pth | vggish_pca_params-970ea276.pth |
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from avvp.errors import AvvpError

WEIGHTS_ENV = "AVVP_WEIGHTS"
# name -> (plain file name, glob of the published names, where it is published)
WEIGHT_FILES: dict[str, tuple[str, str, str]] = {
    "resnet152": ("resnet152.pth", "resnet152-*.pth", "torchvision's model zoo (download.pytorch.org/models)"),
    "r2plus1d_18": ("r2plus1d_18.pth", "r2plus1d_18-*.pth", "torchvision's model zoo (download.pytorch.org/models)"),
    "vggish": ("vggish.pth", "vggish-*.pth", "the torchvggish port's releases (github.com/harritaylor/torchvggish)"),
    "vggish_pca": (
        "vggish_pca_params.pth",
        "vggish_pca_params-*.pth",
        "the torchvggish port's releases (github.com/harritaylor/torchvggish)",
    ),
}
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: these features/parses come from untrained networks (tests and demos only)"


@dataclass(frozen=True)
class WeightSource:
    """Where the feature networks' weights come from: a folder of files, or random init (tests, demos)."""

    folder: Path | None  # None with random=True
    random: bool = False
    vggish_pca: bool = True  # apply the port's PCA + 8-bit quantisation to VGGish embeddings


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    """`--weights DIR`, `--random-weights` and `--no-vggish-pca`."""
    parser.add_argument(
        "--weights",
        metavar="DIR",
        help=f"folder holding the feature networks' weights ({', '.join(v[0] for v in WEIGHT_FILES.values())}, "
        f"or their published file names); default: ${WEIGHTS_ENV}",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="TESTS/DEMOS ONLY: use randomly initialised feature networks; every output is marked as such",
    )
    parser.add_argument(
        "--no-vggish-pca",
        action="store_true",
        help="keep raw VGGish embeddings (ReLU outputs) instead of the port's PCA + 8-bit post-processing; "
        "then no PCA file is needed",
    )


def resolve_weights(args: argparse.Namespace) -> WeightSource:
    """The weight source from the flags / $AVVP_WEIGHTS, checking that every needed file is there."""
    vggish_pca = not getattr(args, "no_vggish_pca", False)
    if args.random_weights:
        return WeightSource(folder=None, random=True, vggish_pca=vggish_pca)
    value = args.weights or os.environ.get(WEIGHTS_ENV)
    if not value:
        raise AvvpError(
            f"no weights folder: pass --weights DIR or set ${WEIGHTS_ENV}; it must hold {_expected_text(vggish_pca)}"
        )
    source = WeightSource(folder=Path(value), vggish_pca=vggish_pca)
    if not source.folder.is_dir():
        raise AvvpError(f"weights folder {source.folder} does not exist; it must hold {_expected_text(vggish_pca)}")
    missing = [name for name in _needed(vggish_pca) if find_weight_file(source.folder, name) is None]
    if missing:
        raise AvvpError(f"weights folder {source.folder} lacks {_expected_text(vggish_pca, missing)}")
    return source


def find_weight_file(folder: Path, name: str) -> Path | None:
    """The file for ``name`` in ``folder`` (plain name first, then a published name), or None."""
    plain, published, _ = WEIGHT_FILES[name]
    if (folder / plain).is_file():
        return folder / plain
    matches = sorted(folder.glob(published)) if folder.is_dir() else []
    return matches[0] if matches else None


def load_state_dict(source: WeightSource, name: str) -> dict:
    """The state dict stored for ``name`` (loaded on CPU with weights_only=True)."""
    from avvp.checkpoint import safe_torch_load

    path = find_weight_file(source.folder, name)
    if path is None:
        raise AvvpError(f"weights folder {source.folder} lacks {_expected_text(source.vggish_pca, [name])}")
    state = safe_torch_load(path)  # one line, never advising to unpickle
    if not isinstance(state, dict):
        raise AvvpError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _needed(vggish_pca: bool) -> list[str]:
    return [name for name in WEIGHT_FILES if vggish_pca or name != "vggish_pca"]


def _expected_text(vggish_pca: bool, names: list[str] | None = None) -> str:
    """One line naming each expected file and where such weights are published."""
    names = names or _needed(vggish_pca)
    parts = [f"{WEIGHT_FILES[n][0]} (or {WEIGHT_FILES[n][1]}, from {WEIGHT_FILES[n][2]})" for n in names]
    return "; ".join(parts)
