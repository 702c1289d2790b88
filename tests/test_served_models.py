"""Every shipped checkpoint served by a real MONAI Label server, on a whole real subject held out from its training.

mni patient26 is a validation subject of every shipped checkpoint (model/README.md): never trained on. Each served
model must return float32 on the input grid, marked synthetic, equal to the library's own synthesis with the same
checkpoint, and better than the linear pipeline check in SSIM against the acquired target. Whether the learned
families beat the REPLICA-style forest is a benchmark question (docs/benchmarks.md): on these CPU schedules they do not.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import running_server

from medsynth_app.checkpoint import load_checkpoint
from medsynth_app.metrics import psnr, ssim
from medsynth_app.pipeline import synthesize
from medsynth_app.preprocessing import prepare
from medsynth_app.weights import SHIPPED_DIR

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
requests = pytest.importorskip("requests")
pytest.importorskip("monailabel")

HELD_OUT = "open_ms_data/mni/patient26"
SHIPPED = sorted((p.name, c) for p in SHIPPED_DIR.glob("*.pt") for c in [load_checkpoint(p)])


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    for contrast in ("T1", "T2", "FLAIR"):
        shutil.copy(SHARED / HELD_OUT / f"{contrast}.nii.gz", root / f"sub26_{contrast}.nii.gz")
    return root


@pytest.fixture(scope="module")
def server(datastore, tmp_path_factory):
    with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="all") as url:
        yield url


@pytest.fixture(scope="module")
def scores(server, datastore, tmp_path_factory) -> dict:
    """(checkpoint file name) -> {psnr, ssim} of the served synthesis against the acquired target."""
    work = tmp_path_factory.mktemp("outputs")
    results = {}
    for name, checkpoint in SHIPPED:
        target = checkpoint.targets[0]
        params = {"target": target, "inputs": {c: f"sub26_{c}" for c in checkpoint.inputs}}
        response = requests.post(f"{server}/infer/{checkpoint.family}", params={"image": "sub26_T1", "output": "image"},
                                 files={"params": (None, json.dumps(params))}, timeout=900)
        assert response.status_code == 200, f"{name}: {response.text}"
        file_name = re.search(r'filename="?([^";]+)"?', response.headers["content-disposition"]).group(1)
        out = work / f"{Path(name).stem}_{file_name}"
        out.write_bytes(response.content)
        synthetic = sitk.ReadImage(str(out))
        inputs = {c: sitk.ReadImage(str(datastore / f"sub26_{c}.nii.gz")) for c in checkpoint.inputs}
        acquired = sitk.ReadImage(str(datastore / f"sub26_{target}.nii.gz"))
        # EVALUATION.md: mask from the inputs, each volume divided by its own mean inside it.
        truth = prepare({**inputs, target: acquired}, target, mask_from=tuple(checkpoint.inputs))
        predicted = prepare({**inputs, target: synthetic}, target, mask_from=tuple(checkpoint.inputs))
        results[name] = {"image": synthetic, "reference": inputs[checkpoint.inputs[0]],
                         "library": synthesize(checkpoint, inputs, target),
                         "psnr": psnr(predicted.images[target], truth.images[target], truth.mask),
                         "ssim": ssim(predicted.images[target], truth.images[target], truth.mask)}
    return results


def test_every_shipped_family_is_served(server):
    info = requests.get(f"{server}/info/", timeout=60).json()
    for _, checkpoint in SHIPPED:
        model = info["models"][checkpoint.family]
        assert model["type"] == "synthesis" and set(checkpoint.targets) <= set(model["targets"])
    assert {c.family for _, c in SHIPPED} >= {"linear", "replica", "lsdn", "vdn", "cdn"}


@pytest.mark.parametrize("name", [n for n, _ in SHIPPED])
def test_served_output_is_float32_on_the_input_grid_and_marked(scores, name):
    image, reference = scores[name]["image"], scores[name]["reference"]
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert image.GetMetaData("descrip").startswith("SYNTHETIC")


@pytest.mark.parametrize("name", [n for n, _ in SHIPPED])
def test_served_output_equals_the_library_synthesis(scores, name):
    served = sitk.GetArrayFromImage(scores[name]["image"])
    library = sitk.GetArrayFromImage(scores[name]["library"])
    np.testing.assert_allclose(served, library, rtol=1e-5, atol=1e-3 * float(library.max()))


@pytest.mark.parametrize("name", [n for n, c in SHIPPED if c.family != "linear"])
def test_every_model_beats_the_linear_pipeline_check_in_ssim(scores, name):
    _, _, task = Path(name).stem.partition("_")
    assert scores[name]["ssim"] > scores[f"linear_{task}.pt"]["ssim"], (name, scores[name], scores[f"linear_{task}.pt"])


def test_the_replica_floor_beats_the_linear_pipeline_check(scores):
    for task in ("T1_to_T2", "T1+T2_to_FLAIR"):
        assert scores[f"replica_{task}.pt"]["psnr"] > scores[f"linear_{task}.pt"]["psnr"]
        assert scores[f"replica_{task}.pt"]["ssim"] > scores[f"linear_{task}.pt"]["ssim"]
