"""`avvp results`: a sweep's small results, from which the tables and figures are redrawn without weights or data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import write_tiny_llp

from avvp.cli import main


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_kept_results_redraw_the_tables_and_figures_without_weights_or_data(tmp_path: Path, capsys) -> None:
    data = write_tiny_llp(tmp_path / "data")
    sweep = tmp_path / "sweep"
    train = ["sweep", "depth", "--features", str(data / "feats"), "--annotations", str(data), "--out", str(sweep),
             "--configs", "han,mgn-1-1-2", "--seeds", "1,2", "--epochs", "2", "--dim", "8", "--device", "cpu"]  # fmt: skip
    assert main(train) == 0
    (sweep / "mgn-1-1-2-seed2" / "test_scores.json").unlink()  # an unfinished run is left out
    runs = [str(sweep / name) for name in ("han-seed1", "han-seed2", "mgn-1-1-2-seed1")]
    assert main(["plot", "recall", *runs, "--labels", "HAN,HAN,MGN", "--out", str(tmp_path / "recall.png")]) == 0
    assert main(["plot", "tokens", str(sweep / "mgn-1-1-2-seed1"), "--out", str(tmp_path / "tokens.png")]) == 0
    assert main(["sweep", "depth", "--out", str(sweep), "--configs", "han,mgn-1-1-2", "--seeds", "1,2",
                 "--dim", "8", "--table-only"]) == 0  # fmt: skip
    capsys.readouterr()

    kept = tmp_path / "kept"
    assert main(["results", str(sweep), "--to", str(kept), "--predictions", "han,mgn-1-1-2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "kept 3 finished run(s) (3 with test predictions)" in out and "mgn-1-1-2-seed2" in out
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".safetensors", ".pt", ".lock", ".log"))]
    assert "mgn-1-1-2-seed2/config.json" not in files and "annotations/AVVP_eval_audio.csv" in files
    with np.load(sweep / "han-seed1" / "test_pred.npz") as a, np.load(kept / "han-seed1" / "test_pred.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)  # compressed, bit for bit

    # A run no longer finished (trained on with more epochs, say) loses its kept copy on the next keep.
    stale = kept / "han-seed2" / "test_scores.json"
    (sweep / "han-seed2" / "test_scores.json").rename(tmp_path / "han2.json")
    assert main(["results", str(sweep), "--to", str(kept)]) == 0
    assert not (kept / "han-seed2").exists() and "han-seed2" in capsys.readouterr().out
    (tmp_path / "han2.json").rename(sweep / "han-seed2" / "test_scores.json")
    assert main(["results", str(sweep), "--to", str(kept), "--predictions", "han,mgn-1-1-2", "--device", "cpu"]) == 0
    assert stale.is_file()
    tables = {name: _read(sweep / name) for name in ("table.csv", "table.md")}
    assert (
        "Recipe: all training videos, at most 2 epochs, batch 16, Adam 0.0003, StepLR x0.1 every 10"
        in tables["table.md"]
    )
    assert "precision auto (fp32); the best val epoch is tested." in tables["table.md"]
    shutil.rmtree(data)  # neither the features nor the annotations nor the weights are left
    shutil.rmtree(sweep)
    for name in tables:
        (kept / name).unlink()
    # No --dim: the sizes are counted on the models the runs trained (width 8), as in the sweep's own table.
    assert main(["sweep", "depth", "--out", str(kept), "--configs", "han,mgn-1-1-2", "--seeds", "1,2",
                 "--table-only"]) == 0  # fmt: skip
    assert {name: _read(kept / name) for name in tables} == tables
    runs = [str(kept / name) for name in ("han-seed1", "han-seed2", "mgn-1-1-2-seed1")]
    args = ["plot", "recall", *runs, "--labels", "HAN,HAN,MGN", "--annotations", str(kept / "annotations")]
    assert main([*args, "--out", str(tmp_path / "recall2.png")]) == 0
    assert _read(tmp_path / "recall2.csv") == _read(tmp_path / "recall.csv")
    assert main(["plot", "tokens", str(kept / "mgn-1-1-2-seed1"), "--out", str(tmp_path / "tokens2.png")]) == 0
    assert _read(tmp_path / "tokens2.csv") == _read(tmp_path / "tokens.csv")
