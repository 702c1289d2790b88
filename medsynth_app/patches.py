"""Per-voxel features for voxel-wise synthesis networks: cubic intensity patches and normalised coordinates.

Rows follow `np.nonzero(mask)` order everywhere, so a prediction goes back into a volume with `out[mask] = values`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def patch_windows(volume: np.ndarray, radius: int) -> np.ndarray:
    """View (X, Y, Z, w, w, w), w = 2 radius + 1, of the float32 volume padded by repeating its border: element
    [i, j, k] is the patch centred on voxel (i, j, k). Only the padded copy is allocated."""
    padded = np.pad(np.asarray(volume, dtype=np.float32), radius, mode="edge")
    return sliding_window_view(padded, (2 * radius + 1,) * 3)


def extract_patches(volume: np.ndarray, mask: np.ndarray, radius: int = 1, chunk: int = 262144) -> np.ndarray:
    """(N, (2 radius + 1)^3) float32 patches centred on the N voxels of `mask`, flattened in C order; gathered
    `chunk` voxels at a time so the only large allocation is the result."""
    if volume.shape != mask.shape:
        raise ValueError(f"volume {volume.shape} and mask {mask.shape} differ in shape")
    windows = patch_windows(volume, radius)
    i, j, k = np.nonzero(mask)
    out = np.empty((len(i), (2 * radius + 1) ** 3), dtype=np.float32)
    for start in range(0, len(i), chunk):
        part = slice(start, start + chunk)
        out[part] = windows[i[part], j[part], k[part]].reshape(-1, out.shape[1])
    return out


def multi_contrast_patches(volumes: Sequence[np.ndarray], mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Patches of several co-registered input contrasts concatenated per voxel: (N, C (2 radius + 1)^3)."""
    return np.concatenate([extract_patches(volume, mask, radius) for volume in volumes], axis=1)


def normalised_coordinates(shape: Sequence[int], mask: np.ndarray) -> np.ndarray:
    """(N, 3) float32 voxel indices of `mask` mapped linearly from [0, n - 1] to [-1, 1] per axis (0 for a single-voxel
    axis). The box is the image grid, not the brain's bounding box: volumes registered to one reference then share
    coordinates, as LSDN assumes (Nguyen et al. 2015, Sect. 2)."""
    if tuple(shape) != mask.shape:
        raise ValueError(f"shape {tuple(shape)} and mask {mask.shape} differ")
    index = np.stack(np.nonzero(mask), axis=1).astype(np.float32)
    extent = np.maximum(np.asarray(shape, dtype=np.float32) - 1, 1)
    return np.where(np.asarray(shape) > 1, 2 * index / extent - 1, 0).astype(np.float32)
