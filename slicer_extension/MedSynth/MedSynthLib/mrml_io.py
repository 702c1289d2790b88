"""MRML scalar volume node <-> file, geometry (IJK-to-RAS) kept. Needs only ``slicer``'s MRML classes, imported
inside the functions: works in 3D Slicer and with PyPI's ``slicer-core`` outside it.

A stand-alone ``vtkMRMLVolumeArchetypeStorageNode`` writes and reads: unlike ``slicer.util.saveNode``, writing an
input this way leaves the input node untouched (saveNode would point the node's storage node at the temporary file,
which is deleted afterwards), and a result read this way gets no storage node pointing at a temporary file, so
Slicer's "Save data" offers to save it like any new volume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional


def _slicer():
    import slicer  # noqa: WPS433 - lazily: this package must import without Slicer

    return slicer


def write_volume(node, path: str, compress: bool = True) -> str:
    """Write a scalar volume node to ``path`` (.nii.gz, .nrrd, ...) with its geometry; returns the path."""
    slicer = _slicer()
    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume {node.GetName() if node is not None else None!r} has no voxels")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(node) or not Path(path).is_file():
        raise OSError(f"cannot write volume {node.GetName()!r} to {path}")
    return str(path)


def detached_copy(node):
    """A copy of a volume node's voxels and geometry outside any scene: the GUI thread makes it (a memory copy), a
    worker thread writes it, so that compressing the file never blocks Slicer."""
    slicer = _slicer()
    import vtk

    copy = slicer.vtkMRMLScalarVolumeNode()
    copy.SetName(node.GetName())
    image = vtk.vtkImageData()
    image.DeepCopy(node.GetImageData())
    copy.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    copy.SetIJKToRASMatrix(matrix)
    return copy


def read_detached(path: str, name: str):
    """A new vtkMRMLScalarVolumeNode named ``name`` holding the volume in ``path``, in no scene yet (any thread)."""
    slicer = _slicer()
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise OSError(f"cannot read the result volume {path}")
    node.SetName(name)  # reading names the node after the file
    return node


def read_volume(path: str, scene, name: str):
    """A new vtkMRMLScalarVolumeNode named ``name``, added to ``scene``, holding the volume in ``path``."""
    node = read_detached(path, name)
    scene.AddNode(node)
    node.SetName(name)
    return node


def load_volume_file(path: str, scene, name: Optional[str] = None):
    """A volume file as a new node (tests and the self-test build their inputs with this)."""
    return read_volume(path, scene, name or Path(path).name.split(".")[0])


def ijk_to_ras(node):
    """The node's IJK-to-RAS matrix as a 4x4 numpy array."""
    import numpy as np
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def voxels(node):
    """The node's voxels as a numpy array indexed [k, j, i] (a copy)."""
    from vtk.util import numpy_support

    image = node.GetImageData()
    i, j, k = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return array.reshape(k, j, i, -1).squeeze(-1).copy() if array.ndim > 1 else array.reshape(k, j, i).copy()


def attributes(node) -> Dict[str, str]:
    return {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()}


def set_attributes(node, values: Mapping[str, str]) -> None:
    for name, value in values.items():
        node.SetAttribute(name, str(value))


def show(node, window: float, level: float) -> None:
    """Give the node a grey display with a fixed window/level (created when it has none)."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is None:  # slicer-core without a display node factory
        slicer = _slicer()
        display = slicer.vtkMRMLScalarVolumeDisplayNode()
        node.GetScene().AddNode(display)
        node.SetAndObserveDisplayNodeID(display.GetID())
    if display.GetColorNodeID() is None and node.GetScene() is not None:
        grey = node.GetScene().GetNodeByID("vtkMRMLColorTableNodeGrey")
        if grey is not None:
            display.SetAndObserveColorNodeID(grey.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))


COMPARE_VIEWS = ("Red", "Yellow")  # the two slice views of Slicer's side-by-side layout


def compare_layout(scene, left, right) -> None:
    """Slicer's side-by-side layout with ``left`` in the Red view and ``right`` in the Yellow one, the two views
    linked (moving or zooming one moves the other)."""
    slicer = _slicer()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLLayoutNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLLayoutNode").SetViewArrangement(
            slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() in COMPARE_VIEWS:
            shown = left if composite.GetLayoutName() == COMPARE_VIEWS[0] else right
            composite.SetBackgroundVolumeID(shown.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(1)
