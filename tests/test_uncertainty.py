"""Uncertainty maps on real data: their calibration, their grid and marking through the CLI and the server, and the
Slicer client's handling of the server's answer; the input check against the contrast recogniser."""
import json

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk

from conftest import SHARED, needs_shared
from medsynth_app.cli import main
from medsynth_app.uncertainty import Calibration, calibration_for
from server_fixture import APP, import_medsynth_lib, running_server, write_crops

REPLICA_T2 = APP / "model" / "replica_T1_to_T2.pt"


def test_calibration_is_monotone_and_maps_spread_to_the_mean_error():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 1, 20000)
    error = np.abs(rng.normal(0, 0.1 + spread))  # |N(0, s)| has mean s * sqrt(2 / pi)
    calibration = Calibration.fit("replica", "T1->T2", "T2", [spread], [error], ["synthetic"])
    assert np.all(np.diff(calibration.error) >= 0)
    expected = (0.1 + np.array([0.2, 0.5, 0.8])) * np.sqrt(2 / np.pi)
    assert np.allclose(calibration.apply(np.array([0.2, 0.5, 0.8])), expected, rtol=0.15)


def test_a_checkpoint_without_calibration_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"linear_T1_to_T2.uncertainty.json is missing"):
        calibration_for(APP / "model" / "linear_T1_to_T2.pt", "T2")


@needs_shared
def test_cli_writes_the_uncertainty_map_on_the_synthetic_grid_marked_and_calibrated(mni_crops, tmp_path, capsys):
    t1, t2 = mni_crops / "patient19" / "T1.nii.gz", mni_crops / "patient19" / "T2.nii.gz"
    out, umap, unrrd = tmp_path / "t2.nii.gz", tmp_path / "t2_uncertainty.nii.gz", tmp_path / "u.nrrd"
    common = ["synthesize", "--weights", str(REPLICA_T2), "--input", f"T1={t1}", "--intensity", "normalised"]
    assert main([*common, "--out", str(out), "--uncertainty", str(umap)]) == 0
    assert "input T1: looks like" in capsys.readouterr().err
    synthetic, uncertainty = sitk.ReadImage(str(out)), sitk.ReadImage(str(umap))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(synthetic, get)(), getattr(uncertainty, get)())
    header = nib.load(umap).header
    assert header["intent_name"].tobytes().rstrip(b"\0") == b"UNCERTAINTY"
    assert header["descrip"].tobytes().startswith(b"SYNTHETIC T2 UNCERTAINTY by replica from T1")
    u, s = sitk.GetArrayFromImage(uncertainty), sitk.GetArrayFromImage(synthetic)
    brain = s > 0
    assert (u >= 0).all() and (u[~brain] == 0).all() and (u[brain] > 0).all()
    # expected |error| against the acquired T2 normalised as the model sees it (divided by its mean in the brain)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(t2)))
    truth = np.clip(truth, 0, None) / np.clip(truth, 0, None)[brain].mean()
    measured = np.abs(s - truth)[brain]
    assert 0.5 < u[brain].mean() / measured.mean() < 2.0
    high, low = u[brain] >= np.quantile(u[brain], 0.9), u[brain] <= np.quantile(u[brain], 0.1)
    assert measured[high].mean() > 1.5 * measured[low].mean()
    assert main([*common, "--out", str(tmp_path / "t2.nrrd"), "--uncertainty", str(unrrd)]) == 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(unrrd))
    reader.ReadImageInformation()
    assert reader.GetMetaData("medsynth_map") == "uncertainty" and reader.GetMetaData("medsynth_synthetic") == "true"


@needs_shared
def test_a_real_flair_given_as_t2_is_flagged_by_the_cli(tmp_path, capsys):
    patient = SHARED / "open_ms_data" / "mni" / "patient19"
    assert main(["synthesize", "--model", "linear", "--input", f"T1={patient / 'T1.nii.gz'}", "--input",
                 f"T2={patient / 'FLAIR.nii.gz'}", "--target", "FLAIR", "--out", str(tmp_path / "f.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the volume given as T2 looks like FLAIR (p = " in err
    assert "given as T1" not in err and "input T1: looks like T1" in err


@pytest.fixture(scope="module")
def replica_server(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    datastore = write_crops(SHARED, tmp_path_factory.mktemp("datastore"), contrasts=("T1", "T2"))
    with running_server(datastore, tmp_path_factory.mktemp("server"), conf_models="replica") as url:
        yield url


def test_server_answers_the_uncertainty_map_beside_the_image_and_the_client_keeps_it(replica_server, tmp_path):
    import_medsynth_lib()
    from MedSynthLib import client as client_module

    answer = requests.post(f"{replica_server}/infer/replica", params={"image": "sub01_T1"},
                           files={"params": (None, json.dumps({"target": "T2", "uncertainty": True,
                                                               "checkpoint": "replica_T1_to_T2.pt"}))}, timeout=600)
    assert answer.status_code == 200, answer.text
    fields = client_module.parse_multipart(answer.headers["content-type"], answer.content)
    assert {"image", "params", "uncertainty"} <= set(fields)
    params = json.loads(fields["params"][1])
    assert "extra_images" not in params and params["uncertainty"]["field"] == "uncertainty"
    assert set(params["input_check"]) == {"T1"}
    paths = {}
    for key in ("image", "uncertainty"):
        paths[key] = tmp_path / fields[key][0]
        paths[key].write_bytes(fields[key][1])
    synthetic, uncertainty = sitk.ReadImage(str(paths["image"])), sitk.ReadImage(str(paths["uncertainty"]))
    assert synthetic.GetSize() == uncertainty.GetSize() and synthetic.GetOrigin() == uncertainty.GetOrigin()
    assert nib.load(paths["uncertainty"]).header["descrip"].tobytes().startswith(b"SYNTHETIC T2 UNCERTAINTY")
    assert sitk.GetArrayFromImage(uncertainty).max() > 0
    # the module's client lib turns the further field into a file beside the result
    client = client_module.MedSynthClient(replica_server)
    result = client.synthesize_result("replica", "T2", image="sub01_T1", out_dir=str(tmp_path / "client"),
                                      uncertainty=True)
    assert result.params["uncertainty"]["field"] == "uncertainty" and result.params["warnings"] is not None
    json_only = requests.post(f"{replica_server}/infer/replica", params={"image": "sub01_T1", "output": "json"},
                              files={"params": (None, json.dumps({"target": "T2", "uncertainty": True}))},
                              timeout=600)
    assert json_only.status_code == 200 and "extra_images" not in json_only.json()


@needs_shared
def test_a_dicom_uncertainty_map_is_a_marked_series_of_its_own(mni_crops, tmp_path):
    import pydicom

    t1 = mni_crops / "patient19" / "T1.nii.gz"
    assert main(["synthesize", "--weights", str(REPLICA_T2), "--input", f"T1={t1}", "--out", f"{tmp_path}/syn/",
                 "--uncertainty", f"{tmp_path}/unc/"]) == 0
    synthetic = pydicom.dcmread(next((tmp_path / "syn").glob("*.dcm")))
    uncertainty = pydicom.dcmread(next((tmp_path / "unc").glob("*.dcm")))
    assert list(uncertainty.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC", "UNCERTAINTY"]
    assert uncertainty.SeriesDescription.startswith("SYNTHETIC T2 UNCERTAINTY by replica")
    assert uncertainty.SeriesNumber == synthetic.SeriesNumber + 1000
    assert uncertainty.SeriesInstanceUID != synthetic.SeriesInstanceUID
