"""The infer task (apps/medsynth/lib/infers/synthesis.py) on a session upload: MONAI Label hands it a folder
(several files sent with PUT /session/); the folder's images named by contrast are the study and the first input
used gives the output grid. Called directly, without a server (the Slicer client's tests cover the HTTP path)."""
from __future__ import annotations

import os
import zipfile
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import APP, write_crops

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")


@pytest.fixture(scope="module")
def task():
    before = set(sys.modules)
    sys.path.insert(0, str(APP))
    try:
        from lib.infers.synthesis import SynthesisInferTask
    finally:
        sys.path.remove(str(APP))
    from medsynth_app.weights import installed

    checkpoints = [(p, c) for p, c in installed([APP / "model"]) if c.family == "linear" and p.parent.name == "model"
                   and p.parent.parent == APP]
    yield SynthesisInferTask("linear", checkpoints)
    for name in set(sys.modules) - before:  # the app's generic package name `lib` must not linger
        if name == "lib" or name.startswith("lib."):
            del sys.modules[name]


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return write_crops(SHARED, tmp_path_factory.mktemp("crops"), prefix="")


def _session(tmp_path, crops, files: dict) -> str:
    folder = tmp_path / "session" / "tmpupload"
    folder.mkdir(parents=True)
    for new, old in files.items():
        shutil.copy(crops / old, folder / new)
    return str(folder)


def test_a_session_folder_is_the_study_and_the_first_input_gives_the_grid(task, crops, tmp_path):
    # T2 on a coarser grid: the output must still be on T1's grid (the first input, canonical order).
    folder = _session(tmp_path, crops, {"T1.nii.gz": "T1.nii.gz"})
    t2 = sitk.ReadImage(str(crops / "T2.nii.gz"))
    coarse = sitk.Resample(t2, [s // 2 for s in t2.GetSize()], sitk.Transform(), sitk.sitkLinear, t2.GetOrigin(),
                           [2 * s for s in t2.GetSpacing()], t2.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(coarse, f"{folder}/T2.nii.gz")
    path, params = task({"image": folder, "target": "FLAIR"})
    assert params["inputs"] == {"T1": "T1.nii.gz", "T2": "T2.nii.gz"} and params["study"] == "session"
    result, reference = sitk.ReadImage(path), sitk.ReadImage(str(crops / "T1.nii.gz"))
    os.unlink(path)  # the task writes into the system temporary folder; MONAI Label deletes it after answering
    assert result.GetPixelID() == sitk.sitkFloat32
    assert result.GetSize() == reference.GetSize()
    np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-5)


def test_a_session_lacking_an_input_is_a_400_naming_it(task, crops, tmp_path):
    folder = _session(tmp_path, crops, {"T1.nii.gz": "T1.nii.gz", "FLAIR.nii.gz": "FLAIR.nii.gz"})
    with pytest.raises(Exception) as info:
        task({"image": folder, "target": "FLAIR"})
    assert info.value.status_code == 400 and "linear needs T1+T2; missing T2" in info.value.detail


def test_two_files_claiming_one_contrast_is_a_409_naming_both(task, crops, tmp_path):
    folder = _session(tmp_path, crops, {"T1.nii.gz": "T1.nii.gz", "T1w.nii.gz": "T1.nii.gz", "T2.nii.gz": "T2.nii.gz"})
    with pytest.raises(Exception) as info:
        task({"image": folder, "target": "FLAIR"})
    assert info.value.status_code == 409
    assert "T1.nii.gz" in info.value.detail and "T1w.nii.gz" in info.value.detail


def test_a_folder_of_several_studies_is_refused(task, crops, tmp_path):
    folder = _session(tmp_path, crops, {"a_T1.nii.gz": "T1.nii.gz", "b_T1.nii.gz": "T1.nii.gz"})
    with pytest.raises(Exception) as info:
        task({"image": folder, "target": "T2"})
    assert info.value.status_code == 400 and "2 studies" in info.value.detail


@pytest.fixture(scope="module")
def dicom_series(crops, tmp_path_factory):
    """The crops' T1, T2 and FLAIR as the DICOM series of one study, as a scanner names them."""
    from pacs_fixture import write_study

    images = {c: sitk.ReadImage(str(crops / f"{c}.nii.gz")) for c in ("T1", "T2", "FLAIR")}
    return write_study(images, tmp_path_factory.mktemp("dicom") / "study", "patient07")


def _loose_files(series: list, folder):
    """What a client's multi-file upload gives MONAI Label: every file of the series in one folder."""
    folder.mkdir(parents=True)
    for s in series:
        for f in s.iterdir():
            shutil.copy(f, folder / f"{s.name}_{f.name}")
    return folder


def test_a_session_of_dicom_files_is_a_study_and_can_answer_with_a_dicom_series(task, dicom_series, tmp_path):
    import pydicom

    t1, t2, flair = sorted(dicom_series.iterdir())
    folder = _loose_files([t1, t2], tmp_path / "session" / "tmpupload")
    path, params = task({"image": str(folder), "target": "FLAIR", "result_extension": ".zip"})
    assert set(params["inputs"]) == {"T1", "T2"}  # recognised from SeriesDescription, not file names
    unpacked = tmp_path / "result"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unpacked)
    os.unlink(path)
    [series] = list(unpacked.iterdir())
    first = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    source = pydicom.dcmread(next(t1.iterdir()), stop_before_pixels=True)
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.PatientID == source.PatientID
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    result, reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))), \
        sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(t1)))
    assert result.GetSize() == reference.GetSize()
    np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-3)


def test_a_session_of_one_zip_holding_a_study(task, dicom_series, tmp_path):
    t1, t2, _ = sorted(dicom_series.iterdir())
    upload = tmp_path / "session" / "study.zip"
    upload.parent.mkdir(parents=True)
    with zipfile.ZipFile(upload, "w") as archive:
        for s in (t1, t2):
            for f in s.iterdir():
                archive.write(f, f"DICOM/{s.name}/{f.name}")
    path, params = task({"image": str(upload), "target": "FLAIR"})
    os.unlink(path)
    assert set(params["inputs"]) == {"T1", "T2"}
    damaged = tmp_path / "session" / "damaged.zip"
    damaged.write_bytes(upload.read_bytes()[:3000])
    with pytest.raises(Exception) as info:
        task({"image": str(damaged), "target": "FLAIR"})
    assert info.value.status_code == 422 and "damaged.zip: not a readable zip file" in info.value.detail
