"""The contrast name rules of the MedSynth library, reused (not copied) by the Slicer module.

``medsynth_app/contrasts.py`` imports only the standard library. It is found, in order:

1. as ``medsynth_app.contrasts`` when the library is importable (installed into Slicer's Python, or local mode);
2. as ``MedSynthLib/contrasts.py``, the copy of that one file that the extension's CMakeLists installs at build time;
3. in the source tree, ``<repository>/medsynth_app/contrasts.py`` relative to this file (module added to Slicer from
   a checkout with "Developer: add module path"), loaded with importlib without importing the rest of the library.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOURCE_TREE_CONTRASTS = Path(__file__).resolve().parents[3] / "medsynth_app" / "contrasts.py"


def load_contrasts() -> ModuleType:
    try:
        return importlib.import_module("medsynth_app.contrasts")
    except ImportError:
        pass
    beside = Path(__file__).with_name("contrasts.py")
    for origin, path in (("installed copy", beside), ("source tree", SOURCE_TREE_CONTRASTS)):
        if path.is_file():
            name = f"_medsynth_contrasts_{'copy' if path == beside else 'source'}"
            if name in sys.modules:
                return sys.modules[name]
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses/NamedTuple look their module up while the body runs
            spec.loader.exec_module(module)
            module.ORIGIN = f"{origin}: {path}"
            return module
    raise ImportError(f"MedSynth: cannot find the contrast name rules: medsynth_app is not importable, and neither "
                      f"{beside} (installed by the extension build) nor {SOURCE_TREE_CONTRASTS} exists")


contrasts = load_contrasts()
CONTRASTS = contrasts.CONTRASTS
MASKS = contrasts.MASKS
parse_name = contrasts.parse_name
canonical_contrast = contrasts.canonical_contrast
strip_extension = contrasts.strip_extension
