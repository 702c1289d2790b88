"""REPLICA-style forest and modality propagation baselines."""
import numpy as np
from scipy import ndimage

from medsynth_app.baselines import ReplicaForest, modality_propagation, replica_features


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _brute_force_propagation(inputs, atlases, voxel, patch_radius, search_radius, k):
    r, R = patch_radius, search_radius
    padded_subject = [np.pad(v, r, mode="edge") for v in inputs]
    i, j, l = voxel
    patch = np.concatenate([p[i:i + 2 * r + 1, j:j + 2 * r + 1, l:l + 2 * r + 1].ravel() for p in padded_subject])
    candidates = []
    for atlas_inputs, target in atlases:
        padded = [np.pad(v, r, mode="edge") for v in atlas_inputs]
        for a, b, c in np.ndindex(2 * R + 1, 2 * R + 1, 2 * R + 1):
            q = (i + a - R, j + b - R, l + c - R)
            if all(0 <= p < n for p, n in zip(q, target.shape)):
                other = np.concatenate([p[q[0]:q[0] + 2 * r + 1, q[1]:q[1] + 2 * r + 1, q[2]:q[2] + 2 * r + 1].ravel()
                                        for p in padded])
                candidates.append((float(np.square(other - patch).sum()), float(target[q])))
    return np.mean([value for _, value in sorted(candidates)[:k]])


def test_modality_propagation_with_the_subject_as_atlas_returns_its_target():
    rng = np.random.default_rng(0)
    shape = (12, 13, 14)
    inputs = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    inputs[0][3:8, 3:8, 3:8] = inputs[1][3:8, 3:8, 3:8] = 1.0  # flat region: distance 0 at several offsets
    target = rng.normal(size=shape).astype(np.float32)
    mask = rng.random(shape) < 0.4
    mask[0, 0, 0] = mask[-1, -1, -1] = mask[5, 5, 5] = True
    synthetic = modality_propagation(inputs, mask, [(inputs, target)], k=1, chunk=100)
    assert np.array_equal(synthetic, target[mask])


def test_modality_propagation_equals_brute_force_search():
    rng = np.random.default_rng(1)
    shape = (9, 10, 8)
    subject = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    atlases = [([rng.normal(size=shape).astype(np.float32) for _ in range(2)],
                rng.normal(size=shape).astype(np.float32)) for _ in range(2)]
    mask = np.zeros(shape, dtype=bool)
    voxels = [(0, 0, 0), (4, 5, 3), (8, 9, 7), (1, 7, 2)]
    for voxel in voxels:
        mask[voxel] = True
    synthetic = modality_propagation(subject, mask, atlases, patch_radius=1, search_radius=2, k=3, chunk=3)
    expected = {v: _brute_force_propagation(subject, atlases, v, 1, 2, 3) for v in voxels}
    assert np.allclose(synthetic, [expected[tuple(v)] for v in np.argwhere(mask)], atol=1e-6)


def test_replica_forest_learns_a_smooth_nonlinear_map():
    rng = np.random.default_rng(2)
    shape = (32, 32, 24)
    first, second = _smooth_field(rng, shape, 2.0), _smooth_field(rng, shape, 3.0)
    target = np.sin(1.5 * first) + 0.5 * second**2 + 0.3 * first * second
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    mask = sum(((axis - n / 2) / (0.45 * n)) ** 2 for axis, n in zip(grid, shape)) <= 1
    features = replica_features([first, second], mask, spacing=(1.0, 1.0, 1.5))
    assert features.shape == (mask.sum(), 2 * (27 + 3 + 6 + 18) + 3) and features.dtype == np.float32
    values = target[mask]
    train = rng.random(len(values)) < 0.5
    forest = ReplicaForest(n_estimators=30, n_jobs=1).fit(features[train], values[train], max_samples=6000)
    prediction = forest.predict(features[~train], chunk=5000)
    held_out = values[~train]
    r2 = 1 - np.square(prediction - held_out).sum() / np.square(held_out - held_out.mean()).sum()
    assert prediction.shape == held_out.shape and prediction.dtype == np.float32
    assert r2 > 0.9
