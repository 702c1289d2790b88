"""The MONAI Label app on a real PACS: Orthanc with its DICOMweb plugin (.ci/install_orthanc.sh) loaded with two MR
studies made from real data, served by a real `monailabel start_server --studies http://127.0.0.1:PORT/dicom-web`.

Inputs are picked per study from the PACS's metadata (patient07: descriptions as a Siemens scanner writes them;
patient19: descriptions that name no contrast, so the sequence tags decide), only the series used are downloaded,
the synthetic volume goes back into the study as a DERIVED\\SECONDARY\\SYNTHETIC series, acquired series stay
byte-identical, and training reads its studies from the PACS.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import SHARED
from medsynth_app.dicom_series import series_contrast
from medsynth_app.imageio import read_image
from pacs_fixture import INSTALLED, PROTOCOLS, running_orthanc, upload, write_study
from medsynth_app.checkpoint import load_checkpoint
from server_fixture import CROP_SIZE, CROP_START, copy_app, running_server

import requests  # noqa: E402

# patient19's protocol descriptions name no contrast: the sequence (ScanningSequence, TE, TR, TI) must decide.
UNNAMED = {c: {**p, "SeriesDescription": f"ax 3mm {i}"} for i, (c, p) in enumerate(PROTOCOLS.items())}
needs_pacs = pytest.mark.skipif(not (INSTALLED and SHARED.is_dir()),
                                reason="Orthanc with its DICOMweb plugin (.ci/install_orthanc.sh) or the real data "
                                       "is absent")


def test_contrast_from_description_then_from_the_sequence():
    for contrast, protocol in PROTOCOLS.items():
        assert series_contrast({"Modality": "MR", **protocol}) == contrast
        assert series_contrast({**protocol, "SeriesDescription": "ax 3mm"}) == contrast  # the sequence alone
    assert series_contrast({"SeriesDescription": "t1_se_tra", "ContrastBolusAgent": "Gadovist"}) == "T1C"
    assert series_contrast({"SeriesDescription": "ax", "ScanningSequence": "SE", "EchoTime": 12,
                            "RepetitionTime": 3000}) == "PD"
    assert series_contrast({"SeriesDescription": "stir", "ScanningSequence": ["SE", "IR"], "InversionTime": 150,
                            "EchoTime": 40, "RepetitionTime": 4000}) is None
    # derived series (MedSynth's own output, reformats) are never an acquired contrast
    assert series_contrast({"SeriesDescription": "SYNTHETIC FLAIR by linear from T1+T2",
                            "ImageType": ["DERIVED", "SECONDARY", "SYNTHETIC"]}) is None
    assert series_contrast({**PROTOCOLS["T2"], "Modality": "CT"}) is None


def _crops(patient: str) -> dict[str, sitk.Image]:
    folder = SHARED / "open_ms_data" / "mni" / patient
    return {c: sitk.RegionOfInterest(sitk.ReadImage(str(folder / f"{c}.nii.gz")), CROP_SIZE, CROP_START)
            for c in ("T1", "T2", "FLAIR")}


def _stored_files(orthanc: str) -> dict[str, str]:
    """Orthanc instance id -> sha256 of the stored DICOM file (Orthanc's REST API, beside its DICOMweb root)."""
    root = orthanc.rsplit("/dicom-web", 1)[0]
    return {i: hashlib.sha256(requests.get(f"{root}/instances/{i}/file", timeout=30).content).hexdigest()
            for i in requests.get(f"{root}/instances", timeout=30).json()}


# patient26: T1 and a T2 scanned twice (a repeat after motion), no FLAIR
REPEATED = {**PROTOCOLS, "T2 repeat": {**PROTOCOLS["T2"], "SeriesDescription": "t2_tse_tra_repeat"}}
LOADED = {"patient07": ("T1", "T2", "FLAIR"), "patient19": ("T1", "T2", "FLAIR"),
          "patient26": ("T1", "T2", "T2 repeat")}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding patient07 (named protocols), patient19 (unnamed protocols), patient26 (T2 twice)."""
    work = tmp_path_factory.mktemp("pacs")
    with running_orthanc(work / "orthanc") as url:
        for patient, protocols in (("patient07", PROTOCOLS), ("patient19", UNNAMED), ("patient26", REPEATED)):
            crops = _crops(patient)
            images = {name: crops[name.split()[0]] for name in LOADED[patient]}
            upload(url, write_study(images, work / patient, patient, protocols))
        yield url, work


@pytest.fixture(scope="module")
def series(pacs):
    """(patient, series name) -> (StudyInstanceUID, SeriesInstanceUID) as loaded."""
    _, work = pacs
    found = {}
    for patient, names in LOADED.items():
        for folder, name in zip(sorted((work / patient).iterdir()), names):
            ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
            found[patient, name] = (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    return found


@pytest.fixture(scope="module")
def server(pacs, tmp_path_factory):
    url, _ = pacs
    work = tmp_path_factory.mktemp("server")
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache")}
    try:
        with running_server(url, work, app=copy_app(work), env=env) as server_url:
            yield server_url, work / "cache"
    except RuntimeError as err:
        pytest.fail(str(err))


def _downloaded(cache: Path) -> set[str]:
    """The series folders MONAI Label's datastore downloaded into its cache."""
    return {p.name for p in cache.rglob("*") if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir())}


@needs_pacs
def test_the_server_lists_the_pacs_series(server, series):
    url, _ = server
    listed = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert requests.get(f"{url}/datastore/", timeout=60).json()["total"] == len(series)
    for (patient, name), (study_uid, series_uid) in series.items():
        info = listed[series_uid]["image"]["info"]
        assert info["StudyInstanceUID"] == study_uid
        assert info["contrast"] == name.split()[0], (patient, info)


@needs_pacs
def test_infer_picks_inputs_by_metadata_and_stores_a_synthetic_series_in_the_study(pacs, series, server):
    orthanc, _ = pacs
    url, cache = server
    before = _stored_files(orthanc)
    study_uid, t1_uid = series["patient19", "T1"]
    started = time.time()
    response = requests.post(f"{url}/infer/linear", params={"image": t1_uid, "output": "json"},
                             files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=600)
    seconds = time.time() - started
    assert response.status_code == 200, response.text
    params = response.json()
    assert params["study"] == study_uid
    # the inputs were found by their sequence tags (the descriptions name no contrast)
    assert params["inputs"] == {"T1": t1_uid, "T2": series["patient19", "T2"][1]}
    # only those two series were downloaded, never the study's acquired FLAIR nor the other study
    assert _downloaded(cache) == {t1_uid, series["patient19", "T2"][1]}

    stored = params["stored_series"]
    after = _stored_files(orthanc)
    assert {i: h for i, h in after.items() if i in before} == before  # acquired instances byte-identical
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(orthanc)
    synthetic = client.retrieve_series(study_uid, stored)
    assert len(synthetic) == len(after) - len(before) == CROP_SIZE[2]
    first = synthetic[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    assert first.SeriesDescription.startswith("SYNTHETIC FLAIR by linear from T1+T2")
    assert first.StudyInstanceUID == study_uid and first.PatientID == "patient19"

    # read back from the PACS: on the T1 series' grid, and a synthesis of the acquired FLAIR
    folder = cache.parent / "readback"
    folder.mkdir()
    for ds in synthetic:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
    result = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    t1, t2, flair = (read_image(f) for f in sorted((pacs[1] / "patient19").iterdir()))  # as loaded
    assert result.GetSize() == t1.GetSize()
    for get in (sitk.Image.GetOrigin, sitk.Image.GetSpacing, sitk.Image.GetDirection):
        np.testing.assert_allclose(get(result), get(t1), atol=1e-3)
    values, truth, copied = (sitk.GetArrayFromImage(i).astype(float) for i in (result, flair, t2))
    brain = values > 0
    r = np.corrcoef(values[brain], truth[brain])[0, 1]
    r_copy = np.corrcoef(copied[brain], truth[brain])[0, 1]  # the trivial predictor: the T2 input itself
    assert r > r_copy + 0.05, (r, r_copy)
    print(f"PACS infer: {seconds:.1f} s; r(synthetic, FLAIR) = {r:.3f}, r(T2, FLAIR) = {r_copy:.3f}")

    # one synthetic series was added; it is not an acquired FLAIR (the training test below relies on that: a
    # second FLAIR would make patient19's study ambiguous and leave it out)
    listed = client.search_for_series(study_uid, fields=["00080008", "0008103E"])
    assert sum("SYNTHETIC" in str(s.get("0008103E", {}).get("Value", [""])[0]) for s in listed) == 1


@needs_pacs
def test_two_series_of_one_input_contrast_need_the_request_to_choose(pacs, series, server):
    orthanc, _ = pacs
    url, _ = server
    before = _stored_files(orthanc)
    t1 = series["patient26", "T1"][1]

    def infer(params):
        return requests.post(f"{url}/infer/linear", params={"image": t1, "output": "json"},
                             files={"params": (None, json.dumps(params))}, timeout=600)

    response = infer({"target": "FLAIR"})
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "t2_tse_tra (series 3)" in detail and "t2_tse_tra_repeat (series 4)" in detail
    # T2 is the target here: its two acquisitions do not matter
    assert infer({"target": "T2", "save": False}).status_code == 200
    repeat = series["patient26", "T2 repeat"][1]
    response = infer({"target": "FLAIR", "inputs": {"T2": repeat}, "save": False})
    assert response.status_code == 200, response.text
    assert response.json()["inputs"]["T2"] == repeat and "stored_series" not in response.json()
    assert _stored_files(orthanc) == before  # save false: nothing stored
    response = infer({"target": "FLAIR", "inputs": {"T2": "../../../etc"}})
    assert response.status_code == 404 and "no series" in response.json()["detail"]
    for image in ("../../../../etc", "1.2.3.4"):  # not a UID; a series the PACS does not hold
        response = requests.post(f"{url}/infer/linear", params={"image": image, "output": "json"},
                                 files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=60)
        assert response.status_code == 404, response.text


@needs_pacs
def test_a_dicom_answer_and_the_stored_series_join_the_study_of_the_requested_series(pacs, series, server):
    import io
    import zipfile

    from dicomweb_client import DICOMwebClient

    orthanc, _ = pacs
    url, _ = server
    study_uid, flair = series["patient07", "FLAIR"]  # the acquired target itself: not an input, but the study's
    response = requests.post(f"{url}/infer/linear", params={"image": flair, "output": "image"}, timeout=600,
                             files={"params": (None, json.dumps({"target": "FLAIR", "result_extension": ".zip"}))})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        first = pydicom.dcmread(io.BytesIO(archive.read(archive.namelist()[0])), stop_before_pixels=True)
    assert first.StudyInstanceUID == study_uid and first.PatientID == "patient07"
    stored = [s for s in DICOMwebClient(orthanc).search_for_series(study_uid, fields=["00080008"])
              if "SYNTHETIC" in s.get("00080008", {}).get("Value", [])]
    assert len(stored) == 1


@needs_pacs
def test_training_reads_its_studies_from_the_pacs(server, series):
    url, cache = server
    response = requests.post(f"{url}/train/linear", params={"run_sync": "true"}, timeout=900,
                             json={"target": "FLAIR", "inputs": ["T1", "T2"], "val_split": 0.5})
    assert response.status_code == 200, response.text
    stats = requests.get(f"{url}/info/", timeout=60).json()["train_stats"]["linear"]
    assert stats["status"] == "DONE", stats
    # /info gives counts only; the study ids are in the new checkpoint's training record
    assert (stats["training_studies"], stats["validation_studies"], stats["skipped"]) == (1, 1, 1)
    versions = cache.parent / "home" / "models" / "versions" / "linear_T1+T2_to_FLAIR"
    trained = load_checkpoint(sorted(versions.glob("v*.pt"))[-1]).training
    studies = {series["patient07", "T1"][0], series["patient19", "T1"][0]}  # patient26 repeats T2: skipped
    assert set(trained["subjects"]) | set(trained["validation_subjects"]) == studies
    assert stats["best_metric"] > 15  # validation PSNR (dB) on the held-out study
