"""Shared fixtures: crops of the real data in ../shared/data and a small simulated cohort; the test dependencies
checked before anything runs."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED = Path(os.environ.get("MEDSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")

# Parts the tests exercise for real: a missing one is a broken installation, never a reason to skip. (Only the
# absence of the real data folder skips the tests that read it.)
REQUIRED = {
    "monailabel": "monailabel (pip install -e . installs it)",
    "requests": "requests (installed with monailabel)",
    "requests_toolbelt": "requests-toolbelt (installed with monailabel)",
    "jwt": "PyJWT (installed with monailabel)",
    "slicer": "slicer-core, Slicer's MRML classes without Qt (pip install -e '.[test]')",
    "PySide6.QtUiTools": "PySide6-Essentials, real Qt for the module's .ui (pip install -e '.[test]')",
}


def missing_test_dependencies() -> list[str]:
    missing = []
    for module, package in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package of a submodule is absent
            found = False
        if not found:
            missing.append(f"{module}: install {package}")
    return missing


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes (builds and installs the wheel); run by default")
    missing = missing_test_dependencies()
    if missing:
        raise pytest.UsageError("test dependencies are missing; install them, the tests do not skip them:\n  "
                                + "\n  ".join(missing))


def crop_study(src: Path, dst: Path, files: dict[str, str], box: tuple[slice, slice, slice]) -> Path:
    """Write crops (index box in SimpleITK i, j, k order) of a study's files under new names, geometry kept."""
    dst.mkdir(parents=True, exist_ok=True)
    for new_name, old_name in files.items():
        image = sitk.ReadImage(str(src / old_name))
        start = [s.start for s in box]
        size = [s.stop - s.start for s in box]
        sitk.WriteImage(sitk.RegionOfInterest(image, size, start), str(dst / new_name))
    return dst


MNI_FILES = {"T1.nii.gz": "T1.nii.gz", "T2.nii.gz": "T2.nii.gz", "FLAIR.nii.gz": "FLAIR.nii.gz",
             "lesion_consensus.nii.gz": "lesion_consensus.nii.gz"}
MNI_BOX = (slice(40, 140), slice(50, 170), slice(70, 94))


@pytest.fixture(scope="session")
def mni_crops(tmp_path_factory) -> Path:
    """Three real MS subjects (open_ms_data/mni), cropped to 100x120x24 voxels around the ventricles."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    root = tmp_path_factory.mktemp("mni_crops")
    for patient in ("patient07", "patient19", "patient26"):
        crop_study(SHARED / "open_ms_data" / "mni" / patient, root / patient, MNI_FILES, MNI_BOX)
    return root


@pytest.fixture(scope="session")
def sim_cohort(tmp_path_factory) -> Path:
    from medsynth_app.simulation import simulate_cohort

    root = tmp_path_factory.mktemp("sim")
    simulate_cohort(root, n_subjects=2, seed=7, spacing=2.0)
    return root


def random_volume(shape=(20, 24, 16), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32)
