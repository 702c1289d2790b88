import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsynth_app.imageio import ImageError, Provenance, is_synthetic_file, read_image, write_image

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
