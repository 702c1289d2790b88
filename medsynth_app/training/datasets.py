"""Datasets built from PreparedSubjects: 2-D slices (multimodal, synnet) and 3-D patches (cae3d).

Both hold references to the subjects' arrays (no copies of whole volumes for slices) and cut samples on demand, so a
dataset of twenty MNI-sized subjects costs little more than the prepared subjects themselves.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..metrics import hyperintensities
from ..preprocessing import PreparedSubject
from ..task import join


def channel_arrays(subject: PreparedSubject, channels: Sequence[str], missing_ok: bool = False) -> list[np.ndarray]:
    """The subject's arrays in ``channels`` order; "lesion" is its lesion mask (zeros when it has none). With
    ``missing_ok`` a contrast the subject lacks is None instead of an error."""
    arrays = []
    for name in channels:
        if name == "lesion":
            lesion = subject.lesion
            arrays.append(np.zeros(subject.shape, np.float32) if lesion is None else lesion.astype(np.float32))
        elif name not in subject.images and missing_ok:
            arrays.append(None)
        elif name not in subject.images:
            raise ValueError(f"subject {subject.id} lacks {name} (has {join(subject.images)})")
        else:
            arrays.append(subject.images[name])
    return arrays


def brain_slices(mask: np.ndarray, axis: int = 2, min_brain: float = 0.1) -> list[int]:
    """Indices of the slices along ``axis`` holding at least ``min_brain`` x the brain area of the subject's largest
    slice (0 keeps every slice with any brain; slices without brain are never kept)."""
    area = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    if not area.any():
        return []
    return [int(k) for k in np.flatnonzero((area > 0) & (area >= min_brain * area.max()))]


MAX_PLANE_ANISOTROPY = 2.0


def sampled_planes(spacing: Sequence[float], axes: Sequence[int],
                   max_anisotropy: float = MAX_PLANE_ANISOTROPY) -> list[int]:
    """Of ``axes``, those whose slice plane has its two voxel spacings within ``max_anisotropy`` of each other: a
    sagittal slice of a 4 mm axial acquisition is a squashed image, no view to learn from or to predict along.
    When no plane of ``axes`` qualifies, the best-sampled one."""
    def ratio(axis: int) -> float:
        first, second = (float(s) for a, s in enumerate(spacing) if a != axis)
        return max(first, second) / min(first, second)

    kept = [int(a) for a in axes if ratio(a) <= max_anisotropy]
    return kept or [int(min(axes, key=ratio))]


def study_balanced_weights(index: Sequence[tuple]) -> torch.Tensor:
    """Sampling weight of each row of a dataset's ``index`` (rows start with the study's number): one over its
    study's row count, so that every study is drawn equally often."""
    studies = torch.as_tensor([row[0] for row in index])
    return 1.0 / torch.bincount(studies)[studies].double()


def lesion_candidates(subject: PreparedSubject) -> np.ndarray | None:
    """The voxels lesion-aware sampling aims at: the study's lesion mask in the brain, or where it has none (or an
    empty one), the hyperintensities of its acquired FLAIR (the detection rule of `metrics`); None without either."""
    if subject.lesion is not None and (subject.lesion & subject.mask).any():
        return subject.lesion & subject.mask
    if "FLAIR" in subject.images:
        return hyperintensities(subject.images["FLAIR"], subject.mask)
    return None


def lesion_weighted(weights: torch.Tensor, lesion: torch.Tensor, share: float) -> torch.Tensor:
    """``weights`` with the rows where ``lesion`` is True scaled up so that they hold ``share`` of the total (left
    as they are when they already hold more, or when no row or every row holds a lesion)."""
    weights = weights.double()
    inside, outside = float(weights[lesion].sum()), float(weights[~lesion].sum())
    if inside == 0 or outside == 0 or inside / (inside + outside) >= share:
        return weights
    return torch.where(lesion, weights * share * outside / ((1 - share) * inside), weights)


def round_up(value: int, divisor: int) -> int:
    return -(-int(value) // divisor) * divisor


def _pad_centred(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), zeros around, the image centred as `preprocessing` centres its padding."""
    pads = [(0, 0)]
    for have, want in zip(image.shape[1:], size):
        extra = want - have
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(image, pads) if any(p != (0, 0) for p in pads) else image


class SliceDataset(Dataset):
    """Every brain slice along ``axes`` (of each subject, those in its well-sampled planes: `sampled_planes`) of
    every subject as a (C, H, W) float32 tensor, channels in ``channels`` order ("lesion" for the lesion mask).
    Slices are padded (centred, zeros) to one size for the whole set: the largest slice, rounded up to ``divisor``
    (16: both 2-D networks pool 2-4 times).

    ``crop``: instead of the whole slice, a ``crop`` x ``crop`` window centred on a brain pixel of the slice drawn
    from torch's generator (which the engine re-seeds every epoch), zeros beyond the slice. Fully convolutional
    networks trained so still predict whole slices; it spends a CPU's budget on brain instead of on padding.

    ``missing_ok``: subjects may lack some of the contrasts; a sample is then (slice, available) with the missing
    channels zero and ``available`` a (C,) bool tensor flagging the channels the subject holds."""

    def __init__(self, subjects: Sequence[PreparedSubject], channels: Sequence[str], axes: Sequence[int] = (2,),
                 min_brain: float = 0.1, divisor: int = 16, crop: int | None = None, missing_ok: bool = False) -> None:
        if not subjects:
            raise ValueError("no training subject")
        if crop is not None and (int(crop) <= 0 or int(crop) % divisor):
            raise ValueError(f"crop must be a positive multiple of {divisor}, got {crop}")
        self.channels = list(channels)
        self.crop = None if crop is None else int(crop)
        self.missing_ok = bool(missing_ok)
        self.volumes = [channel_arrays(s, self.channels, self.missing_ok) for s in subjects]
        self.masks = [s.mask for s in subjects]
        self.index: list[tuple[int, int, int]] = []
        height = width = divisor
        for n, subject in enumerate(subjects):
            for axis in sampled_planes(subject.spacing, axes):
                kept = brain_slices(subject.mask, axis, min_brain)
                self.index += [(n, int(axis), k) for k in kept]
                if kept:
                    h, w = (s for a, s in enumerate(subject.shape) if a != axis)
                    height, width = max(height, h), max(width, w)
        if not self.index:
            raise ValueError("no slice holds enough brain")
        self.size = (self.crop, self.crop) if self.crop else (round_up(height, divisor), round_up(width, divisor))
        self.subjects = subjects

    def lesion_rows(self) -> torch.Tensor:
        """Per row of ``index``: does its slice hold a `lesion_candidates` voxel (a crop of it may miss it)."""
        lesions = [lesion_candidates(s) for s in self.subjects]
        return torch.tensor([lesions[n] is not None and bool(np.take(lesions[n], k, axis=axis).any())
                             for n, axis, k in self.index])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n, axis, k = self.index[item]
        mask = np.take(self.masks[n], k, axis=axis)
        image = np.stack([np.zeros(mask.shape, np.float32) if v is None else np.take(v, k, axis=axis)
                          for v in self.volumes[n]]).astype(np.float32, copy=False)
        if self.crop:
            image = self._crop_at_brain(image, mask)
        image = torch.from_numpy(np.ascontiguousarray(_pad_centred(image, self.size)))
        if not self.missing_ok:
            return image
        return image, torch.tensor([v is not None for v in self.volumes[n]])

    def _crop_at_brain(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(mask)
        pick = int(torch.randint(len(rows), (1,)).item())
        half = self.crop // 2
        # In the slice padded by ``half``, the window centred on (row, col) starts at (row, col).
        padded = np.pad(image, [(0, 0), (half, half), (half, half)])
        return padded[:, rows[pick]:rows[pick] + self.crop, cols[pick]:cols[pick] + self.crop]


class PatchDataset(Dataset):
    """3-D patches for valid-convolution networks: (inputs (C_in, n_in^3), targets (C_out, n_out^3)) pairs where the
    output patch starts at every multiple of ``step`` (per axis) whose centre voxel is in the brain mask (the
    autoencoder paper: step 16, patches kept when their centre is in the mask). The input patch is the output patch
    grown by ``margin`` voxels on every side, read from the volume zero-padded by ``margin`` (voxels beyond the
    prepared grid are background), exactly as `predict_tiled` reads its tiles.

    ``jitter`` > 0 moves each drawn patch by a random offset in [-jitter, jitter] per axis (torch's global generator,
    which the training engine re-seeds every epoch), kept only when the moved patch's centre is still in the mask:
    every epoch then sees other crops, at both parities of the network's 2x2x2 pooling grid, instead of the same
    fixed grid of patches.

    ``input_noise`` > 0 adds Gaussian noise to the non-zero voxels of each input patch, with a standard deviation
    drawn per channel uniformly in [0, input_noise] (intensity units of the prepared arrays; same generator): the
    targets stay clean, so the network learns to see through input noise levels its training studies lack."""

    def __init__(self, subjects: Sequence[PreparedSubject], inputs: Sequence[str], targets: Sequence[str],
                 output_size: int, margin: int, step: int = 16, jitter: int = 0, input_noise: float = 0.0) -> None:
        if not subjects:
            raise ValueError("no training subject")
        if int(jitter) < 0 or float(input_noise) < 0:
            raise ValueError(f"patch jitter and input noise must be >= 0, got {jitter} and {input_noise}")
        self.output_size, self.margin, self.jitter = int(output_size), int(margin), int(jitter)
        self.input_noise = float(input_noise)
        self.masks = [subject.mask for subject in subjects]
        self.input_size = self.output_size + 2 * self.margin
        self.inputs, self.targets, self.index = [], [], []
        for n, subject in enumerate(subjects):
            x = np.stack(channel_arrays(subject, inputs))
            y = np.stack(channel_arrays(subject, targets))
            # left: margin; right: enough for a patch starting at the last voxel
            self.inputs.append(np.pad(x, [(0, 0)] + [(self.margin, self.input_size)] * 3))
            self.targets.append(np.pad(y, [(0, 0)] + [(0, self.output_size)] * 3))
            half = self.output_size // 2
            grids = [range(0, side, step) for side in subject.shape]
            for i in grids[0]:
                for j in grids[1]:
                    for k in grids[2]:
                        if subject.mask[_centre((i, j, k), half, subject.shape)]:
                            self.index.append((n, i, j, k))
        if not self.index:
            raise ValueError("no patch centre falls in a brain mask")
        self.subjects = subjects

    def lesion_rows(self) -> torch.Tensor:
        """Per row of ``index``: does its output patch (before jitter) hold a `lesion_candidates` voxel."""
        lesions, b = [lesion_candidates(s) for s in self.subjects], self.output_size
        return torch.tensor([lesions[n] is not None and bool(lesions[n][i:i + b, j:j + b, k:k + b].any())
                             for n, i, j, k in self.index])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, i, j, k = self.index[item]
        if self.jitter:
            i, j, k = self._jittered(n, (i, j, k))
        a, b = self.input_size, self.output_size
        x = self.inputs[n][:, i:i + a, j:j + a, k:k + a]
        y = self.targets[n][:, i:i + b, j:j + b, k:k + b]
        x = torch.from_numpy(np.ascontiguousarray(x))
        if self.input_noise:
            x = self._noisy(x)
        return x, torch.from_numpy(np.ascontiguousarray(y))

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        # torch's generator rather than a MONAI transform's own: the engine re-seeds it every epoch (resumable runs)
        std = torch.rand(x.shape[0], 1, 1, 1) * self.input_noise
        return torch.where(x != 0, x + torch.randn(x.shape) * std, x)

    def _jittered(self, n: int, start: tuple[int, int, int]) -> tuple[int, int, int]:
        mask = self.masks[n]
        offset = torch.randint(-self.jitter, self.jitter + 1, (3,)).tolist()
        moved = tuple(min(max(s + o, 0), side - 1) for s, o, side in zip(start, offset, mask.shape))
        return moved if mask[_centre(moved, self.output_size // 2, mask.shape)] else start


def _centre(start: Sequence[int], half: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The centre voxel of a patch starting at ``start``, clipped to the volume."""
    return tuple(min(s + half, side - 1) for s, side in zip(start, shape))
