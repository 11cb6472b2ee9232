"""bench/authors_mgn.py, the harness that runs the MGN authors' code as an oracle: exactly its three edits, and the
data folder's CSVs in place of the real LLP files their evaluation reads (checked on a stand-in of their layout)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "bench" / "authors_mgn.py"
spec = importlib.util.spec_from_file_location("authors_mgn", HARNESS)
authors_mgn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(authors_mgn)

MAIN = """model = MGN_Net(args).to('cuda')
audio = sample['audio'].to('cuda')
cls_target = torch.arange(0,25).long().cuda()
df_vid_a = df_a.loc[df_a['filename'] == df.loc[batch_idx, :][0]]
scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)
"""
LOADER = """name = row[0][:11]
ids = row[-1].split(',')
"""


def test_the_three_edits_and_nothing_else() -> None:
    patched = authors_mgn.patch(MAIN, "cpu", 12)
    assert patched == (
        "model = MGN_Net(args).to('cpu')\naudio = sample['audio'].to('cpu')\n"
        "cls_target = torch.arange(0,25).long().to('cpu')\n"
        "df_vid_a = df_a.loc[df_a['filename'] == df.iloc[batch_idx, 0]]\n"
        "scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=12, gamma=0.1)\n"
    )
    assert authors_mgn.patch_loader(LOADER) == "name = row.iloc[0][:11]\nids = row.iloc[-1].split(',')\n"
    with pytest.raises(SystemExit, match="another version of their code"):
        authors_mgn.patch(MAIN.replace("step_size=10", "step_size=8"), "cpu", 12)


def test_the_copy_scores_against_the_data_folders_truth(tiny_llp: Path, tmp_path: Path) -> None:
    code = tmp_path / "their"
    (code / "nets").mkdir(parents=True)
    (code / "models").mkdir()
    (code / "models" / "MGN_Net.pt").write_bytes(b"released")
    (code / "main.py").write_text(MAIN)
    (code / "dataloader.py").write_text(LOADER)
    (code / "data").mkdir()
    for name in authors_mgn.LLP_CSVS:
        (code / "data" / name).write_text("real LLP\n")
    args = authors_mgn.parse_args(["--authors-code", str(code), "--data", str(tiny_llp), "--out", str(tmp_path / "o")])
    copy = authors_mgn.prepare(args)
    for name in authors_mgn.LLP_CSVS:
        assert (copy / "data" / name).read_bytes() == (tiny_llp / name).read_bytes(), name
    assert (code / "data" / "AVVP_eval_audio.csv").read_text() == "real LLP\n"  # their checkout is untouched
    assert not (copy / "models" / "MGN_Net.pt").exists()  # their released checkpoint is never scored by mistake
