"""Reliability of a real MedSynth server: concurrent identical requests, memory over many requests, inference while
a training runs, a corrupt checkpoint, path traversal in ids, the upload and volume size limits, an empty volume.
Runs on a copy of the app (its model/ folder is damaged on purpose) and a flat datastore of real crops (80x96x24).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import absolute_paths, copy_app, running_server, write_crops

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")

CONCURRENT, SEQUENTIAL = 16, 50
MAX_UPLOAD_MB, MAX_VOXELS = 4, 1_000_000


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    root = write_crops(SHARED, tmp_path_factory.mktemp("datastore"))
    write_crops(SHARED, root, prefix="sub02_")
    # sub03: the whole patient07 volumes (7 M voxels), above the server's volume limit
    for contrast in ("T1", "T2"):
        shutil.copy(SHARED / "open_ms_data" / "mni" / "patient07" / f"{contrast}.nii.gz", root / f"sub03_{contrast}.nii.gz")
    # sub04: a T1 crop and an all-zero T2 on its grid
    shutil.copy(root / "sub01_T1.nii.gz", root / "sub04_T1.nii.gz")
    t1 = sitk.ReadImage(str(root / "sub01_T1.nii.gz"))
    sitk.WriteImage(t1 * 0, str(root / "sub04_T2.nii.gz"))
    # sub05-sub08: a good T1 crop and a broken T2
    t2 = root / "sub01_T2.nii.gz"
    broken = {
        "sub05": lambda path: path.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2]),
        "sub06": lambda path: sitk.WriteImage(sitk.GetImageFromArray(np.ones((96, 80), np.float32)), str(path)),
        "sub07": lambda path: nib.save(nib.Nifti1Image(np.ones((80, 96, 24, 3), np.float32), np.eye(4)), path),
        "sub08": lambda path: nib.save(nib.Nifti1Image(np.full((80, 96, 24), np.nan, np.float32), np.eye(4)), path),
    }
    for study, write in broken.items():
        shutil.copy(root / "sub01_T1.nii.gz", root / f"{study}_T1.nii.gz")
        write(root / f"{study}_T2.nii.gz")
    return root


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory) -> Path:
    return copy_app(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def server(datastore, app_copy, tmp_path_factory):
    with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="linear", app=app_copy,
                        conf={"max_upload_mb": str(MAX_UPLOAD_MB)}, env={"MEDSYNTH_MAX_VOXELS": str(MAX_VOXELS)}) as url:
        yield url


def infer(url: str, image: str = "sub01_T1", timeout: float = 300) -> requests.Response:
    return requests.post(f"{url}/infer/linear", params={"image": image, "output": "image"},
                         files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=timeout)


def server_rss_mb(url: str) -> float:
    """Resident memory of the process listening on the server's port (the uvicorn worker)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid).memory_info().rss / 2**20
    raise RuntimeError(f"no process listens on port {port}")


def test_concurrent_identical_requests_all_succeed_with_identical_outputs(server, datastore, app_copy, tmp_path):
    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.pipeline import synthesize

    with ThreadPoolExecutor(CONCURRENT) as pool:
        responses = list(pool.map(lambda _: infer(server, timeout=600), range(CONCURRENT)))
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    digests = {hashlib.sha256(gzip.decompress(r.content)).hexdigest() for r in responses}
    assert len(digests) == 1  # byte-identical NIfTI files (the gzip wrapper names the temporary file)
    # and the voxels are those of the library's synthesis with the served checkpoint
    (tmp_path / "served.nii.gz").write_bytes(responses[0].content)
    inputs = {c: sitk.ReadImage(str(datastore / f"sub01_{c}.nii.gz")) for c in ("T1", "T2")}
    library = sitk.GetArrayFromImage(synthesize(load_checkpoint(app_copy / "model" / "linear_T1+T2_to_FLAIR.pt"),
                                                inputs, "FLAIR"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "served.nii.gz"))), library,
                               rtol=1e-5, atol=1e-5 * float(library.max()))


def test_memory_does_not_grow_over_sequential_requests(server):
    for _ in range(5):  # warm-up: caches, allocator pools
        assert infer(server).status_code == 200
    before = server_rss_mb(server)
    for _ in range(SEQUENTIAL):
        assert infer(server).status_code == 200
    growth = server_rss_mb(server) - before
    print(f"server RSS {before:.0f} MB -> +{growth:.1f} MB over {SEQUENTIAL} requests")
    assert growth < 50, growth


def test_inference_keeps_working_while_training_runs(server):
    task = requests.post(f"{server}/train/linear", json={"target": "FLAIR", "inputs": ["T1", "T2"], "promote": "never"},
                         timeout=60)  # the shipped weights stay served: the next test damages them
    assert task.status_code == 200, task.text
    try:
        during = infer(server)
        assert during.status_code == 200 and gzip.decompress(during.content)[:4] == (348).to_bytes(4, "little")
        assert "linear" in requests.get(f"{server}/info/", timeout=60).json()["models"]
    finally:
        deadline = time.time() + 120
        while (requests.get(f"{server}/train/", timeout=30).json() or {}).get("status") in ("SUBMITTED", "RUNNING"):
            assert time.time() < deadline
            time.sleep(0.5)


def test_a_corrupt_checkpoint_keeps_the_previous_weights_served(server, app_copy):
    before = gzip.decompress(infer(server).content)
    path = app_copy / "model" / "linear_T1+T2_to_FLAIR.pt"
    path.write_bytes(b"not a checkpoint" * 100)
    response = infer(server)
    assert response.status_code == 200 and gzip.decompress(response.content) == before
    info = requests.get(f"{server}/info/", timeout=60).json()
    assert "FLAIR" in info["models"]["linear"]["targets"]


@pytest.mark.parametrize("image", ["../sub01_T1", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "sub01_T1/../../x"])
def test_path_traversal_in_image_ids_is_refused(server, image):
    response = infer(server, image)
    assert response.status_code == 404, (response.status_code, response.text[:200])
    shown = os.path.basename(image) if image.startswith("/") else image  # an absolute path is named by its file
    expected = f"image {shown!r} is not an image of the datastore, a session or an uploaded file"
    assert response.json()["detail"] == expected


def test_server_files_outside_the_datastore_are_not_images(server):
    outside = str(SHARED / "open_ms_data" / "mni" / "patient07" / "T1.nii.gz")
    response = infer(server, outside)
    assert response.status_code == 404 and "not an image of the datastore" in response.json()["detail"]
    assert absolute_paths(response.text, sent=(outside,)) == [], response.text
    # params are merged into the request after the query: they must not smuggle a path in either
    response = requests.post(f"{server}/infer/linear", params={"image": "sub01_T1", "output": "json"},
                             files={"params": (None, json.dumps({"target": "FLAIR", "image": outside}))}, timeout=300)
    assert response.status_code == 404 and absolute_paths(response.text, sent=(outside,)) == [], response.text


def test_path_traversal_in_explicit_inputs_is_refused(server):
    params = {"target": "FLAIR", "inputs": {"T2": "../../../../etc/passwd"}}
    response = requests.post(f"{server}/infer/linear", params={"image": "sub01_T1", "output": "json"},
                             files={"params": (None, json.dumps(params))}, timeout=300)
    assert response.status_code == 404
    assert response.json()["detail"] == "inputs: no image '../../../../etc/passwd' in the datastore"


def test_an_upload_above_the_limit_is_refused_naming_the_limit(server):
    body = b"\0" * ((MAX_UPLOAD_MB + 1) * 2**20)
    response = requests.put(f"{server}/session/", files={"files": ("big_T1.nii.gz", body)}, timeout=120)
    assert response.status_code == 413, (response.status_code, response.text[:200])
    assert f"upload limit of {MAX_UPLOAD_MB} MB" in response.json()["detail"]
    assert infer(server).status_code == 200  # the server keeps serving


def test_a_volume_above_the_voxel_limit_is_refused_naming_the_limit(server):
    response = infer(server, "sub03_T1")
    assert response.status_code == 422, (response.status_code, response.text[:200])
    detail = response.json()["detail"]
    assert "sub03_T1.nii.gz: 182x218x182" in detail and f"limit of {MAX_VOXELS / 1e6:.1f} M voxels" in detail
    assert absolute_paths(detail) == [], detail


def test_an_all_zero_volume_is_refused_naming_the_file(server):
    response = infer(server, "sub04_T1")
    assert response.status_code == 422, (response.status_code, response.text[:200])
    assert response.json()["detail"].startswith("sub04_T2.nii.gz: every voxel is 0")
    assert absolute_paths(response.text) == [], response.text


@pytest.mark.parametrize("study, problem", [("sub05", "damaged gzip file"), ("sub06", "is 2-D"),
                                            ("sub07", "is a 4-D series of 3 volumes"),
                                            ("sub08", "contains 184320 NaN or infinite voxels")])
def test_a_broken_input_is_a_422_naming_the_file_and_the_server_keeps_serving(server, study, problem):
    response = infer(server, f"{study}_T1")
    assert response.status_code == 422, (response.status_code, response.text[:200])
    assert response.json()["detail"].startswith(f"{study}_T2.nii.gz: {problem}"), response.text
    assert absolute_paths(response.text) == [], response.text
    assert infer(server).status_code == 200
