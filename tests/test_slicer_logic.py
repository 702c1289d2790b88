"""The Slicer extension's logic outside Slicer: MedSynthLib's pure rules, and the MRML-level workflow with PyPI's
slicer-core (vtkMRMLScene, vtkMRMLScalarVolumeNode, vtkMRMLSubjectHierarchyNode, vtkMRMLVolumeArchetypeStorageNode)
against a real server and in local mode (a separate process), on real crops of ../shared/data. The Widget is driven
with real Qt in tests/test_slicer_gui.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from server_fixture import SLICER_MODULE_DIR, import_medsynth_lib, running_server, write_crops

import_medsynth_lib()
from MedSynthLib.client import MedSynthClient  # noqa: E402
from MedSynthLib.logic import (ATTR_INPUTS, ATTR_MIXED_STUDIES, ATTR_MODEL, ATTR_OUTPUT,  # noqa: E402
                               ATTR_SERVER, ATTR_SYNTHETIC, ATTR_TIME, BackgroundTask, Origin, StudyMismatch,
                               VolumeInfo, check_one_study, choose_inputs, describe_training, model_choices, prefill,
                               result_node_name, window_level)

LINEAR = model_choices({"linear": {
    "type": "synthesis", "targets": ["FLAIR", "T2"], "checkpoints": {
        "FLAIR": [{"checkpoint": "linear_T1+T2_to_FLAIR.pt", "inputs": ["T1", "T2"], "required_inputs": ["T1", "T2"],
                   "optional_inputs": []}],
        "T2": [{"checkpoint": "linear_T1_to_T2.pt", "inputs": ["T1"], "required_inputs": ["T1"],
                "optional_inputs": []}]}}})["linear"]
MULTI = model_choices({"multimodal": {
    "type": "synthesis", "targets": ["FLAIR"], "checkpoints": {
        "FLAIR": [{"checkpoint": "m.pt", "inputs": ["T1", "T2", "PD"], "required_inputs": [],
                   "optional_inputs": ["T1", "T2", "PD"]}]}}})["multimodal"]


# ---- pure rules --------------------------------------------------------------------------------------------------
def test_choose_inputs_sends_what_the_checkpoint_uses_in_canonical_order():
    assert choose_inputs(LINEAR, "FLAIR", ["T2", "T1", "PD"]) == ["T1", "T2"]
    assert choose_inputs(LINEAR, "T2", ["T1", "T2"]) == ["T1"]  # never the target itself
    assert choose_inputs(MULTI, "FLAIR", ["PD", "T2"]) == ["T2", "PD"]
    with pytest.raises(ValueError, match="missing T2"):
        choose_inputs(LINEAR, "FLAIR", ["T1"])
    with pytest.raises(ValueError, match="does not synthesise PD"):
        choose_inputs(LINEAR, "PD", ["T1", "T2"])


def test_prefill_uses_the_library_name_rules_and_skips_synthetic_volumes():
    volumes = [VolumeInfo("n1", "sub-01_T1w"), VolumeInfo("n2", "3DFLAIR"), VolumeInfo("n3", "T2W_in_FLAIR_space"),
               VolumeInfo("n4", "brainmask"), VolumeInfo("n5", "FLAIR (synthetic, linear)", synthetic=True),
               VolumeInfo("n6", "t1ce"), VolumeInfo("n7", "T1 lesion seg", label_map=True), VolumeInfo("n8", "scout")]
    assert prefill(volumes) == {"T1": "n1", "FLAIR": "n2", "T2": "n3", "T1C": "n6"}
    assert prefill(volumes + [VolumeInfo("n9", "T1_repeat")])["T1"] == "n9"  # the latest of two


def test_prefill_stays_within_one_study_and_mixed_studies_are_refused():
    a, b = Origin("DICOM PAT-A", "DICOM 1.2.1", "A", "1.2.1"), Origin("DICOM PAT-B", "DICOM 1.2.2", "B", "1.2.2")
    volumes = [VolumeInfo("a1", "T1", origin=a), VolumeInfo("a2", "T2", origin=a), VolumeInfo("b1", "T1", origin=b),
               VolumeInfo("b3", "FLAIR", origin=b)]
    assert prefill(volumes, within=a) == {"T1": "a1", "T2": "a2"}  # never B's FLAIR
    assert prefill(volumes) == {"T1": "b1", "FLAIR": "b3"}  # nothing picked: the latest volume's study
    assert check_one_study({"T1": a, "T2": a}) == {"T1": a, "T2": a}
    with pytest.raises(StudyMismatch, match=r"T1: patient A, study 1.2.1; T2: patient B, study 1.2.2"):
        check_one_study({"T1": a, "T2": b})
    with pytest.raises(StudyMismatch):  # a volume of unknown study beside one of a known study
        check_one_study({"T1": a, "T2": Origin()})
    assert check_one_study({"T1": Origin(), "T2": Origin()})  # nothing known of either


def test_model_summary_shows_validation_and_training_data():
    model = model_choices({"m": {"type": "synthesis", "targets": ["FLAIR"], "checkpoints": {"FLAIR": [{
        "checkpoint": "m.pt", "inputs": ["T1", "T2"], "validation": {"psnr": 21.0291, "ssim": 0.6401, "mae": 0.1},
        "validation_subjects": 2, "training_subjects": 30,
        "training_datasets": ["hinet_brats2018_slices"]}]}}})["m"]
    assert model.summary().splitlines()[1] == ("T1+T2 -> FLAIR: validation PSNR 21.03 dB, SSIM 0.640 (2 subjects); "
                                               "trained on 30 subjects (hinet_brats2018_slices)")


def test_local_mode_installs_only_what_is_missing_and_follows_setup_py():
    from MedSynthLib.local import LOCAL_REQUIREMENTS, install_plan

    assert install_plan(["numpy", "SimpleITK", "scipy", "pydicom"], ["numpy>=2", "SimpleITK>=2.3", "monai==1.6.1",
                                                                      "scikit_image>=0.22"]) == ["monai==1.6.1",
                                                                                                 "scikit_image>=0.22"]
    setup_py = (SLICER_MODULE_DIR.parents[1] / "setup.py").read_text()
    for requirement in LOCAL_REQUIREMENTS:  # the same pins as the library's own requirements
        assert f'"{requirement}"' in setup_py, requirement
    assert not {"torch", "monailabel", "pydicom"} & {r.split("=")[0].split(">")[0] for r in LOCAL_REQUIREMENTS}


def test_result_name_window_level_and_training_text():
    when = time.mktime((2026, 12, 8, 14, 3, 27, 0, 0, -1))
    assert result_node_name("FLAIR", "synnet", when) == "FLAIR (synthetic, synnet, 14:03:27)"
    assert result_node_name("FLAIR", "synnet", when, "uncertainty") == "FLAIR uncertainty (synthetic, synnet, 14:03:27)"
    values = np.zeros((10, 10, 10), np.float32)
    values[2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    window, level = window_level(values)  # zeros outside the brain do not pull the window down
    assert 95 < level - window / 2 < 103 and 197 < level + window / 2 < 200
    assert describe_training(None, None)[2] is False
    text, fraction, active = describe_training({"status": "RUNNING", "details": ["x"]},
                                               {"epoch": 3, "total_epochs": 12, "best_metric": 0.81})
    assert active and fraction == 0.25 and "epoch 3/12" in text and "0.81" in text
    text, _, active = describe_training({"status": "DONE"}, {"message": "no study holds FLAIR"})
    assert not active and "no study holds FLAIR" in text


def test_background_task_delivers_progress_and_outcome_in_the_polling_thread():
    seen, threads = [], []

    def work(report, cancel):
        report(0.5, "half")
        return 42

    task = BackgroundTask(work, on_progress=lambda f, m: seen.append((f, m)),
                          on_done=lambda v: (seen.append(v), threads.append(threading.current_thread())))
    assert task.start().wait(10)
    assert seen == [(0.5, "half"), 42] and threads == [threading.main_thread()]
    errors = []
    assert BackgroundTask(lambda r, c: 1 / 0, on_error=lambda e, t: errors.append(e)).start().wait(10)
    assert isinstance(errors[0], ZeroDivisionError)


def test_the_extension_folder_is_self_contained(tmp_path):
    """Copied anywhere, as an additional module path, with no medsynth_app reachable: MedSynthLib imports, with
    contrast rules equal to the library's (tests/test_slicer_ui.py keeps the copy byte-equal)."""
    copy = tmp_path / "MedSynth"
    shutil.copytree(SLICER_MODULE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; import MedSynthLib.contrasts as n, MedSynthLib.workflow, MedSynthLib.study; "
            "print(n.parse_name('sub01_t1ce.nii.gz')); print('medsynth_app' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{copy}{os.pathsep}{Path(__import__('requests').__file__).parents[1]}"
    # -S: no site-packages, so an installed medsynth_app (editable install) stays out of reach, as in Slicer.
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ParsedName(prefix='sub01', contrast='T1C')", "False"]


def test_lib_imports_neither_slicer_nor_qt():
    for path in (SLICER_MODULE_DIR / "MedSynthLib").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped == "import slicer  # noqa: WPS433 - lazily: this package must import without Slicer":
                continue
            assert not stripped.startswith(("import slicer", "from slicer", "import qt", "from qt", "import ctk",
                                            "from PySide", "from PyQt")), f"{path.name}: {line}"


# ---- MRML with slicer-core ---------------------------------------------------------------------------------------
try:
    import slicer  # noqa: E402
    slicer.vtkMRMLScalarVolumeNode  # noqa: B018 - slicer-core's MRML classes, not another package named slicer
except (ImportError, AttributeError) as err:  # a missing test dependency fails, it does not skip
    raise ImportError(f"these tests need PyPI's slicer-core (pip install slicer-core): {err}") from None
from MedSynthLib import hierarchy, mrml_io  # noqa: E402
from MedSynthLib.study import upload_plan  # noqa: E402
from MedSynthLib.workflow import SynthesisWorkflow  # noqa: E402


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    return write_crops(SHARED, tmp_path_factory.mktemp("datastore"))


@pytest.fixture(scope="module")
def server(crops, tmp_path_factory):
    with running_server(crops, tmp_path_factory.mktemp("server")) as url:
        yield url


def _scene_with_inputs(crops):
    scene = slicer.vtkMRMLScene()
    nodes = {c: mrml_io.load_volume_file(str(crops / f"sub01_{c}.nii.gz"), scene, f"sub01_{c}")
             for c in ("T1", "T2", "FLAIR")}
    return scene, nodes


def _fingerprint(node):
    storage = node.GetStorageNode()
    return (node.GetName(), node.GetID(), mrml_io.voxels(node).tobytes(), mrml_io.ijk_to_ras(node).tobytes(),
            json.dumps(mrml_io.attributes(node), sort_keys=True), storage.GetFileName() if storage else None)


def test_volumes_outside_any_patient_are_told_apart_only_by_subject_names():
    scene = slicer.vtkMRMLScene()

    def origin(name):
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        scene.AddNode(node)
        return hierarchy.origin_of(node)

    series = {"T1": origin("sag 3D T1 MPRAGE"), "T2": origin("AX T2 FSE"), "FLAIR": origin("3DFLAIR"),
              "T1C": origin("T1_MPRAGE_post")}
    assert check_one_study(series)  # series names say nothing of the subject
    subjects = [origin(n) for n in ("sub01_T1", "sub-01_T2w", "patient07_FLAIR", "BraTS20_Training_001_t1", "s06_T1")]
    assert [o.patient for o in subjects] == ["name sub01", "name sub-01", "name patient07",
                                             "name BraTS20_Training_001", "name s06"]
    with pytest.raises(StudyMismatch, match="subject 'sub01'.*subject 'sub02'"):
        check_one_study({"T1": origin("sub01_T1"), "T2": origin("sub02_T2")})


def _check_result(result, nodes, model, server_text):
    assert re.fullmatch(rf"FLAIR \(synthetic, {model}, \d\d:\d\d:\d\d(, \d+)?\)", result.GetName()), result.GetName()
    attributes = mrml_io.attributes(result)
    assert attributes[ATTR_SYNTHETIC] == "true" and attributes[ATTR_MODEL] == model
    assert json.loads(attributes[ATTR_INPUTS]) == {"T1": "sub01_T1", "T2": "sub01_T2"}
    assert attributes[ATTR_SERVER] == server_text and attributes[ATTR_TIME][:2] == "20"
    assert result.GetID() not in {n.GetID() for n in nodes.values()}
    np.testing.assert_allclose(mrml_io.ijk_to_ras(result), mrml_io.ijk_to_ras(nodes["T1"]), atol=1e-5)
    synthetic = mrml_io.voxels(result)
    assert synthetic.dtype == np.float32 and synthetic.shape == mrml_io.voxels(nodes["T1"]).shape
    acquired = mrml_io.voxels(nodes["FLAIR"])
    brain = synthetic > 0
    assert brain.mean() > 0.2
    assert np.corrcoef(synthetic[brain], acquired[brain])[0, 1] > 0.5
    display = result.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    low, high = np.percentile(synthetic[brain], [1, 99])
    assert abs(display.GetWindow() - (high - low)) < 1e-3 * max(1.0, high)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_workflow_against_the_server_makes_a_new_synthetic_node(server, crops, tmp_path):
    scene, nodes = _scene_with_inputs(crops)
    study = hierarchy.place_in_study(scene, "PAT-07", "1.2.826.7", nodes.values())
    before = {c: _fingerprint(n) for c, n in nodes.items()}
    client = MedSynthClient(server)
    model = model_choices(client.synthesis_models())["linear"]
    workflow = SynthesisWorkflow(scene, client, temp_root=str(tmp_path))
    progress = []
    result = workflow.synthesize({"T1": nodes["T1"], "T2": nodes["T2"], "FLAIR": None}, model, "FLAIR",
                                 report=lambda f, m: progress.append(m.split()[0]))
    _check_result(result, nodes, "linear", client.address)
    assert json.loads(result.GetAttribute("MedSynth.Inputs")) == {"T1": "sub01_T1", "T2": "sub01_T2"}
    assert result.GetAttribute("MedSynth.Checkpoint") == "linear_T1+T2_to_FLAIR.pt"
    assert {c: _fingerprint(n) for c, n in nodes.items()} == before  # inputs untouched
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4
    assert list(tmp_path.iterdir()) == []  # temporary files removed
    assert mrml_io.attributes(result)[ATTR_OUTPUT] == "image"
    assert progress == ["writing", "writing", "uploading", "synthesising", "FLAIR"], progress

    # The asynchronous path the Widget uses: prepare now, request in a thread, finish in the polling thread.
    done, errors = [], []
    task = workflow.start({"T1": nodes["T1"], "T2": nodes["T2"]}, model, "FLAIR",
                          on_done=done.append, on_error=lambda e, t: errors.append(t))
    assert task.wait(120) and not errors, errors
    _check_result(done[0], nodes, "linear", client.address)
    assert done[0].GetID() != result.GetID() and done[0].GetName() != result.GetName()  # unique names
    assert list(tmp_path.iterdir()) == []
    for node in (result, done[0]):  # in the inputs' study, where the clinician looks
        assert hierarchy.study_item(node) == study
        assert ATTR_MIXED_STUDIES not in mrml_io.attributes(node)

    # A synthetic node is never offered as an input again.
    infos = [VolumeInfo(n.GetID(), n.GetName(), mrml_io.attributes(n).get(ATTR_SYNTHETIC) == "true")
             for n in (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                       for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))]
    assert prefill(infos)["FLAIR"] == nodes["FLAIR"].GetID()


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_files_and_percentiles_stay_off_the_polling_thread(server, crops, tmp_path, monkeypatch):
    """The GUI thread (here: the test's, which polls) only copies voxels and adds nodes: writing the inputs,
    reading the result and its window/level run in the worker thread."""
    import MedSynthLib.workflow as workflow_module

    threads = []

    def spy(function):
        def wrapped(*args, **kwargs):
            threads.append((function.__name__, threading.current_thread() is threading.main_thread()))
            return function(*args, **kwargs)
        return wrapped

    scene, nodes = _scene_with_inputs(crops)
    for name in ("write_volume", "read_detached", "voxels"):
        monkeypatch.setattr(mrml_io, name, spy(getattr(mrml_io, name)))
    monkeypatch.setattr(workflow_module, "window_level", spy(workflow_module.window_level))
    client = MedSynthClient(server)
    workflow = SynthesisWorkflow(scene, client, temp_root=str(tmp_path))
    task = workflow.start({"T1": nodes["T1"], "T2": nodes["T2"]}, model_choices(client.synthesis_models())["linear"],
                          "FLAIR")
    assert not any(in_main for _, in_main in threads)  # start() returned without writing anything itself
    assert task.wait(120)
    assert sorted({name for name, _ in threads}) == ["read_detached", "voxels", "window_level", "write_volume"]
    assert not any(in_main for _, in_main in threads), threads


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_workflow_errors_and_cancel_leave_no_node_and_no_file(server, crops, tmp_path):
    scene, nodes = _scene_with_inputs(crops)
    client = MedSynthClient(server)
    model = model_choices(client.synthesis_models())["linear"]
    workflow = SynthesisWorkflow(scene, client, temp_root=str(tmp_path))
    with pytest.raises(ValueError, match="missing T2"):
        workflow.synthesize({"T1": nodes["T1"]}, model, "FLAIR")
    cancelled, done = [], []
    task = workflow.start({"T1": nodes["T1"], "T2": nodes["T2"]}, model, "FLAIR", on_done=done.append,
                          on_cancelled=lambda: cancelled.append(True))
    task.cancel()
    assert task.wait(60)
    assert cancelled == [True] and done == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_local_mode_without_a_server(crops, tmp_path):
    """Local mode lists and synthesises in a separate process (this interpreter stands in for PythonSlicer)."""
    from MedSynthLib.local import local_models_process

    model = model_choices(local_models_process())["linear"]
    scene, nodes = _scene_with_inputs(crops)
    result = SynthesisWorkflow(scene, None, temp_root=str(tmp_path)).synthesize(
        {"T1": nodes["T1"], "T2": nodes["T2"]}, model, "FLAIR")
    _check_result(result, nodes, "linear", "local")
    assert list(tmp_path.iterdir()) == []


def _runner_processes(marker):
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(entry.name)
        except OSError:
            continue
    return found


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_cancel_kills_the_local_process(crops, tmp_path):
    from MedSynthLib.client import Cancelled
    from MedSynthLib.local import run_local_process

    cancel = threading.Event()
    out = tmp_path / "out_cancel_marker"
    out.mkdir()
    threading.Timer(0.5, cancel.set).start()
    begin = time.time()
    with pytest.raises(Cancelled):
        run_local_process("linear", "FLAIR", {c: str(crops / f"sub01_{c}.nii.gz") for c in ("T1", "T2")}, str(out),
                          cancel_event=cancel)
    assert time.time() - begin < 3  # the process is killed, not waited for
    assert _runner_processes(str(out)) == []
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_two_patients_are_refused_unless_a_research_override_is_recorded(server, crops, tmp_path):
    scene, nodes = _scene_with_inputs(crops)
    hierarchy.place_in_study(scene, "PAT-A", "1.2.1", [nodes["T1"]])
    study_b = hierarchy.place_in_study(scene, "PAT-B", "1.2.2", [nodes["T2"], nodes["FLAIR"]])
    client = MedSynthClient(server)
    model = model_choices(client.synthesis_models())["linear"]
    workflow = SynthesisWorkflow(scene, client, temp_root=str(tmp_path))
    inputs = {"T1": nodes["T1"], "T2": nodes["T2"]}
    with pytest.raises(StudyMismatch, match="T1: patient Patient PAT-A .*T2: patient Patient PAT-B"):
        workflow.synthesize(inputs, model, "FLAIR")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3 and list(tmp_path.iterdir()) == []
    result = workflow.synthesize(inputs, model, "FLAIR", allow_mixed_studies=True)
    recorded = json.loads(mrml_io.attributes(result)[ATTR_MIXED_STUDIES])
    assert "PAT-A" in recorded["T1"] and "PAT-B" in recorded["T2"]
    assert hierarchy.study_item(result) == hierarchy.study_item(nodes["T1"]) != study_b  # beside the first input


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_a_second_image_of_the_answer_becomes_a_marked_node_in_the_study(crops, tmp_path):
    """When the server's answer carries a further image (an uncertainty map), it lands beside the result."""
    from MedSynthLib.workflow import SynthesisJob

    scene, nodes = _scene_with_inputs(crops)
    study = hierarchy.place_in_study(scene, "PAT-07", "1.2.826.7", nodes.values())
    folder = tmp_path / "job"
    folder.mkdir()
    for name in ("result", "uncertainty"):
        shutil.copy(crops / "sub01_FLAIR.nii.gz", folder / f"{name}.nii.gz")
    job = SynthesisJob("synnet", "FLAIR", ["T1", "T2"], {c: nodes[c].GetID() for c in ("T1", "T2")},
                       {c: nodes[c].GetName() for c in ("T1", "T2")}, None, folder,
                       result_path=str(folder / "result.nii.gz"),
                       extras={"uncertainty": str(folder / "uncertainty.nii.gz")})
    result = SynthesisWorkflow(scene, None).finish(job)
    maps = [n for n in (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(5))
            if n.GetAttribute(ATTR_OUTPUT) == "uncertainty"]
    assert len(maps) == 1 and maps[0].GetName().startswith("FLAIR uncertainty (synthetic, synnet, ")
    assert maps[0].GetAttribute(ATTR_SYNTHETIC) == "true" and hierarchy.study_item(maps[0]) == study
    assert hierarchy.study_item(result) == study and not folder.exists()


def test_compare_layout_puts_acquired_and_synthetic_side_by_side_linked():
    scene = slicer.vtkMRMLScene()
    layout = slicer.vtkMRMLLayoutNode()
    scene.AddNode(layout)
    composites = {}
    for view in ("Red", "Yellow", "Green"):
        composites[view] = slicer.vtkMRMLSliceCompositeNode()
        composites[view].SetLayoutName(view)
        scene.AddNode(composites[view])
    acquired, synthetic = slicer.vtkMRMLScalarVolumeNode(), slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(acquired)
    scene.AddNode(synthetic)
    mrml_io.compare_layout(scene, acquired, synthetic)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert composites["Red"].GetBackgroundVolumeID() == acquired.GetID()
    assert composites["Yellow"].GetBackgroundVolumeID() == synthetic.GetID()
    assert composites["Red"].GetLinkedControl() and composites["Yellow"].GetLinkedControl()
    assert composites["Green"].GetBackgroundVolumeID() is None


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_send_study_uploads_exactly_the_listed_acquired_volumes(server, crops):
    scene, nodes = _scene_with_inputs(crops)
    client = MedSynthClient(server)
    plan = upload_plan({"T1": nodes["T1"], "T2": nodes["T2"]}, study_id="slicer_test01")
    assert plan.describe() == [f"sub01_{c} as slicer_test01_{c}.nii.gz ({c}; 80x96x24 voxels of 1 x 1 x 1 mm)"
                               for c in ("T1", "T2")]
    assert plan.send(client) == ["slicer_test01_T1", "slicer_test01_T2"]
    listed = client._json(client._request("GET", "/datastore/", params={"output": "all"}))
    assert {"slicer_test01_T1", "slicer_test01_T2"} <= set(listed["objects"])
    result = SynthesisWorkflow(scene, client).synthesize({"T1": nodes["T1"], "T2": nodes["T2"]},
                                                         model_choices(client.synthesis_models())["linear"], "FLAIR")
    with pytest.raises(ValueError, match="synthetic: only acquired volumes"):
        upload_plan({"T1": nodes["T1"], "FLAIR": result})


# ---- the module's own Logic class (MedSynth.py) with slicer-core ------------------------------------------------
@pytest.fixture
def medsynth_module(monkeypatch):
    """Import MedSynth.py outside Slicer: slicer-core gives MRML and slicer.util; the GUI-only modules it imports
    (qt, slicer.ScriptedLoadableModule) are stand-ins, which the Logic never uses."""
    import types
    import unittest

    gui = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    gui.ScriptedLoadableModule = gui.ScriptedLoadableModuleWidget = gui.ScriptedLoadableModuleLogic = _Base
    class _Test(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    gui.ScriptedLoadableModuleTest = _Test
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", gui)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.delitem(sys.modules, "MedSynth", raising=False)
    import MedSynth

    yield MedSynth
    sys.modules.pop("MedSynth", None)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_module_logic_connects_prefills_and_synthesises(medsynth_module, server, crops):
    scene = slicer.mrmlScene
    nodes = {c: mrml_io.load_volume_file(str(crops / f"sub01_{c}.nii.gz"), scene, f"sub01_{c}")
             for c in ("T1", "T2", "FLAIR")}
    logic = medsynth_module.MedSynthLogic()
    models = logic.connect(server)
    assert list(models) == ["linear"] and set(models["linear"].targets) == {"FLAIR", "T2"}
    chosen = logic.prefillNodes(scene)
    assert {c: n.GetID() for c, n in chosen.items()} == {c: n.GetID() for c, n in nodes.items()}
    assert "validation PSNR" in models["linear"].summary() and "trained on" in models["linear"].summary()
    result = logic.synthesize({"T1": chosen["T1"], "T2": chosen["T2"]}, "linear", "FLAIR")
    _check_result(result, nodes, "linear", logic.client.address)
    assert "FLAIR" not in {c for c, n in logic.prefillNodes(scene).items() if n.GetID() == result.GetID()}
    text, _, active = logic.trainingProgress("linear")
    assert not active and text.startswith("No training")
    with pytest.raises(ValueError, match="unknown model"):
        logic.synthesize({"T1": chosen["T1"]}, "nomodel", "FLAIR")


def test_module_self_test_runs_outside_slicer(medsynth_module):
    """MedSynthTest, the self-test run inside Slicer, here on slicer-core (its local synthesis is what
    test_local_mode_without_a_server does on real data; its server part needs MEDSYNTH_TEST_SERVER)."""
    test = medsynth_module.MedSynthTest("runTest")
    for name in ("test_names_and_inputs", "test_one_patient_per_synthesis", "test_mrml_round_trip",
                 "test_server_synthesis"):
        test.setUp()
        getattr(test, name)()


def test_a_model_with_nothing_trained_yet_is_not_offered():
    assert model_choices({"synnet": {"type": "synthesis", "targets": [], "checkpoints": {}}}) == {}
