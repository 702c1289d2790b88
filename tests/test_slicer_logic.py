"""The Slicer extension's logic outside Slicer: MedSynthLib's pure rules, and the MRML-level workflow with PyPI's
slicer-core (vtkMRMLScene, vtkMRMLScalarVolumeNode, vtkMRMLVolumeArchetypeStorageNode) against a real server and in
local mode, on real crops of ../shared/data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import SHARED
from server_fixture import SLICER_MODULE_DIR, import_medsynth_lib, running_server, write_crops

import_medsynth_lib()
from MedSynthLib.client import MedSynthClient  # noqa: E402
from MedSynthLib.logic import (ATTR_INPUTS, ATTR_MODEL, ATTR_SERVER, ATTR_SYNTHETIC, ATTR_TIME,  # noqa: E402
                               BackgroundTask, VolumeInfo, choose_inputs, describe_training, model_choices, prefill,
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


def test_result_name_window_level_and_training_text():
    assert result_node_name("FLAIR", "linear") == "FLAIR (synthetic, linear)"
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


def test_contrast_rules_load_from_the_source_tree_without_medsynth_app(tmp_path):
    # Slicer's Python without medsynth_app: MedSynthLib.names loads medsynth_app/contrasts.py by path.
    code = ("import sys; import MedSynthLib.names as n; "
            "print(n.contrasts.ORIGIN); print(n.parse_name('sub01_t1ce.nii.gz')); "
            "print('medsynth_app' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(SLICER_MODULE_DIR)
    # -S: no site-packages, so an installed medsynth_app (editable install) stays out of reach, as in Slicer.
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("source tree:") and out[0].endswith("medsynth_app/contrasts.py")
    assert out[1] == "ParsedName(prefix='sub01', contrast='T1C')"
    assert out[2] == "False"


def test_lib_imports_neither_slicer_nor_qt():
    for path in (SLICER_MODULE_DIR / "MedSynthLib").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if path.name == "mrml_io.py" and stripped == "import slicer  # noqa: WPS433 - lazily: this package must import without Slicer":
                continue
            assert not stripped.startswith(("import slicer", "from slicer", "import qt", "from qt", "import ctk",
                                            "from PySide", "from PyQt")), f"{path.name}: {line}"


# ---- MRML with slicer-core ---------------------------------------------------------------------------------------
slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScalarVolumeNode"):
    pytest.skip("slicer-core MRML classes are not installed", allow_module_level=True)
from MedSynthLib import mrml_io  # noqa: E402
from MedSynthLib.workflow import SynthesisWorkflow  # noqa: E402


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    return write_crops(SHARED, tmp_path_factory.mktemp("datastore"))


@pytest.fixture(scope="module")
def server(crops, tmp_path_factory):
    pytest.importorskip("monailabel")
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


def _check_result(result, nodes, model, server_text):
    assert result.GetName() == result_node_name("FLAIR", model) == f"FLAIR (synthetic, {model})"
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
    before = {c: _fingerprint(n) for c, n in nodes.items()}
    client = MedSynthClient(server)
    model = model_choices(client.synthesis_models())["linear"]
    workflow = SynthesisWorkflow(scene, client, temp_root=str(tmp_path))
    progress = []
    result = workflow.synthesize({"T1": nodes["T1"], "T2": nodes["T2"], "FLAIR": None}, model, "FLAIR",
                                 report=lambda f, m: progress.append(f))
    _check_result(result, nodes, "linear", client.address)
    assert json.loads(result.GetAttribute("MedSynth.Inputs")) == {"T1": "sub01_T1", "T2": "sub01_T2"}
    assert result.GetAttribute("MedSynth.Checkpoint") == "linear_T1+T2_to_FLAIR.pt"
    assert {c: _fingerprint(n) for c, n in nodes.items()} == before  # inputs untouched
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4
    assert list(tmp_path.iterdir()) == []  # temporary files removed
    assert progress == sorted(progress)

    # The asynchronous path the Widget uses: prepare now, request in a thread, finish in the polling thread.
    done, errors = [], []
    task = workflow.start({"T1": nodes["T1"], "T2": nodes["T2"]}, model, "FLAIR",
                          on_done=done.append, on_error=lambda e, t: errors.append(t))
    assert task.wait(120) and not errors, errors
    _check_result(done[0], nodes, "linear", client.address)
    assert done[0].GetID() != result.GetID()
    assert list(tmp_path.iterdir()) == []

    # A synthetic node is never offered as an input again.
    infos = [VolumeInfo(n.GetID(), n.GetName(), mrml_io.attributes(n).get(ATTR_SYNTHETIC) == "true")
             for n in (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                       for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))]
    assert prefill(infos)["FLAIR"] == nodes["FLAIR"].GetID()


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
    pytest.importorskip("medsynth_app.pipeline")
    from MedSynthLib.local import local_available, local_models

    assert local_available()
    model = model_choices(local_models())["linear"]
    scene, nodes = _scene_with_inputs(crops)
    result = SynthesisWorkflow(scene, None, temp_root=str(tmp_path)).synthesize(
        {"T1": nodes["T1"], "T2": nodes["T2"]}, model, "FLAIR")
    _check_result(result, nodes, "linear", "local")
    assert list(tmp_path.iterdir()) == []


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
    result = logic.synthesize({"T1": chosen["T1"], "T2": chosen["T2"]}, "linear", "FLAIR")
    _check_result(result, nodes, "linear", logic.client.address)
    assert "FLAIR" not in {c for c, n in logic.prefillNodes(scene).items() if n.GetID() == result.GetID()}
    text, _, active = logic.trainingProgress("linear")
    assert not active and text.startswith("No training")
    with pytest.raises(ValueError, match="unknown model"):
        logic.synthesize({"T1": chosen["T1"]}, "nomodel", "FLAIR")


def test_module_self_test_runs_outside_slicer(medsynth_module):
    """MedSynthTest's server-free parts (its local-mode part is covered by test_local_mode_without_a_server)."""
    test = medsynth_module.MedSynthTest("runTest")
    test.setUp()
    test.test_names_and_inputs()
    test.setUp()
    test.test_mrml_round_trip()


# ---- the Widget's control flow, with PythonQt-like stand-ins for the Qt widgets ----------------------------------
class _FakeWidget:
    """Enough of a PythonQt widget for MedSynthWidget: properties as attributes, connect/emit, combo and selector
    methods. The real .ui is checked by tests/test_slicer_ui.py."""

    def __init__(self, name, cls):
        self.name, self.cls = name, cls
        self.text, self.toolTip, self.enabled, self.checked = "", "", True, False
        self.items, self._index, self._node, self._value, self._slots, self._blocked = [], -1, None, 0, {}, False

    def connect(self, signal, slot):
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def emit(self, signal, *args):
        if not self._blocked:
            for slot in self._slots.get(signal, []):
                slot(*args)

    def blockSignals(self, value):
        self._blocked = value

    def setStyleSheet(self, style):
        self.style = style

    # QProgressBar
    def setValue(self, value):
        self._value = value

    def value(self):
        return self._value

    # QComboBox
    def clear(self):
        self.items, self._index = [], -1
        self.emit("currentIndexChanged", -1)

    def addItem(self, text):
        self.items.append(text)
        if self._index < 0:
            self.setCurrentIndex(0)

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        self._index = index if 0 <= index < len(self.items) else -1
        self.emit("currentIndexChanged", self._index)

    @property
    def currentText(self):
        return self.items[self._index] if self._index >= 0 else ""

    # qMRMLNodeComboBox
    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        self._node = node
        self.emit("currentNodeChanged", node)


@pytest.fixture
def widget_module(medsynth_module, monkeypatch):
    import types
    import xml.etree.ElementTree as ET

    ui_file = SLICER_MODULE_DIR / "Resources" / "UI" / "MedSynth.ui"
    widgets = {w.get("name"): _FakeWidget(w.get("name"), w.get("class")) for w in ET.parse(ui_file).iter("widget")}
    widgets["MedSynth"].setMRMLScene = lambda scene: None
    shown = []

    class Settings:
        store = {}

        def value(self, key, default=None):
            return self.store.get(key, default)

        def setValue(self, key, value):
            self.store[key] = value

    class Timer:
        def setInterval(self, ms):
            pass

        def connect(self, signal, slot):
            pass

        def start(self):
            pass

        def stop(self):
            pass

        @staticmethod
        def singleShot(ms, slot):
            slot()

    qt = sys.modules["qt"]
    qt.QSettings, qt.QTimer = Settings, Timer

    class WidgetBase:
        def __init__(self, parent=None):
            pass

        def setup(self):
            self.layout = types.SimpleNamespace(addWidget=lambda w: None)

        def resourcePath(self, name):
            return str(SLICER_MODULE_DIR / "Resources" / name)

    monkeypatch.setattr(medsynth_module, "ScriptedLoadableModuleWidget", WidgetBase)
    medsynth_module.MedSynthWidget.__bases__ = (WidgetBase, medsynth_module.VTKObservationMixin)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: widgets["MedSynth"])
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda w: types.SimpleNamespace(**widgets))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: shown.append(kw), raising=False)
    return medsynth_module, widgets, shown


def _pump(widget, seconds=120):
    import time

    deadline = time.time() + seconds
    while (widget.task is not None or widget.pending) and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    assert widget.task is None and not widget.pending, "background work did not finish"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_widget_flow_connect_prefill_synthesize(widget_module, server, crops):
    module, ui, shown = widget_module
    widget = module.MedSynthWidget()
    widget.setup()
    scene = slicer.mrmlScene
    nodes = {c: mrml_io.load_volume_file(str(crops / f"sub01_{c}.nii.gz"), scene, f"sub01_{c}")
             for c in ("T1", "T2", "FLAIR")}
    widget.onPrefill()
    assert {c: ui[f"{c.lower()}Selector"].currentNode() for c in ("T1", "T2", "FLAIR")} == nodes
    assert not ui["synthesizeButton"].enabled and "connect" in ui["synthesizeButton"].toolTip

    ui["serverAddressEdit"].text = server
    widget.onConnect()
    _pump(widget)
    assert ui["modelComboBox"].items == ["linear"], ui["statusLabel"].text
    assert set(ui["targetComboBox"].items) == {"FLAIR", "T2"}
    ui["targetComboBox"].setCurrentIndex(ui["targetComboBox"].findText("FLAIR"))
    assert ui["synthesizeButton"].text == "Synthesize FLAIR" and ui["synthesizeButton"].enabled
    assert not ui["flairSelector"].enabled  # the target is not an input
    assert not ui["startTrainingButton"].enabled or "linear" in widget.logic.info.get("trainers", {})

    widget.onSynthesize()
    assert ui["cancelButton"].enabled
    _pump(widget)
    assert ui["statusLabel"].text.startswith('Created "FLAIR (synthetic, linear)" from T1+T2'), ui["statusLabel"].text
    assert ui["progressBar"].value() == 100 and not ui["cancelButton"].enabled
    result = shown[-1]["background"]
    assert result.GetName() == "FLAIR (synthetic, linear)" and result.GetAttribute(ATTR_SYNTHETIC) == "true"
    assert ui["flairSelector"].currentNode() is nodes["FLAIR"]  # the synthetic node is never pre-filled

    ui["t2Selector"].setCurrentNode(None)
    assert not ui["synthesizeButton"].enabled and "missing T2" in ui["synthesizeButton"].toolTip
    widget.cleanup()


def test_a_model_with_nothing_trained_yet_is_not_offered():
    assert model_choices({"synnet": {"type": "synthesis", "targets": [], "checkpoints": {}}}) == {}
