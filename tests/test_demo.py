"""`medsynth demo` end to end: simulated study, real MONAI Label server on 127.0.0.1, the Slicer module's client."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk
from gates import assert_beats_trivial

from medsynth_app.cli import main
from medsynth_app.comparison import prepare_comparison
from medsynth_app.imageio import is_synthetic_file
from medsynth_server import demo, launcher
from medsynth_server.resources import APP_DIR
from medsynth_server.slicer_lib import import_medsynth_lib


def _app_files() -> dict[str, tuple[int, int]]:
    """Every file and folder of apps/medsynth with its size and modification time.

    Bytecode caches and the logs/ and bin/ folders that the MONAI Label launcher itself creates in any app folder
    are left out.
    """
    found = {}
    for folder, dirs, files in os.walk(APP_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not (folder == str(APP_DIR) and d in ("logs", "bin"))]
        for name in [*dirs, *files]:
            stat = os.stat(os.path.join(folder, name), follow_symlinks=False)
            found[os.path.relpath(os.path.join(folder, name), APP_DIR)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # the process ended while being read
            continue
    return pids


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_output")
    before = _app_files()
    saved = os.environ.pop("MEDSYNTH_DATA", None)
    try:
        report = demo.run_demo(out)
    finally:
        if saved is not None:
            os.environ["MEDSYNTH_DATA"] = saved
    return out, report, before


def test_demo_synthesises_flair_through_the_server(demo_run):
    out, report, _ = demo_run
    assert report["study"] == "sim01" and report["model"] in demo.PREFERRED_MODELS
    assert report["server"].startswith("http://127.0.0.1:")
    nifti = Path(report["synthetic"])
    assert nifti == out / "sim01_FLAIR_synthetic.nii.gz" and is_synthetic_file(nifti)
    synthetic, t1 = sitk.ReadImage(str(nifti)), sitk.ReadImage(str(out / "demo_studies" / "sim01" / "T1.nii.gz"))
    assert synthetic.GetPixelID() == sitk.sitkFloat32
    assert synthetic.GetSize() == t1.GetSize()
    for got, want in ((synthetic.GetSpacing(), t1.GetSpacing()), (synthetic.GetOrigin(), t1.GetOrigin()),
                      (synthetic.GetDirection(), t1.GetDirection())):
        assert got == pytest.approx(want, abs=1e-4)
    assert Path(report["montage"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "demo_metrics.json").read_text())
    # Measured with replica (the shipped forest, which never saw simulated data): 24.31 dB / 0.780, keeping 6 % of the
    # lesions' conspicuity (1.092 against 2.584); the best trivial predictors: T1 copied 23.41 dB / 0.665.
    subject = prepare_comparison(demo.demo_study(out), synthetic, "FLAIR", demo.INPUTS)
    assert_beats_trivial(saved["metrics"], subject, "FLAIR", demo.INPUTS, psnr=0.5, ssim=0.07, conspicuity=0.03,
                         label=f"the demo's {report['model']} on {report['study']}")
    assert {"lesion_conspicuity_kept", "lesion_detection_dice", "acquired_lesion_detection_dice",
            "brasyn_ssim_lesion"} <= set(saved["metrics"])
    assert demo.lesion_summary(saved["metrics"]).startswith(
        f"lesion conspicuity {saved['metrics']['lesion_conspicuity']:.2f} (acquired ")
    assert set(saved["seconds"]) >= {"starting the MONAI Label server with the shipped weights", "stopping the server"}


def test_demo_datastore_links_the_originals(demo_run):
    out, _, _ = demo_run
    links = sorted(p.name for p in (out / "datastore").iterdir() if p.is_symlink())
    assert links == ["sim01_FLAIR.nii.gz", "sim01_T1.nii.gz", "sim01_T2.nii.gz", "sim01_brainmask.nii.gz",
                     "sim01_lesion.nii.gz"]
    assert (out / "datastore" / "sim01_T1.nii.gz").resolve() == out / "demo_studies" / "sim01" / "T1.nii.gz"


def test_demo_stops_its_server_and_leaves_the_app_folder_alone(demo_run):
    import requests

    out, report, before = demo_run
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{report['server']}/info/", timeout=5)
    assert _processes_mentioning(str(out / "datastore")) == []
    assert _app_files() == before


def test_demo_without_the_launcher_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launcher, "launcher", lambda: None)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "monailabel" in error


def test_demo_prefers_replica_then_lsdn_then_linear():
    import_medsynth_lib()
    from MedSynthLib.logic import model_choices

    def entry(*inputs):
        return {"targets": ["FLAIR"], "checkpoints": {"FLAIR": [{"checkpoint": "c.pt", "inputs": list(inputs)}]}}

    served = {"linear": entry("T1", "T2"), "replica": entry("T1"), "lsdn": entry("T1", "T2")}
    assert demo.choose_model(model_choices(served)).name == "lsdn"  # replica lacks T2 as an input
    served["replica"] = entry("T1", "T2")
    assert demo.choose_model(model_choices(served)).name == "replica"
    del served["replica"], served["lsdn"]
    assert demo.choose_model(model_choices(served)).name == "linear"
    with pytest.raises(demo.DemoError, match="linear"):
        demo.choose_model(model_choices({"mp": entry("T1", "T2")}))

