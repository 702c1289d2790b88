"""The ``medsynth`` command line. Each subcommand lives in a module of this package with a ``register(subparsers)``
function; more subcommands come from other installed packages through the ``medsynth.commands`` entry points, with
the same ``register(subparsers) -> None`` protocol. Only the standard library is imported here: ``medsynth --help``,
``--version`` and argument errors answer without loading torch, MONAI or SimpleITK; each command imports what it
uses when it runs."""
from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from .. import __version__
from . import data, scoring, synthesis, training

ENTRY_POINT_GROUP = "medsynth.commands"
BUILT_IN = (data, training, synthesis, scoring)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsynth", description="MRI contrast synthesis")
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in BUILT_IN:
        module.register(subparsers)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the library reports each epoch's validation scores (and resumptions) at INFO level: show them on stderr
    package, handler = logging.getLogger("medsynth_app"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return args.func(args)
    except ValueError as err:  # ImageError, StudyError and CheckpointError are ValueErrors naming the file at fault
        print(f"medsynth: error: {err}", file=sys.stderr)
        return 2
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
