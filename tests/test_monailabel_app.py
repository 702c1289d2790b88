"""The MONAI Label app (apps/medsynth) served by a real `monailabel start_server`, on a flat datastore of real crops.

One server for the module (starting it takes ~10-30 s); it is stopped by killing its process group.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import APP, running_server, write_crops

from medsynth_app.checkpoint import load_checkpoint
from medsynth_app.pipeline import synthesize

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    """Flat datastore: sub01_T1/T2/FLAIR (crops of mni patient07) and sub02_T1 alone (a study lacking T2)."""
    root = write_crops(SHARED, tmp_path_factory.mktemp("datastore"))
    shutil.copy(root / "sub01_T1.nii.gz", root / "sub02_T1.nii.gz")
    return root


@pytest.fixture(scope="module")
def server(datastore, tmp_path_factory):
    try:
        with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="all") as url:
            yield url
    except RuntimeError as err:
        pytest.fail(str(err))


def _infer(url: str, image: str, params: dict, output: str = "image"):
    return requests.post(f"{url}/infer/linear", params={"image": image, "output": output},
                         files={"params": (None, json.dumps(params))}, timeout=300)


def test_info_lists_the_linear_model_as_synthesis(server):
    info = requests.get(f"{server}/info/", timeout=30).json()
    model = info["models"]["linear"]
    assert model["type"] == "synthesis"
    assert set(model["targets"]) == {"FLAIR", "T2"}
    flair = model["checkpoints"]["FLAIR"][0]
    assert flair["required_inputs"] == ["T1", "T2"] and flair["optional_inputs"] == []
    shown = load_checkpoint(APP / "model" / "linear_T1+T2_to_FLAIR.pt").training["validation"]["FLAIR"]
    assert flair["validation"] == pytest.approx(shown)  # the checkpoint's own validation metrics
    assert info["datastore"]["total"] == 4


def test_infer_flair_returns_float32_on_the_image_grid(server, datastore, tmp_path):
    # What a Slicer client sends: uint8 and .nrrd; a synthesis must stay float32 whatever the client asks.
    response = _infer(server, "sub01_T1", {"target": "FLAIR", "result_dtype": "uint8", "result_extension": ".nrrd"})
    assert response.status_code == 200, response.text
    name = re.search(r'filename="?([^";]+)"?', response.headers["content-disposition"]).group(1)
    assert name.endswith(".nrrd")
    out = tmp_path / name
    out.write_bytes(response.content)
    result = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(datastore / "sub01_T1.nii.gz"))
    assert result.GetPixelID() == sitk.sitkFloat32
    assert result.GetSize() == reference.GetSize()
    np.testing.assert_allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert result.GetMetaData("medsynth_synthetic") == "true"
    # The library's own synthesis with the served checkpoint, voxel for voxel (no quality claim here: patient07 is
    # among the shipped weights' training subjects).
    inputs = {c: sitk.ReadImage(str(datastore / f"sub01_{c}.nii.gz")) for c in ("T1", "T2")}
    library = sitk.GetArrayFromImage(synthesize(load_checkpoint(APP / "model" / "linear_T1+T2_to_FLAIR.pt"), inputs,
                                                "FLAIR"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(result), library, rtol=1e-5, atol=1e-5 * float(library.max()))


def test_unknown_target_is_a_400_naming_it(server):
    response = _infer(server, "sub01_T1", {"target": "XYZ"})
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.json()["detail"] == "unknown target 'XYZ' for model linear; it synthesises FLAIR, T2"


def test_missing_input_is_a_400_naming_the_contrast(server):
    response = _infer(server, "sub02_T1", {"target": "FLAIR"})
    assert response.status_code == 400, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert "T2" in detail and "sub02" in detail


def test_explicit_inputs_supply_a_missing_contrast(server):
    response = _infer(server, "sub02_T1", {"target": "FLAIR", "inputs": {"T2": "sub01_T2"}}, output="json")
    assert response.status_code == 200, response.text
    assert response.json()["inputs"] == {"T1": "sub02_T1.nii.gz", "T2": "sub01_T2.nii.gz"}


def test_a_named_checkpoint_is_the_one_used(server):
    response = _infer(server, "sub01_T1", {"target": "FLAIR", "checkpoint": "linear_T1+T2_to_FLAIR.pt"}, output="json")
    assert response.status_code == 200, response.text
    assert response.json()["checkpoint"] == "linear_T1+T2_to_FLAIR.pt"


@pytest.mark.parametrize("checkpoint, named, status", [
    ("nobody.pt", "model linear: unknown checkpoint 'nobody.pt'", 404),
    ("linear_T1_to_T2.pt", "linear_T1_to_T2.pt does not synthesise FLAIR", 400)])
def test_a_checkpoint_that_cannot_serve_the_request_is_a_4xx_naming_it(server, checkpoint, named, status):
    response = _infer(server, "sub01_T1", {"target": "FLAIR", "checkpoint": checkpoint})
    assert response.status_code == status, (response.status_code, response.text)
    assert named in response.json()["detail"]


def test_unknown_image_is_a_404(server):
    response = _infer(server, "nobody_T1", {"target": "FLAIR"})
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json()["detail"] == ("image 'nobody_T1' is not an image of the datastore, a session or an "
                                         "uploaded file")


def test_default_request_is_multipart_with_the_first_target(server):
    # No params and no `output`: what a client that knows nothing of MedSynth gets (target drop-down default).
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    response = requests.post(f"{server}/infer/linear", params={"image": "sub01_T2"}, timeout=300)
    assert response.status_code == 200, response.text
    parts = MultipartDecoder.from_response(response).parts
    params = json.loads(next(p.text for p in parts if b'name="params"' in p.headers[b"Content-Disposition"]))
    assert params["target"] == "FLAIR" and params["dtype"] == "float32"
    assert list(params["inputs"]) == ["T2", "T1"]  # the requested image's contrast first: its grid is the output's
    assert any(b'name="image"' in p.headers[b"Content-Disposition"] and len(p.content) > 1000 for p in parts)


def test_save_keeps_the_synthetic_under_labels_synthetic_target_only(server, datastore):
    before = {p.name: p.read_bytes() for p in datastore.glob("*.nii.gz")}
    response = _infer(server, "sub01_T1", {"target": "FLAIR", "save": True}, output="json")
    assert response.status_code == 200, response.text
    assert response.json()["saved"] == "labels/synthetic_FLAIR/sub01_T1.nii.gz"
    saved = datastore / "labels" / "synthetic_FLAIR" / "sub01_T1.nii.gz"
    image = sitk.ReadImage(str(saved))
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetMetaData("descrip").startswith("SYNTHETIC FLAIR")
    assert not list((datastore / "labels" / "final").glob("*"))  # never a training label
    assert {p.name: p.read_bytes() for p in datastore.glob("*.nii.gz")} == before  # image folder untouched


def test_info_names_no_subject_and_no_path(server, datastore):
    """/info answers whoever reaches the port: no subject or study id, no file path of the server."""
    text = requests.get(f"{server}/info/", timeout=30).text
    for secret in ("sub01", "sub02", "patient07", str(datastore), "/tmp/", "/root", "/home/", "site-packages"):
        assert secret not in text, secret
    info = json.loads(text)
    flair = info["models"]["linear"]["checkpoints"]["FLAIR"][0]
    assert isinstance(flair["training_subjects"], int) and isinstance(flair["validation_subjects"], int)


def test_a_server_path_outside_the_datastore_is_refused_as_image(server, datastore, tmp_path):
    """Only datastore ids, sessions and files uploaded with the request are images: not a file elsewhere on the
    server, even one in the system's temporary folder named like an upload."""
    import tempfile

    outside = Path(tempfile.gettempdir()) / f"tmp{tmp_path.name}.nii.gz"
    shutil.copy(datastore / "sub01_T1.nii.gz", outside)
    try:
        for image in (str(outside), str(datastore / "sub01_T1.nii.gz")):
            response = _infer(server, image, {"target": "FLAIR"}, output="json")
            assert response.status_code == 404, (image, response.status_code, response.text)
            assert str(outside.parent) not in response.text and str(datastore) not in response.text
    finally:
        outside.unlink()


def test_the_device_param_is_honoured_and_the_model_is_built_once(server):
    def infer() -> dict:
        response = requests.post(f"{server}/infer/synnet", params={"image": "sub01_T1", "output": "json"},
                                 files={"params": (None, json.dumps({"target": "FLAIR", "device": "cpu"}))},
                                 timeout=600)
        assert response.status_code == 200, response.text
        return response.json()

    first, again = infer(), infer()
    assert first["device"] == again["device"] == "cpu"
    # the first request builds the network (10 ms on an idle 2-core machine, more under load), the next one takes
    # the kept model (under a millisecond)
    assert first["latencies"]["model"] >= 0.005 > again["latencies"]["model"], (first, again)
