"""Shared fixtures: crops of the real data in ../shared/data and a small simulated cohort."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED = Path(os.environ.get("MEDSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")


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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes (builds and installs the wheel); run by default")
