"""Local mode: synthesis without a server, in a separate PythonSlicer process, when ``medsynth_app`` (and its
dependencies: torch, SimpleITK, ...) is importable in Slicer's Python.

Slicer's own process never imports torch: :func:`run_local_process` starts ``local_runner.py`` (this folder) with
PythonSlicer, and killing that process is how Cancel stops a local synthesis. :func:`install_plan` lists what to
pip-install for local mode, leaving every package Slicer already has (numpy, pydicom, SimpleITK, ...) as it is.

The models offered are the installed checkpoints (``medsynth_app.weights.installed``: folders in MEDSYNTH_WEIGHTS,
then the shipped ``apps/medsynth/model``), described like the server's ``/info`` so the panel treats both alike.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

RUNNER = Path(__file__).with_name("local_runner.py")
# What local synthesis needs of the library's requirements (setup.py); a test keeps them in step. torch comes from
# the PyTorch extension (PyTorch Utils: the build matching the machine's GPU), never from here.
LOCAL_REQUIREMENTS = ("monai==1.6.1", "nibabel>=5.2", "SimpleITK>=2.3", "numpy", "scipy>=1.11", "scikit-learn>=1.4",
                      "scikit-image>=0.22", "tqdm>=4.66")
TORCH_MISSING = ("Local mode needs PyTorch in Slicer's Python. Install the PyTorch extension (Extensions Manager: "
                 "PyTorch), open its module (PyTorch Utils) and click Install PyTorch, then restart Slicer.")


def local_installed() -> bool:
    """Cheap check (no import) that ``medsynth_app`` can be found: the panel calls this while Slicer starts."""
    try:
        return importlib.util.find_spec("medsynth_app") is not None
    except (ImportError, ValueError):
        return False


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def install_plan(installed: Optional[Iterable[str]] = None,
                 requirements: Iterable[str] = LOCAL_REQUIREMENTS) -> List[str]:
    """The requirements to pip-install for local mode: those whose package is not installed at all. A package
    Slicer ships (numpy, SimpleITK, pydicom, ...) is never upgraded or downgraded; the library itself is installed
    with ``--no-deps`` so that its pins do not touch them either."""
    if installed is None:
        installed = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    present = {str(n).lower().replace("_", "-") for n in installed}
    return [r for r in requirements if _name(r) not in present]


def python_executable() -> str:
    """PythonSlicer inside Slicer (on its PATH), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def local_models_process(python: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """:func:`local_models`, listed by a separate process (reading checkpoints imports torch)."""
    return _run_runner({"action": "models"}, python=python)


def run_local_process(model: str, target: str, files: Mapping[str, str], out_dir: str, cancel_event=None,
                      report=lambda fraction, message: None, python: Optional[str] = None):
    """Synthesise in a separate process (``local_runner.py``); returns (path, params). Setting ``cancel_event``
    kills the process. Its progress lines are passed to ``report``."""
    result = _run_runner({"action": "synthesize", "model": model, "target": target, "files": dict(files),
                          "out_dir": str(out_dir)}, cancel_event, report, python)
    return result["path"], result["params"]


def _run_runner(request: Mapping[str, Any], cancel_event=None, report=lambda fraction, message: None,
                python: Optional[str] = None):
    from .client import Cancelled, MedSynthError

    request = json.dumps(dict(request))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([python or python_executable(), str(RUNNER), request], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    lines: List[str] = []

    def read_output():
        for line in process.stdout:
            lines.append(line)
            if line.startswith("progress "):
                report(None, line[len("progress "):].strip())

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    while process.poll() is None:
        if cancel_event is not None and cancel_event.wait(0.1):
            process.kill()
            process.wait()
            raise Cancelled("cancelled: the local synthesis process was stopped")
        elif cancel_event is None:
            time.sleep(0.1)
    reader.join(5)
    errors = process.stderr.read()
    answer = next((line[len("result "):] for line in reversed(lines) if line.startswith("result ")), None)
    if process.returncode != 0 or answer is None:
        last = (errors.strip().splitlines() or ["no message"])[-1]
        raise MedSynthError(f"local mode failed (exit status {process.returncode}): {last}")
    return json.loads(answer)


def local_models(family: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """family -> an ``/info``-like entry (type, targets, checkpoints per target with required/optional inputs,
    validation figures and training data). With ``family``, only the files named ``<family>_*.pt`` are read when
    there are any (reading every checkpoint is what makes listing slow)."""
    from medsynth_app.checkpoint import CheckpointError, load_checkpoint
    from medsynth_app.weights import weight_folders

    paths = [p for folder in weight_folders() if folder.is_dir() for p in sorted(folder.glob("*.pt"))]
    if family:
        paths = [p for p in paths if p.name.startswith(f"{family}_")] or paths
    models: Dict[str, Dict[str, Any]] = {}
    seen = set()
    for path in paths:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:  # unreadable files are skipped, as medsynth_app.weights.installed does
            continue
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
                "required_inputs": required, "optional_inputs": optional,
                "validation": (ckpt.training.get("validation") or {}).get(target, {}),
                "validation_subjects": len(ckpt.training.get("validation_subjects") or []),
                "training_subjects": len(ckpt.training.get("subjects") or []),
                "training_datasets": sorted({str(s).split("/")[0] for s in ckpt.training.get("subjects") or []})})
    return models


def synthesize_local(model: str, target: str, files: Mapping[str, str], out_dir: Optional[str] = None,
                     intensity: str = "scaled"):
    """Synthesise ``target`` from contrast -> file with the installed ``model`` checkpoint that uses the most of
    them (the library's one rule, ``medsynth_app.weights.choose``); the first file (canonical contrast order) gives
    the output grid. Returns (path, params)."""
    from medsynth_app.checkpoint import CheckpointError
    from medsynth_app.imageio import read_image, write_image
    from medsynth_app.pipeline import provenance_for, synthesize
    from medsynth_app.weights import CheckpointStore, choose

    begin = time.time()
    try:
        chosen, checkpoint, used = choose(CheckpointStore().checkpoints(model), target, list(files))
    except CheckpointError as err:
        raise ValueError(f"{model} cannot synthesise {target} from {'+'.join(files) or 'nothing'}: {err}") from None
    images = {c: read_image(files[c]) for c in used}
    result = synthesize(checkpoint, images, target, intensity=intensity)
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="medsynth_result_"))
    path = folder / f"{target}_synthetic_{model}_{int(time.time() * 1000)}.nii.gz"
    write_image(result, path, provenance_for(checkpoint, used, target))
    return str(path), {"target": target, "inputs": {c: Path(files[c]).name for c in used}, "model": model,
                       "checkpoint": chosen.name, "latencies": {"total": round(time.time() - begin, 2)}}
