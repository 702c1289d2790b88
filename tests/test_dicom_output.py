"""Synthetic volumes written as DICOM series: geometry and values read back, provenance tags, the reference's patient
and study, no acquired series overwritten, no partial series left, and the CLI's folder output."""
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid

from conftest import SHARED, needs_shared
from medsynth_app.cli import main
from medsynth_app.dicom_output import write_dicom_series
from medsynth_app.imageio import ImageError, Provenance, read_image, write_image

PROV = Provenance(model="lsdn", inputs=("T1", "T2"), target="FLAIR", library_version="test")
PATIENT07 = SHARED / "open_ms_data" / "mni" / "patient07"
WEIGHTS = Path(__file__).resolve().parents[1] / "apps" / "medsynth" / "model" / "linear_T1_to_T2.pt"


def _crop(name: str) -> sitk.Image:
    """64 x 80 x 12 voxels around the ventricles of a real MS subject (1 mm, left-handed LPS direction)."""
    return sitk.RegionOfInterest(sitk.ReadImage(str(PATIENT07 / name)), [64, 80, 12], [60, 70, 80])


def _datasets(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]


def _acquired_series(image: sitk.Image, folder: Path) -> Path:
    """Stand-in for a scanner's series: written by the writer, then given an acquisition's marks and its own
    patient, study and series number."""
    write_dicom_series(image, folder, PROV)
    study_uid = generate_uid()
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SeriesDescription = "t1_mprage_sag"
        del ds.DerivationDescription
        ds.PatientName, ds.PatientID, ds.PatientSex = "DOE^JANE", "MS-0007", "F"
        ds.StudyInstanceUID, ds.AccessionNumber, ds.SeriesNumber = study_uid, "ACC123", 5
        ds.save_as(path)
    return folder


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        assert np.allclose(get(a), get(b), atol=1e-4), get.__name__


def _assert_close_values(a: sitk.Image, b: sitk.Image) -> None:
    expected, got = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    assert np.abs(got - expected).max() <= 1e-3 * (expected.max() - expected.min())


@needs_shared
def test_series_reads_back_with_its_geometry_values_and_synthetic_marks(tmp_path):
    image = _crop("T2.nii.gz")
    folder = write_dicom_series(image, tmp_path / "synthetic_FLAIR", PROV)
    back = read_image(folder)
    # DICOM stacks slices along row x column: this left-handed volume comes back with its slices reversed, every
    # voxel at the same physical position.
    assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) < 0
    flipped = sitk.Flip(image, [False, False, True])
    _assert_same_grid(back, flipped)
    _assert_close_values(flipped, back)
    assert np.allclose(back.TransformIndexToPhysicalPoint((3, 5, 0)), image.TransformIndexToPhysicalPoint((3, 5, 11)))
    datasets = _datasets(folder)
    assert len(datasets) == 12
    for ds in datasets:
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in ds.ImageType
        assert ds.SeriesDescription == "SYNTHETIC FLAIR by lsdn from T1+T2"
        assert "model lsdn" in ds.DerivationDescription and "T1, T2" in ds.DerivationDescription
        assert ds.Modality == "MR" and ds.BurnedInAnnotation == "NO"
        assert ds.PatientName == "SYNTHETIC^MEDSYNTH"
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, 13))


@needs_shared
def test_series_joins_the_reference_patient_and_study(tmp_path):
    acquired = _acquired_series(_crop("T1.nii.gz"), tmp_path / "t1_mprage")
    source = _datasets(acquired)[0]
    synthetic = write_dicom_series(_crop("T2.nii.gz"), tmp_path / "synthetic", PROV, reference=acquired)
    for ds in _datasets(synthetic):
        assert (ds.PatientID, ds.PatientName, ds.PatientSex) == ("MS-0007", "DOE^JANE", "F")
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.AccessionNumber == "ACC123"
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesNumber == 1005
    # an image read from one of the reference's files carries the same tags in its metadata dictionary
    reference = sitk.ReadImage(str(sorted(acquired.iterdir())[0]))
    again = write_dicom_series(_crop("T2.nii.gz"), tmp_path / "again", PROV, reference=reference)
    ds = _datasets(again)[0]
    assert (ds.PatientID, ds.StudyInstanceUID) == ("MS-0007", source.StudyInstanceUID)
    with pytest.raises(ImageError, match="is not a DICOM series folder"):
        write_dicom_series(_crop("T2.nii.gz"), tmp_path / "third", PROV, reference=tmp_path / "nowhere")


def test_oblique_anisotropic_volume_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray((rng.random((7, 9, 11)) * 800 - 100).astype(np.float32))
    image.SetSpacing((0.7, 1.3, 3.5))
    image.SetOrigin((12.5, -40.25, 7.0))
    rotation = sitk.VersorTransform((0.3, -0.5, 0.8), 0.6)  # a proper rotation: right-handed, oblique
    image.SetDirection(rotation.GetMatrix())
    back = read_image(write_dicom_series(image, tmp_path / "oblique", PROV))
    _assert_same_grid(back, image)
    _assert_close_values(image, back)


def test_an_acquired_series_is_never_written_into(tmp_path):
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    acquired = _acquired_series(image, tmp_path / "t2_tse")
    before = {p.name: p.read_bytes() for p in acquired.iterdir()}
    with pytest.raises(ImageError, match=f"{acquired}: holds files that are not a synthetic DICOM series"):
        write_dicom_series(image, acquired, PROV)
    with pytest.raises(ImageError, match="refusing to write into it"):
        write_image(image, f"{acquired}/", PROV)
    assert {p.name: p.read_bytes() for p in acquired.iterdir()} == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("keep me")
    with pytest.raises(ImageError, match="notes: holds files"):
        write_dicom_series(image, notes, PROV)
    synthetic = write_image(image, f"{tmp_path / 'synthetic'}/", PROV)
    first_uid = _datasets(synthetic)[0].SeriesInstanceUID
    write_dicom_series(image, synthetic, PROV)  # a synthetic series may be replaced, as a whole
    assert len(_datasets(synthetic)) == 4 and _datasets(synthetic)[0].SeriesInstanceUID != first_uid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "synthetic", "t2_tse"]  # no temporary left


def test_an_interrupted_write_leaves_no_partial_series(tmp_path, monkeypatch):
    image = sitk.GetImageFromArray(np.ones((6, 5, 4), np.float32))
    save_as, written = FileDataset.save_as, []

    def fail_on_the_third(ds, *args, **kwargs):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(ds.filename)
        save_as(ds, *args, **kwargs)

    monkeypatch.setattr(FileDataset, "save_as", fail_on_the_third)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(image, tmp_path / "synthetic", PROV)
    assert list(tmp_path.iterdir()) == []


@needs_shared
def test_cli_writes_a_series_in_the_input_study(tmp_path, capsys):
    t1 = _acquired_series(_crop("T1.nii.gz"), tmp_path / "study" / "t1_mprage")
    out = tmp_path / "study" / "synthetic_T2"
    assert main(["synthesize", "--weights", str(WEIGHTS), "--input", f"T1={t1}", "--target", "T2",
                 "--out", f"{out}/"]) == 0
    assert "SYNTHETIC T2 by linear from T1" in capsys.readouterr().out
    _assert_same_grid(read_image(out), read_image(t1))
    assert sitk.GetArrayFromImage(read_image(out)).max() > 0
    source, ds = _datasets(t1)[0], _datasets(out)[0]
    assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SeriesDescription == "SYNTHETIC T2 by linear from T1" and "DERIVED" in ds.ImageType
    assert main(["synthesize", "--weights", str(WEIGHTS), "--input", f"T1={t1}", "--target", "T2",
                 "--dicom-reference", str(t1), "--out", str(tmp_path / "t2.nii.gz")]) == 2
    assert "--dicom-reference needs a DICOM output" in capsys.readouterr().err
