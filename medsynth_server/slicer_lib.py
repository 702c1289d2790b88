"""The Slicer module's pure-Python package ``MedSynthLib``, imported from the shipped Slicer module as 3D Slicer
imports it; only on request."""
from __future__ import annotations

import sys
from types import ModuleType

from .resources import SLICER_MODULE_DIR


def import_medsynth_lib() -> ModuleType:
    """Put the Slicer module's folder on sys.path so that ``MedSynthLib`` imports as it does inside Slicer."""
    if not (SLICER_MODULE_DIR / "MedSynthLib").is_dir():
        raise ImportError(f"no Slicer module in {SLICER_MODULE_DIR}: the installation is incomplete")
    path = str(SLICER_MODULE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    import MedSynthLib

    return MedSynthLib
