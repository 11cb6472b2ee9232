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
    from avvp.models import model_size_table

    rows = model_size_table()
    if args.json:
        payload = [
            {
                "label": row.label,
                "model": row.model,
                "overrides": row.overrides,
                "parameters": row.parameters,
                "mb": round(row.megabytes, 1),
                "paper_mb": row.paper_mb,
                "note": row.note,
            }
            for row in rows
        ]
        print(json.dumps(payload, indent=2))
        return 0
    print(f"{'model':<13} {'parameters':>11} {'MB':>6} {'paper MB':>9}  note")
    for row in rows:
        paper = f"{row.paper_mb:.0f}" if row.paper_mb is not None else "-"
        print(f"{row.label:<13} {row.parameters:>11,} {row.megabytes:>6.1f} {paper:>9}  {row.note}")
    return 0
