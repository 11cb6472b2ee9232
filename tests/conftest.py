"""Shared test fixtures: the real LLP files in ../shared (skipped, saying why, where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the real LLP files live in ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def llp_dir() -> Path:
    """../shared/llp: the real LLP annotation CSVs and one real video."""
    return _shared_path("llp")


@pytest.fixture(scope="session")
def bad_audio_csv() -> Path:
    """The real corrupted AVVP_eval_audio.csv that circulates with three broken rows."""
    return _shared_path("llp", "bad", "AVVP_eval_audio_with_three_corrupt_rows.csv")


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    """A small authors'-format MGN with inputs and the authors' outputs."""
    return _shared_path("fixtures", "mgn_official_small.npz")


@pytest.fixture(scope="session")
def official_keys_dir() -> Path:
    """Key names and shapes of the authors' released checkpoints."""
    return _shared_path("spec", "official_keys")
