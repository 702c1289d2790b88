"""What an image looks like: T1, T1C, T2, FLAIR or PD, recognised from its intensities, and how far it lies from
the images the recogniser was trained on.

Features (`image_features`), on every second voxel of the volume's foreground (`masks.foreground`) after the constant
background is subtracted and the intensities divided by their foreground mean: quantiles of that distribution, its
spread and tail fractions, and the mean of the central block of the foreground (ventricles: dark on T1 and FLAIR,
bright on T2) over the mean of the rest. A multinomial logistic regression on standardised features decides the
contrast; the Mahalanobis distance to the training volumes of the claimed contrast is the out-of-distribution score.
The model is plain numbers in ``data/contrast_recogniser.json`` (trained by ``python -m
benchmarks.contrast_recogniser``; accuracy in docs/uncertainty.md).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from .masks import background_value, foreground

MODEL_PATH = Path(__file__).parent / "data" / "contrast_recogniser.json"
QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
DEPTHS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)  # fractions of the deepest voxel's depth
SURE = 0.8  # the recogniser names the contrast of an image whose name is silent only when this sure
DOUBTED = 0.1  # a claimed contrast below this probability, with another one more likely, is a mismatch


def image_features(volume: np.ndarray) -> np.ndarray:
    """The recogniser's features of a 3-D intensity array (any axis order): the intensity distribution over the
    foreground, divided by its mean, and, invariant to any monotonic rescaling (histogram-standardised sets), the mean
    percentile rank of the voxels at each depth inside the foreground (cortex, white matter, deep grey matter and
    ventricles: each contrast orders them differently) and of the central block."""
    from scipy import ndimage

    volume = np.asarray(volume, np.float32)[::2, ::2, ::2]
    constant = background_value(volume)
    mask = foreground(volume)
    if mask.sum() < 1000:
        raise ValueError("the image has almost no foreground to recognise a contrast from")
    values = np.clip(volume - (constant if constant is not None else 0.0), 0, None)
    inside = values[mask]
    mean = float(inside.mean()) if inside.size and inside.mean() > 0 else 1.0
    inside = inside / mean
    ranks = np.zeros(volume.shape, np.float32)
    ranks[mask] = (np.argsort(np.argsort(inside, kind="stable"), kind="stable") / max(inside.size - 1, 1))
    depth = ndimage.distance_transform_edt(mask)
    depth = depth / max(float(depth.max()), 1e-6)
    profile = [ranks[mask & (depth > lo) & (depth <= hi)].mean() if (mask & (depth > lo) & (depth <= hi)).any()
               else 0.5 for lo, hi in zip(DEPTHS[:-1], DEPTHS[1:])]
    box = [slice(int(lo + (hi - lo) / 3), int(lo + 2 * (hi - lo) / 3) + 1)
           for lo, hi in (np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]]
                          for axis in range(3))]
    central = np.zeros_like(mask)
    central[tuple(box)] = True
    central &= mask
    centre_rank = float(ranks[central].mean()) if central.any() else 0.5
    smooth = ndimage.uniform_filter(ranks, 3)[mask]
    roughness = float(np.mean(np.abs(ranks[mask] - smooth)))
    return np.array([*np.quantile(inside, QUANTILES), inside.std(), (inside > 1.5).mean(), (inside > 2).mean(),
                     (inside < 0.5).mean(), *profile, centre_rank, roughness], dtype=np.float64)


@dataclass
class ContrastRecogniser:
    classes: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[list[float]]
    intercept: list[float]
    centroids: dict[str, list[float]]  # per class, in standardised features
    precisions: dict[str, list[list[float]]]
    distance_95: dict[str, float]  # the 95th percentile of the training volumes' distances to their class

    def probabilities(self, features: np.ndarray) -> dict[str, float]:
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = np.asarray(self.coef) @ z + np.asarray(self.intercept)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return {c: float(v) for c, v in zip(self.classes, p)}

    def distance(self, features: np.ndarray, contrast: str) -> float:
        """Mahalanobis distance of an image to the training images of ``contrast``."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale) - np.asarray(self.centroids[contrast])
        return float(np.sqrt(max(z @ np.asarray(self.precisions[contrast]) @ z, 0.0)))

    def save(self, path: str | Path = MODEL_PATH) -> Path:
        rounded = json.loads(json.dumps(asdict(self)), parse_float=lambda v: float(f"{float(v):.5g}"))
        Path(path).write_text(json.dumps(rounded))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path = MODEL_PATH) -> ContrastRecogniser:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class InputCheck:
    """The verdict on one input image given as ``claimed``."""

    claimed: str
    looks_like: str
    probability: float  # of ``looks_like``
    claimed_probability: float
    ood_distance: float  # to the training images of the claimed contrast
    ood_threshold: float  # the 95th percentile of the training images' own distances

    @property
    def mismatch(self) -> bool:
        return self.looks_like != self.claimed and self.claimed_probability < DOUBTED

    @property
    def out_of_distribution(self) -> bool:
        return self.ood_distance > self.ood_threshold

    def warning(self) -> str | None:
        if self.mismatch:
            return (f"the volume given as {self.claimed} looks like {self.looks_like} (p = {self.probability:.2f}; "
                    f"p({self.claimed}) = {self.claimed_probability:.2f})")
        if self.out_of_distribution:
            return (f"the volume given as {self.claimed} is unlike the training images of {self.claimed} "
                    f"(distance {self.ood_distance:.1f}, 95% of them lie within {self.ood_threshold:.1f})")
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "mismatch": self.mismatch, "out_of_distribution": self.out_of_distribution}


_MODEL: ContrastRecogniser | None = None


def recogniser() -> ContrastRecogniser:
    global _MODEL
    if _MODEL is None:
        _MODEL = ContrastRecogniser.load()
    return _MODEL


def recognise(image: sitk.Image | np.ndarray) -> dict[str, float]:
    """Contrast -> probability of one image."""
    volume = sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else image
    return recogniser().probabilities(image_features(volume))


def check_inputs(images: Mapping[str, sitk.Image]) -> dict[str, InputCheck]:
    """Each input image (claimed contrast -> image) compared with what it looks like and with the training images;
    contrasts the recogniser does not know (DWI) are not checked."""
    model = recogniser()
    checks = {}
    for claimed, image in images.items():
        if claimed not in model.classes:
            continue
        try:
            features = image_features(sitk.GetArrayViewFromImage(image))
        except ValueError:  # an empty image: nothing to compare; its synthesis fails with its own message
            continue
        p = model.probabilities(features)
        best = max(p, key=p.get)
        checks[claimed] = InputCheck(claimed, best, round(p[best], 3), round(p[claimed], 3),
                                     round(model.distance(features, claimed), 2),
                                     round(model.distance_95[claimed], 2))
    return checks


def describe(checks: Mapping[str, InputCheck]) -> list[str]:
    """One line per input: what it looks like and its out-of-distribution distance, warnings first."""
    lines = [f"WARNING: {c.warning()}" for c in checks.values() if c.warning()]
    return lines + [f"input {c.claimed}: looks like {c.looks_like} (p = {c.probability:.2f}), distance to the training "
                    f"{c.claimed} images {c.ood_distance:.1f} (95% within {c.ood_threshold:.1f})" for c in checks.values()]
