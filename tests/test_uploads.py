"""Uploads to a real MedSynth MONAI Label server: DICOM series sent to a session (answered with a DICOM series in
their study), files that are not readable 3-D images refused on arrival with 422 and not stored, and a studies
folder of one folder per study refused at start with a message saying the layout."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk

from conftest import SHARED
from pacs_fixture import write_study
from server_fixture import running_server, write_crops

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
import requests  # noqa: E402


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    return write_crops(SHARED, tmp_path_factory.mktemp("datastore"))


@pytest.fixture(scope="module")
def server(datastore, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    try:
        with running_server(datastore, work) as url:
            yield url, work / "sessions"
    except RuntimeError as err:
        pytest.fail(str(err))


def _sessions(folder: Path) -> set:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_session_of_dicom_series_is_answered_with_a_series_of_their_study(server, datastore, tmp_path):
    url, _ = server
    images = {c: sitk.ReadImage(str(datastore / f"sub01_{c}.nii.gz")) for c in ("T1", "T2")}
    study = write_study(images, tmp_path / "study", "patient07")
    files = [("files", (f"{s.name}_{f.name}", f.read_bytes())) for s in sorted(study.iterdir())
             for f in sorted(s.iterdir())]
    response = requests.put(f"{url}/session/", files=files, timeout=120)
    assert response.status_code == 200, response.text
    session_id = response.json()["session_id"]
    response = requests.post(f"{url}/infer/linear", params={"session_id": session_id, "output": "image"},
                             files={"params": (None, json.dumps({"target": "FLAIR", "result_extension": ".zip"}))},
                             timeout=300)
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        first = pydicom.dcmread(io.BytesIO(archive.read(names[0])), stop_before_pixels=True)
    source = pydicom.dcmread(next((study / "series2").iterdir()), stop_before_pixels=True)
    assert len(names) == images["T1"].GetDepth()
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.PatientID == "patient07"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]


def test_a_session_upload_that_is_no_image_is_refused_and_not_stored(server, tmp_path):
    url, sessions = server
    before = _sessions(sessions)
    response = requests.put(f"{url}/session/", files=[("files", ("T1.nii.gz", b"not an image" * 100))], timeout=60)
    assert response.status_code == 422, response.text
    assert "T1.nii.gz" in response.json()["detail"] and "/tmp" not in response.json()["detail"]
    damaged = [("files", ("T1.nii.gz", b"x" * 400)), ("files", ("T2.nii.gz", b"y" * 400))]
    assert requests.put(f"{url}/session/", files=damaged, timeout=60).status_code == 422
    assert _sessions(sessions) == before


def test_a_datastore_upload_that_is_no_image_is_refused_and_not_stored(server, datastore):
    url, _ = server
    before = sorted(p.name for p in datastore.iterdir())
    response = requests.put(f"{url}/datastore/image", params={"image": "sub09_T1"},
                            files={"file": ("sub09_T1.nii.gz", b"\x1f\x8b garbage" * 50)}, timeout=60)
    assert response.status_code == 422, response.text
    assert "sub09_T1" in response.json()["detail"]
    assert sorted(p.name for p in datastore.iterdir()) == before
    # a real image is still accepted
    good = (datastore / "sub01_T2.nii.gz").read_bytes()
    response = requests.put(f"{url}/datastore/image", params={"image": "sub09_T2"},
                            files={"file": ("sub09_T2.nii.gz", good)}, timeout=60)
    assert response.status_code == 200, response.text
    assert "sub09_T2.nii.gz" in {p.name for p in datastore.iterdir()}


def test_a_folder_of_study_folders_is_refused_with_the_layout(tmp_path, monkeypatch):
    """What the app's init_datastore calls for --studies DIR (every server above starts through it); called directly
    because a server that refuses to start costs half a minute."""
    import sys

    from server_fixture import APP

    monkeypatch.syspath_prepend(str(APP))
    from lib.uploads import local_datastore

    root = tmp_path / "studies"
    for study in ("sub01", "sub02"):
        write_crops(SHARED, root / study, prefix="", contrasts=("T1", "T2"))
    try:
        with pytest.raises(ValueError) as info:
            local_datastore(str(root))
    finally:
        for name in [m for m in sys.modules if m == "lib" or m.startswith("lib.")]:
            del sys.modules[name]  # the app's generic package name must not linger
    assert "holds one folder per study" in str(info.value) and "sub01_T1.nii.gz" in str(info.value)
