"""The Slicer extension's layout: the .ui loads (PySide6's QUiLoader, offscreen) and holds every widget the module
code uses; MedSynth.py has the four scripted-module classes; the extension folder is self-contained (its contrast
rules a byte-equal copy of the library's), its CMakeLists list every script and resource, its index entry is valid,
and its code parses with the Python of the oldest supported Slicer."""
from __future__ import annotations

import ast
import json
import os
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "slicer_extension"
MODULE = EXTENSION / "MedSynth"
UI_FILE = MODULE / "Resources" / "UI" / "MedSynth.ui"
SELECTORS = {"t1Selector": "T1", "t1cSelector": "T1C", "t2Selector": "T2", "pdSelector": "PD", "flairSelector": "FLAIR"}


def _used_ui_names() -> set[str]:
    """Every ``self.ui.<name>`` of MedSynth.py, found in its syntax tree."""
    tree = ast.parse((MODULE / "MedSynth.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


@pytest.fixture(scope="module")
def loaded_ui():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6 import QtCore, QtUiTools, QtWidgets
    except ImportError as err:  # a missing test dependency fails, it does not skip
        pytest.fail(f"these tests need PySide6 (pip install PySide6-Essentials): {err}")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    handle = QtCore.QFile(str(UI_FILE))
    assert handle.open(QtCore.QFile.ReadOnly)
    loader = QtUiTools.QUiLoader()  # ctk/qMRML classes are unknown here: created as their QWidget base class
    widget = loader.load(handle)
    handle.close()
    assert widget is not None, loader.errorString()
    yield widget, QtWidgets
    widget.deleteLater()
    del app


def test_ui_holds_every_widget_the_module_uses(loaded_ui):
    widget, QtWidgets = loaded_ui
    present = {child.objectName() for child in widget.findChildren(QtWidgets.QWidget)}
    used = _used_ui_names()
    assert {"serverAddressEdit", "connectButton", "modelComboBox", "targetComboBox", "synthesizeButton",
            "progressBar", "statusLabel", "cancelButton", "startTrainingButton", "stopTrainingButton",
            "trainingProgressLabel", *SELECTORS} <= used
    assert used - present == set(), f"used by MedSynth.py but missing from the .ui: {sorted(used - present)}"
    assert isinstance(widget.findChild(QtWidgets.QPushButton, "synthesizeButton"), QtWidgets.QPushButton)
    assert isinstance(widget.findChild(QtWidgets.QProgressBar, "progressBar"), QtWidgets.QProgressBar)
    assert isinstance(widget.findChild(QtWidgets.QLineEdit, "serverAddressEdit"), QtWidgets.QLineEdit)


def test_selectors_are_scalar_volume_node_combo_boxes_wired_to_the_scene():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget"
    widgets = {w.get("name"): w for w in root.iter("widget")}
    for name in SELECTORS:
        selector = widgets[name]
        assert selector.get("class") == "qMRMLNodeComboBox"
        props = {p.get("name"): p for p in selector.findall("property")}
        assert [s.text for s in props["nodeTypes"].iter("string")] == ["vtkMRMLScalarVolumeNode"]
        assert props["showChildNodeTypes"].find("bool").text == "false"  # no label maps
        assert props["noneEnabled"].find("bool").text == "true"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert receivers == set(SELECTORS)
    assert widgets["trainingCollapsibleButton"].get("class") == "ctkCollapsibleButton"
    source = (MODULE / "MedSynth.py").read_text()
    for name, contrast in SELECTORS.items():
        assert f'"{contrast}": self.ui.{name}' in source


def test_module_file_has_the_scripted_module_classes():
    tree = ast.parse((MODULE / "MedSynth.py").read_text())
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes["MedSynth"] == ["ScriptedLoadableModule"]
    assert classes["MedSynthWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["MedSynthLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["MedSynthTest"] == ["ScriptedLoadableModuleTest"]
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedSynthLogic")
    assert "qt." not in ast.unparse(logic), "the Logic must hold no Qt"


def test_cmake_lists_every_script_and_resource():
    top = (EXTENSION / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_DEPENDS", "add_subdirectory(MedSynth)"):
        assert key in top
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", module, re.S).group(1)
    listed = {item.replace("${MODULE_NAME}", "MedSynth") for item in block.split()}
    scripts = {"MedSynth.py", *(f"MedSynthLib/{p.name}" for p in (MODULE / "MedSynthLib").glob("*.py"))}
    assert listed == scripts
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in module
        assert (MODULE / resource.replace("${MODULE_NAME}", "MedSynth")).is_file()
    assert ".." not in module and "medsynth_app" not in module  # nothing outside the extension folder
    assert re.search(r"set\(EXTENSION_BUILD_SUBDIRECTORY \.\)", top)


def test_contrast_rules_are_a_byte_equal_copy_of_the_library_file():
    copy, library = MODULE / "MedSynthLib" / "contrasts.py", REPO / "medsynth_app" / "contrasts.py"
    assert copy.read_bytes() == library.read_bytes(), \
        "copy medsynth_app/contrasts.py to slicer_extension/MedSynth/MedSynthLib/contrasts.py"


def test_extensions_index_entry():
    entry = json.loads((EXTENSION / "MedSynth.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["build_subdirectory"] == "." and entry["category"] == "Filtering" and entry["tier"] in (1, 3, 5)
    assert entry["scm_url"].startswith("https://") and entry["build_dependencies"] == []


def test_code_parses_with_the_python_of_slicer_5_6():
    """Slicer 5.6 and 5.8 bundle Python 3.9: no syntax newer than that anywhere in the extension."""
    for path in MODULE.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_icon_is_a_128_pixel_png():
    data = (MODULE / "Resources" / "Icons" / "MedSynth.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
