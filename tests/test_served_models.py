"""Every shipped checkpoint served by a real MONAI Label server, on a whole real subject held out from its training,
and the served default models gated on whole subjects of cohorts no shipped checkpoint ever saw.

mni patient26 is a validation subject of every shipped checkpoint (model/README.md): never trained on, but it chose
their epochs, so its numbers are not test numbers. Each served
model must return float32 on the input grid, marked synthetic, equal to the library's own synthesis with the same
checkpoint (one checkpoint per family), and better than the linear pipeline check in SSIM against the acquired
target. The shipped SynNet (both primary tasks), cae3d (T1 -> T2) and the multimodal task checkpoints beat the
REPLICA-style forest in PSNR and SSIM (model/README.md); the any-subset multimodal checkpoint does not, and the app
serves the task checkpoints for these tasks by default. Each checkpoint is asked for by name; asked for none, the app
serves the one trained for the fewest other inputs.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from conftest import SHARED
from gates import assert_beats_trivial, trivial_scores
from server_fixture import running_server

from medsynth_app.checkpoint import load_checkpoint
from medsynth_app.comparison import prepare_comparison, score
from medsynth_app.studies import find_studies
from medsynth_app.metrics import psnr, ssim
from medsynth_app.pipeline import synthesize
from medsynth_app.preprocessing import prepare
from medsynth_server.resources import SHIPPED_WEIGHTS as SHIPPED_DIR

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")

HELD_OUT = "open_ms_data/mni/patient26"
PRIMARY_TASKS = {"T1_to_T2": (("T1",), "T2"), "T1+T2_to_FLAIR": (("T1", "T2"), "FLAIR")}
# One datastore study per task holding just its inputs and target: the app uses every contrast of a study that a
# model accepts, so a multimodal model given patient26's FLAIR too would not be doing T1 -> T2.
STUDY = {"T1_to_T2": "p26t2", "T1+T2_to_FLAIR": "p26flair"}


def _primary_tasks(checkpoint) -> list[str]:
    """The EVALUATION.md primary tasks a checkpoint can do: its target, its required inputs all among the task's
    inputs and the task's inputs all among its own (a multimodal model takes any subset)."""
    required, _ = checkpoint.input_roles()
    return [task for task, (inputs, target) in PRIMARY_TASKS.items()
            if target in checkpoint.targets and set(required) <= set(inputs) <= set(checkpoint.inputs) - {target}]


SHIPPED = sorted((p.name, c) for p in SHIPPED_DIR.glob("*.pt") for c in [load_checkpoint(p)])
SCORED = [(name, task) for name, checkpoint in SHIPPED for task in _primary_tasks(checkpoint)]
# The app serves every checkpoint of a family through the same code: one (the first scored) per family is compared
# with the library's own synthesis, which costs a second whole-volume synthesis.
FAMILY = {name: checkpoint.family for name, checkpoint in SHIPPED}
LIBRARY_COMPARED = list({FAMILY[name]: (name, task) for name, task in reversed(SCORED)}.values())


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    for task, (inputs, target) in PRIMARY_TASKS.items():
        for contrast in (*inputs, target):
            shutil.copy(SHARED / HELD_OUT / f"{contrast}.nii.gz", root / f"{STUDY[task]}_{contrast}.nii.gz")
    for name, (folder, inputs, target, _) in UNSEEN.items():
        [study] = find_studies(SHARED / folder)
        files = {c: study.images[c] for c in (*inputs, target)}
        files |= {"brainmask": study.brain_mask} if study.brain_mask else {}
        for key, path in files.items():
            (root / f"{name}_{key}.nii.gz").symlink_to(path)
    return root


# Whole subjects of cohorts that no shipped checkpoint trained or validated on (model/README.md: the shipped weights
# saw open_ms_data and hinet_brats2018_slices only; deepmedic pat0004 and pat0006 are hinet s07 and s06, so they are
# left out). Every T1+T2+FLAIR subject of ../shared/data trained or validated the shipped weights, so the primary
# tasks have no such subject: these are the tasks the unseen cohorts hold, each asked of the multimodal family
# without naming a checkpoint (the served default: for a T1-only study the T1+T2 -> FLAIR task checkpoint, for T1C
# the any-subset one). Name -> (folder, inputs, target, default checkpoint).
UNSEEN = {
    "dv2aab": ("brats2018_deepvoxnet2/Brats18_CBICA_AAB_1", ("T1",), "FLAIR", "multimodal_T1+T2_to_FLAIR.pt"),
    "dv2aoo": ("brats2018_deepvoxnet2/Brats18_CBICA_AOO_1", ("T1",), "FLAIR", "multimodal_T1+T2_to_FLAIR.pt"),
    "dv2aqn": ("brats2018_deepvoxnet2/Brats18_CBICA_AQN_1", ("T1",), "FLAIR", "multimodal_T1+T2_to_FLAIR.pt"),
    "dm0001": ("brats2013_deepmedic/brats_2013_pat0001_1", ("T1C",), "FLAIR",
               "multimodal_T1+T1C+T2+FLAIR_to_T1+T1C+T2+FLAIR.pt"),
    "dm0003": ("brats2013_deepmedic/brats_2013_pat0003_1", ("T1C",), "FLAIR",
               "multimodal_T1+T1C+T2+FLAIR_to_T1+T1C+T2+FLAIR.pt"),
}


ANY_SUBSET = "multimodal_T1+T1C+T2+FLAIR_to_T1+T1C+T2+FLAIR.pt"
# Shipped beside the any-subset checkpoint, each fine-tuned from it for one primary task (model/README.md).
TASK_CHECKPOINT = {"T1_to_T2": "multimodal_T1_to_T2.pt", "T1+T2_to_FLAIR": "multimodal_T1+T2_to_FLAIR.pt"}


@pytest.fixture(scope="module")
def server(datastore, tmp_path_factory):
    with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="all") as url:
        yield url


def _read(content: bytes) -> sitk.Image:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "served.nii.gz"
        path.write_bytes(content)
        return sitk.ReadImage(str(path))


@pytest.fixture(scope="module")
def scores(server, datastore, tmp_path_factory) -> dict:
    """(checkpoint file name, primary task) -> {psnr, ssim, ...} of the served synthesis against the acquired target."""
    work = tmp_path_factory.mktemp("outputs")
    checkpoints = dict(SHIPPED)
    results = {}
    for name, task in SCORED:
        checkpoint = checkpoints[name]
        input_names, target = PRIMARY_TASKS[task]
        study = STUDY[task]
        response = requests.post(f"{server}/infer/{checkpoint.family}", params={"image": f"{study}_T1", "output": "image"},
                                 files={"params": (None, json.dumps({"target": target, "checkpoint": name}))},
                                 timeout=900)
        assert response.status_code == 200, f"{name} {task}: {response.text}"
        file_name = re.search(r'filename="?([^";]+)"?', response.headers["content-disposition"]).group(1)
        out = work / f"{Path(name).stem}_{task}_{file_name}"
        out.write_bytes(response.content)
        synthetic = sitk.ReadImage(str(out))
        inputs = {c: sitk.ReadImage(str(datastore / f"{study}_{c}.nii.gz")) for c in input_names}
        acquired = sitk.ReadImage(str(datastore / f"{study}_{target}.nii.gz"))
        # EVALUATION.md: mask from the inputs, each volume divided by its own mean inside it.
        truth = prepare({**inputs, target: acquired}, target, mask_from=input_names)
        predicted = prepare({**inputs, target: synthetic}, target, mask_from=input_names)
        results[name, task] = {"image": synthetic, "reference": inputs["T1"],
                               "library": synthesize(checkpoint, inputs, target)
                               if (name, task) in LIBRARY_COMPARED else None,
                               "psnr": psnr(predicted.images[target], truth.images[target], truth.mask),
                               "ssim": ssim(predicted.images[target], truth.images[target], truth.mask)}
    return results


def test_every_shipped_family_is_served(server):
    info = requests.get(f"{server}/info/", timeout=60).json()
    for _, checkpoint in SHIPPED:
        model = info["models"][checkpoint.family]
        assert model["type"] == "synthesis" and set(checkpoint.targets) <= set(model["targets"])
    assert {c.family for _, c in SHIPPED} >= {"linear", "replica", "lsdn", "vdn", "cdn", "synnet", "multimodal", "cae3d"}


@pytest.mark.parametrize("task", PRIMARY_TASKS)
def test_by_default_the_checkpoint_trained_for_the_task_serves_it(server, scores, task):
    """Asked for a primary task's target without naming a checkpoint, the app serves the multimodal checkpoint
    trained for exactly the study's inputs, not the any-subset one (which sorts first by name)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    _, target = PRIMARY_TASKS[task]
    response = requests.post(f"{server}/infer/multimodal", params={"image": f"{STUDY[task]}_T1"},
                             files={"params": (None, json.dumps({"target": target}))}, timeout=900)
    assert response.status_code == 200, response.text
    parts = {p.headers[b"Content-Disposition"].split(b'name="')[1].split(b'"')[0]: p
             for p in MultipartDecoder.from_response(response).parts}
    assert json.loads(parts[b"params"].text)["checkpoint"] == TASK_CHECKPOINT[task]
    named = sitk.GetArrayFromImage(scores[TASK_CHECKPOINT[task], task]["image"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(_read(parts[b"image"].content)), named,
                               atol=1e-5 * float(named.max()))


@pytest.mark.parametrize("name, task", SCORED)
def test_served_output_is_float32_on_the_input_grid_and_marked(scores, name, task):
    image, reference = scores[name, task]["image"], scores[name, task]["reference"]
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert image.GetMetaData("descrip").startswith("SYNTHETIC")


@pytest.mark.parametrize("name, task", LIBRARY_COMPARED)
def test_served_output_equals_the_library_synthesis(scores, name, task):
    served = sitk.GetArrayFromImage(scores[name, task]["image"])
    library = sitk.GetArrayFromImage(scores[name, task]["library"])
    np.testing.assert_allclose(served, library, rtol=1e-5, atol=1e-3 * float(library.max()))


# Measured: the multimodal checkpoint, trained on 10 BraTS and 2 MNI subjects, gives patient26 a FLAIR of SSIM 0.525
# against the linear check's 0.543 (model/README.md). Strict: the test fails once a retrained checkpoint passes.
BELOW_LINEAR = {(ANY_SUBSET, "T1+T2_to_FLAIR")}


def _expecting(pairs, measured_below: set, reason: str) -> list:
    """(checkpoint, task) parameters, those in ``measured_below`` as strict expected failures."""
    return [pytest.param(n, t, marks=pytest.mark.xfail(strict=True, reason=reason)) if (n, t) in measured_below
            else (n, t) for n, t in pairs]


@pytest.mark.parametrize("name, task", _expecting([(n, t) for n, t in SCORED if not n.startswith("linear_")],
                                                  BELOW_LINEAR, "measured below the linear check"))
def test_every_model_beats_the_linear_pipeline_check_in_ssim(scores, name, task):
    linear = scores[f"linear_{task}.pt", task]
    assert scores[name, task]["ssim"] > linear["ssim"], (name, task, scores[name, task], linear)


def test_the_replica_floor_beats_the_linear_pipeline_check(scores):
    for task in PRIMARY_TASKS:
        assert scores[f"replica_{task}.pt", task]["psnr"] > scores[f"linear_{task}.pt", task]["psnr"]
        assert scores[f"replica_{task}.pt", task]["ssim"] > scores[f"linear_{task}.pt", task]["ssim"]


# The any-subset checkpoint, measured below the forest in PSNR on patient26 on both primary tasks, by 0.14 and 1.01 dB
# (model/README.md); strict. The task checkpoints served by default for these tasks are not in this set.
BELOW_REPLICA = {(ANY_SUBSET, task) for task in PRIMARY_TASKS}


@pytest.mark.parametrize("name, task", _expecting(
    [(n, t) for n, t in SCORED if dict(SHIPPED)[n].family in ("synnet", "cae3d", "multimodal")],
    BELOW_REPLICA, "measured below the forest"))
def test_the_shipped_networks_beat_the_replica_floor(scores, name, task):
    network, replica = scores[name, task], scores[f"replica_{task}.pt", task]
    assert network["psnr"] > replica["psnr"] and network["ssim"] > replica["ssim"], (name, task, network, replica)


def test_every_primary_task_is_scored():
    assert {task for _, task in SCORED} == set(PRIMARY_TASKS)


@pytest.fixture(scope="module")
def unseen(server) -> dict:
    """Unseen subject -> (checkpoint the server chose, served synthesis scored as EVALUATION.md and BraSyn score it,
    the trivial predictors' scores on the same prepared subject)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    results = {}
    for name, (folder, inputs, target, _) in UNSEEN.items():
        response = requests.post(f"{server}/infer/multimodal", params={"image": f"{name}_{inputs[0]}"},
                                 files={"params": (None, json.dumps({"target": target}))}, timeout=900)
        assert response.status_code == 200, f"{name}: {response.text}"
        parts = {p.headers[b"Content-Disposition"].split(b'name="')[1].split(b'"')[0]: p
                 for p in MultipartDecoder.from_response(response).parts}
        [study] = find_studies(SHARED / folder)
        subject = prepare_comparison(study, _read(parts[b"image"].content), target, inputs)
        results[name] = (json.loads(parts[b"params"].text)["checkpoint"], score(subject, target),
                         trivial_scores(subject, target, inputs), subject)
    return results


@pytest.mark.parametrize("name", UNSEEN)
def test_the_served_default_is_the_expected_checkpoint(unseen, name):
    assert unseen[name][0] == UNSEEN[name][3]


# Margins over the better of the constant in the brain and the input copied, measured on the whole subjects:
# deepmedic T1C -> FLAIR (any-subset checkpoint): pat0001 20.28 dB / 0.619 against T1C copied 19.73 dB and the
# constant's 0.491 SSIM; pat0003 20.98 / 0.629 against the constant's 18.75 / 0.491; BraSyn tumour SSIM 0.315 / 0.442
# against at most 0.041 / 0.015; 6 % / 11 % of the tumour's conspicuity kept.
# deepvoxnet2 T1 -> FLAIR (T1+T2 -> FLAIR task checkpoint given T1 alone): SSIM 0.560 / 0.616 / 0.537 (AAB / AOO / AQN)
# against the constant's 0.517 / 0.590 / 0.460; BraSyn tumour SSIM 0.071 / 0.024 / 0.293 against at most 0.000.
UNSEEN_MARGINS = {  # name -> psnr, ssim, conspicuity kept, BraSyn lesion SSIM
    "dm0001": (0.25, 0.08, 0.03, 0.15), "dm0003": (0.25, 0.08, 0.03, 0.15),
    "dv2aab": (None, 0.015, None, 0.01), "dv2aoo": (None, 0.01, None, 0.01), "dv2aqn": (None, 0.03, None, 0.1)}


@pytest.mark.parametrize("name", UNSEEN)
def test_the_served_default_beats_the_trivial_predictors_on_unseen_cohorts(unseen, name):
    _, scores, trivial, subject = unseen[name]
    psnr, ssim, conspicuity, lesion_ssim = UNSEEN_MARGINS[name]
    _, inputs, target, _ = UNSEEN[name]
    label = f"{UNSEEN[name][0]} {'+'.join(inputs)} -> {target}"
    if psnr is None:  # gated in SSIM and inside the tumour only; the PSNR and conspicuity gap is the next test
        scores = {k: v for k, v in scores.items() if k not in ("lesion_conspicuity", "acquired_lesion_conspicuity")}
        psnr = -np.inf
    assert_beats_trivial(scores, subject, target, inputs, psnr=psnr, ssim=ssim, conspicuity=conspicuity,
                         lesion_ssim=lesion_ssim, trivial=trivial, label=label)


# Measured: from T1 alone on raw-intensity BraTS 2018 scans, the T1+T2 -> FLAIR task checkpoint stays below the
# constant in PSNR on AAB and AOO (19.02 and 23.17 dB against 19.66 and 23.64) and draws the tumour darker than its
# surroundings (-14 % and -7 % of the acquired conspicuity; AQN +3 %). Strict: the test fails once a retrained
# checkpoint passes, and the margins above are then to be raised.
@pytest.mark.parametrize("name", [n for n in UNSEEN if n.startswith("dv2")])
@pytest.mark.xfail(strict=True, reason="measured below the constant in PSNR on unseen raw-intensity BraTS from T1 "
                                       "alone, tumour not kept conspicuous")
def test_from_t1_alone_on_unseen_brats_the_default_beats_the_constant_in_psnr_and_keeps_the_tumour(unseen, name):
    _, scores, trivial, subject = unseen[name]
    _, inputs, target, _ = UNSEEN[name]
    assert_beats_trivial(scores, subject, target, inputs, psnr=0.0, ssim=0.0, conspicuity=0.05, trivial=trivial,
                         label=name)
