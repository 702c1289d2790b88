"""MedSynthLib.client (the Slicer extension's REST client) against a real MedSynth MONAI Label server, plus its
pure parts (address normalisation, multipart parsing without `cgi`)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import absolute_paths, import_medsynth_lib, running_server, write_crops

from medsynth_app.checkpoint import load_checkpoint
from medsynth_app.pipeline import synthesize
from medsynth_server.resources import SHIPPED_WEIGHTS as SHIPPED_DIR

import_medsynth_lib()
from MedSynthLib.client import (Cancelled, ConnectionFailed, MedSynthClient, ServerError,  # noqa: E402
                                normalise_address, parse_multipart)

needs_server = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")


# ---- pure ------------------------------------------------------------------------------------------------------
def test_addresses_are_normalised():
    assert normalise_address("gpu01") == "http://gpu01:8000"
    assert normalise_address(" http://10.0.0.5:8123/ ") == "http://10.0.0.5:8123"
    assert normalise_address("https://medsynth.example.org/api/") == "https://medsynth.example.org/api"
    with pytest.raises(ValueError):
        normalise_address("")
    with pytest.raises(ValueError):
        normalise_address("ftp://host")


def test_multipart_with_binary_payload_round_trips_byte_exact():
    from requests_toolbelt.multipart.encoder import MultipartEncoder

    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes() + b"\r\n\r\r\n--x\n\r"  # CR/LF at the very end
    encoder = MultipartEncoder(fields={"params": (None, json.dumps({"target": "FLAIR"}), "application/json"),
                                       "image": ("result.nii.gz", blob, "application/gzip")})
    fields = parse_multipart(encoder.content_type, encoder.to_string())
    assert fields["image"] == ("result.nii.gz", blob)
    assert json.loads(fields["params"][1]) == {"target": "FLAIR"}


def test_upload_refuses_multi_file_formats_before_sending(tmp_path):
    header = tmp_path / "T1.mhd"
    header.write_text("ObjectType = Image")
    with pytest.raises(ValueError, match="single-file"):
        MedSynthClient("http://127.0.0.1:9").upload_session({"T1": str(header)})


def test_unreachable_server_is_a_clear_connection_error():
    with pytest.raises(ConnectionFailed, match="127.0.0.1:9"):
        MedSynthClient("http://127.0.0.1:9", timeout=(2, 2)).info()


# ---- against a real server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    return write_crops(SHARED, tmp_path_factory.mktemp("datastore"))


@pytest.fixture(scope="module")
def server(crops, tmp_path_factory):
    with running_server(crops, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return MedSynthClient(server)


@needs_server
def test_info_and_synthesis_models(client):
    info = client.info()
    assert info["datastore"]["total"] == 3
    models = client.synthesis_models(info)
    assert list(models) == ["linear"]
    assert set(models["linear"]["targets"]) == {"FLAIR", "T2"}
    flair = models["linear"]["checkpoints"]["FLAIR"][0]
    assert flair["required_inputs"] == ["T1", "T2"]


@needs_server
def test_session_upload_and_synthesis_is_float32_on_the_t1_grid(client, crops, tmp_path):
    # Local names that do not say the contrast: the client uploads them under their contrast's name.
    (tmp_path / "in").mkdir()
    t1, t2 = tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "b.nii.gz"
    t1.write_bytes((crops / "sub01_T1.nii.gz").read_bytes())
    t2.write_bytes((crops / "sub01_T2.nii.gz").read_bytes())
    session_id = client.upload_session({"T1": str(t1), "T2": str(t2)})
    assert session_id
    result = client.synthesize_result("linear", "FLAIR", session_id=session_id, out_dir=str(tmp_path / "out"))
    assert result.params["inputs"] == {"T1": "T1.nii.gz", "T2": "T2.nii.gz"}
    assert result.params["checkpoint"].startswith("linear_T1+T2_to_FLAIR")
    image = sitk.ReadImage(result.path)
    reference = sitk.ReadImage(str(crops / "sub01_T1.nii.gz"))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    # the voxels of the library's own synthesis with the served checkpoint (whose quality its own tests gate)
    synthetic = sitk.GetArrayFromImage(image)
    checkpoint = load_checkpoint(SHIPPED_DIR / result.params["checkpoint"])
    library = sitk.GetArrayFromImage(synthesize(checkpoint, {"T1": sitk.ReadImage(str(t1)),
                                                             "T2": sitk.ReadImage(str(t2))}, "FLAIR"))
    np.testing.assert_allclose(synthetic, library, rtol=1e-5, atol=1e-5 * float(library.max()))
    # The same request answered as a bare image (output=image) gives the same voxels as the multipart answer.
    plain = client.synthesize("linear", "FLAIR", session_id=session_id, output="image", out_dir=str(tmp_path / "o2"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(plain)), synthetic)
    client.delete_session(session_id)


@needs_server
def test_datastore_image_request(client, tmp_path):
    path = client.synthesize("linear", "T2", image="sub01_T1", out_dir=str(tmp_path))
    assert sitk.ReadImage(path).GetPixelID() == sitk.sitkFloat32


@needs_server
def test_server_errors_carry_the_servers_message_and_no_server_path(client, crops):
    session_id = client.upload_session({"T1": str(crops / "sub01_T1.nii.gz")})  # one file: FLAIR needs T2 too
    errors = []
    with pytest.raises(ServerError) as info:
        client.synthesize("linear", "FLAIR", session_id=session_id)
    assert info.value.status == 400 and "missing T2" in info.value.detail and "T2" in str(info.value)
    errors.append(info.value)
    with pytest.raises(ServerError) as info:
        client.synthesize("linear", "XYZ", session_id=session_id)
    assert info.value.status == 400 and "unknown target 'XYZ' for model linear" in info.value.detail
    errors.append(info.value)
    with pytest.raises(ServerError) as info:
        client.synthesize("nomodel", "FLAIR", image="sub01_T1")
    assert info.value.status == 404 and info.value.detail == "model 'nomodel' is not served here; served: linear"
    errors.append(info.value)
    for error in errors:
        assert absolute_paths(error.detail) == [], error.detail


@needs_server
def test_malformed_params_are_a_422_naming_the_problem(server):
    for params, problem in (("{not json", "params: not valid JSON (Expecting property name"),
                            ('["FLAIR"]', "params: must be a JSON object")):
        response = requests.post(f"{server}/infer/linear", params={"image": "sub01_T1"},
                                 files={"params": (None, params)}, timeout=60)
        assert response.status_code == 422 and response.json()["detail"].startswith(problem), response.text


@needs_server
def test_session_replies_carry_no_server_path(server, crops):
    response = requests.put(f"{server}/session/", timeout=60,
                            files=[("files", ("T1.nii.gz", (crops / "sub01_T1.nii.gz").read_bytes()))])
    assert response.status_code == 200 and absolute_paths(response.text) == [], response.text
    reply = response.json()
    assert reply["session_info"]["image"] == "T1.nii.gz" and "path" not in reply["session_info"]
    again = requests.get(f"{server}/session/{reply['session_id']}", timeout=60)
    assert again.status_code == 200 and absolute_paths(again.text) == [] and again.json()["image"] == "T1.nii.gz"


@needs_server
def test_single_file_session_synthesis(client, crops, tmp_path):
    session_id = client.upload_session({"T1": str(crops / "sub01_T1.nii.gz")})
    path = client.synthesize("linear", "T2", session_id=session_id, out_dir=str(tmp_path))
    assert sitk.ReadImage(path).GetSize() == tuple(sitk.ReadImage(str(crops / "sub01_T1.nii.gz")).GetSize())


@needs_server
def test_cancel_returns_at_once(client, crops):
    session_id = client.upload_session({"T1": str(crops / "sub01_T1.nii.gz"), "T2": str(crops / "sub01_T2.nii.gz")})
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    begin = time.time()
    with pytest.raises(Cancelled):
        client.synthesize("linear", "FLAIR", session_id=session_id, cancel_event=cancel)
    assert time.time() - begin < 1.0


@needs_server
def test_training_status_without_a_run(client):
    # No training is started here: it would replace the checkpoint in apps/medsynth/model (the training tests use
    # a copy of the app). With none run, the server has no task: None, not an error.
    assert client.training_status() is None
    assert client.training_status(running_only=True) is None
