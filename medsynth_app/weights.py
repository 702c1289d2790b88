"""Where checkpoints live: the shipped ones beside the server app, plus folders named in MEDSYNTH_WEIGHTS."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "apps" / "medsynth" / "model"


def weight_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("MEDSYNTH_WEIGHTS", "").split(os.pathsep) if p]
    return [*extra, SHIPPED_DIR]


def checkpoint_name(family: str, inputs: Sequence[str], targets: Sequence[str]) -> str:
    return f"{family}_{'+'.join(inputs)}_to_{'+'.join(targets)}.pt"


def installed() -> list[tuple[Path, Checkpoint]]:
    """Every readable checkpoint in the weight folders (unreadable files are skipped, not fatal)."""
    found = []
    for folder in weight_dirs():
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            try:
                found.append((path, load_checkpoint(path)))
            except CheckpointError:
                continue
    return found


def find(family: str, target: str, inputs: Sequence[str] | None = None) -> tuple[Path, Checkpoint]:
    """The installed checkpoint of ``family`` that synthesises ``target`` from ``inputs`` (exactly those inputs
    when given, preferring the one with fewest extra inputs for families that accept subsets)."""
    candidates = [(p, c) for p, c in installed() if c.family == family and target in c.targets]
    if inputs:
        exact = [(p, c) for p, c in candidates if sorted(c.inputs) == sorted(inputs)]
        wider = [(p, c) for p, c in candidates if set(inputs) <= set(c.inputs)]
        candidates = exact or sorted(wider, key=lambda pc: len(pc[1].inputs))
    if not candidates:
        wanted = f"{'+'.join(inputs)}->{target}" if inputs else f"->{target}"
        raise CheckpointError(f"no installed {family} checkpoint for {wanted}; see `medsynth models`")
    return candidates[0]
