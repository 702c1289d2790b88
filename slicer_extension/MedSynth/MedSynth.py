"""MedSynth: synthesise a missing MRI contrast of the loaded study as a new volume node.

T1 and T2 are loaded; pick them, choose FLAIR, click "Synthesize FLAIR": a new volume "FLAIR (synthetic, linear)"
appears beside the inputs, computed by a MedSynth server (MONAI Label app ``apps/medsynth``) or, in local mode, by
``medsynth_app`` in Slicer's own Python. The Widget is thin over the Logic; the Logic is thin over ``MedSynthLib``,
which holds everything that does not need Slicer's GUI (and is tested outside Slicer).
"""
import json
import logging
import os

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedSynthLib import mrml_io
from MedSynthLib.client import MedSynthClient, MedSynthError
from MedSynthLib.local import local_available, local_installed, local_models
from MedSynthLib.logic import (ATTR_SYNTHETIC, INPUT_CONTRASTS, BackgroundTask, VolumeInfo, choose_inputs,
                               describe_training, is_synthetic, model_choices, prefill)
from MedSynthLib.workflow import SynthesisWorkflow

SETTINGS_ADDRESS = "MedSynth/serverAddress"
SETTINGS_LOCAL = "MedSynth/localMode"
DEFAULT_ADDRESS = "http://127.0.0.1:8000"
POLL_MS = 100
TRAINING_POLL_MS = 5000


#
# Module
#
class MedSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSynth"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSynth project"]
        self.parent.helpText = (
            "Synthesise a missing MRI contrast (T1, T1C, T2, PD, FLAIR) from the loaded ones with a MedSynth "
            "server or locally. The result is a new volume marked synthetic (node attribute MedSynth.Synthetic); "
            "it is not an acquired image and must not be read as one.")
        self.parent.acknowledgementText = "Uses MONAI Label's REST API and the MedSynth library."


#
# Widget
#
class MedSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.task = None  # the running synthesis (MedSynthLib.logic.BackgroundTask)
        self.pending = []  # short background requests (connect, training)
        self.timer = None
        self.trainingTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSynthLogic()
        self.selectors = {"T1": self.ui.t1Selector, "T1C": self.ui.t1cSelector, "T2": self.ui.t2Selector,
                          "PD": self.ui.pdSelector, "FLAIR": self.ui.flairSelector}

        settings = qt.QSettings()
        self.ui.serverAddressEdit.text = settings.value(SETTINGS_ADDRESS, DEFAULT_ADDRESS)
        installed = local_installed()
        self.ui.localModeCheckBox.enabled = installed
        self.ui.localModeCheckBox.toolTip = ("Synthesise in Slicer's Python with the installed checkpoints"
                                             if installed else "medsynth_app is not importable in Slicer's Python")
        if installed and settings.value(SETTINGS_LOCAL, "false") == "true":
            self.ui.localModeCheckBox.checked = True
            self.ui.serverAddressEdit.enabled = False

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onRefreshTraining)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverAddressEdit.connect("returnPressed()", self.onConnect)
        self.ui.localModeCheckBox.connect("toggled(bool)", self.onLocalToggled)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        self.ui.prefillButton.connect("clicked(bool)", self.onPrefill)
        for selector in self.selectors.values():
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesize)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.progressBar.setValue(0)
        self.setStatus("Not connected. Enter the server address and click Connect.")
        self.onPrefill()
        self.updateButtons()
        if self.ui.localModeCheckBox.checked:
            self.onLocalToggled(True)

    def cleanup(self):
        self.removeObservers()
        for timer in (self.timer, self.trainingTimer):
            if timer is not None:
                timer.stop()
        for task in [self.task, *self.pending]:
            if task is not None:
                task.cancel()

    # ---- helpers -----------------------------------------------------------------------------------------------
    def setStatus(self, text, error=False):
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        if error:
            logging.warning("MedSynth: %s", text)

    def busy(self):
        return self.task is not None and not self.task.finished

    def runInBackground(self, work, onDone, what, onFinally=None):
        """Short server requests (connect, training) off the GUI thread too; callbacks run in the GUI thread."""
        def done(value):
            if onFinally:
                onFinally()
            onDone(value)

        def fail(err, text):
            logging.debug(text)
            if onFinally:
                onFinally()
            self.setStatus(f"{what}: {err}", error=True)

        task = BackgroundTask(lambda report, cancel: work(), on_done=done, on_error=fail, name=f"medsynth-{what}")
        self.pending.append(task.start())
        self.timer.start()
        return task

    def onPoll(self):
        for task in list(self.pending):
            if task.poll():
                self.pending.remove(task)
        if self.task is not None and self.task.poll():
            self.task = None
            self.updateButtons()
        if self.task is None and not self.pending:
            self.timer.stop()

    def currentModel(self):
        return self.logic.models.get(self.ui.modelComboBox.currentText)

    def currentTarget(self):
        return self.ui.targetComboBox.currentText

    def currentInputs(self):
        return {c: s.currentNode() for c, s in self.selectors.items() if s.currentNode() is not None}

    def updateButtons(self, *args):
        model, target = self.currentModel(), self.currentTarget()
        self.ui.synthesizeButton.text = f"Synthesize {target}" if target else "Synthesize"
        reason = ""
        if model is None:
            reason = "connect to a server (or choose local mode) first"
        elif not target:
            reason = "choose the contrast to synthesise"
        else:
            try:
                used = choose_inputs(model, target, self.currentInputs())
                reason = ""
                self.ui.synthesizeButton.toolTip = f"send {'+'.join(used)} to {model.name}"
            except ValueError as err:
                reason = str(err)
        for contrast, selector in self.selectors.items():  # an input that is the target would be ignored
            selector.enabled = contrast != target
        self.ui.synthesizeButton.enabled = not reason and not self.busy()
        if reason:
            self.ui.synthesizeButton.toolTip = reason
        self.ui.cancelButton.enabled = self.busy()
        training = model is not None and self.logic.trainingAvailable(model.name)
        self.ui.startTrainingButton.enabled = training and bool(target)
        self.ui.stopTrainingButton.enabled = training

    # ---- connection --------------------------------------------------------------------------------------------
    def onConnect(self, *args):
        if self.ui.localModeCheckBox.checked:
            self.onLocalToggled(True)
            return
        address = self.ui.serverAddressEdit.text.strip()
        qt.QSettings().setValue(SETTINGS_ADDRESS, address)
        self.setStatus(f"Connecting to {address}...")
        self.ui.connectButton.enabled = False

        def enable():
            self.ui.connectButton.enabled = True

        self.runInBackground(lambda: self.logic.connect(address),
                             lambda models: self.showModels(models, f"Connected to {self.logic.client.address}"),
                             "connect", onFinally=enable)

    def onLocalToggled(self, checked):
        qt.QSettings().setValue(SETTINGS_LOCAL, "true" if checked else "false")
        self.ui.serverAddressEdit.enabled = not checked
        if checked:  # importing medsynth_app (torch...) and reading the checkpoints takes seconds: not here
            self.setStatus("Local mode: loading medsynth_app and the installed checkpoints...")
            self.runInBackground(self.logic.useLocal, lambda models: self.showModels(models, "Local mode (no server)"),
                                 "local mode")
        else:
            self.logic.models = {}
            self.showModels({}, "Not connected. Enter the server address and click Connect.")

    def showModels(self, models, status):
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for name in models:
            self.ui.modelComboBox.addItem(name)
        index = self.ui.modelComboBox.findText(current)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.modelComboBox.blockSignals(False)
        self.setStatus(f"{status}: {len(models)} synthesis model(s)" if models else status,
                       error=not models and self.logic.client is not None)
        self.onModelChanged()

    def onModelChanged(self, *args):
        model = self.currentModel()
        current = self.currentTarget()
        self.ui.targetComboBox.blockSignals(True)
        self.ui.targetComboBox.clear()
        for target in (model.targets if model else []):
            self.ui.targetComboBox.addItem(target)
        index = self.ui.targetComboBox.findText(current)
        self.ui.targetComboBox.setCurrentIndex(index if index >= 0 else self.defaultTarget(model))
        self.ui.targetComboBox.blockSignals(False)
        self.ui.modelComboBox.toolTip = model.description if model else ""
        self.updateButtons()

    def defaultTarget(self, model):
        """The first target the loaded volumes can make (and that is not loaded itself)."""
        if model is None:
            return -1
        inputs = self.currentInputs()
        for index, target in enumerate(model.targets):
            if target in inputs:
                continue
            try:
                choose_inputs(model, target, inputs)
                return index
            except ValueError:
                continue
        return 0

    # ---- selectors ---------------------------------------------------------------------------------------------
    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if isinstance(node, slicer.vtkMRMLScalarVolumeNode) and not is_synthetic(mrml_io.attributes(node)):
            # the node's name is set once it is loaded; pre-fill after the current event
            qt.QTimer.singleShot(0, lambda: self.onPrefill(onlyEmpty=True))

    def onPrefill(self, *args, onlyEmpty=False):
        chosen = self.logic.prefillNodes(slicer.mrmlScene)
        for contrast, node in chosen.items():
            selector = self.selectors.get(contrast)
            if selector is not None and (not onlyEmpty or selector.currentNode() is None):
                selector.setCurrentNode(node)
        self.updateButtons()

    # ---- synthesis ---------------------------------------------------------------------------------------------
    def onSynthesize(self, *args):
        model, target = self.currentModel(), self.currentTarget()
        self.ui.progressBar.setValue(0)
        try:
            self.task = self.logic.startSynthesis(self.currentInputs(), model.name, target,
                                                  onProgress=self.onProgress, onDone=self.onSynthesized,
                                                  onError=self.onFailed, onCancelled=self.onCancelled)
        except (ValueError, MedSynthError, OSError) as err:
            self.setStatus(str(err), error=True)
            return
        self.timer.start()
        self.updateButtons()

    def onProgress(self, fraction, message):
        if fraction is not None:
            self.ui.progressBar.setValue(int(round(100 * fraction)))
        if message:
            self.setStatus(message)

    def onSynthesized(self, node):
        self.ui.progressBar.setValue(100)
        self.logic.showResult(node)
        inputs = json.loads(node.GetAttribute("MedSynth.Inputs") or "{}")
        self.setStatus(f"Created \"{node.GetName()}\" from {'+'.join(inputs)}. It is synthetic, not acquired.")

    def onFailed(self, err, text):
        logging.debug(text)
        self.ui.progressBar.setValue(0)
        self.setStatus(str(err), error=True)

    def onCancelled(self):
        self.ui.progressBar.setValue(0)
        self.setStatus("Cancelled (a running server inference finishes on the server; its result is discarded).")

    def onCancel(self, *args):
        if self.task is not None:
            self.task.cancel()
            self.setStatus("Cancelling...")

    # ---- training ----------------------------------------------------------------------------------------------
    def onStartTraining(self, *args):
        model, target = self.currentModel(), self.currentTarget()
        self.ui.trainingProgressLabel.text = f"Starting training of {model.name} for {target}..."
        self.runInBackground(lambda: self.logic.startTraining(model.name, target),
                             lambda answer: (self.trainingTimer.start(), self.onRefreshTraining()), "training")

    def onStopTraining(self, *args):
        self.runInBackground(self.logic.stopTraining,
                             lambda answer: (self.trainingTimer.stop(), self.onRefreshTraining()), "training")

    def onRefreshTraining(self):
        model = self.currentModel()
        if model is None:
            return

        def show(progress):
            text, fraction, active = progress
            self.ui.trainingProgressLabel.text = text if fraction is None else f"{text} ({100 * fraction:.0f} %)"
            if not active:
                self.trainingTimer.stop()

        self.runInBackground(lambda: self.logic.trainingProgress(model.name), show, "training status")


#
# Logic
#
class MedSynthLogic(ScriptedLoadableModuleLogic):
    """No Qt here: the Widget owns timers and widgets. Network and MRML work is delegated to MedSynthLib."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.info = {}
        self.models = {}  # name -> MedSynthLib.logic.ModelChoice

    # ---- models ------------------------------------------------------------------------------------------------
    def connect(self, address, token=None):
        client = MedSynthClient(address, token=token)
        info = client.info()
        models = model_choices(client.synthesis_models(info))
        self.client, self.info, self.models = client, info, models
        return models

    def useLocal(self):
        if not local_available():
            raise RuntimeError("medsynth_app is not importable in Slicer's Python")
        self.client, self.info = None, {}
        self.models = model_choices(local_models())
        return self.models

    def trainingAvailable(self, model):
        return self.client is not None and model in (self.info.get("trainers") or {})

    # ---- inputs ------------------------------------------------------------------------------------------------
    def prefillNodes(self, scene):
        """contrast -> volume node, by node name (library rules); synthetic volumes and label maps skipped."""
        nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        infos = [VolumeInfo(n.GetID(), n.GetName() or "", is_synthetic(mrml_io.attributes(n)),
                            n.IsA("vtkMRMLLabelMapVolumeNode")) for n in nodes]
        return {c: scene.GetNodeByID(node_id) for c, node_id in prefill(infos, INPUT_CONTRASTS).items()}

    # ---- synthesis ---------------------------------------------------------------------------------------------
    def workflow(self):
        return SynthesisWorkflow(slicer.mrmlScene, self.client)

    def _model(self, name):
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; connect first (models: {', '.join(self.models) or 'none'})")
        return self.models[name]

    def synthesize(self, inputs, model, target):
        """Synchronous: contrast -> input node; returns the new synthetic volume node."""
        return self.workflow().synthesize(inputs, self._model(model), target)

    def startSynthesis(self, inputs, model, target, onProgress=None, onDone=None, onError=None, onCancelled=None):
        """Asynchronous: returns a BackgroundTask; the caller polls it (Widget: QTimer) to get the callbacks."""
        return self.workflow().start(inputs, self._model(model), target, onProgress, onDone, onError, onCancelled)

    @staticmethod
    def showResult(node):
        slicer.util.setSliceViewerLayers(background=node, fit=True)

    # ---- training ----------------------------------------------------------------------------------------------
    def _server(self):
        if self.client is None:
            raise MedSynthError("training needs a server (not available in local mode)")
        return self.client

    def startTraining(self, model, target):
        return self._server().start_training(model, {"target": target})

    def trainingStatus(self):
        return self._server().training_status()

    def trainingProgress(self, model):
        """(text, fraction or None, active) from the server's training task and the model's train stats."""
        client = self._server()
        task = client.training_status()
        stats = (client.info().get("train_stats") or {}).get(model) or {}
        return describe_training(task, stats)

    def stopTraining(self):
        return self._server().stop_training()


#
# Test
#
class MedSynthTest(ScriptedLoadableModuleTest):
    """Runnable inside Slicer (Reload and Test). Always: the name rules, the input choice and an MRML round trip
    keeping geometry. With MEDSYNTH_TEST_SERVER (http://host:port) set: a full synthesis against that server; in
    local mode (medsynth_app importable): a full local synthesis of a simulated subject."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_names_and_inputs()
        self.setUp()
        self.test_mrml_round_trip()
        if os.environ.get("MEDSYNTH_TEST_SERVER"):
            self.setUp()
            self.test_server_synthesis(os.environ["MEDSYNTH_TEST_SERVER"])
        if local_available():
            self.setUp()
            self.test_local_synthesis()

    def test_names_and_inputs(self):
        self.delayDisplay("Name rules and input choice")
        from MedSynthLib.logic import contrast_of, result_node_name

        self.assertEqual(contrast_of("sub-01_T2w"), "T2")
        self.assertEqual(contrast_of("3DFLAIR"), "FLAIR")
        self.assertIsNone(contrast_of("brainmask"))
        model = model_choices({"m": {"type": "synthesis", "targets": ["FLAIR"], "checkpoints": {"FLAIR": [
            {"checkpoint": "m.pt", "inputs": ["T1", "T2"], "required_inputs": ["T1", "T2"], "optional_inputs": []}]}}})
        self.assertEqual(choose_inputs(model["m"], "FLAIR", ["T2", "T1", "PD"]), ["T1", "T2"])
        self.assertEqual(result_node_name("FLAIR", "m"), "FLAIR (synthetic, m)")
        self.delayDisplay("ok")

    def _volume(self, name, array, spacing=(1.0, 1.2, 2.0), origin=(10.0, -20.0, 30.0)):
        node = slicer.util.addVolumeFromArray(array, name=name)
        node.SetSpacing(*spacing)
        node.SetOrigin(*origin)
        return node

    def test_mrml_round_trip(self):
        self.delayDisplay("MRML round trip keeps geometry")
        import numpy as np
        import tempfile

        array = np.random.default_rng(0).random((8, 10, 12)).astype(np.float32)
        node = self._volume("T1", array)
        folder = tempfile.mkdtemp()
        path = mrml_io.write_volume(node, os.path.join(folder, "T1.nii.gz"))
        copy = mrml_io.read_volume(path, slicer.mrmlScene, "copy")
        np.testing.assert_allclose(mrml_io.ijk_to_ras(copy), mrml_io.ijk_to_ras(node), atol=1e-4)
        np.testing.assert_allclose(mrml_io.voxels(copy), array, atol=1e-6)
        storage = node.GetStorageNode()  # writing an input must not point it at the temporary file
        self.assertTrue(storage is None or storage.GetFileName() != path)
        self.delayDisplay("ok")

    def _check_result(self, result, inputs, model):
        import numpy as np

        self.assertEqual(result.GetName(), f"FLAIR (synthetic, {model})")
        self.assertEqual(result.GetAttribute(ATTR_SYNTHETIC), "true")
        self.assertNotIn(result.GetID(), [n.GetID() for n in inputs.values()])
        np.testing.assert_allclose(mrml_io.ijk_to_ras(result), mrml_io.ijk_to_ras(inputs["T1"]), atol=1e-4)
        self.assertEqual(mrml_io.voxels(result).shape, mrml_io.voxels(inputs["T1"]).shape)

    def test_server_synthesis(self, address):
        self.delayDisplay(f"Synthesis against {address}")
        data = os.environ.get("MEDSYNTH_TEST_DATA")  # a folder with T1.nii.gz, T2.nii.gz
        if not data:
            self.delayDisplay("MEDSYNTH_TEST_DATA not set: server test skipped")
            return
        logic = MedSynthLogic()
        models = logic.connect(address)
        model = next(name for name, m in models.items() if "FLAIR" in m.targets)
        inputs = {c: slicer.util.loadVolume(os.path.join(data, f"{c}.nii.gz")) for c in ("T1", "T2")}
        task = logic.startSynthesis(inputs, model, "FLAIR", onDone=lambda node: setattr(self, "result", node),
                                    onError=lambda err, text: setattr(self, "error", err))
        while not task.poll():
            slicer.app.processEvents()
        self.assertFalse(hasattr(self, "error") and self.error, getattr(self, "error", None))
        self._check_result(self.result, inputs, model)
        self.delayDisplay("ok")

    def test_local_synthesis(self):
        self.delayDisplay("Local synthesis of a simulated subject")
        import tempfile

        from medsynth_app.simulation import simulate_cohort

        folder = simulate_cohort(tempfile.mkdtemp(), n_subjects=1, seed=3)[0]
        logic = MedSynthLogic()
        models = logic.useLocal()
        model = next((name for name, m in models.items() if "FLAIR" in m.targets), None)
        if model is None:
            self.delayDisplay("no installed checkpoint synthesises FLAIR: local test skipped")
            return
        inputs = {c: mrml_io.load_volume_file(str(folder / f"{c}.nii.gz"), slicer.mrmlScene, c) for c in ("T1", "T2")}
        result = logic.synthesize(inputs, model, "FLAIR")
        self._check_result(result, inputs, model)
        self.delayDisplay("ok")
