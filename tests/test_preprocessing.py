import numpy as np
from scipy import ndimage
import pytest
import SimpleITK as sitk

from medsynth_app.normalization import IntensityNorm
from medsynth_app.preprocessing import prepare, restore
from medsynth_app.registration import register_rigid
from conftest import SHARED, needs_shared


def _rotation(ax, ay, az):
    t = sitk.Euler3DTransform()
    t.SetRotation(ax, ay, az)
    return tuple(t.GetMatrix())


DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "permuted": (0, 0, 1, 1, 0, 0, 0, -1, 0),
    "oblique": _rotation(0.2, -0.35, 0.5),
}


def _phantom(direction, spacing=(0.8, 1.1, 3.3), size=(37, 29, 21), seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(size[::-1]).astype(np.float32)
    centre = np.array(size[::-1])[:, None, None, None] / 2
    inside = (((grid - centre) / (np.array(size[::-1])[:, None, None, None] / 2.6)) ** 2).sum(0) < 1
    ramp = grid[2] / size[0] + grid[0] / size[2]
    data = np.where(inside, 100 + 50 * ramp + 5 * rng.random(size[::-1]), 0).astype(np.float32)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(v) for v in direction))
    image.SetOrigin((12.5, -40.0, 7.25))
    return image


@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize("method", ["mean", "percentile", "zscore"])
def test_round_trip_is_exact_on_the_original_grid(name, method):
    image = _phantom(DIRECTIONS[name])
    subject = prepare({"T1": image}, "T1", normalisation=method, divisor=16)
    assert all(s % 16 == 0 for s in subject.shape)
    back = restore(subject.images["T1"], subject, subject.norms["T1"])
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    original, restored = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(back)
    inside = original > 0
    tolerance = 1e-3 if method != "percentile" else 60  # percentile clips the top 0.5 %
    assert np.abs(restored - original)[inside].max() < tolerance
    assert (restored[~inside] == 0).all()
    if method == "percentile":
        assert np.mean(np.abs(restored - original)[inside] < 1e-3) > 0.98


def test_canonical_grid_is_ras_with_axial_last():
    image = _phantom(DIRECTIONS["permuted"], spacing=(0.8, 1.1, 3.3))
    subject = prepare({"T1": image}, "T1")
    # direction columns: index axis 0 runs along +y (P), axis 1 along -z (I), axis 2 along +x (L)
    assert subject.spacing == (3.3, 0.8, 1.1)
    assert np.allclose(np.sign(np.diag(subject.affine[:3, :3])), 1)


def test_second_contrast_on_another_grid_is_resampled_onto_the_reference():
    reference = _phantom(DIRECTIONS["LPS"], spacing=(1.0, 1.0, 2.0), size=(40, 40, 20))
    other = sitk.Resample(reference, [20, 20, 40], sitk.Transform(), sitk.sitkLinear, reference.GetOrigin(),
                          (2.0, 2.0, 1.0), reference.GetDirection(), 0.0, sitk.sitkFloat32)
    subject = prepare({"T1": reference, "T2": other}, "T1", register=False)
    assert subject.images["T2"].shape == subject.images["T1"].shape
    inside = ndimage.binary_erosion(subject.mask, iterations=2)  # away from the partial-volume edge
    assert np.corrcoef(subject.images["T1"][inside], subject.images["T2"][inside])[0, 1] > 0.9


def test_mean_normalisation_clips_negatives_and_keeps_parameters():
    volume = np.array([[[-5.0, 2.0], [4.0, 6.0]]], dtype=np.float32)
    mask = np.ones_like(volume, dtype=bool)
    norm = IntensityNorm.fit(volume, mask, "mean")
    assert norm.scale == pytest.approx(3.0)  # mean of 0, 2, 4, 6
    assert np.allclose(norm.apply(volume, mask), [[[0, 2 / 3], [4 / 3, 2]]])
    assert IntensityNorm.from_dict(norm.to_dict()) == norm


@needs_shared
def test_rigid_registration_recovers_a_known_motion_on_real_data():
    """T1W of a longitudinal study, moved by a known rigid motion, registered back onto its FLAIR: the result lands
    within about one voxel of the database's own transform composed with that motion."""
    study = SHARED / "open_ms_data" / "longitudinal" / "patient12_study1"
    fixed = sitk.ReadImage(str(study / "FLAIR.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(study / "raw" / "T1W.nii.gz"), sitk.sitkFloat32)
    shipped = sitk.ReadTransform(str(study / "raw" / "T1W_intrastudy_to_FLAIR.txt"))
    motion = sitk.Euler3DTransform()
    motion.SetCenter(moving.TransformContinuousIndexToPhysicalPoint([s / 2 for s in moving.GetSize()]))
    motion.SetRotation(0.0, 0.03, 0.07)
    motion.SetTranslation((5.0, -4.0, 3.0))
    matrix = np.array(motion.GetMatrix()).reshape(3, 3)
    moved = sitk.Image(moving)
    moved.SetDirection(tuple((matrix @ np.array(moving.GetDirection()).reshape(3, 3)).ravel()))
    moved.SetOrigin(motion.TransformPoint(moving.GetOrigin()))

    found = register_rigid(fixed, moved)

    voxels = sitk.GetArrayFromImage(fixed)
    points = [fixed.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])
              for idx in np.argwhere(voxels > np.percentile(voxels, 70))[::400]]
    truth = [motion.TransformPoint(shipped.TransformPoint(p)) for p in points]
    error = np.linalg.norm(np.subtract([found.TransformPoint(p) for p in points], truth), axis=1)
    start = np.linalg.norm(np.subtract(points, truth), axis=1)
    assert start.mean() > 5.0
    assert error.mean() < 1.0 and error.max() < 2.5  # voxels: 0.72 x 0.72 x 3-4 mm
