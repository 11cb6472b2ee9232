"""Run the MGN authors' own code (their `main.py` and `nets/`) on any data folder in the LLP layout, as an oracle.

    python bench/authors_mgn.py --authors-code ~/src/MGN --data DATA --out OUT \
        --unimodal-assign hard --crossmodal-assign soft --seed 1 --epochs 20 [--python PY]

`--authors-code` is a local checkout of the authors' repository (github.com/stoneMo/MGN), fetched by you: nothing
of it is part of avvp. The script copies it to `OUT/code`, applies exactly three edits, and runs their training
(which ends by testing the best validation epoch) from that copy:

1. the device: `.to('cuda')` and `.cuda()` become the `--device` given (their code hard-codes CUDA);
2. pandas' positional access: `df.loc[i, :][0]` and `row[0]` / `row[-1]` become `.iloc[...]` (pandas 2 reads `[0]`
   of a labelled row as a label);
3. the StepLR step: 10 becomes `--lr-step` (default 12, the recipe of docs/experiments.md's Tables 1 and 2).

Their evaluation reads `data/AVVP_eval_audio.csv` and `data/AVVP_eval_visual.csv` (and the split lists) relative
to the working directory, and their repository ships real LLP's files there: the copy's `data/` gets DATA's own
CSVs instead, so that it scores against DATA's truth (checked before training). Their code needs pandas, timm
(0.4.x) and einops besides torch; `--python` names an interpreter that has them (default: this one).

OUT holds the copy, their checkpoint (`code/models/MGN_Net.pt`, which `avvp evaluate` also reads), `train.log`
(their output) and `result.json`: the validation Type@AV of every epoch and the ten test numbers they print.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

LLP_CSVS = ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv", "AVVP_eval_visual.csv")
TEST_LINES = {  # their printed line -> our key
    "Audio Event Detection Segment-level F1": "segment/audio",
    "Visual Event Detection Segment-level F1": "segment/visual",
    "Audio-Visual Event Detection Segment-level F1": "segment/audio_visual",
    "Segment-levelType@Avg. F1": "segment/type",
    "Segment-level Event@Avg. F1": "segment/event",
    "Audio Event Detection Event-level F1": "event/audio",
    "Visual Event Detection Event-level F1": "event/visual",
    "Audio-Visual Event Detection Event-level F1": "event/audio_visual",
    "Event-level Type@Avg. F1": "event/type",
    "Event-level Event@Avg. F1": "event/event",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-code", required=True, type=Path, help="a checkout of the MGN authors' repository")
    parser.add_argument("--data", required=True, type=Path, help="a data folder in the LLP layout (CSVs, feats/)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the patched copy, log and results")
    parser.add_argument("--unimodal-assign", choices=["soft", "hard"], default="soft", help="CUG (default: soft)")
    parser.add_argument("--crossmodal-assign", choices=["soft", "hard"], default="soft", help="MCG (default: soft)")
    parser.add_argument("--seed", type=int, default=1, help="their --seed (default: 1)")
    parser.add_argument("--epochs", type=int, default=20, help="their --epochs (default: 20)")
    parser.add_argument("--lr-step", type=int, default=12, help="the StepLR step their code hard-codes as 10 (12)")
    parser.add_argument("--device", default="cpu", help="the device their code runs on (default: cpu)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch, pandas, timm, einops")
    return parser.parse_args(argv)


def patch(source: str, device: str, lr_step: int) -> str:
    """Their main.py with the three edits (and nothing else); each must apply, or their code has changed."""
    edits = [
        (r"\.to\('cuda'\)", f".to('{device}')"),
        (r"\.cuda\(\)", f".to('{device}')"),
        (r"df\.loc\[batch_idx, :\]\[0\]", "df.iloc[batch_idx, 0]"),
        (r"step_size=10", f"step_size={lr_step}"),
    ]
    for pattern, replacement in edits:
        source, count = re.subn(pattern, replacement, source)
        if count == 0:
            raise SystemExit(f"authors_mgn: their main.py has no {pattern!r}: another version of their code?")
    return source


def patch_loader(source: str) -> str:
    """Their dataloader.py with pandas' positional access (`row[0]`, `row[-1]` -> `row.iloc[...]`)."""
    patched = source.replace("row[0][:11]", "row.iloc[0][:11]").replace("row[-1].split", "row.iloc[-1].split")
    if patched == source:
        raise SystemExit("authors_mgn: their dataloader.py has no row[0] / row[-1]: another version of their code?")
    return patched


def prepare(args: argparse.Namespace) -> Path:
    """OUT/code: their code with the edits, and DATA's CSVs in place of the real LLP files of their data/."""
    if not (args.authors_code / "main.py").is_file() or not (args.authors_code / "nets").is_dir():
        raise SystemExit(
            f"authors_mgn: {args.authors_code} is not a checkout of the MGN authors' code (main.py, nets/)"
        )
    missing = [name for name in LLP_CSVS if not (args.data / name).is_file()]
    if missing or not (args.data / "feats").is_dir():
        raise SystemExit(
            f"authors_mgn: {args.data} is not a data folder in the LLP layout (missing: {missing or 'feats/'})"
        )
    code = args.out / "code"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(args.authors_code, code, ignore=shutil.ignore_patterns(".git", "LLP_dataset"))
    main_py, loader_py = code / "main.py", code / "dataloader.py"
    main_py.write_text(patch(main_py.read_text(), args.device, args.lr_step))
    loader_py.write_text(patch_loader(loader_py.read_text()))
    (code / "models" / "MGN_Net.pt").unlink(missing_ok=True)  # their released checkpoint: never scored by mistake
    for name in LLP_CSVS:
        shutil.copyfile(args.data / name, code / "data" / name)
        if (code / "data" / name).read_bytes() != (args.data / name).read_bytes():
            raise SystemExit(f"authors_mgn: {name} was not replaced")
    return code


def run(args: argparse.Namespace, code: Path) -> Path:
    """Their training (ending with the test of the best validation epoch), output in OUT/train.log."""
    feats = args.data.resolve() / "feats"
    command = [args.python, "main.py", "--mode", "train", "--epochs", str(args.epochs), "--seed", str(args.seed)]
    command += [
        "--audio_dir",
        f"{feats}/vggish/",
        "--video_dir",
        f"{feats}/res152/",
        "--st_dir",
        f"{feats}/r2plus1d_18/",
    ]
    command += ["--unimodal_assign", args.unimodal_assign, "--crossmodal_assign", args.crossmodal_assign]
    log_path = args.out / "train.log"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        status = subprocess.run(command, cwd=code, stdout=log, stderr=subprocess.STDOUT, env=os.environ, check=False)
    if status.returncode != 0:
        raise SystemExit(f"authors_mgn: their code exited with {status.returncode}; see {log_path}")
    return log_path


def read_results(log_path: Path) -> dict:
    """Each validation's segment-level Type@AV (one per epoch) and the ten test numbers (the last evaluation)."""
    lines = log_path.read_text().splitlines()
    val_type = [float(line.rsplit(":", 1)[1]) for line in lines if line.startswith("Segment-levelType@Avg. F1")]
    test = {}
    for line in lines[::-1]:
        head, _, value = line.rpartition(":")
        if head in TEST_LINES and TEST_LINES[head] not in test:
            test[TEST_LINES[head]] = float(value)
    return {"val_segment_type": val_type[:-1], "test": test}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    code = prepare(args)
    log_path = run(args, code)
    results = read_results(log_path) | {
        "settings": {
            "unimodal_assign": args.unimodal_assign, "crossmodal_assign": args.crossmodal_assign, "seed": args.seed,
            "epochs": args.epochs, "lr_step": args.lr_step, "data": str(args.data.resolve()), "device": args.device,
        }
    }  # fmt: skip
    (args.out / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["test"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
