"""Local mode: synthesis in Slicer's own Python, without a server, when ``medsynth_app`` (and its dependencies:
SimpleITK, numpy, torch, ...) is importable there -- e.g. after ``pip_install`` of the repository into Slicer.

The models offered are the installed checkpoints (``medsynth_app.weights.installed``: folders in MEDSYNTH_WEIGHTS,
then the shipped ``apps/medsynth/model``), described like the server's ``/info`` so the panel treats both alike.
"""
from __future__ import annotations

import importlib
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional


def local_installed() -> bool:
    """Cheap check (no import) that ``medsynth_app`` can be found: the panel calls this while Slicer starts."""
    try:
        return importlib.util.find_spec("medsynth_app") is not None
    except (ImportError, ValueError):
        return False


def local_available() -> bool:
    """``medsynth_app.pipeline`` imports (with torch and the rest): slow the first time; call it off the GUI thread."""
    try:
        importlib.import_module("medsynth_app.pipeline")
    except Exception:  # noqa: BLE001 - ImportError, or a dependency failing to import in Slicer's Python
        return False
    return True


def local_models() -> Dict[str, Dict[str, Any]]:
    """family -> an ``/info``-like entry (type, targets, checkpoints per target with required/optional inputs)."""
    from medsynth_app.weights import installed

    models: Dict[str, Dict[str, Any]] = {}
    seen = set()
    for path, ckpt in installed():
        if path.name in seen:
            continue
        seen.add(path.name)
        entry = models.setdefault(ckpt.family, {"type": "synthesis", "targets": [], "checkpoints": {},
                                                "description": f"local {ckpt.family} checkpoints"})
        required, optional = ckpt.input_roles()
        for target in ckpt.targets:
            if target not in entry["targets"]:
                entry["targets"].append(target)
            entry["checkpoints"].setdefault(target, []).append({
                "checkpoint": path.name, "path": str(path), "inputs": list(ckpt.inputs),
                "required_inputs": required, "optional_inputs": optional})
    return models


def synthesize_local(model: str, target: str, files: Mapping[str, str], out_dir: Optional[str] = None,
                     intensity: str = "scaled", cancel_event=None):
    """Synthesise ``target`` from contrast -> file with the installed ``model`` checkpoint that uses the most of
    them; the first file (canonical contrast order) gives the output grid. Returns (path, params)."""
    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.contrasts import CONTRASTS
    from medsynth_app.imageio import read_image, write_image
    from medsynth_app.pipeline import provenance_for, synthesize

    from .client import Cancelled

    begin = time.time()
    entry = local_models().get(model)
    if entry is None or target not in entry["targets"]:
        raise ValueError(f"no installed {model} checkpoint synthesises {target}")
    best = None
    for row in entry["checkpoints"][target]:
        if all(c in files for c in row["required_inputs"]):
            used = [c for c in CONTRASTS if c in row["required_inputs"]
                    or (c in row["optional_inputs"] and c in files)]
            if best is None or len(used) > len(best[1]):
                best = (row, used)
    if best is None:
        needs = " or ".join("+".join(r["required_inputs"]) for r in entry["checkpoints"][target])
        raise ValueError(f"{model} cannot synthesise {target} from {'+'.join(files) or 'nothing'}: it needs {needs}")
    row, used = best
    checkpoint = load_checkpoint(row["path"])
    images = {c: read_image(files[c]) for c in used}
    if cancel_event is not None and cancel_event.is_set():
        raise Cancelled()
    result = synthesize(checkpoint, images, target, intensity=intensity)
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="medsynth_result_"))
    path = folder / f"{target}_synthetic_{model}_{int(time.time() * 1000)}.nii.gz"
    write_image(result, path, provenance_for(checkpoint, used, target))
    return str(path), {"target": target, "inputs": {c: Path(files[c]).name for c in used}, "model": model,
                       "checkpoint": row["checkpoint"], "latencies": {"total": round(time.time() - begin, 2)}}
