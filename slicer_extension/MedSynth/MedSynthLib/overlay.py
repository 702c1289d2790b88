"""An uncertainty map shown as a colour overlay on its synthetic volume, with a colour legend, that can be hidden and
shown again. MRML only (no Qt): works in 3D Slicer and with PyPI's ``slicer-core``.
"""
from __future__ import annotations

COLOR_TABLE_NAME = "MedSynth uncertainty"
LEGEND_TITLE = "expected |error|"


def _slicer():
    import slicer  # noqa: WPS433 - lazily: this package must import without Slicer

    return slicer


def _color_table(scene):
    """One warm colour table (dark = small expected error, bright = large) shared by every map of the scene."""
    slicer = _slicer()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == COLOR_TABLE_NAME:
            return node
    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToWarm1()
    table.SetName(COLOR_TABLE_NAME)
    scene.AddNode(table)
    return table


def _legend(node):
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            return display
    return None


def show_overlay(scene, synthetic, uncertainty, opacity: float = 0.5) -> None:
    """Every slice view: ``synthetic`` in the background, ``uncertainty`` over it in colour (window 0 to the map's
    99th percentile inside the brain), and a legend titled "expected |error|"."""
    import numpy as np

    from .mrml_io import voxels

    slicer = _slicer()
    if uncertainty.GetDisplayNode() is None:
        uncertainty.CreateDefaultDisplayNodes()
    display = uncertainty.GetDisplayNode()
    display.SetAndObserveColorNodeID(_color_table(scene).GetID())
    values = voxels(uncertainty)
    top = float(np.percentile(values[values > 0], 99)) if (values > 0).any() else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevel(top, top / 2)
    legend = _legend(uncertainty)
    if legend is None:
        legend = slicer.vtkMRMLColorLegendDisplayNode()
        scene.AddNode(legend)
        uncertainty.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(LEGEND_TITLE)
    legend.SetAndObservePrimaryDisplayNode(display)
    legend.SetVisibility(True)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(synthetic.GetID())
        composite.SetForegroundVolumeID(uncertainty.GetID())
        composite.SetForegroundOpacity(opacity)


def set_overlay_visible(scene, uncertainty, visible: bool, opacity: float = 0.5) -> None:
    """Hide (or show again) the map's overlay and legend; nothing is removed."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() == uncertainty.GetID():
            composite.SetForegroundOpacity(opacity if visible else 0.0)
    legend = _legend(uncertainty)
    if legend is not None:
        legend.SetVisibility(visible)
