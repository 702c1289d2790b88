"""The Slicer module's pure-Python package ``MedSynthLib`` (slicer_extension/MedSynth), imported from the repository
as 3D Slicer imports it; only on request, never when ``medsynth_app`` is imported."""
from __future__ import annotations

import sys
from types import ModuleType

from .serving import REPO

SLICER_MODULE_DIR = REPO / "slicer_extension" / "MedSynth"


def import_medsynth_lib() -> ModuleType:
    """Put the Slicer module's folder on sys.path so that ``MedSynthLib`` imports as it does inside Slicer."""
    if not (SLICER_MODULE_DIR / "MedSynthLib").is_dir():
        raise ImportError(f"no Slicer module in {SLICER_MODULE_DIR}: run from a clone of the repository")
    path = str(SLICER_MODULE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    import MedSynthLib

    return MedSynthLib
