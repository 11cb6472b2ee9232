"""The feature-folder reader: official layout, validation errors naming the video and folder."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest

from avvp.data.features import FEATURE_DIRS, FeatureFolder, Features, load_features, pool_res152
from avvp.errors import AvvpError

VIDEO_IDS = ["BjCEufrlXm4", "7nSYwyaP4QE", "a-b_c0123_4"]


def write_video(root: Path, vid: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (folder, shape) in FEATURE_DIRS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        arrays[name] = rng.standard_normal(shape).astype(np.float32)
        np.save(root / folder / f"{vid}.npy", arrays[name])
    return arrays


@pytest.fixture
def feature_root(tmp_path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    written = {vid: write_video(tmp_path, vid, seed) for seed, vid in enumerate(VIDEO_IDS)}
    return tmp_path, written


def test_load_stacks_in_requested_order(feature_root):
    root, written = feature_root
    order = [VIDEO_IDS[2], VIDEO_IDS[0]]
    features = load_features(root, order)
    assert isinstance(features, Features) and len(features) == 2
    assert features.audio.shape == (2, 10, 128) and features.audio.dtype == np.float32
    assert features.res152.shape == (2, 80, 2048)
    assert features.r2plus1d.shape == (2, 10, 512)
    for row, vid in enumerate(order):
        for name in FEATURE_DIRS:
            np.testing.assert_array_equal(getattr(features, name)[row], written[vid][name])


def test_pooled_res152_is_the_per_second_mean(feature_root):
    root, written = feature_root
    features = FeatureFolder(root).load(VIDEO_IDS[:1], pooled=True)
    assert features.res152.shape == (1, 10, 2048)
    frames = written[VIDEO_IDS[0]]["res152"]
    np.testing.assert_allclose(features.res152[0, 3], frames[24:32].mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool_res152(frames[None]), features.res152, rtol=1e-6, atol=1e-6)


def test_batches_cover_every_video_once(feature_root):
    root, written = feature_root
    batches = list(FeatureFolder(root).batches(VIDEO_IDS, batch_size=2))
    assert [len(batch) for batch in batches] == [2, 1]
    np.testing.assert_array_equal(batches[1].audio[0], written[VIDEO_IDS[2]]["audio"])
    with pytest.raises(AvvpError, match="batch size"):
        next(FeatureFolder(root).batches(VIDEO_IDS, batch_size=0))


def test_empty_list(feature_root):
    root, _ = feature_root
    features = load_features(root, [])
    assert features.audio.shape == (0, 10, 128)


def test_missing_file_names_video_and_folder(feature_root):
    root, _ = feature_root
    (root / "r2plus1d_18" / f"{VIDEO_IDS[1]}.npy").unlink()
    with pytest.raises(AvvpError) as error:
        load_features(root, VIDEO_IDS)
    message = str(error.value)
    assert f"video {VIDEO_IDS[1]}" in message and "r2plus1d_18" in message and "not found" in message
    with pytest.raises(AvvpError, match="not found"):
        FeatureFolder(root).check(VIDEO_IDS)
    FeatureFolder(root).check([VIDEO_IDS[0], VIDEO_IDS[2]])  # the others are fine


@pytest.mark.parametrize(
    ("name", "array", "expected"),
    [
        ("audio", np.zeros((9, 128), np.float32), r"shape \(9, 128\), expected \(10, 128\)"),
        ("res152", np.zeros((10, 2048), np.float32), r"shape \(10, 2048\), expected \(80, 2048\)"),
        ("r2plus1d", np.zeros((10, 512), np.float64), "dtype float64, expected float32"),
        ("audio", np.full((10, 128), np.nan, np.float32), "NaN or infinity"),
        ("r2plus1d", np.full((10, 512), np.inf, np.float32), "NaN or infinity"),
    ],
)
def test_bad_arrays_name_video_and_folder(feature_root, name, array, expected):
    root, _ = feature_root
    folder = FEATURE_DIRS[name][0]
    np.save(root / folder / f"{VIDEO_IDS[2]}.npy", array)
    with pytest.raises(AvvpError, match=expected) as error:
        load_features(root, VIDEO_IDS)
    assert f"video {VIDEO_IDS[2]}" in str(error.value) and f"{folder}/" in str(error.value)


def test_unreadable_file(feature_root):
    root, _ = feature_root
    (root / "vggish" / f"{VIDEO_IDS[0]}.npy").write_bytes(b"not numpy")
    with pytest.raises(AvvpError, match=f"video {VIDEO_IDS[0]}: .*vggish.*not a readable .npy file"):
        load_features(root, VIDEO_IDS)


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_and_object_files_are_refused(feature_root, mmap):
    root, _ = feature_root
    folder = FeatureFolder(root)
    path = folder.path("audio", VIDEO_IDS[0])
    path.write_bytes(path.read_bytes()[:-4])
    read = (lambda vid: folder.check_present([vid])) if mmap else (lambda vid: folder.read("audio", vid))
    with pytest.raises(AvvpError, match=f"video {VIDEO_IDS[0]}: .*not a readable .npy file \\(.*(truncated|length)"):
        read(VIDEO_IDS[0])
    np.save(path, np.full((10, 128), None, object), allow_pickle=True)
    with pytest.raises(AvvpError, match=f"video {VIDEO_IDS[0]}: .*not a readable .npy file \\(it holds Python"):
        read(VIDEO_IDS[0])


def test_missing_folders(tmp_path):
    with pytest.raises(AvvpError, match="does not exist"):
        FeatureFolder(tmp_path / "absent")
    (tmp_path / "vggish").mkdir()
    with pytest.raises(AvvpError, match="has no res152/, r2plus1d_18/"):
        FeatureFolder(tmp_path)


class _SlowGarbage:
    """A reference cycle whose finalizer lets other threads run: collected in the middle of np.load's
    header parsing, it hands the interpreter to another reader (how CPython 3.11's ast race shows)."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        time.sleep(1e-4)


def test_concurrent_reads_survive_python_311s_ast_race(feature_root):
    # np.load parses each .npy header with ast.literal_eval, whose recursion counter CPython 3.11 shares
    # between threads (gh-106905): parallel readers failed at random with "SystemError: AST constructor
    # recursion depth mismatch". The garbage below makes it happen within seconds where it is not guarded.
    root, written = feature_root
    folder = FeatureFolder(root, workers=8)
    threshold = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    original = folder.read_video

    def read_video(vid: str):
        _SlowGarbage()
        return original(vid)

    folder.read_video = read_video
    try:
        for _ in range(150):
            folder.check(VIDEO_IDS * 10)
    finally:
        gc.set_threshold(*threshold)
    np.testing.assert_array_equal(folder.read("audio", VIDEO_IDS[0]), written[VIDEO_IDS[0]]["audio"])
