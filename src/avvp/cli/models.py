"""`avvp models`: the parameter table of every configuration in the paper's Table 1."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="print parameter counts and sizes of HAN and the MGN depths of the paper's Table 1",
        description="Build HAN and every MGN configuration of the MGN paper's Table 1 and print their parameter "
        "counts and float32 sizes (MB = parameters x 4 / 10^6), next to the sizes the paper reports.",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.models import ModelSize, model_size_table

    rows = []  # HAN twice: the parameters its forward uses, and its released checkpoint (what the paper counts)
    for label, name, overrides, size, paper_mb in model_size_table():
        if size.released_parameters is None:
            counts = [(size.parameters, paper_mb, "dim 128")]
        else:
            counts = [
                (size.parameters, None, "used by the forward pass"),
                (size.released_parameters, paper_mb, "as released"),
            ]
        for parameters, paper, note in counts:
            rows.append(
                {
                    "label": label,
                    "model": name,
                    "overrides": overrides,
                    "parameters": parameters,
                    "mb": ModelSize.to_megabytes(parameters),
                    "paper_mb": paper,
                    "note": note,
                }
            )
    if args.json:
        print(json.dumps([row | {"mb": round(row["mb"], 1)} for row in rows], indent=2))
        return 0
    print(f"{'model':<13} {'parameters':>11} {'MB':>6} {'paper MB':>9}  note")
    for row in rows:
        paper = f"{row['paper_mb']:.0f}" if row["paper_mb"] is not None else "-"
        print(f"{row['label']:<13} {row['parameters']:>11,} {row['mb']:>6.1f} {paper:>9}  {row['note']}")
    return 0
