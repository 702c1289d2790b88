"""Studies as scanners and PACS name their series: one patient's folder of series is one study, on real data."""
import shutil

import pytest
import SimpleITK as sitk

from conftest import SHARED, needs_shared
from medsynth_app.cli import main
from medsynth_app.contrasts import parse_name
from medsynth_app.studies import find_studies

MNI = SHARED / "open_ms_data" / "mni" / "patient07"


@pytest.mark.parametrize("name,contrast", {
    "t1_mprage_sag_p2_iso_2": "T1", "t2_tse_tra_4": "T2", "t2_flair_tra_dark-fluid_5": "FLAIR",
    "t2_space_dark-fluid_sag_p2_iso": "FLAIR", "101_SAG_T1": "T1", "201_AX_T2_FSE": "T2", "401_Ax_T2_FLAIR": "FLAIR",
    "FLAIR3D": "FLAIR", "3D_FLAIR": "FLAIR", "DARKFLUID": "FLAIR", "12345.FL": "FLAIR", "SAG_CUBE_FLAIR": "FLAIR",
    "AX_T2_VISTA_FLAIR": "FLAIR", "AX_FSE": "T2", "t1_tse_tra": "T1", "SAG_SPGR": "T1", "AX_BRAVO_POST": "T1C",
    "MPRAGE_POST": "T1C", "AX_T1_+C": "T1C", "T1_pre_gd": "T1", "t2_space_sag_p2": "T2",
}.items())
def test_scanner_series_names_say_their_contrast(name, contrast):
    assert parse_name(name).contrast == contrast


def test_a_space_series_without_a_contrast_word_is_left_to_the_image():
    assert parse_name("sag_space_iso_7") is None and parse_name("AX_CUBE_3") is None


def _write_dicom_series(image: sitk.Image, folder, series_uid: str) -> None:
    folder.mkdir(parents=True)
    volume = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        plane.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))))
        plane.SetMetaData("0020|0037", "\\".join(map(str, (*direction[0::3], *direction[1::3]))))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|000e", series_uid)
        plane.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.7")
        plane.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(plane)


@needs_shared
def test_a_patient_folder_of_scanner_named_dicom_series_is_one_study(tmp_path, capsys):
    patient = tmp_path / "patient_A"
    for i, (name, contrast) in enumerate([("t1_mprage_sag_p2_iso_2", "T1"), ("t2_tse_tra_4", "T2"),
                                          ("t2_flair_tra_dark-fluid_5", "FLAIR")]):
        crop = sitk.RegionOfInterest(sitk.ReadImage(str(MNI / f"{contrast}.nii.gz")), [60, 70, 6], [60, 70, 80])
        _write_dicom_series(crop, patient / name, f"1.2.826.0.1.3680043.2.1125.7.{i + 1}")
    (patient / "notes.txt").write_text("scan notes")
    [study] = find_studies(tmp_path)
    assert study.id == "patient_A" and study.contrasts == ["T1", "T2", "FLAIR"]
    assert study.images["FLAIR"].name == "t2_flair_tra_dark-fluid_5"
    assert main(["studies", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "1 studies" in out and f"ignored {patient / 'notes.txt'}: not an image file" in err


@needs_shared
def test_pacs_style_numbered_series_are_one_study_and_a_silent_name_is_decided_by_the_image(tmp_path, capsys):
    patient = tmp_path / "case7"
    patient.mkdir()
    shutil.copy(MNI / "T1.nii.gz", patient / "101_SAG_T1.nii.gz")
    shutil.copy(MNI / "FLAIR.nii.gz", patient / "401_Ax_T2_FLAIR.nii.gz")
    shutil.copy(MNI / "T2.nii.gz", patient / "301_AX_CUBE.nii.gz")  # the name is silent: T2 or FLAIR?
    image = sitk.ReadImage(str(MNI / "T2.nii.gz"))
    sitk.WriteImage(sitk.Image(image.GetSize(), sitk.sitkFloat32), str(patient / "501_blank.nii.gz"))
    ignored = {}
    [study] = find_studies(tmp_path, ignored)
    assert study.id == "case7" and study.contrasts == ["T1", "T2", "FLAIR"]
    assert study.images["T2"].name == "301_AX_CUBE.nii.gz"
    assert list(ignored) == [patient / "501_blank.nii.gz"] and "name says no contrast" in ignored[patient / "501_blank.nii.gz"]


def test_distinct_study_ids_in_a_flat_folder_stay_distinct(tmp_path):
    for name in ("sub01_T1", "sub01_T2", "sub02_T1", "101_T1", "102_T1"):
        sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(tmp_path / f"{name}.nii.gz"))
    assert sorted(s.id for s in find_studies(tmp_path)) == ["101", "102", "sub01", "sub02"]
