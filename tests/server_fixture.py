"""A real MedSynth MONAI Label server (the shipped app) for tests, and its flat datastore of real crops.

The server itself is started by :func:`medsynth_server.launcher.running_server`; this helper keeps the tests' defaults
(the ``linear`` family only) and is imported by several test modules, so that they do not import each other. Each
test module starts at most one server (a module-scoped fixture around :func:`running_server`), and the server's
whole process group is killed when the module is done.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import ContextManager, Mapping

import SimpleITK as sitk

from medsynth_server import launcher as serving
from medsynth_server.launcher import STARTUP_SECONDS, free_port, launcher  # noqa: F401 - used by test modules
from medsynth_server.resources import APP_DIR as APP  # noqa: F401 - used by test modules
from medsynth_server.resources import SLICER_MODULE_DIR  # noqa: F401 - used by test modules
from medsynth_server.slicer_lib import import_medsynth_lib  # noqa: F401 - used by test modules

# SimpleITK (i, j, k): centred left-right, from the back of the head (j = 0, so the crop reaches the background),
# through the ventricles; 80x96x24 voxels.
CROP_START, CROP_SIZE = [51, 0, 70], [80, 96, 24]


def patient_dir(shared: Path) -> Path:
    return shared / "open_ms_data" / "mni" / "patient07"


def write_crops(shared: Path, root: Path, prefix: str = "sub01_", contrasts=("T1", "T2", "FLAIR")) -> Path:
    """Crops of mni patient07 written as <prefix><contrast>.nii.gz, geometry kept."""
    root.mkdir(parents=True, exist_ok=True)
    for contrast in contrasts:
        image = sitk.ReadImage(str(patient_dir(shared) / f"{contrast}.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(image, CROP_SIZE, CROP_START), str(root / f"{prefix}{contrast}.nii.gz"))
    return root


def copy_app(folder: Path) -> Path:
    """A copy of apps/medsynth in ``folder``: a server on it may train and replace the copy's weights, never the
    shipped ones."""
    app = folder / "medsynth"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "train_stats_*.json"))
    return app


def running_server(datastore: Path, work: Path, conf_models: str = "linear", app: Path = APP,
                   conf: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> ContextManager[str]:
    """:func:`medsynth_server.launcher.running_server` on 127.0.0.1, serving only ``linear`` unless told otherwise."""
    return serving.running_server(datastore, work, conf_models=conf_models, app=app, conf=conf, env=env)


def absolute_paths(text: str, sent: tuple[str, ...] = ()) -> list[str]:
    """The absolute paths in a server's answer, besides those the request itself ``sent``: an answer must name files
    by their names, never tell the client where the server keeps them."""
    found = re.findall(r"(?<![\w.~])/[^\s\"'`:;,()<>|\\]+", text)
    return [p for p in found if not any(p in s for s in sent) and p.count("/") > 1]
