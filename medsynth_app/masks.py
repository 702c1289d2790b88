"""Automatic brain (foreground) masks for skull-stripped and whole-head volumes."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def background_value(volume: np.ndarray) -> float | None:
    """The constant that fills the background, read off the volume's faces; None when the background is noise.

    Skull-stripped sets fill it with 0, z-scored ones with a negative constant, some FLAIRs with a small positive one.
    """
    faces = _faces(volume)
    values, counts = np.unique(faces, return_counts=True)
    best = int(np.argmax(counts))
    return float(values[best]) if counts[best] > 0.5 * faces.size else None


def foreground(volume: np.ndarray) -> np.ndarray:
    """Voxels that are not background: differing from the constant background, or above Otsu's threshold of a noisy
    (whole-head) background; largest connected component, holes filled."""
    constant = background_value(volume)
    if constant is not None:
        span = float(np.percentile(volume, 99.5)) - constant
        mask = np.abs(volume - constant) > 1e-3 * max(span, 1e-12)
    else:
        # Otsu on the log intensities separates noise from tissue more robustly than on raw values for heads
        # whose bright fat or vessels stretch the histogram.
        positive = np.log1p(np.clip(volume, 0, None))
        mask = positive > threshold_otsu(positive[:: max(1, positive.size // 2_000_000)])
        if _faces(mask).mean() > 0.5:
            # The faces are mostly above the threshold: no background in view (a crop inside the head), so Otsu
            # split tissues from each other. Everything is foreground.
            return np.ones(volume.shape, dtype=bool)
    return fill_holes(largest_component(mask))


def _faces(volume: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ravel(volume[i]) for i in (0, -1)]
                          + [np.ravel(volume[:, i]) for i in (0, -1)]
                          + [np.ravel(volume[:, :, i]) for i in (0, -1)])


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill 3-D holes, then holes left open at the volume's edge slice by slice along the last (axial) axis.

    Equal to scipy's ``binary_fill_holes`` (3-D, then on each axial slice) but one labelling of the background per
    pass inside the mask's bounding box instead of an iterated dilation over the volume (1.3-1.7 s -> 0.4 s for both
    passes on a 240x240x155 volume): background touching the box's faces reaches the volume's faces around it."""
    mask = mask.astype(bool)
    if not mask.any():
        return mask
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    core = mask[box]
    in_plane = ndimage.generate_binary_structure(3, 1)
    in_plane[:, :, (0, 2)] = False  # no connection across axial slices: every slice is labelled on its own
    core = _fill_background_pockets(core, ndimage.generate_binary_structure(3, 1), axes=(0, 1, 2))
    core = _fill_background_pockets(core, in_plane, axes=(0, 1))
    filled = mask.copy()
    filled[box] = core
    return filled


def _fill_background_pockets(mask: np.ndarray, structure: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``mask`` with every background component (connected by ``structure``) that touches no face of ``axes``
    turned into foreground."""
    labels, _ = ndimage.label(~mask, structure=structure)
    faces = [np.take(labels, index, axis=axis) for axis in axes for index in (0, -1)]
    open_to_edge = np.zeros(labels.max() + 1, dtype=bool)
    open_to_edge[np.unique(np.concatenate([f.ravel() for f in faces]))] = True
    open_to_edge[0] = True  # label 0 is the foreground itself
    return ~open_to_edge[labels] | mask


def brain_mask(volumes: list[np.ndarray]) -> np.ndarray:
    """Voxels that are foreground in every input contrast (EVALUATION.md, step 2), holes filled."""
    mask = np.logical_and.reduce([foreground(v) for v in volumes])
    if not mask.any():
        raise ValueError("no voxel is foreground in every input contrast")
    return fill_holes(largest_component(mask))
