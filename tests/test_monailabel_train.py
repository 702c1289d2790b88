"""Training through the MONAI Label app (apps/medsynth): a real `monailabel start_server` on a COPY of the app folder
(training writes versions into a user model folder, never into the app's model/), on a flat datastore of real crops
of three open_ms_data subjects.

MONAI Label runs a training in a subprocess that re-creates the app (~5 s); `DELETE /train/` kills it. The module's
last step stops any training before the server's process group is killed.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch

from conftest import SHARED
from gates import assert_beats_trivial
from server_fixture import copy_app, import_medsynth_lib, running_server

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")

from server_fixture import APP  # noqa: E402
MNI = SHARED / "open_ms_data" / "mni"
SUBJECTS = {"sub01": "patient07", "sub02": "patient19", "sub03": "patient26"}
# SimpleITK (i, j, k): centred left-right, from the back of the head (j = 0, background) through the ventricles.
CROP_START, CROP_SIZE = [51, 0, 70], [80, 96, 24]
# sub04: T1 and FLAIR only (no T2), from a clinical scan of another MS patient (320 x 320 x 36, 4 mm slices).
INCOMPLETE = SHARED / "open_ms_data" / "longitudinal" / "patient01_study1"
INCOMPLETE_FILES = {"T1": "T1W_in_FLAIR_space.nii.gz", "FLAIR": "FLAIR.nii.gz"}
INCOMPLETE_START = [120, 100, 6]
TRAIN_SECONDS = 150
FLAIR_CKPT = "linear_T1+T2_to_FLAIR.pt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _validation_subject(checkpoint, datastore: Path, target: str):
    """The checkpoint's validation study of the datastore, scored again: (prepared subject, metrics of the
    checkpoint's prediction on it as `medsynth evaluate` computes them)."""
    from medsynth_app.pipeline import evaluate, prepare_study
    from medsynth_app.studies import find_studies

    [name] = checkpoint.training["validation_subjects"]
    [study] = [s for s in find_studies(datastore) if s.id == name]
    [row] = evaluate(checkpoint, [study], target, progress=False)
    used = [*checkpoint.inputs, target]
    return prepare_study(study, used, target, used), row


def _crop(src: Path, dst: Path, start=CROP_START) -> None:
    image = sitk.ReadImage(str(src))
    sitk.WriteImage(sitk.RegionOfInterest(image, CROP_SIZE, start), str(dst))


@pytest.fixture(scope="module")
def datastore(tmp_path_factory) -> Path:
    """sub01..sub03 _T1/_T2/_FLAIR crops, sub04 _T1/_FLAIR; sub01's lesion segmentation saved as a client would
    (labels/final)."""
    root = tmp_path_factory.mktemp("datastore")
    for study, patient in SUBJECTS.items():
        for contrast in ("T1", "T2", "FLAIR"):
            _crop(MNI / patient / f"{contrast}.nii.gz", root / f"{study}_{contrast}.nii.gz")
    for contrast, name in INCOMPLETE_FILES.items():
        _crop(INCOMPLETE / name, root / f"sub04_{contrast}.nii.gz", INCOMPLETE_START)
    (root / "labels" / "final").mkdir(parents=True)
    _crop(MNI / "patient07" / "lesion_consensus.nii.gz", root / "labels" / "final" / "sub01_FLAIR.nii.gz")
    return root


@pytest.fixture(scope="module")
def acquired(datastore) -> dict:
    """sha256 of every acquired file, taken before the server starts."""
    return {p: _sha256(p) for p in sorted(datastore.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory) -> Path:
    return copy_app(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {p: _sha256(p) for p in sorted((APP / "model").glob("*.pt"))}


@pytest.fixture(scope="module")
def user_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user_models")


@pytest.fixture(scope="module")
def app_files(app_copy) -> dict:
    """sha256 of the app copy's shipped weights, taken before the server starts."""
    return {p: _sha256(p) for p in sorted((app_copy / "model").glob("*.pt"))}


@pytest.fixture(scope="module")
def server(datastore, acquired, app_copy, app_files, shipped, user_models, tmp_path_factory):
    try:  # the family list of --conf models selects trainers too
        with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="all", app=app_copy,
                            conf={"user_models": str(user_models)}) as url:
            yield url
    except RuntimeError as err:
        pytest.fail(str(err))


def _served(user_models: Path, name: str) -> Path:
    """The served version of checkpoint ``name`` in the user model folder."""
    return user_models / "served" / name


def _infer_flair(url: str, tmp_path: Path, tag: str) -> np.ndarray:
    response = requests.post(f"{url}/infer/linear", params={"image": "sub01_T1", "output": "image"},
                             files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=300)
    assert response.status_code == 200, response.text
    name = re.search(r'filename="?([^";]+)"?', response.headers["content-disposition"]).group(1)
    out = tmp_path / f"{tag}_{name}"
    out.write_bytes(response.content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def _start(url: str, params: dict) -> dict:
    response = requests.post(f"{url}/train/linear", json=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(url: str, task_id: str, seconds: float = TRAIN_SECONDS) -> dict:
    deadline = time.time() + seconds
    while True:
        task = requests.get(f"{url}/train/", timeout=30).json()
        if task["id"] == task_id and task["status"] not in ("SUBMITTED", "RUNNING"):
            return task
        assert time.time() < deadline, f"training still {task['status']} after {seconds} s: {task.get('details')}"
        time.sleep(0.5)


def _train_stats(url: str) -> dict:
    return requests.get(f"{url}/info/", timeout=60).json()["train_stats"]["linear"]


def test_info_lists_the_trainer(server):
    from medsynth_app.checkpoint import load_checkpoint

    info = requests.get(f"{server}/info/", timeout=60).json()
    trainer = info["trainers"]["linear"]
    assert trainer["type"] == "synthesis" and trainer["family"] == "linear"
    assert set(trainer["targets"]) == {"FLAIR", "T2"}
    flair = trainer["checkpoints"]["FLAIR"][0]
    assert flair["checkpoint"] == FLAIR_CKPT
    assert flair["required_inputs"] == ["T1", "T2"] and flair["optional_inputs"] == []
    shown = load_checkpoint(APP / "model" / FLAIR_CKPT).training["validation"]["FLAIR"]
    assert flair["validation"] == pytest.approx(shown)  # the checkpoint's own validation metrics
    assert {"target", "inputs", "epochs", "val_split", "multi_gpu"} <= set(trainer["config"])
    assert trainer["description"]
    assert "linear" in info["train_stats"]


def test_train_writes_a_version_and_inference_serves_it_when_asked(server, app_copy, app_files, user_models,
                                                                   datastore, tmp_path):
    from medsynth_app.checkpoint import load_checkpoint

    ckpt_path = _served(user_models, FLAIR_CKPT)
    assert not ckpt_path.exists()
    before_output = _infer_flair(server, tmp_path, "before")

    task = _start(server, {"target": "FLAIR", "inputs": ["T1", "T2"], "epochs": 1, "promote": "always"})
    done = _wait(server, task["id"])
    assert done["status"] == "DONE", done.get("details")

    assert ckpt_path.resolve() == user_models / "versions" / "linear_T1+T2_to_FLAIR" / "v0001.pt"
    assert {p: _sha256(p) for p in sorted((app_copy / "model").glob("*.pt"))} == app_files  # shipped untouched
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.inputs == ["T1", "T2"] and ckpt.targets == ["FLAIR"]
    assert len(ckpt.training["subjects"]) == 2 and len(ckpt.training["validation_subjects"]) == 1
    assert set(ckpt.training["subjects"]) | set(ckpt.training["validation_subjects"]) == set(SUBJECTS)
    # The recorded validation scores are the model's own on its validation crop, and beat the trivial predictors
    # there. The validation rule holds out the middle study, sub02 (the patient19 crop): SSIM 0.636 against T1
    # copied 0.594 (+0.042, so the SSIM margin is 0.02); the PSNR margin of 2 dB held. (On sub01, the patient07 crop,
    # it was 22.35 dB / 0.734 against 18.64 dB / 0.604.)
    subject, row = _validation_subject(ckpt, datastore, "FLAIR")
    recorded = ckpt.training["validation"]["FLAIR"]
    assert recorded["psnr"] == pytest.approx(row["psnr"], abs=0.1)  # measured 22.35 recorded, 22.40 recomputed
    assert recorded["ssim"] == pytest.approx(row["ssim"], abs=0.005)
    assert_beats_trivial(recorded, subject, "FLAIR", ["T1", "T2"], psnr=2.0, ssim=0.02,
                         label="linear trained through the server, on its validation crop")

    stats = _train_stats(server)
    assert stats["status"] == "DONE" and stats["target"] == "FLAIR" and stats["checkpoint"] == FLAIR_CKPT
    assert stats["version"] == "v0001.pt" and stats["promoted"] is True
    assert stats["training_studies"] == 2 and stats["validation_studies"] == 1  # counts: no subject ids in /info
    assert stats["epoch"] == stats["total_epochs"] == 1  # linear is closed-form: one pass whatever was asked
    assert stats["best_metric"] == pytest.approx(ckpt.training["validation"]["FLAIR"]["psnr"])
    assert stats["total_time"] > 0 and stats["created"] == ckpt.created

    # Served without restart: /info shows the new checkpoint, and inference gives the new model's output.
    model = requests.get(f"{server}/info/", timeout=60).json()["models"]["linear"]
    served = model["checkpoints"]["FLAIR"][0]
    assert served["created"] == ckpt.created and served["training_subjects"] == 2
    after_output = _infer_flair(server, tmp_path, "after")
    assert after_output.shape == before_output.shape
    assert not np.allclose(after_output, before_output)


def test_the_served_default_moves_only_to_a_better_checkpoint_and_can_be_restored(server, user_models, tmp_path):
    """promote "auto" (the default) serves a new version only when it validates better than the served one on the
    run's validation studies; `medsynth model-versions --restore` serves the previous one again."""
    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.cli import main

    def train(**params) -> dict:
        response = requests.post(f"{server}/train/linear", params={"run_sync": "true"}, timeout=300,
                                 json={"target": "FLAIR", "inputs": ["T1", "T2"], **params})
        assert response.status_code == 200, response.text
        return response.json()

    link = _served(user_models, FLAIR_CKPT)
    # a deliberately poor fit (ridge 1e6 shrinks every coefficient), served because asked
    poor = train(hparams={"ridge": 1e6}, promote="always")
    assert poor["promoted"] is True and link.resolve().name == poor["version"]
    poor_output = _infer_flair(server, tmp_path, "poor")
    better = train(hparams={"ridge": 1e-3})
    assert better["promoted"] is True, better["message"]
    assert better["validation_psnr"] > better["served_validation_psnr"] + 1
    assert link.resolve().name == better["version"]
    same = train(hparams={"ridge": 1e-3})  # the same fit again: not better, kept as a version only
    assert same["promoted"] is False and "not served" in same["message"]
    assert same["validation_psnr"] == pytest.approx(same["served_validation_psnr"])
    assert link.resolve().name == better["version"] and (link.parent.parent / "versions" / "linear_T1+T2_to_FLAIR"
                                                         / same["version"]).is_file()
    never = train(promote="never")
    assert never["promoted"] is False and link.resolve().name == better["version"]

    assert main(["model-versions", "--user-models", str(user_models), "--restore", FLAIR_CKPT]) == 0
    assert link.resolve().name == poor["version"]
    served = requests.get(f"{server}/info/", timeout=60).json()["models"]["linear"]["checkpoints"]["FLAIR"][0]
    assert served["created"] == load_checkpoint(link).created
    np.testing.assert_array_equal(_infer_flair(server, tmp_path, "restored"), poor_output)


# One short epoch per family, on the crops (hyper-parameters shrunk so that each runs in seconds).
TINY = {
    "replica": {"n_estimators": 4, "max_samples": 5000},
    "mp": {"max_atlases": 2},
    "lsdn": {"voxels_per_subject": 2000, "shrink": False},
    "vdn": {"voxels_per_subject": 2000},
    "cdn": {"voxels_per_subject": 2000},
    "synnet": {"features": 8, "max_steps_per_epoch": 2},
    "multimodal": {"max_steps_per_epoch": 2},
    "cae3d": {"features": 8, "max_steps_per_epoch": 2},
}


def test_every_family_has_a_trainer(server):
    info = requests.get(f"{server}/info/", timeout=60).json()
    assert {"linear", *TINY} <= set(info["trainers"]), sorted(info["trainers"])


@pytest.mark.parametrize("family", sorted(TINY))
def test_one_epoch_of_every_trainer_is_served_without_restart(server, user_models, datastore, family, tmp_path):
    from medsynth_app.checkpoint import load_checkpoint

    response = requests.post(f"{server}/train/{family}", params={"run_sync": "true"}, timeout=900,
                             json={"target": "T2", "inputs": ["T1"], "epochs": 1, "hparams": TINY[family],
                                   "pretrained": False,  # the served weights have the full architecture
                                   "promote": "always"})
    assert response.status_code == 200, response.text
    ckpt_name = f"{family}_T1_to_T2.pt"
    ckpt = load_checkpoint(_served(user_models, ckpt_name))
    assert ckpt.family == family and ckpt.inputs == ["T1"] and ckpt.targets == ["T2"]
    assert len(ckpt.training["subjects"]) == 2 and set(ckpt.training["validation"]["T2"]) >= {"psnr", "ssim"}
    # One tiny epoch gates no quality. What is served is the new checkpoint: its voxels are the library's synthesis
    # with it.
    from medsynth_app.pipeline import synthesize

    response = requests.post(f"{server}/infer/{family}", params={"image": "sub01_T1", "output": "image"},
                             files={"params": (None, json.dumps({"target": "T2", "checkpoint": ckpt_name}))},
                             timeout=300)
    assert response.status_code == 200, response.text
    (tmp_path / "served.nii.gz").write_bytes(response.content)
    served = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "served.nii.gz")))
    library = sitk.GetArrayFromImage(synthesize(ckpt, {"T1": sitk.ReadImage(str(datastore / "sub01_T1.nii.gz"))},
                                                "T2"))
    np.testing.assert_allclose(served, library, rtol=1e-5, atol=1e-3 * float(library.max()))
    model = requests.get(f"{server}/info/", timeout=60).json()["models"][family]
    assert ckpt.created in [c["created"] for c in model["checkpoints"]["T2"]]
    result = requests.post(f"{server}/infer/{family}", params={"image": "sub02_T1", "output": "image"},
                           files={"params": (None, json.dumps({"target": "T2"}))}, timeout=300)
    assert result.status_code == 200, result.text
    out = tmp_path / "synthetic.nii.gz"
    out.write_bytes(result.content)
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetSize() == tuple(CROP_SIZE)


def test_multimodal_retrains_on_incomplete_studies_when_asked(server, user_models):
    """sub04 lacks T2: a multimodal T1+T2 -> FLAIR training leaves it out, unless ``incomplete_studies`` is set; then
    it trains (or validates) on T1 -> FLAIR with the others."""
    from medsynth_app.checkpoint import load_checkpoint

    def studies_used(hparams: dict) -> list:
        response = requests.post(f"{server}/train/multimodal", params={"run_sync": "true"}, timeout=900,
                                 json={"target": "FLAIR", "inputs": ["T1", "T2"], "epochs": 1, "pretrained": False,
                                       "hparams": {**TINY["multimodal"], "crop": 32, **hparams}, "promote": "always"})
        assert response.status_code == 200, response.text
        training = load_checkpoint(_served(user_models, "multimodal_T1+T2_to_FLAIR.pt")).training
        return sorted(training["subjects"] + training["validation_subjects"])

    assert studies_used({}) == ["sub01", "sub02", "sub03"]
    assert studies_used({"incomplete_studies": True}) == ["sub01", "sub02", "sub03", "sub04"]
    response = requests.post(f"{server}/train/multimodal", params={"run_sync": "true"}, timeout=120,
                             json={"target": "FLAIR", "inputs": ["T1", "T2"], "hparams": {"no_such": 1}})
    assert response.status_code == 422 and "no_such" in response.json()["detail"], response.text


def test_retraining_starts_from_the_served_weights_unless_pretrained_is_false(server, user_models):
    """MONAI Label's ``pretrained`` (default true): a network family fine-tunes its served checkpoint, validated
    first as epoch 0. At learning rate 0 the retrained convolutions are the served ones; with ``pretrained`` false
    they are fresh."""
    from medsynth_app.checkpoint import load_checkpoint

    path = _served(user_models, "synnet_T1_to_T2.pt")

    def retrain(**params) -> dict:
        response = requests.post(f"{server}/train/synnet", params={"run_sync": "true"}, timeout=900,
                                 json={"target": "T2", "inputs": ["T1"], "epochs": 1, "promote": "always", **params})
        assert response.status_code == 200, response.text
        return response.json()

    retrain(hparams=TINY["synnet"], pretrained=False)
    served = load_checkpoint(path)
    convs = [k for k, v in served.state.items() if k.endswith(".weight") and v.dim() == 4]
    stats = retrain(learning_rate=0)
    tuned = load_checkpoint(path)
    assert stats["pretrained"] == path.name and tuned.training["fine_tuned_from"]["created"] == served.created
    assert tuned.hparams == served.hparams and all(torch.equal(tuned.state[k], served.state[k]) for k in convs)
    assert tuned.training["history"][0]["epoch"] == 0  # the served weights validated first: the bar to beat
    stats = retrain(learning_rate=0, pretrained=False, hparams=TINY["synnet"])
    fresh = load_checkpoint(path)
    assert stats["pretrained"] is None and "fine_tuned_from" not in fresh.training
    assert [row["epoch"] for row in fresh.training["history"]] == [1]
    assert not any(torch.equal(fresh.state[k], served.state[k]) for k in convs)
    response = requests.post(f"{server}/train/synnet", params={"run_sync": "true"}, timeout=900,
                             json={"target": "T2", "inputs": ["T1"], "epochs": 1, "hparams": {"features": 4}})
    assert response.status_code == 422 and "starting weights do not fit" in response.json()["detail"], response.text
    assert load_checkpoint(path).created == fresh.created


def test_training_without_a_study_holding_the_target_fails_with_a_message(server):
    task = _start(server, {"target": "PD", "inputs": ["T1"]})
    done = _wait(server, task["id"])
    assert done["status"] == "ERROR"
    assert any("no study of the datastore has T1+PD" in line for line in done["details"]), done["details"]
    stats = _train_stats(server)
    assert stats["status"] == "FAILED" and "no study of the datastore has T1+PD" in stats["message"]
    # The same request run synchronously is answered 4xx with the message.
    response = requests.post(f"{server}/train/linear", params={"run_sync": "true"},
                             json={"target": "PD", "inputs": ["T1"]}, timeout=120)
    assert response.status_code == 422, response.text
    assert "no study of the datastore has T1+PD" in response.json()["detail"]


def test_delete_stops_a_running_training_and_keeps_the_weights(server, user_models):
    ckpt_path = _served(user_models, FLAIR_CKPT)
    versions = user_models / "versions" / "linear_T1+T2_to_FLAIR"
    # The linear fit itself takes ~2 s on these crops: stop it once the trainer reports it is fitting. Should the
    # fit win the race and finish before DELETE arrives, try again (the test is about stopping, not about timing).
    for attempt in range(3):
        signature = (ckpt_path.resolve(), _sha256(ckpt_path), sorted(versions.glob("*.pt")))
        previous_pid = _train_stats(server).get("pid")
        task = _start(server, {"target": "FLAIR", "inputs": ["T1", "T2"]})
        deadline = time.time() + 90
        while True:  # the trainer runs in the subprocess once its stats carry the new process id
            stats = _train_stats(server)
            if stats.get("pid") != previous_pid and stats.get("stage") == "training":
                break
            assert stats.get("pid") == previous_pid or stats.get("status") == "RUNNING", stats
            assert time.time() < deadline, f"the training never started: {requests.get(f'{server}/train/').json()}"
            time.sleep(0.05)
        stopped = requests.delete(f"{server}/train/", timeout=30).json()
        if stopped is None:  # it finished first
            assert _wait(server, task["id"])["status"] == "DONE"
            continue
        assert stopped["id"] == task["id"] and stopped["status"] == "STOPPED"
        assert requests.get(f"{server}/train/", timeout=30).json()["status"] == "STOPPED"
        deadline = time.time() + 30
        while _train_stats(server)["status"] == "RUNNING":  # the killed process is reaped by MONAI Label's thread
            assert time.time() < deadline
            time.sleep(0.5)
        stats = _train_stats(server)
        assert stats["status"] == "STOPPED" and "ended before finishing" in stats["message"]
        # the previous weights are kept, and no version was added
        assert (ckpt_path.resolve(), _sha256(ckpt_path), sorted(versions.glob("*.pt"))) == signature
        assert requests.get(f"{server}/train/", params={"check_if_running": "true"}, timeout=30).status_code == 404
        break
    else:
        pytest.fail("every training finished before DELETE /train/ reached it")


def test_the_slicer_modules_client_trains_and_follows_progress(server, user_models):
    """The module's training section: start through MedSynthLib's client, poll the progress text it shows, stop."""
    from medsynth_app.checkpoint import load_checkpoint

    import_medsynth_lib()
    from MedSynthLib.client import MedSynthClient
    from MedSynthLib.logic import describe_training

    client = MedSynthClient(server)
    ckpt_path = _served(user_models, "linear_T1_to_T2.pt")
    before = _sha256(ckpt_path) if ckpt_path.exists() else None
    started = client.start_training("linear", {"target": "T2", "inputs": ["T1"], "promote": "always"})
    seen, deadline = [], time.time() + TRAIN_SECONDS
    while True:
        stats = (client.info().get("train_stats") or {}).get("linear")
        text, fraction, active = describe_training(client.training_status(), stats)
        seen.append(text)
        if not active and stats.get("target") == "T2":
            break
        assert time.time() < deadline, seen[-3:]
        time.sleep(0.5)
    assert client.training_status()["id"] == started["id"]
    assert text.startswith("Training DONE, epoch 1/1, best validation") and fraction == 1.0, text
    assert _sha256(ckpt_path) != before and load_checkpoint(ckpt_path).created == stats["created"]
    assert client.stop_training() == {} and client.training_status(running_only=True) is None


def test_gpus_choose_the_devices_and_only_network_families_run_under_torchrun(monkeypatch, tmp_path):
    """``gpus`` "0,1" with multi_gpu: a network family runs MONAI Label's train entry point under torchrun with
    exactly those GPUs visible; a closed-form family never runs copies of itself; one GPU is the device of a
    single-process run. No GPU here, so the launch and the training are intercepted."""
    from medsynth_app.checkpoint_versions import CheckpointVersions

    sys.path.insert(0, str(APP))
    try:
        from lib.trainers import synthesis as trainer_module
    finally:
        sys.path.remove(str(APP))

    def task_for(family: str):
        class Config:
            name, model_dir, checkpoints, user_models = family, str(tmp_path), [], CheckpointVersions(tmp_path)

            def refresh(self):
                return False

        Config.family = family
        return trainer_module.SynthesisTrainTask(Config())

    launched, trained = [], []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(trainer_module.subprocess, "run",
                        lambda cmd, env, **kw: launched.append((cmd, env)) or subprocess.CompletedProcess(cmd, 0))
    synnet = task_for("synnet")
    synnet({"model": "synnet", "target": "T2", "inputs": ["T1"], "multi_gpu": True, "gpus": "2,3"}, datastore=None)
    [(cmd, env)] = launched
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:9] == ["monailabel.interfaces.utils.app", "-m", "train"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    request = json.loads(cmd[-1])
    assert request["target"] == "T2" and request["device"] == "cuda"  # each rank takes cuda:<LOCAL_RANK>

    launched.clear()
    for family, gpus, device in (("linear", "2,3", "cuda:2"), ("synnet", "1", "cuda:1"), ("synnet", "all", "auto")):
        task = task_for(family)
        # the config's default device is the drop-down ["auto", "cpu", "cuda"]: its first item
        monkeypatch.setattr(task, "_train", lambda req, datastore: trained.append(
            req["device"] if isinstance(req["device"], str) else req["device"][0]) or {})
        task({"model": family, "target": "T2", "inputs": ["T1"], "multi_gpu": True, "gpus": gpus}, datastore=None)
        assert not launched, family  # linear is closed-form: no identical copies; one GPU: one process
        assert trained.pop() == device

    linear = task_for("linear")
    with pytest.raises(trainer_module.TrainRequestError, match="no study of the datastore has T1\\+T2\\+FLAIR"):
        linear({"model": "linear", "target": "FLAIR", "inputs": ["T1", "T2"], "multi_gpu": False}, datastore=_Empty())
    assert linear.stats()["status"] == "FAILED"


class _Empty:
    def list_images(self):
        return []


def test_acquired_images_and_shipped_weights_are_unchanged(server, acquired, shipped, tmp_path):
    _infer_flair(server, tmp_path, "last")
    assert {p: _sha256(p) for p in acquired} == acquired
    assert {p: _sha256(p) for p in sorted((APP / "model").glob("*.pt"))} == shipped
