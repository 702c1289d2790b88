import hashlib
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import SHARED, needs_shared
from medsynth_app.cli import main
from medsynth_app.imageio import ImageError, Provenance, is_synthetic_file, read_image, unpack_dicom_zip, write_image
from pacs_fixture import write_study
from server_fixture import CROP_SIZE, CROP_START

PROV = Provenance(model="linear", inputs=("T1", "T2"), target="FLAIR", library_version="test")


def _image(shape=(6, 7, 8), spacing=(0.9, 1.1, 3.0)):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random(shape[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_formats_read_back_with_geometry(tmp_path, suffix):
    image = _image()
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(image, str(path))
    back = read_image(path)
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetSpacing(), image.GetSpacing())
    assert np.allclose(back.GetDirection(), image.GetDirection())
    assert np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_nifti_output_is_marked_synthetic(tmp_path):
    path = write_image(_image(), tmp_path / "flair.nii.gz", PROV)
    header = nib.load(path).header
    assert header["descrip"].tobytes().rstrip(b"\0").decode() == "SYNTHETIC FLAIR by linear from T1+T2"
    assert header["intent_name"].tobytes().rstrip(b"\0").decode() == "SYNTHETIC"
    assert header.get_data_dtype() == np.float32
    assert is_synthetic_file(path)


def test_nrrd_output_is_marked_synthetic(tmp_path):
    path = write_image(_image(), tmp_path / "flair.nrrd", PROV)
    text = path.read_bytes()[:2000].decode("latin-1")
    assert "medsynth_synthetic:=true" in text and "medsynth_inputs:=T1,T2" in text
    assert is_synthetic_file(path)


def test_an_acquired_image_is_never_overwritten(tmp_path):
    acquired = tmp_path / "FLAIR.nii.gz"
    sitk.WriteImage(_image(), str(acquired))
    before = acquired.read_bytes()
    with pytest.raises(ImageError, match="not a synthetic image; refusing to overwrite"):
        write_image(_image(), acquired, PROV)
    assert acquired.read_bytes() == before
    synthetic = write_image(_image(), tmp_path / "syn.nii.gz", PROV)
    write_image(_image(), synthetic, PROV)  # a synthetic output may be replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FLAIR.nii.gz", "syn.nii.gz"]  # no temporary left


def test_bad_inputs_get_a_message_naming_the_file(tmp_path):
    text = tmp_path / "notes.nii"
    text.write_text("hello")
    with pytest.raises(ImageError, match="notes.nii: not a readable image"):
        read_image(text)
    text_gz = tmp_path / "notes.nii.gz"
    text_gz.write_text("hello")
    with pytest.raises(ImageError, match="notes.nii.gz: damaged gzip file"):
        read_image(text_gz)
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(_image((40, 40, 40)), str(good))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.nii.gz: damaged gzip file"):
        read_image(truncated)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.float32)), str(flat))
    with pytest.raises(ImageError, match="flat.nii.gz: is 2-D"):
        read_image(flat)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), series)
    with pytest.raises(ImageError, match="series.nii.gz: is a 4-D series of 3 volumes"):
        read_image(series)
    nan = tmp_path / "nan.nii.gz"
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    with pytest.raises(ImageError, match="nan.nii.gz: contains 1 NaN or infinite voxels"):
        read_image(nan)
    with pytest.raises(ImageError, match="missing.nii.gz: no such file"):
        read_image(tmp_path / "missing.nii.gz")


def test_an_all_zero_volume_is_refused_but_an_empty_mask_is_read(tmp_path):
    zeros = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), np.eye(4)), zeros)
    with pytest.raises(ImageError, match="zeros.nii.gz: every voxel is 0; the volume holds no image"):
        read_image(zeros)
    assert sitk.GetArrayFromImage(read_image(zeros, mask=True)).max() == 0


def test_a_volume_above_the_voxel_limit_is_refused_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(_image((40, 40, 40)), str(path))
    monkeypatch.setenv("MEDSYNTH_MAX_VOXELS", "63999")
    with pytest.raises(ImageError, match=r"big.nii.gz: 40x40x40 = 0.1 M voxels exceeds the limit of 0.1 M voxels "
                                         r"\(MEDSYNTH_MAX_VOXELS\)"):
        read_image(path)
    monkeypatch.setenv("MEDSYNTH_MAX_VOXELS", "64000")
    assert read_image(path).GetSize() == (40, 40, 40)
    monkeypatch.setenv("MEDSYNTH_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="MEDSYNTH_MAX_VOXELS='lots' is not a whole number"):
        read_image(path)


# ---- DICOM series folders and zips as input ---------------------------------------------------------------------
LINEAR_FLAIR = Path(__file__).resolve().parents[1] / "apps" / "medsynth" / "model" / "linear_T1+T2_to_FLAIR.pt"


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    """patient19's T1, T2 and FLAIR (crops) as the DICOM series of one study: series2, series3, series4."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    folder = SHARED / "open_ms_data" / "mni" / "patient19"
    images = {c: sitk.RegionOfInterest(sitk.ReadImage(str(folder / f"{c}.nii.gz")), CROP_SIZE, CROP_START)
              for c in ("T1", "T2", "FLAIR")}
    return write_study(images, tmp_path_factory.mktemp("dicom") / "study", "patient19")


def _zip(folder: Path, path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{prefix}{file.name}")
    return path


def _checksums(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_shared
def test_cli_synthesises_from_a_dicom_folder_and_a_zip_into_the_inputs_study(dicom_study, tmp_path, capsys):
    t1, t2, flair = sorted(dicom_study.iterdir())
    t2_zip = _zip(t2, tmp_path / "t2.zip", prefix="DICOM/T2/")
    before = _checksums(dicom_study)
    out = tmp_path / "out" / "synthetic_flair"
    assert main(["synthesize", "--weights", str(LINEAR_FLAIR), "--input", f"T1={t1}", "--input", f"T2={t2_zip}",
                 "--target", "FLAIR", "--out", f"{out}/"]) == 0
    assert _checksums(dicom_study) == before  # the acquired series are untouched
    first = pydicom.dcmread(sorted(out.iterdir())[0], stop_before_pixels=True)
    source = pydicom.dcmread(sorted(t1.iterdir())[0], stop_before_pixels=True)
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.PatientID == "patient19"
    assert first.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    result, reference, truth, copied = (read_image(p) for p in (out, t1, flair, t2))
    assert result.GetSize() == reference.GetSize()
    for get in (sitk.Image.GetOrigin, sitk.Image.GetSpacing, sitk.Image.GetDirection):
        np.testing.assert_allclose(get(result), get(reference), atol=1e-3)
    values, truth, copied = (sitk.GetArrayFromImage(i) for i in (result, truth, copied))
    brain = values > 0
    r, r_copy = (np.corrcoef(v[brain], truth[brain])[0, 1] for v in (values, copied))
    assert r > r_copy + 0.05, (r, r_copy)  # better than handing back the T2 input


@needs_shared
def test_a_zip_must_hold_one_readable_series(dicom_study, tmp_path):
    t1, t2, _ = sorted(dicom_study.iterdir())
    both = tmp_path / "both.zip"
    with zipfile.ZipFile(both, "w") as archive:
        for file in [*t1.iterdir(), *t2.iterdir()]:  # two series' files mixed in one folder
            archive.write(file, f"{file.parent.name}_{file.name}")
    with pytest.raises(ImageError, match=r"both\.zip: holds 2 DICOM series"):
        unpack_dicom_zip(both, tmp_path / "a")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(_zip(t1, tmp_path / "t1.zip").read_bytes()[:5000])
    with pytest.raises(ImageError, match=r"damaged\.zip: not a readable zip file"):
        unpack_dicom_zip(damaged, tmp_path / "b")
    escaping = tmp_path / "escaping.zip"
    _zip(t1, escaping, prefix="../../outside/")
    assert unpack_dicom_zip(escaping, tmp_path / "c" / "d").is_relative_to(tmp_path / "c" / "d")
    assert not (tmp_path / "outside").exists()
