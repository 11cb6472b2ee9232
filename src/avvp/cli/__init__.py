"""The `avvp` command: one entry point, one module per subcommand, each a thin layer over the library.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returning an exit status). Heavy imports happen
inside ``func``, so ``avvp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from avvp import __version__
from avvp.errors import AvvpError
from avvp.utils import interrupt_on_sigterm

# Subcommand modules, in the order `avvp --help` lists them.
COMMANDS: list[str] = [
    "synth",
    "train",
    "refine-labels",
    "estimate-noise",
    "predict",
    "evaluate",
    "score",
    "pack",
    "extract",
    "parse",
    "models",
    "export",
    "sweep",
    "results",
    "plot",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="avvp",
        description="Weakly-supervised audio-visual video parsing (MGN, HAN) on LLP and data in its layout.",
    )
    parser.add_argument("--version", action="version", version=f"avvp {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print details (e.g. every ignored annotation row)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"avvp.cli.{name.replace('-', '_')}").register(subparsers)
    for subparser in subparsers.choices.values():
        # `avvp COMMAND --verbose` works as well as `avvp --verbose COMMAND`.
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print details")
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Flags must be spelled out (`--unimodal` is no longer only `--unimodal-assign`): on every (sub)parser."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _no_abbreviations(subparser)


def main(argv: list[str] | None = None) -> int:
    """Run the `avvp` command line; returns the exit status (0 on success, 2 on a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s", force=True
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with interrupt_on_sigterm():  # a `kill` runs the command's clean-up as Ctrl-C does (exit 130)
            status = args.func(args)
    except AvvpError as err:
        print(f"avvp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avvp {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
