"""MedSynth: synthesise a missing MRI contrast of the loaded study as a new volume node.

T1 and T2 are loaded; pick them, choose FLAIR, click "Synthesize FLAIR": a new volume "FLAIR (synthetic, linear)"
appears beside the inputs, computed by a MedSynth server (MONAI Label app ``apps/medsynth``) or, in local mode, by
``medsynth_app`` in Slicer's own Python. The Widget is thin over the Logic; the Logic is thin over ``MedSynthLib``,
which holds everything that does not need Slicer's GUI (and is tested outside Slicer).
"""
import json
import logging
import os
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedSynthLib import hierarchy, mrml_io
from MedSynthLib.client import MedSynthClient, MedSynthError
from MedSynthLib.local import TORCH_MISSING, install_plan, local_installed, local_models_process, torch_installed
from MedSynthLib.logic import (ATTR_SYNTHETIC, INPUT_CONTRASTS, BackgroundTask, VolumeInfo, check_one_study,
                               choose_inputs, describe_training, is_synthetic, model_choices, prefill)
from MedSynthLib.study import compare_partner, upload_plan
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
            "it is not an acquired image and must not be read as one. The inputs must be of one patient and study; "
            "the result is put in that study of the subject hierarchy.")
        self.parent.acknowledgementText = "Uses MONAI Label's REST API and the MedSynth library."


#
# Widget
#
class MedSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.task = None  # the running synthesis or upload (MedSynthLib.logic.BackgroundTask)
        self.pending = []  # short background requests (connect, training)
        self.statusRequest = None  # the one outstanding training status request
        self.timer = None
        self.trainingTimer = None
        self.started = None  # time.monotonic() when the running task started
        self.stage = ""
        self.lastResult = None
        self._updatingGUI = False

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
        self.updateLocalMode(settings.value(SETTINGS_LOCAL, "false") == "true")

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onRefreshTraining)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverAddressEdit.connect("returnPressed()", self.onConnect)
        self.ui.localModeCheckBox.connect("toggled(bool)", self.onLocalToggled)
        self.ui.installLocalButton.connect("clicked(bool)", self.onInstallLocal)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.targetComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.ui.prefillButton.connect("clicked(bool)", self.onPrefill)
        self.ui.mixedStudiesCheckBox.connect("toggled(bool)", self.onInputsChanged)
        for selector in self.selectors.values():
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSelectorChanged)
        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesize)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.uploadButton.connect("clicked(bool)", self.onUpload)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneChanged)
        self.ui.progressBar.setValue(0)
        self.ui.trainingProgressBar.setValue(0)
        self.setStatus("Not connected. Enter the server address and click Connect.")
        self.updateGUIFromParameterNode()
        if not self.currentInputs():
            self.onPrefill()
        self.updateButtons()
        if self.ui.localModeCheckBox.checked:
            self.onLocalToggled(True)

    def cleanup(self):
        self.removeObservers()
        for timer in (self.timer, self.trainingTimer):
            if timer is not None:
                timer.stop()
        for task in [self.task, self.statusRequest, *self.pending]:
            if task is not None:
                task.cancel()

    # ---- helpers -----------------------------------------------------------------------------------------------
    def setStatus(self, text, error=False):
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        if error:
            logging.warning("MedSynth: %s", text)

    def showError(self, what, err, details=""):
        """A dialog with the message and, under Details, the traceback; the status line keeps the message."""
        self.setStatus(f"{what}: {err}", error=True)
        slicer.util.errorDisplay(f"{what}:\n\n{err}", windowTitle="MedSynth", detailedText=details or str(err))

    def busy(self):
        return self.task is not None and not self.task.finished

    def runInBackground(self, work, onDone, what, onFinally=None):
        """Short server requests (connect, training) off the GUI thread; callbacks run in the GUI thread."""
        def done(value):
            if onFinally:
                onFinally()
            onDone(value)

        def fail(err, text):
            if onFinally:
                onFinally()
            self.showError(what, err, text)

        task = BackgroundTask(lambda report, cancel: work(), on_done=done, on_error=fail, name=f"medsynth-{what}")
        self.pending.append(task.start())
        self.timer.start()
        return task

    def onPoll(self):
        for task in list(self.pending):
            if task.poll():
                self.pending.remove(task)
        if self.statusRequest is not None and self.statusRequest.poll():
            self.statusRequest = None
        if self.task is not None:
            if self.task.poll():
                self.task = None
                self.started = None
                self.updateButtons()
            elif self.started is not None:
                self.setStatus(f"{self.stage} ({time.monotonic() - self.started:.0f} s)")
        if self.task is None and self.statusRequest is None and not self.pending:
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
                self.ui.synthesizeButton.toolTip = f"send {'+'.join(used)} to {model.name}"
                if not self.ui.mixedStudiesCheckBox.checked:
                    check_one_study(hierarchy.origins({c: self.currentInputs()[c] for c in used}))
            except ValueError as err:
                reason = str(err)
        for contrast, selector in self.selectors.items():  # an input that is the target would be ignored
            selector.enabled = contrast != target
        self.ui.synthesizeButton.enabled = not reason and not self.busy()
        if reason:
            self.ui.synthesizeButton.toolTip = reason
        self.ui.cancelButton.enabled = self.busy()
        self.ui.compareButton.enabled = self.lastResult is not None and self.lastResult.GetScene() is not None
        remote = self.logic.client is not None
        self.ui.uploadButton.enabled = remote and bool(self.currentInputs()) and not self.busy()
        training = model is not None and self.logic.trainingAvailable(model.name)
        self.ui.startTrainingButton.enabled = training and bool(target)
        self.ui.stopTrainingButton.enabled = training

    # ---- parameter node (selections kept with the scene) -------------------------------------------------------
    def updateParameterNodeFromGUI(self):
        if self._updatingGUI:
            return
        node = self.logic.getParameterNode()
        for contrast, selector in self.selectors.items():
            selected = selector.currentNode()
            node.SetNodeReferenceID(f"Input{contrast}", selected.GetID() if selected else None)
        node.SetParameter("Model", self.ui.modelComboBox.currentText)
        node.SetParameter("Target", self.currentTarget())
        node.SetParameter("AllowMixedStudies", "true" if self.ui.mixedStudiesCheckBox.checked else "false")

    def updateGUIFromParameterNode(self):
        node = self.logic.getParameterNode()
        self._updatingGUI = True
        try:
            for contrast, selector in self.selectors.items():
                selector.setCurrentNode(node.GetNodeReference(f"Input{contrast}"))
            self.ui.mixedStudiesCheckBox.checked = node.GetParameter("AllowMixedStudies") == "true"
        finally:
            self._updatingGUI = False

    def onSceneChanged(self, caller=None, event=None):
        """A scene closed or loaded: the selections are those its parameter node holds."""
        if self.lastResult is not None and self.lastResult.GetScene() is None:
            self.lastResult = None
        self.updateGUIFromParameterNode()
        self.updateButtons()

    # ---- connection --------------------------------------------------------------------------------------------
    def updateLocalMode(self, wanted):
        installed, torch = local_installed(), torch_installed()
        self.ui.localModeCheckBox.enabled = installed and torch
        self.ui.localModeCheckBox.toolTip = (
            "Synthesise with the installed checkpoints in a separate PythonSlicer process" if installed and torch
            else TORCH_MISSING if installed else "Install local mode first (the MedSynth library is not installed)")
        self.ui.localModeCheckBox.checked = wanted and installed and torch
        self.ui.serverAddressEdit.enabled = not self.ui.localModeCheckBox.checked

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
                             "Cannot connect", onFinally=enable)

    def onLocalToggled(self, checked):
        qt.QSettings().setValue(SETTINGS_LOCAL, "true" if checked else "false")
        self.ui.serverAddressEdit.enabled = not checked
        if checked:  # listing the checkpoints imports torch: in a separate process, off the GUI thread
            self.setStatus("Local mode: reading the installed checkpoints in a PythonSlicer process...")
            self.runInBackground(self.logic.useLocal, lambda models: self.showModels(models, "Local mode (no server)"),
                                 "Local mode")
        else:
            self.logic.models = {}
            self.showModels({}, "Not connected. Enter the server address and click Connect.")

    def onInstallLocal(self, *args):
        """The library into Slicer's Python, without touching a package Slicer ships; torch via PyTorch Utils."""
        if not torch_installed():
            slicer.util.errorDisplay(TORCH_MISSING, windowTitle="MedSynth")
            return
        source = qt.QFileDialog.getExistingDirectory(None, "The MedSynth repository (the folder holding setup.py)")
        if not source:
            return
        plan = install_plan()
        text = (f"Install into Slicer's Python:\n- the MedSynth library from {source} (without its dependencies)\n"
                + "".join(f"- {r}\n" for r in plan)
                + "\nPackages already installed (numpy, pydicom, SimpleITK, ...) are left as they are.")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MedSynth: install local mode"):
            return
        try:
            slicer.util.pip_install(["--no-deps", source])
            if plan:
                slicer.util.pip_install(plan)
        except Exception as err:  # noqa: BLE001 - pip's own failure, shown as it is
            self.showError("Installing local mode failed", err)
            return
        self.updateLocalMode(True)
        self.setStatus("Local mode installed.")

    def showModels(self, models, status):
        current = self.ui.modelComboBox.currentText or self.logic.getParameterNode().GetParameter("Model")
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for index, (name, model) in enumerate(models.items()):
            self.ui.modelComboBox.addItem(name)
            self.ui.modelComboBox.setItemData(index, model.summary(), qt.Qt.ToolTipRole)
        index = self.ui.modelComboBox.findText(current)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.modelComboBox.blockSignals(False)
        self.setStatus(f"{status}: {len(models)} synthesis model(s)" if models else status,
                       error=not models and self.logic.client is not None)
        self.onModelChanged()

    def onModelChanged(self, *args):
        model = self.currentModel()
        current = self.currentTarget() or self.logic.getParameterNode().GetParameter("Target")
        self.ui.targetComboBox.blockSignals(True)
        self.ui.targetComboBox.clear()
        for target in (model.targets if model else []):
            self.ui.targetComboBox.addItem(target)
        index = self.ui.targetComboBox.findText(current)
        self.ui.targetComboBox.setCurrentIndex(index if index >= 0 else self.defaultTarget(model))
        self.ui.targetComboBox.blockSignals(False)
        self.ui.modelInfoLabel.text = model.summary() if model else ""
        self.onTargetChanged()

    def onTargetChanged(self, *args):
        self.updateParameterNodeFromGUI()
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
        if caller.IsImporting():  # a scene being loaded brings its own selections (parameter node)
            return
        if isinstance(node, slicer.vtkMRMLScalarVolumeNode) and not is_synthetic(mrml_io.attributes(node)):
            # the node's name is set once it is loaded; pre-fill after the current event
            qt.QTimer.singleShot(0, lambda: self.onPrefill(onlyEmpty=True))

    def onSelectorChanged(self, node=None):
        if node is not None and is_synthetic(mrml_io.attributes(node)):  # never an input, even when picked
            self.fillSelectors({c: None for c, s in self.selectors.items() if s.currentNode() is node}, False)
            self.setStatus(f"{node.GetName()} is synthetic: choose an acquired volume as input.", error=True)
        elif not self._updatingGUI and node is not None:  # the user's pick: fill the others from its study only
            self.fillSelectors(self.logic.prefillNodes(slicer.mrmlScene, within=node), onlyEmpty=True)
        self.onInputsChanged()

    def onInputsChanged(self, *args):
        self.updateParameterNodeFromGUI()
        self.updateButtons()

    def onPrefill(self, *args, onlyEmpty=False):
        picked = next(iter(self.currentInputs().values()), None)
        self.fillSelectors(self.logic.prefillNodes(slicer.mrmlScene, within=picked), onlyEmpty)
        self.onInputsChanged()

    def fillSelectors(self, chosen, onlyEmpty):
        self._updatingGUI = True
        try:
            for contrast, node in chosen.items():
                selector = self.selectors.get(contrast)
                if selector is not None and (not onlyEmpty or selector.currentNode() is None):
                    selector.setCurrentNode(node)
        finally:
            self._updatingGUI = False

    # ---- synthesis ---------------------------------------------------------------------------------------------
    def startTask(self, task, stage):
        self.task, self.stage, self.started = task, stage, time.monotonic()
        self.ui.progressBar.setRange(0, 0)  # busy: MONAI Label reports no progress of an inference
        self.timer.start()
        self.updateButtons()

    def stopProgress(self, value):
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(value)

    def onSynthesize(self, *args):
        model, target = self.currentModel(), self.currentTarget()
        try:
            task = self.logic.startSynthesis(self.currentInputs(), model.name, target, onProgress=self.onProgress,
                                             onDone=self.onSynthesized, onError=self.onFailed,
                                             onCancelled=self.onCancelled,
                                             allowMixedStudies=self.ui.mixedStudiesCheckBox.checked)
        except (ValueError, MedSynthError, OSError) as err:
            self.showError(f"Cannot synthesise {target}", err)
            return
        self.startTask(task, f"synthesising {target}...")

    def onProgress(self, fraction, message):
        if message:
            self.stage = message
        if fraction is not None:
            self.stopProgress(int(round(100 * fraction)))

    def onSynthesized(self, node):
        self.stopProgress(100)
        self.lastResult = node
        self.logic.showResult(node)
        inputs = json.loads(node.GetAttribute("MedSynth.Inputs") or "{}")
        elapsed = time.monotonic() - self.started if self.started else 0
        self.setStatus(f"Created \"{node.GetName()}\" from {'+'.join(inputs)} in {elapsed:.0f} s. "
                       "It is synthetic, not acquired.")

    def onFailed(self, err, text):
        self.stopProgress(0)
        self.showError("Synthesis failed", err, text)

    def onCancelled(self):
        self.stopProgress(0)
        self.setStatus("Cancelled (a server inference finishes on the server and its answer is discarded; a local "
                       "process is stopped).")

    def onCancel(self, *args):
        if self.task is not None:
            self.task.cancel()
            self.stage = "cancelling..."

    def onCompare(self, *args):
        if self.lastResult is not None:
            acquired = self.logic.compare(self.lastResult, self.currentInputs())
            self.setStatus(f"Left: {acquired.GetName()} (acquired); right: {self.lastResult.GetName()} (synthetic); "
                           "views linked.")

    # ---- datastore ---------------------------------------------------------------------------------------------
    def onUpload(self, *args):
        inputs = self.currentInputs()
        try:
            plan = self.logic.uploadPlan(inputs)
        except ValueError as err:
            self.showError("Cannot send the study", err)
            return
        text = (f"Send to the datastore of {self.logic.client.address}, for retraining:\n"
                + "".join(f"- {line}\n" for line in plan.describe())
                + "\nThe images go as loaded, header geometry included; de-identify them first if the server is "
                  "outside the hospital network.")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MedSynth: send study"):
            self.setStatus("Nothing sent.")
            return
        task = self.logic.startUpload(plan, onProgress=self.onProgress, onDone=self.onUploaded,
                                      onError=lambda err, text: (self.stopProgress(0),
                                                                 self.showError("Sending failed", err, text)),
                                      onCancelled=self.onCancelled)
        self.startTask(task, "sending the study...")

    def onUploaded(self, ids):
        self.stopProgress(100)
        self.setStatus(f"Sent {len(ids)} image(s) to the datastore: {', '.join(ids)}.")

    # ---- training ----------------------------------------------------------------------------------------------
    def onStartTraining(self, *args):
        model, target = self.currentModel(), self.currentTarget()
        self.ui.trainingProgressLabel.text = f"Starting training of {model.name} for {target}..."
        self.runInBackground(lambda: self.logic.startTraining(model.name, target),
                             lambda answer: (self.trainingTimer.start(), self.onRefreshTraining()), "Training")

    def onStopTraining(self, *args):
        self.runInBackground(self.logic.stopTraining,
                             lambda answer: (self.trainingTimer.stop(), self.onRefreshTraining()), "Training")

    def onRefreshTraining(self):
        model = self.currentModel()
        if model is None or self.statusRequest is not None:  # one status request at a time
            return

        def show(progress):
            text, fraction, active = progress
            self.ui.trainingProgressLabel.text = text
            self.ui.trainingProgressBar.setValue(0 if fraction is None else int(round(100 * fraction)))
            if not active:
                self.trainingTimer.stop()

        def fail(err, text):
            self.ui.trainingProgressLabel.text = f"Training status: {err}"

        self.statusRequest = BackgroundTask(lambda report, cancel: self.logic.trainingProgress(model.name),
                                            on_done=show, on_error=fail, name="medsynth-training-status").start()
        self.timer.start()


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
        """The installed checkpoints, listed by a PythonSlicer process (Slicer's own process never imports torch)."""
        self.client, self.info = None, {}
        self.models = model_choices(local_models_process())
        return self.models

    def trainingAvailable(self, model):
        return self.client is not None and model in (self.info.get("trainers") or {})

    # ---- inputs ------------------------------------------------------------------------------------------------
    def prefillNodes(self, scene, within=None):
        """contrast -> volume node, by node name (library rules), all of one study: that of the node ``within``,
        else that of the latest loaded volume; synthetic volumes and label maps skipped."""
        nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        infos = [VolumeInfo(n.GetID(), n.GetName() or "", is_synthetic(mrml_io.attributes(n)),
                            n.IsA("vtkMRMLLabelMapVolumeNode"), hierarchy.origin_of(n)) for n in nodes]
        anchor = hierarchy.origin_of(within) if within is not None else None
        return {c: scene.GetNodeByID(node_id) for c, node_id in prefill(infos, INPUT_CONTRASTS, anchor).items()}

    # ---- synthesis ---------------------------------------------------------------------------------------------
    def workflow(self):
        return SynthesisWorkflow(slicer.mrmlScene, self.client)

    def _model(self, name):
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; connect first (models: {', '.join(self.models) or 'none'})")
        return self.models[name]

    def synthesize(self, inputs, model, target, allowMixedStudies=False):
        """Synchronous: contrast -> input node; returns the new synthetic volume node."""
        return self.workflow().synthesize(inputs, self._model(model), target, allow_mixed_studies=allowMixedStudies)

    def startSynthesis(self, inputs, model, target, onProgress=None, onDone=None, onError=None, onCancelled=None,
                       allowMixedStudies=False):
        """Asynchronous: returns a BackgroundTask; the caller polls it (Widget: QTimer) to get the callbacks."""
        return self.workflow().start(inputs, self._model(model), target, onProgress, onDone, onError, onCancelled,
                                     allow_mixed_studies=allowMixedStudies)

    @staticmethod
    def showResult(node):
        slicer.util.setSliceViewerLayers(background=node, fit=True)

    @staticmethod
    def compare(synthetic, inputs):
        """Side-by-side linked views: the acquired target of the study when loaded, else the first input, on the
        left; ``synthetic`` on the right. Returns the acquired node shown."""
        acquired = compare_partner(synthetic, inputs)
        mrml_io.compare_layout(synthetic.GetScene(), acquired, synthetic)
        return acquired

    # ---- datastore ---------------------------------------------------------------------------------------------
    def uploadPlan(self, inputs):
        """What "send this study" would upload (acquired inputs of one study only; never a synthetic volume)."""
        if self.client is None:
            raise ValueError("sending a study needs a server")
        return upload_plan(inputs)

    def startUpload(self, plan, onProgress=None, onDone=None, onError=None, onCancelled=None):
        client = self.client
        return BackgroundTask(lambda report, cancel: plan.send(client, report, cancel), onProgress, onDone, onError,
                              onCancelled, name="medsynth-upload").start()

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
    """Runnable inside Slicer (Reload and Test, or ``Slicer --python-code "..."``, see docs/slicer.md). Always: the
    name rules, the input choice, one patient per synthesis in the subject hierarchy and an MRML round trip keeping
    geometry. With MEDSYNTH_TEST_SERVER (http://host:port) and MEDSYNTH_TEST_DATA set: a full synthesis against that
    server; with local mode installed: a full local synthesis of a simulated subject."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        """Reload and Test; ``slicer.testing.runUnitTest`` (ctest) runs the test_ methods one by one instead."""
        for test in (self.test_names_and_inputs, self.test_one_patient_per_synthesis, self.test_mrml_round_trip,
                     self.test_server_synthesis, self.test_local_synthesis):
            self.setUp()
            test()

    def test_names_and_inputs(self):
        self.delayDisplay("Name rules and input choice")
        from MedSynthLib.logic import contrast_of, result_node_name

        self.assertEqual(contrast_of("sub-01_T2w"), "T2")
        self.assertEqual(contrast_of("3DFLAIR"), "FLAIR")
        self.assertIsNone(contrast_of("brainmask"))
        model = model_choices({"m": {"type": "synthesis", "targets": ["FLAIR"], "checkpoints": {"FLAIR": [
            {"checkpoint": "m.pt", "inputs": ["T1", "T2"], "required_inputs": ["T1", "T2"], "optional_inputs": []}]}}})
        self.assertEqual(choose_inputs(model["m"], "FLAIR", ["T2", "T1", "PD"]), ["T1", "T2"])
        self.assertRegex(result_node_name("FLAIR", "m"), r"^FLAIR \(synthetic, m, \d\d:\d\d:\d\d\)$")
        self.delayDisplay("ok")

    def _volume(self, name, array, spacing=(1.0, 1.2, 2.0), origin=(10.0, -20.0, 30.0)):
        node = slicer.util.addVolumeFromArray(array, name=name)
        node.SetSpacing(*spacing)
        node.SetOrigin(*origin)
        return node

    def test_one_patient_per_synthesis(self):
        self.delayDisplay("One patient per synthesis")
        import numpy as np
        from MedSynthLib.logic import StudyMismatch

        array = np.ones((4, 5, 6), np.float32)
        a = {c: self._volume(c, array) for c in ("T1", "T2")}
        b = {c: self._volume(c, array) for c in ("T1", "T2", "FLAIR")}
        hierarchy.place_in_study(slicer.mrmlScene, "PAT-A", "1.2.3.1", a.values())
        hierarchy.place_in_study(slicer.mrmlScene, "PAT-B", "1.2.3.2", b.values())
        logic = MedSynthLogic()
        chosen = logic.prefillNodes(slicer.mrmlScene, within=a["T1"])  # only the first pick's study
        self.assertEqual({c: n.GetID() for c, n in chosen.items()}, {c: n.GetID() for c, n in a.items()})
        latest = logic.prefillNodes(slicer.mrmlScene)  # nothing picked: the latest study
        self.assertEqual({c: n.GetID() for c, n in latest.items()}, {c: n.GetID() for c, n in b.items()})
        with self.assertRaisesRegex(StudyMismatch, "PAT-A.*PAT-B"):
            check_one_study(hierarchy.origins({"T1": a["T1"], "T2": b["T2"]}))
        self.delayDisplay("ok")

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

        self.assertTrue(result.GetName().startswith(f"FLAIR (synthetic, {model}, "), result.GetName())
        self.assertEqual(result.GetAttribute(ATTR_SYNTHETIC), "true")
        self.assertNotIn(result.GetID(), [n.GetID() for n in inputs.values()])
        np.testing.assert_allclose(mrml_io.ijk_to_ras(result), mrml_io.ijk_to_ras(inputs["T1"]), atol=1e-4)
        self.assertEqual(mrml_io.voxels(result).shape, mrml_io.voxels(inputs["T1"]).shape)
        shn = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shn.GetItemParent(hierarchy.item_of(result)),
                         shn.GetItemParent(hierarchy.item_of(inputs["T1"])))

    def test_server_synthesis(self):
        address = os.environ.get("MEDSYNTH_TEST_SERVER")  # http://host:port
        data = os.environ.get("MEDSYNTH_TEST_DATA")  # a folder with T1.nii.gz, T2.nii.gz
        if not address or not data:
            self.delayDisplay("MEDSYNTH_TEST_SERVER or MEDSYNTH_TEST_DATA not set: server synthesis not tested")
            return
        self.delayDisplay(f"Synthesis against {address}")
        logic = MedSynthLogic()
        models = logic.connect(address)
        model = next(name for name, m in models.items() if "FLAIR" in m.targets)
        inputs = {c: slicer.util.loadVolume(os.path.join(data, f"{c}.nii.gz")) for c in ("T1", "T2")}
        outcome = {}
        task = logic.startSynthesis(inputs, model, "FLAIR", onDone=lambda node: outcome.setdefault("node", node),
                                    onError=lambda err, text: outcome.setdefault("error", text))
        while not task.poll():
            slicer.app.processEvents()
        self.assertNotIn("error", outcome, outcome.get("error"))
        self._check_result(outcome["node"], inputs, model)
        self.delayDisplay("ok")

    def test_local_synthesis(self):
        if not (local_installed() and torch_installed()):
            self.delayDisplay("local mode is not installed: local synthesis not tested")
            return
        self.delayDisplay("Local synthesis of a simulated subject (separate PythonSlicer process)")
        import subprocess
        import tempfile

        from MedSynthLib.local import python_executable

        folder = tempfile.mkdtemp()  # the simulated subject is written by the library in a PythonSlicer process
        code = ("import sys; from medsynth_app.simulation import simulate_cohort; "
                "print(simulate_cohort(sys.argv[1], n_subjects=1, seed=3)[0])")
        subject = subprocess.run([python_executable(), "-c", code, folder], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
        logic = MedSynthLogic()
        models = logic.useLocal()
        model = next((name for name, m in models.items() if "FLAIR" in m.targets), None)
        if model is None:
            self.delayDisplay("no installed checkpoint synthesises FLAIR: local test skipped")
            return
        inputs = {c: mrml_io.load_volume_file(os.path.join(subject, f"{c}.nii.gz"), slicer.mrmlScene, c)
                  for c in ("T1", "T2")}
        result = logic.synthesize(inputs, model, "FLAIR")
        self._check_result(result, inputs, model)
        self.delayDisplay("ok")
