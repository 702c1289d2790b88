"""From a study's images to model-ready arrays, and the exact way back.

prepare(): align every contrast to the reference contrast's grid (rigid registration when grids differ), reorient to
canonical RAS+ voxel order, build or resample the brain mask, normalise intensities, crop to the mask's bounding box
and pad to a multiple of ``divisor``. restore(): the exact inverse, returning a model output on the reference's
original grid (size, spacing, origin, direction), on a chosen intensity scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import SimpleITK as sitk
from nibabel import orientations

from .imageio import voxel_to_ras
from .masks import background_value, brain_mask as automatic_brain_mask
from .normalization import IntensityNorm
from .registration import align_to

def to_array(image: sitk.Image) -> np.ndarray:
    """Voxels indexed [i, j, k] (SimpleITK index order), float32."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


@dataclass
class GridInverse:
    """Everything needed to put an array of the prepared grid back on the reference's original grid."""

    size: tuple[int, int, int]  # the reference's original grid
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    orientation: np.ndarray  # nibabel ornt from the reference's voxel axes to RAS+
    canonical_shape: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    pad: tuple[tuple[int, int], ...]

    def image(self, array: np.ndarray) -> sitk.Image:
        """An [i, j, k] array on the reference's original grid as a SimpleITK image with its geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(orientations.apply_orientation(array, self.orientation))

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), self.orientation)
        return np.ascontiguousarray(orientations.apply_orientation(array, back))

    def crop(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        cropped = array[tuple(slice(a, b) for a, b in zip(self.crop_start, self.crop_stop))]
        return np.pad(cropped, self.pad, constant_values=fill)

    def uncrop(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        inner = array[tuple(slice(before, size - after) for (before, after), size in zip(self.pad, array.shape))]
        full = np.full(self.canonical_shape, fill, dtype=array.dtype)
        full[tuple(slice(a, b) for a, b in zip(self.crop_start, self.crop_stop))] = inner
        return full


@dataclass
class PreparedSubject:
    """A subject on the prepared grid: canonical RAS+ voxel order, cropped to the brain, padded to ``divisor``."""

    id: str
    images: dict[str, np.ndarray]  # normalised float32, 0 outside the mask
    mask: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray  # prepared voxel -> RAS mm (for spatial coordinates)
    norms: dict[str, IntensityNorm]
    inverse: GridInverse
    lesion: np.ndarray | None = None
    raw_shape: tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mask.shape


def _bounding_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    start, stop = [], []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(int(occupied[0]))
        stop.append(int(occupied[-1]) + 1)
    return start, stop


def _zero_background(volume: np.ndarray) -> np.ndarray:
    """Shift a constant non-zero background to 0: z-scored sets (deepmedic) fill it with a negative constant, and
    subtracting it recovers intensities proportional to the acquired ones, so mean normalisation stays meaningful."""
    constant = background_value(volume)
    return volume - np.float32(constant) if constant else volume


def _centred_pad(size: int, divisor: int) -> tuple[int, int]:
    extra = -(-size // divisor) * divisor - size
    return extra // 2, extra - extra // 2


def _orientation(image: sitk.Image) -> np.ndarray:
    return orientations.io_orientation(voxel_to_ras(image))


def prepare(
    images: Mapping[str, sitk.Image],
    reference: str,
    *,
    brain_mask: sitk.Image | None = None,
    lesion_mask: sitk.Image | None = None,
    mask_from: tuple[str, ...] | None = None,
    normalisation: str = "mean",
    register: bool = True,
    divisor: int = 16,
    subject_id: str = "",
) -> PreparedSubject:
    """Prepare one subject. ``mask_from`` names the contrasts whose foreground defines the automatic brain mask
    (default: all given images); a given ``brain_mask`` wins."""
    if reference not in images:
        raise ValueError(f"reference contrast {reference} is not among the images ({', '.join(images)})")
    ref = images[reference]
    aligned = {name: align_to(ref, image, register) for name, image in images.items()}
    ornt = _orientation(ref)
    canonical = {name: _zero_background(orientations.apply_orientation(to_array(img), ornt))
                 for name, img in aligned.items()}
    canonical_shape = next(iter(canonical.values())).shape

    if brain_mask is not None:
        resampled = align_to(ref, brain_mask, register=False, interpolator=sitk.sitkNearestNeighbor)
        mask = orientations.apply_orientation(to_array(resampled), ornt) > 0.5
        if not mask.any():
            raise ValueError(f"{subject_id}: the given brain mask is empty on the reference grid")
    else:
        mask = automatic_brain_mask([canonical[name] for name in (mask_from or tuple(canonical))])
    lesion = None
    if lesion_mask is not None:
        resampled = align_to(ref, lesion_mask, register=False, interpolator=sitk.sitkNearestNeighbor)
        lesion = orientations.apply_orientation(to_array(resampled), ornt) > 0.5

    start, stop = _bounding_box(mask)
    sizes = [b - a for a, b in zip(start, stop)]
    pad = tuple(_centred_pad(size, divisor) for size in sizes)
    inverse = GridInverse(ref.GetSize(), ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection(), ornt, tuple(canonical_shape), tuple(start), tuple(stop), pad)

    norms = {name: IntensityNorm.fit(vol, mask, normalisation) for name, vol in canonical.items()}
    prepared_mask = inverse.crop(mask, False)
    prepared = {name: inverse.crop(norms[name].apply(vol, mask)) for name, vol in canonical.items()}
    spacing_in = np.asarray(ref.GetSpacing())
    spacing = tuple(float(spacing_in[int(np.flatnonzero(ornt[:, 0] == axis)[0])]) for axis in range(3))
    canonical_affine = voxel_to_ras(ref) @ orientations.inv_ornt_aff(ornt, to_array(ref).shape)
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(start) - np.asarray([before for before, _ in pad])
    return PreparedSubject(
        id=subject_id,
        images=prepared,
        mask=prepared_mask,
        spacing=spacing,
        affine=canonical_affine @ shift,
        norms=norms,
        inverse=inverse,
        lesion=None if lesion is None else inverse.crop(lesion, False),
        raw_shape=tuple(canonical_shape),
    )


def restore(array: np.ndarray, subject: PreparedSubject, norm: IntensityNorm | None) -> sitk.Image:
    """Return a prepared-grid array on the reference's original grid, float32; ``norm`` maps it back to an intensity
    scale (None keeps normalised units). Voxels outside the brain mask are 0."""
    if array.shape != subject.shape:
        raise ValueError(f"prediction shape {array.shape} differs from the prepared grid {subject.shape}")
    values = np.where(subject.mask, array, 0.0).astype(np.float32)
    if norm is not None:
        values = norm.invert(values, subject.mask)
    return subject.inverse.image(subject.inverse.from_canonical(subject.inverse.uncrop(values)))
