"""What a kill cannot show: files are on disk (fsync'ed, their folder too) before a write is over, and the
temporaries of avvp versions older than the pid in their name are recognised."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from avvp import utils
from avvp.data import synth


@pytest.fixture
def disk_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync (of the path its descriptor names) and rename, in order; fsync itself is mocked."""
    events: list[tuple[str, str]] = []
    rename = os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst) -> None:
        rename(src, dst)
        events.append(("rename", f"{src} -> {dst}"))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")


def test_a_written_file_is_synced_before_its_rename_and_its_folder_after(tmp_path, disk_log):
    target = tmp_path / "scores.json"
    utils.atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert len(disk_log) == 3, disk_log
    (kind1, synced), (kind2, renamed), last = disk_log
    temporary = renamed.split(" -> ")[0]
    assert (kind1, kind2) == ("fsync", "rename")
    assert synced == temporary and renamed == f"{temporary} -> {target}"
    assert last == ("fsync", str(tmp_path))


def test_synth_syncs_every_file_and_folder_before_the_swap_and_the_parent_after(tmp_path, disk_log):
    out = tmp_path / "data"
    synth.generate(out, synth.SynthConfig(train=2, val=1, test=1), progress=False, workers=1)
    swap = next(i for i, (kind, what) in enumerate(disk_log) if kind == "rename" and what.endswith(f" -> {out}"))
    staging = disk_log[swap][1].split(" -> ")[0]
    before = {what.replace(staging, str(out), 1) for kind, what in disk_log[:swap] if kind == "fsync"}
    written = {str(p) for p in out.rglob("*")} | {str(out)}
    assert written <= before, sorted(written - before)
    assert ("fsync", str(tmp_path)) in disk_log[swap + 1 :]


def test_a_metrics_line_is_synced_when_appended(tmp_path, disk_log):
    from avvp.training.persistence import _append_jsonl

    _append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1})
    assert disk_log == [("fsync", str(tmp_path / "metrics.jsonl"))]


def _aged(path: Path, seconds: float) -> Path:
    """Set the modification time of `path` (a new file where absent) and everything under it `seconds` in the
    past."""
    if not path.exists():
        path.write_bytes(b"x")
    when = os.stat(path).st_mtime - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (when, when))
    return path


def _legacy_folder(path: Path, *files: str) -> Path:
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x")
    return path


def test_temporaries_of_versions_without_a_pid_are_removed_once_an_hour_old(tmp_path):
    hour = utils.LEGACY_AGE
    old = [
        _aged(tmp_path / ".last.pt.k3j_a9q2.tmp", hour + 60),  # atomic writes before 2026-11-27
        _aged(tmp_path / ".pred.npz.ab12cd34.npz", hour + 60),  # predictions
        _aged(tmp_path / ".-0A1b2C3d4E.x7y8z9w0.npy.tmp", hour + 60),  # extracted features
        _aged(_legacy_folder(tmp_path / ".data.synth-q1w2e3r4", "feats/vggish/a.npy"), hour + 60),
    ]
    fresh = [
        _aged(tmp_path / ".best.json.a1b2c3d4.tmp", 60),  # could still be written by an old process
        _aged(_legacy_folder(tmp_path / ".big.synth-z9x8c7v6", "feats/res152/b.npy"), hour + 60),
    ]
    os.utime(fresh[1] / "feats" / "res152" / "b.npy")  # a video written just now: the writer is at work
    names = (".git", ".notes.tmp", ".x.ABCDEFGH.tmp", "run.tmp", ".y.synth-abcdefgh")  # the last: not a folder
    others = [_aged(tmp_path / name, hour + 60) for name in names]
    assert sorted(utils.remove_stale_temporaries(tmp_path)) == sorted(old)
    assert all(p.exists() for p in [*fresh, *others])


def test_a_legacy_retired_dataset_without_its_replacement_is_put_back(tmp_path):
    retired = _aged(_legacy_folder(tmp_path / ".data.old-m4n5b6v7", "data/AVVP_train.csv"), utils.LEGACY_AGE + 60)
    assert utils.remove_stale_temporaries(tmp_path) == [retired]
    assert (tmp_path / "data" / "AVVP_train.csv").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_next_write_of_a_file_removes_its_legacy_temporary_only(tmp_path):
    mine = _aged(tmp_path / ".scores.json.a1b2c3d4.tmp", utils.LEGACY_AGE + 60)
    _aged(tmp_path / ".other.json.a1b2c3d4.tmp", utils.LEGACY_AGE + 60)
    utils.atomic_write_text(tmp_path / "scores.json", "{}")
    assert not mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.a1b2c3d4.tmp", "scores.json"]
