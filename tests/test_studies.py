import json

import numpy as np
import pytest
import SimpleITK as sitk

from medsynth_app.studies import StudyError, find_studies
from conftest import SHARED, needs_shared

EXPECTED = {  # every subject folder of ../shared/data and the contrasts it must yield
    **{f"brats2013_deepmedic/brats_2013_pat000{i}_1": ["T1C", "FLAIR"] for i in range(1, 7)},
    **{f"hinet_brats2018_slices/s{i:02d}_{'train' if i <= 8 else 'test'}": ["T1", "T1C", "T2", "FLAIR"]
       for i in range(1, 12)},
    **{f"open_ms_data/mni/{p}": ["T1", "T1C", "T2", "FLAIR"] for p in ("patient07", "patient19", "patient26")},
    **{f"open_ms_data/longitudinal/{p}": ["T1", "T2", "FLAIR"]
       for p in ("patient01_study1", "patient03_study2", "patient04_study1", "patient12_study1")},
    **{f"open_ms_data/longitudinal/{p}/raw": ["T1", "T2"]
       for p in ("patient01_study1", "patient03_study2", "patient04_study1", "patient12_study1")},
    "msseg2016_pd_t2/case01": ["T2", "PD"],
    "ixi_small/IXI014-HH-1236": ["T2", "PD"],
    "ixi_small/2d/IXI002-Guys-0828_slice90": ["T1", "T2"],
    "ixi_small/2d/IXI040-Guys-0724_slice69": ["T2", "PD"],
    "templates_spm12_avg152": ["T1", "T2", "PD"],
    **{f"brats2018_deepvoxnet2/Brats18_{c}_1": ["T1", "FLAIR"]
       for c in ("CBICA_AAB", "CBICA_AOO", "CBICA_AQN", "CBICA_ARW", "CBICA_ASA", "CBICA_ATV", "TCIA02_471",
                 "TCIA04_192", "TCIA08_105")},
}


@needs_shared
def test_every_shared_subject_is_found_with_its_contrasts():
    studies = {s.id: s for s in find_studies(SHARED)}
    assert {k: studies[k].contrasts for k in EXPECTED if k in studies} == EXPECTED
    assert set(studies) == set(EXPECTED)
    assert all(studies[f"brats2013_deepmedic/brats_2013_pat000{i}_1"].brain_mask for i in range(1, 7))
    assert studies["open_ms_data/mni/patient07"].lesion_mask.name == "lesion_consensus.nii.gz"
    assert studies["msseg2016_pd_t2/case01"].lesion_mask is not None


@needs_shared
def test_studies_cli_json_reports_geometry(capsys):
    from medsynth_app.cli import main

    assert main(["studies", str(SHARED / "open_ms_data" / "mni"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["patient07", "patient19", "patient26"]
    assert rows[0]["shape"] == [182, 218, 182] and rows[0]["spacing"] == [1.0, 1.0, 1.0]
    assert rows[0]["orientation"] == "LAS"  # the README states LAS for this set


def _touch_image(path, value=1.0):
    image = sitk.GetImageFromArray(np.full((4, 5, 6), value, np.float32))
    sitk.WriteImage(image, str(path))


def test_flat_datastore_groups_files_by_study_prefix(tmp_path):
    for study in ("sub01", "sub02"):
        for contrast in ("T1", "T2"):
            _touch_image(tmp_path / f"{study}_{contrast}.nii.gz")
    _touch_image(tmp_path / "sub02_FLAIR.nrrd")
    studies = {s.id: s.contrasts for s in find_studies(tmp_path)}
    assert studies == {"sub01": ["T1", "T2"], "sub02": ["T1", "T2", "FLAIR"]}


def test_ambiguous_folder_names_the_clashing_files(tmp_path):
    _touch_image(tmp_path / "t1.nii.gz")
    _touch_image(tmp_path / "T1W.nii.gz")
    with pytest.raises(StudyError, match=r"2 files look like T1: .*T1W\.nii\.gz.*t1\.nii\.gz"):
        find_studies(tmp_path)


def test_manifest_overrides_names(tmp_path):
    (tmp_path / "a").mkdir()
    _touch_image(tmp_path / "a" / "scan_001.nii.gz")
    _touch_image(tmp_path / "a" / "scan_002.nii.gz")
    (tmp_path / "medsynth_manifest.csv").write_text(
        "study,contrast,path\nsubjA,t2w,a/scan_001.nii.gz\nsubjA,FLAIR,a/scan_002.nii.gz\n")
    [study] = find_studies(tmp_path)
    assert study.id == "subjA" and study.contrasts == ["T2", "FLAIR"]
    (tmp_path / "medsynth_manifest.csv").unlink()
    (tmp_path / "medsynth_manifest.json").write_text(json.dumps({"s": {"T1": "a/scan_001.nii.gz", "CT": "a/x"}}))
    with pytest.raises(StudyError, match="unknown contrast 'CT'"):
        find_studies(tmp_path)


def test_dicom_series_folder_is_one_image_named_by_its_folder(tmp_path):
    from medsynth_app.imageio import read_image

    volume = sitk.GetImageFromArray(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5))
    volume.SetSpacing((0.8, 0.9, 2.5))
    series = tmp_path / "study1" / "T2_tse"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slice_ = volume[:, :, k]
        origin = volume.TransformIndexToPhysicalPoint((0, 0, k))
        slice_.SetMetaData("0020|0032", "\\".join(map(str, origin)))
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        slice_.SetMetaData("0028|0030", "0.9\\0.8")
        slice_.SetMetaData("0018|0050", "2.5")
        writer.SetFileName(str(series / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    _touch_image(tmp_path / "study1" / "T1.nii.gz")
    [study] = find_studies(tmp_path)
    assert study.contrasts == ["T1", "T2"] and study.images["T2"] == series
    image = read_image(series)
    assert image.GetSize() == (5, 6, 4)
    assert np.allclose(image.GetSpacing(), (0.8, 0.9, 2.5), atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume).astype(np.float32))


@needs_shared
def test_dicom_series_folders_are_named_by_their_metadata(tmp_path):
    """Series folders named series2..4: the contrasts come from SeriesDescription or, when it names none, from the
    sequence tags; a synthetic series in the study is never an acquired contrast."""
    from medsynth_app.dicom_output import write_dicom_series
    from medsynth_app.imageio import Provenance
    from pacs_fixture import PROTOCOLS, write_study

    t1 = sitk.RegionOfInterest(sitk.ReadImage(str(SHARED / "open_ms_data/mni/patient07/T1.nii.gz")), [40, 40, 6],
                               [60, 70, 80])
    unnamed = {c: {**p, "SeriesDescription": "ax"} for c, p in PROTOCOLS.items()}
    study = write_study({c: t1 for c in PROTOCOLS}, tmp_path / "patient07", "patient07", unnamed)
    write_dicom_series(t1, study / "synthetic", Provenance("linear", ("T1", "T2"), "FLAIR", "test"),
                       reference=study / "series2")
    [found] = find_studies(tmp_path)
    assert found.id == "patient07"
    assert {c: p.name for c, p in found.images.items()} == {"T1": "series2", "T2": "series3", "FLAIR": "series4"}
