"""Classical synthesis baselines: REPLICA-style regression forest (Jog et al., MedIA 2017) and modality propagation
(Ye et al., MICCAI 2013; the k-nearest-patch fusion, without its coherence regularisation)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import numpy as np
from scipy import ndimage
from sklearn.ensemble import ExtraTreesRegressor

from medsynth_app.patches import extract_patches, normalised_coordinates, patch_windows


def _sample(volume: np.ndarray, index: tuple[np.ndarray, ...], offset: Sequence[int]) -> np.ndarray:
    """volume at index + offset, indices clamped to the grid (edge replication)."""
    return volume[tuple(np.clip(i + o, 0, n - 1) for i, o, n in zip(index, offset, volume.shape))]


def _replica_columns(volume: np.ndarray, mask: np.ndarray, spacing: np.ndarray, smoothing_mm: Sequence[float],
                     window_mm: Sequence[float], context_mm: Sequence[float]) -> Iterator[np.ndarray]:
    """The feature columns of one contrast, one filtered volume alive at a time."""
    index = np.nonzero(mask)
    volume = np.asarray(volume, dtype=np.float64)
    yield from extract_patches(volume, mask, radius=1).T
    for sigma in smoothing_mm:
        yield ndimage.gaussian_filter(volume, sigma / spacing)[index]
    for half_width in window_mm:
        size = 2 * np.maximum(np.rint(half_width / spacing), 1).astype(int) + 1
        mean = ndimage.uniform_filter(volume, size, mode="nearest")[index]
        square = ndimage.uniform_filter(volume * volume, size, mode="nearest")[index]
        yield mean
        yield np.sqrt(np.maximum(square - mean * mean, 0))
    for distance in context_mm:
        smooth = ndimage.gaussian_filter(volume, distance / 2 / spacing)
        steps = np.rint(distance / spacing).astype(int)
        for axis in range(3):
            for sign in (-1, 1):
                offset = np.zeros(3, dtype=int)
                offset[axis] = sign * steps[axis]
                yield _sample(smooth, index, offset)


def replica_features(volumes: Sequence[np.ndarray], mask: np.ndarray, spacing: Sequence[float],
                     smoothing_mm: Sequence[float] = (1.0, 2.0, 4.0), window_mm: Sequence[float] = (1.0, 2.0, 4.0),
                     context_mm: Sequence[float] = (4.0, 8.0, 16.0)) -> np.ndarray:
    """Multi-scale features of the N voxels of `mask` (np.nonzero order), (N, F) float32; per input contrast:
    its 3x3x3 patch; Gaussian-smoothed intensities (sigma in mm); mean and standard deviation in cubic windows of
    half-width `window_mm` (at least one voxel); context: the intensity smoothed with sigma d/2 sampled at +-d mm along
    each axis, for d in `context_mm`; then the normalised coordinates. F = C (27 + S + 2 W + 6 D) + 3."""
    spacing = np.asarray(spacing, dtype=np.float64)
    per_contrast = 27 + len(smoothing_mm) + 2 * len(window_mm) + 6 * len(context_mm)
    out = np.empty((int(mask.sum()), len(volumes) * per_contrast + 3), dtype=np.float32)
    columns = chain(*(_replica_columns(volume, mask, spacing, smoothing_mm, window_mm, context_mm)
                      for volume in volumes), normalised_coordinates(mask.shape, mask).T)
    for c, column in enumerate(columns):
        out[:, c] = column
    return out


class ReplicaForest:
    """Extremely randomised regression trees on `replica_features`, trained on a random sample of brain voxels."""

    def __init__(self, n_estimators: int = 60, min_samples_leaf: int = 5, max_depth: int | None = None,
                 max_features: float = 1 / 3, n_jobs: int = -1, random_state: int = 0) -> None:
        self.random_state = random_state
        self.model = ExtraTreesRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                         max_depth=max_depth, max_features=max_features, n_jobs=n_jobs,
                                         random_state=random_state)

    def fit(self, features: np.ndarray, target: np.ndarray, max_samples: int = 300_000) -> ReplicaForest:
        """Fit on at most `max_samples` rows drawn without replacement."""
        rows = np.random.default_rng(self.random_state).permutation(len(features))[:max_samples]
        self.model.fit(features[rows], target[rows])
        return self

    def predict(self, features: np.ndarray, chunk: int = 200_000) -> np.ndarray:
        """(N,) float32 predictions, `chunk` rows at a time to bound the trees' working memory."""
        return np.concatenate([self.model.predict(features[i:i + chunk]).astype(np.float32)
                               for i in range(0, len(features), chunk)])


def modality_propagation(target_inputs: Sequence[np.ndarray], mask: np.ndarray,
                         atlases: Sequence[tuple[Sequence[np.ndarray], np.ndarray]], patch_radius: int = 1,
                         search_radius: int = 2, k: int = 5, chunk: int = 16384) -> np.ndarray:
    """Modality propagation (Ye et al. 2013): for each voxel of `mask`, the k atlas voxels, over all atlases and all
    offsets within +-search_radius, whose input patches (all contrasts, sum of squared differences) are nearest to the
    subject's; returns the mean of their atlas-target intensities, (N,) float32 in np.nonzero order.

    Atlases are (input volumes in the order of `target_inputs`, target volume), registered to the subject. Exact
    search, vectorised over voxels: per chunk of voxels and per atlas, one gather of each voxel's (2 (R + r) + 1)^3
    neighbourhood, from which the distances to all (2 R + 1)^3 offsets are accumulated one patch element at a time;
    a running top-k is merged after each atlas. Ties go to the earlier atlas, then to the offset nearer the voxel.
    """
    shapes = {np.shape(v) for v in target_inputs} | {np.shape(v) for inputs, t in atlases for v in (*inputs, t)}
    if shapes != {mask.shape}:
        raise ValueError(f"subject, atlases and mask must share one grid; got shapes {sorted(shapes)}")
    r, R = patch_radius, search_radius
    w, side = 2 * r + 1, 2 * R + 1
    offsets = sorted(np.ndindex(side, side, side), key=lambda o: (sum((c - R) ** 2 for c in o), o))
    if k > len(offsets) * len(atlases):
        raise ValueError(f"k={k} exceeds the {len(offsets) * len(atlases)} candidates per voxel")
    flat_offsets = np.ravel_multi_index(np.array(offsets).T, (side,) * 3)
    shifts = np.array(offsets) - R
    index = np.stack(np.nonzero(mask), axis=1)
    best_distance = np.full((len(index), k), np.inf, dtype=np.float32)
    best_value = np.zeros((len(index), k), dtype=np.float32)
    subject = [patch_windows(volume, r) for volume in target_inputs]
    for inputs, target in atlases:
        neighbourhoods = [patch_windows(volume, R + r) for volume in inputs]
        values = patch_windows(target, R)
        for start in range(0, len(index), chunk):
            part = slice(start, start + chunk)
            voxels = tuple(index[part].T)
            distance = np.zeros((len(index[part]), side, side, side), dtype=np.float32)
            for patches, around in zip(subject, neighbourhoods):
                patches, around = patches[voxels], around[voxels]
                # One pass per patch element over all offsets at once: w^3 operations on (n, side^3) arrays run
                # twice as fast as side^3 small reductions over (n, w^3).
                for a, b, c in np.ndindex(w, w, w):
                    difference = around[:, a:a + side, b:b + side, c:c + side] - patches[:, a, b, c, None, None, None]
                    distance += np.square(difference, out=difference)
            distance = distance.reshape(len(distance), -1)[:, flat_offsets]
            # Candidates outside the grid would be edge-padding copies, not anatomy.
            shifted = index[part, None, :] + shifts
            distance[((shifted < 0) | (shifted >= mask.shape)).any(axis=2)] = np.inf
            candidates = values[voxels].reshape(len(distance), -1)[:, flat_offsets]
            merged = np.concatenate([best_distance[part], distance], axis=1)
            order = np.argsort(merged, axis=1, kind="stable")[:, :k]
            best_value[part] = np.take_along_axis(np.concatenate([best_value[part], candidates], axis=1), order, 1)
            best_distance[part] = np.take_along_axis(merged, order, axis=1)
    return best_value.mean(axis=1)
