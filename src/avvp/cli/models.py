"""`avvp models`: the registered models (built-in and plugins), and the parameter table of the MGN supplement's Table 1."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the registered models (MGN, HAN, plugins) and the sizes of the configurations of Table 1 of the MGN paper's supplementary material",
        description="List every registered model: MGN and HAN, and the plugins' models found through $AVVP_PLUGINS "
        "(comma-separated modules) or installed packages' `avvp.models` entry points, with the config fields "
        "`--model-arg KEY=VALUE` sets, the loss terms `--loss-weight NAME=W` weighs, and what each supports. Then "
        "build HAN and every MGN configuration of Table 1 of the MGN paper's supplementary material and print their parameter counts and float32 "
        "sizes (MB = parameters x 4 / 10^6), next to the sizes the paper reports.",
    )
    parser.add_argument("--json", action="store_true", help="print both lists as JSON instead of tables")
    parser.set_defaults(func=run)


def registered_rows() -> list[dict[str, Any]]:
    """One entry per registered model: what `avvp models` says about it."""
    from avvp.models import model_size
    from avvp.models.registry import specs
    from avvp.objective import model_terms

    rows = []
    for spec in specs():
        try:
            config = spec.config()
        except TypeError:  # a config without defaults for every field: nothing to list or count
            continue
        rows.append(
            {
                "name": spec.name,
                "title": spec.title,
                "about": spec.about,
                "module": spec.module,
                "builtin": spec.builtin,
                "config": dataclasses.asdict(config),
                "parameters": model_size(spec.name).parameters,
                "loss_terms": {term.name: term.weight for term in model_terms(spec.name)},
                "authors_format": spec.official.file_name if spec.official else None,
                "stackable": spec.stackable,
                "cross_modal_free": spec.cross_modal_free,
            }
        )
    return rows


def paper_rows() -> list[dict[str, Any]]:
    """The configurations of the MGN supplement's Table 1 (HAN twice: the parameters its forward uses, and its released
    checkpoint, which the paper counts)."""
    from avvp.models import ModelSize, model_size_table

    rows = []
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
    return rows


def run(args: argparse.Namespace) -> int:
    registered, paper = registered_rows(), paper_rows()
    if args.json:
        table = [row | {"mb": round(row["mb"], 1)} for row in paper]
        print(json.dumps({"registered": registered, "paper_table_1": table}, indent=2))
        return 0
    print("Registered models (`avvp train --model NAME`):")
    for row in registered:
        source = "built in" if row["builtin"] else f"plugin {row['module']}"
        print(f"  {row['name']:<10} {row['title']}: {row['about'] or '-'} ({source}), {row['parameters']:,} parameters")
        print(f"  {'':<10} config: {', '.join(f'{k}={v!r}' for k, v in row['config'].items()) or '-'}")
        terms = ", ".join(f"{name} (weight {weight:g})" for name, weight in row["loss_terms"].items())
        print(f"  {'':<10} loss terms: {terms}")
        abilities = [f"authors' {row['authors_format']}" if row["authors_format"] else "no authors' format"]
        abilities.append("stackable (sweep --stack)" if row["stackable"] else "not stackable")
        abilities.append("--no-cross-modal" if row["cross_modal_free"] else "no cross-modal-free form")
        print(f"  {'':<10} {', '.join(abilities)}")
    print("\nTable 1 of the MGN paper's supplementary material (CUG and MCG depths):")
    print(f"{'model':<13} {'parameters':>11} {'MB':>6} {'paper MB':>9}  note")
    for row in paper:
        mb = f"{row['paper_mb']:.0f}" if row["paper_mb"] is not None else "-"
        print(f"{row['label']:<13} {row['parameters']:>11,} {row['mb']:>6.1f} {mb:>9}  {row['note']}")
    return 0
