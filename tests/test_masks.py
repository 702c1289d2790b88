import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medsynth_app.masks import background_value, brain_mask, fill_holes, foreground
from conftest import SHARED, needs_shared


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def _scipy_fill_holes(mask):
    """The reference: scipy's iterated-dilation hole filling, in 3-D and then on every axial slice."""
    filled = ndimage.binary_fill_holes(mask)
    for k in range(filled.shape[-1]):
        filled[..., k] = ndimage.binary_fill_holes(filled[..., k])
    return filled


@pytest.mark.parametrize("seed", range(20))
def test_fill_holes_equals_scipys_hole_filling(seed):
    """Random masks, alone and placed anywhere in a larger empty volume (touching its faces or not)."""
    rng = np.random.default_rng(seed)
    blob = rng.random((int(rng.integers(3, 20)), int(rng.integers(3, 20)), int(rng.integers(1, 10)))) > rng.uniform(0.2, 0.8)
    volume = np.zeros((24, 24, 12), bool)
    at = [int(rng.integers(0, v - b + 1)) for v, b in zip(volume.shape, blob.shape)]
    volume[at[0]:at[0] + blob.shape[0], at[1]:at[1] + blob.shape[1], at[2]:at[2] + blob.shape[2]] = blob
    for mask in (blob, volume):
        np.testing.assert_array_equal(fill_holes(mask), _scipy_fill_holes(mask))


@needs_shared
def test_fill_holes_equals_scipys_on_a_real_volume():
    t1 = _array(SHARED / "hinet_brats2018_slices" / "s01_train" / "t1.nii.gz")
    mask = t1 > np.percentile(t1[t1 > 0], 40)  # a tissue mask full of holes (CSF, ventricles)
    filled = fill_holes(mask)
    assert filled.sum() > mask.sum()
    np.testing.assert_array_equal(filled, _scipy_fill_holes(mask))


def test_constant_negative_background_is_detected():
    volume = np.full((20, 20, 20), -1.7, np.float32)
    volume[5:15, 5:15, 5:15] = np.random.default_rng(0).normal(0, 1, (10, 10, 10))
    assert background_value(volume) == np.float32(-1.7)
    mask = foreground(volume)
    assert mask[5:15, 5:15, 5:15].all() and mask.sum() == 1000


@needs_shared
def test_deepmedic_zscored_foreground_matches_its_brain_mask():
    folder = SHARED / "brats2013_deepmedic" / "brats_2013_pat0001_1"
    mask = brain_mask([_array(folder / "Flair_subtrMeanDivStd.nii.gz"), _array(folder / "T1c_subtrMeanDivStd.nii.gz")])
    given = _array(folder / "brainmask.nii.gz") > 0.5
    dice = 2 * (mask & given).sum() / (mask.sum() + given.sum())
    assert dice > 0.97


@needs_shared
def test_whole_head_noisy_background_gives_a_head_mask():
    flair = _array(SHARED / "open_ms_data" / "longitudinal" / "patient01_study1" / "FLAIR.nii.gz")
    assert background_value(flair) is None or background_value(flair) == 0
    mask = foreground(flair)
    fraction = mask.mean()
    assert 0.15 < fraction < 0.7
    # the head is one filled blob: the centre slice's centre is inside, the corners are outside
    x, y, z = (s // 2 for s in flair.shape)
    assert mask[x, y, z] and not mask[0, 0, z] and not mask[-1, -1, z]


@needs_shared
def test_a_crop_without_background_is_all_foreground():
    t1 = _array(SHARED / "open_ms_data" / "mni" / "patient07" / "T1.nii.gz")[70:110, 80:130, 70:100]
    assert (t1 > 0).mean() > 0.99  # brain tissue on every face
    assert foreground(t1).all()
