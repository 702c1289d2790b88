import numpy as np
import SimpleITK as sitk

from medsynth_app.masks import background_value, brain_mask, foreground
from conftest import SHARED, needs_shared


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


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
