"""The MedSynth module's panel on real Qt (PySide6, offscreen): the real .ui, the module's own Widget and Logic, a
slicer-core MRML scene with a subject hierarchy, the real Qt event loop, and a real local MONAI Label server (one for
the whole module) on real crops of ../shared/data -- clicked through as a clinician would (tests/slicer_qt_harness.py
says what stands in for 3D Slicer's own parts)."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import SHARED
from server_fixture import (SLICER_MODULE_DIR, copy_app, free_port, import_medsynth_lib, running_server,
                            write_crops)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
try:  # missing test dependencies fail, they do not skip
    from PySide6 import QtWidgets
    import slicer

    slicer.vtkMRMLSubjectHierarchyNode  # noqa: B018 - slicer-core's MRML classes, not another package named slicer
except (ImportError, AttributeError) as err:
    raise ImportError(f"these tests need PySide6-Essentials and slicer-core (pip install PySide6-Essentials "
                      f"slicer-core): {err}") from None

import slicer_qt_harness as harness  # noqa: E402

import_medsynth_lib()
from MedSynthLib import hierarchy, mrml_io  # noqa: E402
from MedSynthLib.logic import ATTR_MIXED_STUDIES, ATTR_SYNTHETIC  # noqa: E402

REPO = SLICER_MODULE_DIR.parents[1]


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    root = write_crops(SHARED, tmp_path_factory.mktemp("datastore"))
    return write_crops(SHARED, root, prefix="sub02_")  # a second study, so that the server can train


@pytest.fixture(scope="module")
def server(crops, tmp_path_factory):
    """One server for the module, on a copy of the app: the training test replaces the copy's weights."""
    app = copy_app(tmp_path_factory.mktemp("app"))
    with running_server(crops, tmp_path_factory.mktemp("server"), app=app) as url:
        yield url


@pytest.fixture
def panel(app, crops, tmp_path, monkeypatch):
    """Two patients loaded (A: T1, T2; B: T1, T2, FLAIR, loaded last), Slicer's views, and the module's panel."""
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    layout = slicer.vtkMRMLLayoutNode()
    scene.AddNode(layout)
    for view in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        scene.AddNode(composite)
    nodes = {}
    for patient, contrasts in (("A", ("T1", "T2")), ("B", ("T1", "T2", "FLAIR"))):
        nodes[patient] = {c: mrml_io.load_volume_file(str(crops / f"sub01_{c}.nii.gz"), scene, c) for c in contrasts}
    studies = {p: hierarchy.place_in_study(scene, f"PAT-{p}", f"1.2.826.{n}", nodes[p].values())
               for n, p in enumerate("AB")}
    dialogs = harness.Dialogs()
    module = harness.install(slicer, SLICER_MODULE_DIR, tmp_path / "settings.ini", dialogs, monkeypatch)
    widget = module.MedSynthWidget()
    widget.setup()
    widget.parent.show()
    yield widget, widget.ui, nodes, studies, dialogs, scene
    widget.cleanup()
    widget.parent.close()
    for box in dialogs.shown:
        box.close()


def _connect(ui, address):
    ui.serverAddressEdit.widget.clear()
    harness.QTest.keyClicks(ui.serverAddressEdit.widget, address)
    harness.click(ui.connectButton)
    harness.wait_until(lambda: ui.modelComboBox.count > 0 or "Cannot connect" in ui.statusLabel.text)


def _volumes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def test_strict_connect_refuses_a_signal_the_widget_does_not_have(app):
    button = harness.PythonQtProxy(QtWidgets.QPushButton())
    button.connect("clicked(bool)", lambda checked: None)
    with pytest.raises(AttributeError, match="no signal 'clickd\\(bool\\)'"):
        button.connect("clickd(bool)", lambda checked: None)
    with pytest.raises(AttributeError, match="no property 'txt'"):
        button.txt = "x"


def test_two_patients_prefill_within_a_study_and_refusal(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    selected = lambda: {c: s.currentNode() for c, s in widget.selectors.items() if s.currentNode()}  # noqa: E731
    assert selected() == nodes["B"]  # nothing picked yet: the latest loaded study, whole
    for selector in widget.selectors.values():
        harness.selector_pick(selector, None)
    harness.selector_pick(ui.t1Selector, nodes["A"]["T1"])  # the first pick: patient A
    assert selected() == nodes["A"]  # T2 of A filled; B's FLAIR is not taken
    assert "FLAIR (synthetic" not in " ".join(harness.offered(ui.flairSelector))

    _connect(ui, server)
    assert [ui.modelComboBox.itemText(i) for i in range(ui.modelComboBox.count)] == ["linear"]
    assert "validation PSNR" in ui.modelInfoLabel.text and "SSIM" in ui.modelInfoLabel.text
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    assert ui.synthesizeButton.enabled and ui.synthesizeButton.text == "Synthesize FLAIR"

    harness.selector_pick(ui.t2Selector, nodes["B"]["T2"])  # a T2 of the other patient
    assert not ui.synthesizeButton.enabled
    assert "not of one patient and study" in ui.synthesizeButton.toolTip
    assert "PAT-A" in ui.synthesizeButton.toolTip and "PAT-B" in ui.synthesizeButton.toolTip
    harness.click(ui.synthesizeButton)  # disabled: nothing happens
    harness.QTest.qWait(200)
    assert len(_volumes(scene)) == 5

    harness.click(ui.mixedStudiesCheckBox)  # the explicit research override
    assert ui.synthesizeButton.enabled
    harness.click(ui.synthesizeButton)
    result = harness.wait_until(lambda: widget.lastResult)
    assert json.loads(result.GetAttribute(ATTR_MIXED_STUDIES)).keys() == {"T1", "T2"}

    # The selections are kept in the scene's parameter node: a new panel on this scene shows them again.
    parameters = widget.logic.getParameterNode()
    assert parameters.GetNodeReferenceID("InputT2") == nodes["B"]["T2"].GetID()
    assert parameters.GetParameter("AllowMixedStudies") == "true" and parameters.GetParameter("Target") == "FLAIR"
    again = type(widget)()
    again.setup()
    assert again.ui.t2Selector.currentNode() is nodes["B"]["T2"] and again.ui.mixedStudiesCheckBox.checked
    again.cleanup()


def test_selections_come_back_with_the_saved_scene(panel, tmp_path):
    widget, ui, nodes, studies, dialogs, scene = panel
    harness.selector_pick(ui.flairSelector, None)
    harness.click(ui.mixedStudiesCheckBox)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene.Clear(0)  # File > Close scene
    harness.QTest.qWait(50)
    assert widget.currentInputs() == {} and not ui.mixedStudiesCheckBox.checked
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Import()  # File > Load scene
    harness.QTest.qWait(50)
    assert {c: n.GetID() for c, n in widget.currentInputs().items()} == {"T1": nodes["B"]["T1"].GetID(),
                                                                         "T2": nodes["B"]["T2"].GetID()}
    assert ui.mixedStudiesCheckBox.checked


def test_synthesis_lands_in_the_study_and_compares_side_by_side(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    harness.selector_pick(ui.flairSelector, None)
    harness.selector_pick(ui.t1Selector, nodes["B"]["T1"])
    _connect(ui, server)
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    assert not ui.compareButton.enabled
    harness.click(ui.synthesizeButton)
    assert ui.cancelButton.enabled and not ui.synthesizeButton.enabled
    assert ui.progressBar.maximum == 0  # busy: MONAI Label reports no progress of an inference
    result = harness.wait_until(lambda: widget.lastResult)
    assert ui.statusLabel.text.startswith(f'Created "{result.GetName()}" from T1+T2 in ')
    assert result.GetName().startswith("FLAIR (synthetic, linear, ") and result.GetAttribute(ATTR_SYNTHETIC) == "true"
    assert hierarchy.study_item(result) == studies["B"]
    assert ui.progressBar.value == 100 and not ui.cancelButton.enabled and ui.synthesizeButton.enabled
    harness.click(ui.prefillButton)  # a synthetic volume is never pre-filled
    assert ui.flairSelector.currentNode() is nodes["B"]["FLAIR"]
    harness.selector_pick(ui.pdSelector, result)  # nor kept when picked by hand
    assert ui.pdSelector.currentNode() is None and "is synthetic: choose an acquired volume" in ui.statusLabel.text

    harness.click(ui.compareButton)
    composites = {c.GetLayoutName(): c for c in (scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                                                 for i in range(3))}
    assert composites["Red"].GetBackgroundVolumeID() == nodes["B"]["FLAIR"].GetID()  # the acquired FLAIR
    assert composites["Yellow"].GetBackgroundVolumeID() == result.GetID()
    assert composites["Red"].GetLinkedControl() == 1
    assert scene.GetNthNodeByClass(0, "vtkMRMLLayoutNode").GetViewArrangement() == \
        slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView


def test_cancel_leaves_no_node(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, server)
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    before = len(_volumes(scene))
    harness.click(ui.synthesizeButton)
    harness.click(ui.cancelButton)
    harness.wait_until(lambda: ui.statusLabel.text.startswith("Cancelled"))
    harness.QTest.qWait(300)
    assert len(_volumes(scene)) == before and widget.lastResult is None
    assert ui.progressBar.value == 0 and ui.synthesizeButton.enabled and not dialogs.shown


def test_errors_are_dialogs_with_details(panel):
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    box = harness.wait_until(lambda: dialogs.shown and dialogs.shown[-1])
    assert box.isVisible() and "Cannot connect" in box.text() and "connection refused" in box.text()
    assert "Traceback" in box.detailedText()
    assert "Cannot connect" in ui.statusLabel.text and ui.connectButton.enabled


def test_a_server_lost_during_synthesis_is_a_dialog_and_no_node(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, server)
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    widget.logic.client.address = f"http://127.0.0.1:{free_port()}"  # the server went away after Connect
    before = len(_volumes(scene))
    harness.click(ui.synthesizeButton)
    box = harness.wait_until(lambda: dialogs.shown and dialogs.shown[-1])
    assert box.text().startswith("Synthesis failed:") and "cannot reach the MedSynth server" in box.text()
    assert "Traceback" in box.detailedText() and "upload_session" in box.detailedText()
    assert len(_volumes(scene)) == before and ui.progressBar.value == 0 and ui.synthesizeButton.enabled


def test_send_study_confirms_exactly_what_goes(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, server)
    dialogs.answer = False
    harness.click(ui.uploadButton)
    listed = [line for line in dialogs.confirmations[-1].splitlines() if line.startswith("- ")]
    assert [line.split(" as ")[0] for line in listed] == ["- T1", "- T2", "- FLAIR"]  # patient B's, nothing else
    assert all(re.search(r"as slicer_[0-9a-f]{8}_(T1|T2|FLAIR)\.nii\.gz \(\w+; 80x96x24 voxels", line)
               for line in listed), listed
    assert ui.statusLabel.text == "Nothing sent."
    dialogs.answer = True
    harness.click(ui.uploadButton)
    harness.wait_until(lambda: ui.statusLabel.text.startswith("Sent 3 image(s)"))
    sent = ui.statusLabel.text.split(": ", 1)[1].rstrip(".").split(", ")
    stored = widget.logic.client._json(widget.logic.client._request("GET", "/datastore/", params={"output": "all"}))
    assert set(sent) <= set(stored["objects"])


def test_training_status_one_request_at_a_time(panel, server):
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, server)
    widget.onRefreshTraining()
    first = widget.statusRequest
    widget.onRefreshTraining()  # while the first is outstanding: no second request
    assert widget.statusRequest is first
    harness.wait_until(lambda: widget.statusRequest is None)
    assert ui.trainingProgressLabel.text.startswith("No training") and ui.trainingProgressBar.value == 0


def test_training_panel_follows_the_servers_progress(panel, server):
    """Last of the server tests: the training replaces the served linear T1+T2 -> FLAIR weights (of the copy)."""
    widget, ui, nodes, studies, dialogs, scene = panel
    _connect(ui, server)
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    assert ui.startTrainingButton.enabled
    harness.click(ui.startTrainingButton)
    seen = set()

    def finished():
        seen.add(ui.trainingProgressLabel.text.split(",")[0])
        return ui.trainingProgressLabel.text.startswith("Training DONE")

    harness.wait_until(finished, seconds=180)
    assert {"Training RUNNING", "Training SUBMITTED"} & seen, seen  # followed while it ran, not only at the end
    assert "epoch 1/1, best validation" in ui.trainingProgressLabel.text and ui.trainingProgressBar.value == 100
    assert "saved version v0001.pt of linear_T1+T2_to_FLAIR.pt" in ui.trainingProgressLabel.text and not dialogs.shown


def test_install_local_mode_asks_first_and_keeps_slicers_packages(panel, monkeypatch):
    widget, ui, nodes, studies, dialogs, scene = panel
    module = sys.modules["MedSynth"]
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: installed.append(requirements), raising=False)
    monkeypatch.setattr(module, "install_plan", lambda: ["monai==1.6.1"])  # as if MONAI were missing
    monkeypatch.setattr(module, "local_models_process", lambda: {})  # local mode is tested below
    sys.modules["qt"].QFileDialog.chosen = str(REPO)
    dialogs.answer = False
    harness.click(ui.installLocalButton)
    text = dialogs.confirmations[-1]
    assert f"the MedSynth library from {REPO} (without its dependencies)" in text and "- monai==1.6.1" in text
    assert "left as they are" in text and installed == []  # nothing without the user's yes
    dialogs.answer = True
    harness.click(ui.installLocalButton)
    assert installed == [["--no-deps", str(REPO)], ["monai==1.6.1"]]

    monkeypatch.setattr(module, "torch_installed", lambda: False)
    harness.click(ui.installLocalButton)
    assert "PyTorch" in dialogs.shown[-1].text() and len(installed) == 2


def test_local_mode_runs_in_a_separate_process_that_cancel_kills(panel):
    widget, ui, nodes, studies, dialogs, scene = panel
    assert ui.localModeCheckBox.enabled, ui.localModeCheckBox.toolTip
    harness.click(ui.localModeCheckBox)
    harness.wait_until(lambda: ui.modelComboBox.count > 0 or dialogs.shown, seconds=180)
    assert not dialogs.shown, dialogs.shown and dialogs.shown[-1].detailedText()
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findText("linear"))
    ui.targetComboBox.setCurrentIndex(ui.targetComboBox.findText("FLAIR"))
    before = len(_volumes(scene))
    harness.click(ui.synthesizeButton)
    runners = harness.wait_until(lambda: _runner_pids(), seconds=60)  # the PythonSlicer process is running
    harness.wait_until(lambda: re.search(r"in a local process\.\.\. \(\d+ s\)$", ui.statusLabel.text), seconds=60)
    harness.click(ui.cancelButton)
    harness.wait_until(lambda: ui.statusLabel.text.startswith("Cancelled"))
    assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in runners)
    assert len(_volumes(scene)) == before and widget.lastResult is None and not dialogs.shown
    assert "validation PSNR" in ui.modelInfoLabel.text  # the local checkpoints' own figures


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _runner_pids():
    from MedSynthLib.local import RUNNER

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(RUNNER) in (entry / "cmdline").read_bytes().decode(errors="replace") \
                    and '"synthesize"' in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(entry.name)
        except OSError:
            continue
    return pids
