"""Shared test fixtures: the real LLP files in ../shared (skipped, saying why, where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on an oversubscribed intra-op pool (use per module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_noise_ratios(path: Path, audio: float = 0.0, visual: float = 0.0, edit: dict | None = None) -> Path:
    """A NOISE.json (`avvp.denoise.NoiseRatios.to_json`) of one ratio per modality for every class (all 0: training
    as without denoising); `edit` maps a modality to a function of its {class: ratio} table (bad files)."""
    import json

    import numpy as np

    from avvp.data.classes import NUM_CLASSES
    from avvp.denoise import NoiseRatios

    record = json.loads(NoiseRatios(np.full(NUM_CLASSES, audio), np.full(NUM_CLASSES, visual), {}).to_json())
    for modality, change in (edit or {}).items():
        record[modality] = change(record[modality])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    """`avvp ARGS` in-process: (exit status, stdout, stderr)."""
    from avvp.cli import main

    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def npz_arrays(path: Path) -> dict:
    """Every array of an .npz file, read into memory."""
    import numpy as np

    with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}


def assert_close_scaled(actual, expected, rel: float, *, err_msg: str = "") -> None:
    """float32 arrays equal up to rounding: |actual - expected| <= rel * max(max|expected|, 1), element by element.

    The tolerance scales with the magnitude of the values compared (never below that of values of order 1), since
    another BLAS kernel (AVX2 against AVX-512, say) rounds each element in proportion to the values it sums."""
    import numpy as np

    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=rel * scale, rtol=0, err_msg=err_msg)


def write_official_checkpoint(arrays: dict, folder: Path) -> Path:
    """The `weight/` arrays of an authors' fixture written as their checkpoint file (a plain torch.save state dict)."""
    import torch

    state_dict = {key[len("weight/") :]: torch.from_numpy(v) for key, v in arrays.items() if key.startswith("weight/")}
    path = folder / "MGN_Net.pt"
    torch.save(state_dict, path)
    return path


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
def official_train_fixture() -> Path:
    """A small authors'-format MGN, four batches and what the authors' training code gives for four Adam steps."""
    return _shared_path("fixtures", "mgn_official_train_small.npz")


@pytest.fixture(scope="session")
def official_keys_dir() -> Path:
    """Key names and shapes of the authors' released checkpoints."""
    return _shared_path("spec", "official_keys")


def write_tiny_llp(root: Path, *, train: int = 24, val: int = 8, test: int = 8, seed: int = 0) -> Path:
    """Random features in the official layout plus LLP-format CSVs (weak lists, dense eval rows), for smoke tests."""
    import numpy as np

    from avvp.data.classes import CLASSES

    rng = np.random.default_rng(seed)
    feats = root / "feats"
    for sub in ("vggish", "res152", "r2plus1d_18"):
        (feats / sub).mkdir(parents=True, exist_ok=True)
    split_rows: dict[str, list[str]] = {}
    dense = {"audio": [], "visual": []}
    counter = 0
    for split, count in (("train", train), ("val", val), ("test", test)):
        rows = []
        for _ in range(count):
            vid = f"tinyvid{counter:04d}"
            counter += 1
            filename = f"{vid}_0_10"
            classes = sorted(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False).tolist())
            rows.append(f"{filename}\t{','.join(CLASSES[c] for c in classes)}")
            for c in classes:
                onset = int(rng.integers(0, 5))
                offset = int(rng.integers(onset + 1, 11))
                dense["audio"].append(f"{filename}\t{onset}\t{offset}\t{CLASSES[c]}")
                dense["visual"].append(f"{filename}\t{max(0, onset - 1)}\t{offset}\t{CLASSES[c]}")
            np.save(feats / "vggish" / f"{vid}.npy", rng.normal(size=(10, 128)).astype(np.float32))
            np.save(feats / "res152" / f"{vid}.npy", rng.random(size=(80, 2048)).astype(np.float32))
            np.save(feats / "r2plus1d_18" / f"{vid}.npy", rng.random(size=(10, 512)).astype(np.float32))
        split_rows[split] = rows
    header = "filename\tevent_labels\n"
    names = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
    for split, name in names.items():
        (root / name).write_text(header + "".join(r + "\n" for r in split_rows[split]))
    everything = [r for rows in split_rows.values() for r in rows]
    (root / "AVVP_dataset_full.csv").write_text(header + "".join(r + "\n" for r in everything))
    eval_header = "filename\tonset\toffset\tevent_labels\n"
    dense_names = {r.split("\t")[0] for r in split_rows["val"] + split_rows["test"]}
    for modality in ("audio", "visual"):
        rows = [r for r in dense[modality] if r.split("\t")[0] in dense_names]
        (root / f"AVVP_eval_{modality}.csv").write_text(eval_header + "".join(r + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def tiny_llp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset in the LLP layout: CSVs at the root, features under feats/."""
    return write_tiny_llp(tmp_path_factory.mktemp("tiny_llp"))
