"""The MedSynth module's Widget on real Qt (PySide6, offscreen) outside 3D Slicer.

What 3D Slicer gives a scripted module, made from real parts:
- the real ``.ui``, loaded by ``QUiLoader`` with registered stand-ins for Slicer's custom widgets: ``qMRMLWidget``,
  ``qMRMLNodeComboBox`` (listing the volume nodes of a slicer-core ``vtkMRMLScene``, following its node events) and
  ``ctkCollapsibleButton``; the ``.ui``'s own ``<connections>`` are made as Designer declares them (QUiLoader's own
  attempt at them logs "No such signal ...(vtkMRMLScene*)": a VTK pointer is a PyObject for the stand-ins);
- PythonQt's conventions over real widgets (:class:`PythonQtProxy`): Qt properties as attributes, and
  ``connect("signal(args)", slot)`` resolved against the object's real signals -- an unknown or misspelt signal
  raises, where a hand-written fake would accept anything;
- a ``qt`` module (real QTimer, QSettings in a temporary file, QFileDialog, Qt), ``slicer.util`` dialogs as real
  QMessageBoxes, and ``slicer.ScriptedLoadableModule`` base classes with Slicer's parameter node rule.
"""
from __future__ import annotations

import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal
from PySide6.QtTest import QTest
from PySide6.QtUiTools import QUiLoader
from shiboken6 import isValid

VTK_POINTER = re.compile(r"\bvtk\w+\s*\*")


def signal_signatures(obj: QtCore.QObject) -> List[str]:
    meta = obj.metaObject()
    return [bytes(meta.method(i).methodSignature()).decode() for i in range(meta.methodCount())
            if meta.method(i).methodType() == QtCore.QMetaMethod.Signal]


def strict_connect(obj: QtCore.QObject, signature: str, slot: Callable) -> None:
    """PythonQt's ``obj.connect("clicked(bool)", slot)`` on a real QObject: the signature must be one of the
    object's signals (a VTK pointer argument is the stand-ins' PyObject), else AttributeError."""
    wanted = VTK_POINTER.sub("PyObject", signature.replace(" ", ""))
    if wanted not in signal_signatures(obj):
        raise AttributeError(f"{type(obj).__name__} {obj.objectName()!r} has no signal {signature!r}; its signals: "
                             f"{', '.join(signal_signatures(obj))}")
    if not QtCore.QObject.connect(obj, QtCore.SIGNAL(wanted), slot):
        raise RuntimeError(f"cannot connect {signature} of {obj.objectName()!r}")


class PythonQtProxy:
    """A real widget seen as PythonQt shows it to Python: Qt properties read and written as attributes (a
    non-existent property is an error), methods as they are, string-signature ``connect``."""

    def __init__(self, widget: QtCore.QObject):
        object.__setattr__(self, "widget", widget)

    def _is_property(self, name: str) -> bool:
        return self.widget.metaObject().indexOfProperty(name) >= 0

    def __getattr__(self, name: str) -> Any:
        if name == "connect":
            return lambda signature, slot: strict_connect(self.widget, signature, slot)
        if self._is_property(name):
            return self.widget.property(name)
        return getattr(self.widget, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not self._is_property(name):
            raise AttributeError(f"{type(self.widget).__name__} {self.widget.objectName()!r} has no property {name!r}")
        if not self.widget.setProperty(name, value) and self.widget.property(name) != value:
            raise AttributeError(f"cannot set {name!r} of {self.widget.objectName()!r} to {value!r}")


# ---- stand-ins for Slicer's custom widgets -----------------------------------------------------------------------
class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801 - the class name the .ui uses
    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class ctkCollapsibleButton(QtWidgets.QWidget):  # noqa: N801
    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text, self._collapsed = "", False

    def _get_text(self):
        return self._text

    def _set_text(self, value):
        self._text = value

    def _get_collapsed(self):
        return self._collapsed

    def _set_collapsed(self, value):
        self._collapsed = bool(value)
        self.contentsCollapsed.emit(self._collapsed)

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, _get_collapsed, _set_collapsed)


class qMRMLNodeComboBox(QtWidgets.QComboBox):  # noqa: N801
    """The scene's nodes of ``nodeTypes`` (exactly those classes unless ``showChildNodeTypes``), "None" first when
    ``noneEnabled``; follows node additions, removals and renames of the scene; ``currentNodeChanged(vtkMRMLNode*)``
    carries the node."""

    currentNodeChanged = Signal(object)
    nodeAdded = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._observers = None, []
        self._types: List[str] = []
        self._children, self._none = True, False
        self._add = self._remove = self._rename = False
        self.currentIndexChanged.connect(lambda index: self.currentNodeChanged.emit(self.currentNode()))

    def _flag(name):  # noqa: N805 - a property factory in the class body
        return Property(bool, lambda self: getattr(self, f"_{name}"),
                        lambda self, value: setattr(self, f"_{name}", bool(value)))

    showChildNodeTypes = _flag("children")
    noneEnabled = _flag("none")
    addEnabled = _flag("add")
    removeEnabled = _flag("remove")
    renameEnabled = _flag("rename")
    del _flag

    def _get_types(self):
        return list(self._types)

    def _set_types(self, value):
        self._types = list(value)
        self._refresh()

    nodeTypes = Property("QStringList", _get_types, _set_types)

    def setMRMLScene(self, scene) -> None:
        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._scene = scene
        self._observers = [scene.AddObserver(event, lambda *args: QtCore.QTimer.singleShot(0, self._refresh_later))
                           for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent)]
        self._refresh()

    def _refresh_later(self) -> None:
        if isValid(self):  # a scene may outlive the panel that observed it
            self._refresh()

    def _accepts(self, node) -> bool:
        return any(node.IsA(t) if self._children else node.GetClassName() == t for t in self._types)

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = (self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes()))
        return [n for n in nodes if self._accepts(n)]

    def _refresh(self) -> None:
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        if self._none:
            self.addItem("None", None)
        for node in self._nodes():
            self.addItem(node.GetName() or node.GetID(), node.GetID())
        index = self.findData(current) if current is not None else (0 if self._none else -1)
        self.setCurrentIndex(max(index, 0) if self.count() else -1)
        self.blockSignals(False)
        if self.currentData() != current:
            self.currentNodeChanged.emit(self.currentNode())

    def currentNode(self):
        node_id = self.currentData()
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def setCurrentNode(self, node) -> None:
        self._refresh_if_missing(node)
        self.setCurrentIndex(self.findData(node.GetID()) if node is not None else (0 if self._none else -1))

    def _refresh_if_missing(self, node) -> None:
        if node is not None and self.findData(node.GetID()) < 0:
            self.blockSignals(True)
            self._refresh()
            self.blockSignals(False)


CUSTOM_WIDGETS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton)


def load_ui(path: str) -> QtWidgets.QWidget:
    """The .ui with the stand-ins, its ``<connections>`` made strictly (as Designer declares them)."""
    loader = QUiLoader()
    for cls in CUSTOM_WIDGETS:
        loader.registerCustomWidget(cls)
    handle = QtCore.QFile(path)
    assert handle.open(QtCore.QFile.ReadOnly)
    widget = loader.load(handle)
    handle.close()
    if widget is None:
        raise RuntimeError(loader.errorString())
    for connection in ET.parse(path).getroot().iter("connection"):
        sender, receiver = (_find(widget, connection.findtext(k)) for k in ("sender", "receiver"))
        slot_name = connection.findtext("slot").split("(")[0]
        strict_connect(sender, connection.findtext("signal"), getattr(receiver, slot_name))
    return widget


def _find(root: QtWidgets.QWidget, name: str) -> QtWidgets.QWidget:
    found = root if root.objectName() == name else root.findChild(QtCore.QObject, name)
    if found is None:
        raise LookupError(f"no widget {name!r} in the .ui")
    return found


def child_widget_variables(widget: QtWidgets.QWidget) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{child.objectName(): PythonQtProxy(child)
                                    for child in widget.findChildren(QtWidgets.QWidget) if child.objectName()})


def wait_until(condition: Callable[[], Any], seconds: float = 120.0, step_ms: int = 50) -> Any:
    """Run the real Qt event loop (timers, queued calls) until ``condition()`` holds."""
    deadline = QtCore.QDeadlineTimer(int(seconds * 1000))
    while not deadline.hasExpired():
        value = condition()
        if value:
            return value
        QTest.qWait(step_ms)
    raise AssertionError(f"timed out after {seconds} s waiting for {condition}")


# ---- the slicer / qt modules a scripted module imports -----------------------------------------------------------
class Dialogs:
    """slicer.util's dialogs as real, non-modal QMessageBoxes; confirmations answer ``self.answer``."""

    def __init__(self):
        self.shown: List[QtWidgets.QMessageBox] = []
        self.confirmations: List[str] = []
        self.answer = True

    def error(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):  # noqa: N803
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Critical, windowTitle or "", text)
        if kwargs.get("detailedText"):
            box.setDetailedText(kwargs["detailedText"])
        box.show()
        self.shown.append(box)

    def confirm(self, text, windowTitle=None, parent=None, **kwargs):  # noqa: N803
        self.confirmations.append(text)
        return self.answer


def install(slicer, module_dir: Path, settings_file: Path, dialogs: Dialogs, monkeypatch) -> types.ModuleType:
    """Make ``import MedSynth`` work on real Qt: returns the imported module."""
    qt = types.ModuleType("qt")

    class QTimer(QtCore.QTimer):
        def connect(self, signature, slot):
            strict_connect(self, signature, slot)

    class QSettings(QtCore.QSettings):
        def __init__(self):
            super().__init__(str(settings_file), QtCore.QSettings.IniFormat)

    class QFileDialog:
        chosen = ""

        @classmethod
        def getExistingDirectory(cls, *args):  # noqa: N802
            return cls.chosen

    qt.QTimer, qt.QSettings, qt.QFileDialog, qt.Qt = QTimer, QSettings, QFileDialog, QtCore.Qt
    monkeypatch.setitem(sys.modules, "qt", qt)

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or QtWidgets.QWidget()
            self.moduleName = type(self).__name__[: -len("Widget")]

        def setup(self):
            self.layout = QtWidgets.QVBoxLayout(self.parent)

        def resourcePath(self, name):  # noqa: N802
            return str(module_dir / "Resources" / name)

    class ScriptedLoadableModuleLogic:
        """Slicer's rule: one vtkMRMLScriptedModuleNode per module, a singleton of the scene, saved with it."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self):  # noqa: N802
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):  # noqa: N802
            QTest.qWait(1)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    monkeypatch.setattr(slicer.util, "loadUI", load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", child_widget_variables)
    monkeypatch.setattr(slicer.util, "errorDisplay", dialogs.error)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", dialogs.confirm)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kwargs: None)
    sys.modules.pop("MedSynth", None)
    if str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))
    import MedSynth

    return MedSynth


def selector_pick(proxy: PythonQtProxy, node: Optional[Any]) -> None:
    """What a user does: open the combo box and choose the node's row (None: the "None" row)."""
    combo: qMRMLNodeComboBox = proxy.widget
    index = combo.findData(node.GetID()) if node is not None else 0
    assert index >= 0, f"{node.GetName()} is not offered by {combo.objectName()}"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def click(proxy: PythonQtProxy) -> None:
    QTest.mouseClick(proxy.widget, QtCore.Qt.LeftButton)


def offered(proxy: PythonQtProxy) -> Dict[str, Optional[str]]:
    combo = proxy.widget
    return {combo.itemText(i): combo.itemData(i) for i in range(combo.count())}
