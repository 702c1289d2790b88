"""The Slicer module's uncertainty overlay on a real synthetic volume and its real map (slicer-core MRML scene)."""
import numpy as np
import pytest

from conftest import needs_shared
from medsynth_app.cli import main
from server_fixture import APP, import_medsynth_lib

slicer = pytest.importorskip("slicer")
import_medsynth_lib()
from MedSynthLib.mrml_io import load_volume_file  # noqa: E402
from MedSynthLib.overlay import LEGEND_TITLE, set_overlay_visible, show_overlay  # noqa: E402


@needs_shared
def test_uncertainty_overlay_with_legend_can_be_hidden_and_shown(mni_crops, tmp_path):
    t1 = mni_crops / "patient19" / "T1.nii.gz"
    assert main(["synthesize", "--weights", str(APP / "model" / "replica_T1_to_T2.pt"), "--input", f"T1={t1}",
                 "--out", str(tmp_path / "t2.nrrd"), "--uncertainty", str(tmp_path / "t2_uncertainty.nrrd")]) == 0
    scene = slicer.vtkMRMLScene()
    composites = []
    for view in ("Red", "Yellow", "Green"):
        composites.append(slicer.vtkMRMLSliceCompositeNode())
        composites[-1].SetLayoutName(view)
        scene.AddNode(composites[-1])
    synthetic = load_volume_file(str(tmp_path / "t2.nrrd"), scene, "T2 (synthetic)")
    uncertainty = load_volume_file(str(tmp_path / "t2_uncertainty.nrrd"), scene, "T2 uncertainty (synthetic)")
    show_overlay(scene, synthetic, uncertainty, opacity=0.4)
    assert all(c.GetBackgroundVolumeID() == synthetic.GetID() and c.GetForegroundVolumeID() == uncertainty.GetID()
               and c.GetForegroundOpacity() == pytest.approx(0.4) for c in composites)
    display = uncertainty.GetDisplayNode()
    assert display.GetColorNode().GetName() == "MedSynth uncertainty"
    from MedSynthLib.mrml_io import voxels

    values = voxels(uncertainty)
    assert display.GetWindow() == pytest.approx(np.percentile(values[values > 0], 99), rel=1e-3)
    legends = [uncertainty.GetNthDisplayNode(i) for i in range(uncertainty.GetNumberOfDisplayNodes())
               if uncertainty.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")]
    assert len(legends) == 1 and legends[0].GetTitleText() == LEGEND_TITLE and legends[0].GetVisibility()
    set_overlay_visible(scene, uncertainty, False)
    assert all(c.GetForegroundOpacity() == 0 for c in composites) and not legends[0].GetVisibility()
    set_overlay_visible(scene, uncertainty, True, opacity=0.4)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.4) for c in composites) and legends[0].GetVisibility()
    show_overlay(scene, synthetic, uncertainty)  # again: still one legend
    assert sum(uncertainty.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")
               for i in range(uncertainty.GetNumberOfDisplayNodes())) == 1
