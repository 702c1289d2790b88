"""Argument types and option groups shared by several subcommands."""
from __future__ import annotations

import argparse
import json

from ..contrasts import canonical_contrast


def contrast_list(text: str) -> list[str]:
    return [canonical_contrast(part) for part in text.split(",") if part.strip()]


def hparam(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--hparam wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hparam", action="append", type=hparam, default=[], metavar="KEY=VALUE",
                   help="family hyperparameter (JSON value), repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_folds_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", help="folds file (default: the folds of the evaluation protocol, EVALUATION.md)")
