"""Where the shipped MONAI Label app, its weights and the Slicer module are: package data of an installed wheel
(``medsynth_server/app``, ``medsynth_server/slicer``, see setup.py), or their source folders in a checkout."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _packaged_or_source(packaged: str, source: str) -> Path:
    folder = PACKAGE / packaged
    return folder if folder.is_dir() else PACKAGE.parent / source


APP_DIR = _packaged_or_source("app", "apps/medsynth")
SLICER_MODULE_DIR = _packaged_or_source("slicer", "slicer_extension") / "MedSynth"
SHIPPED_WEIGHTS = APP_DIR / "model"


def weight_folders() -> list[Path]:
    """The shipped weights, for the library's checkpoint store (entry point of ``medsynth.weight_folders``)."""
    return [SHIPPED_WEIGHTS]


def medsynth_home() -> Path:
    """Where the deployment keeps what it writes (trained models, server logs, sessions): $MEDSYNTH_HOME, else
    ~/.medsynth."""
    return Path(os.environ.get("MEDSYNTH_HOME") or Path.home() / ".medsynth")


def user_models() -> Path:
    """The versioned folder of checkpoints trained through the server: $MEDSYNTH_USER_MODELS, else
    $MEDSYNTH_HOME/models."""
    return Path(os.environ.get("MEDSYNTH_USER_MODELS") or medsynth_home() / "models")
