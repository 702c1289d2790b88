"""Uncertainty maps: per voxel, the expected absolute error of a synthetic image, in the image's intensity units.

A model's raw spread comes from its own members where it has them (the trees of a replica forest: `predict_spread`),
else from test-time augmentation (the disagreement of the prediction and the prediction of the left-right mirrored
subject, mirrored back). A `Calibration`, fitted on validation subjects the model never trained on, maps the spread
to the expected |error| in normalised units (isotonic regression of |error| on the spread, on quantile bins); it is
stored beside its checkpoint as ``<checkpoint stem>.uncertainty.json``. docs/uncertainty.md holds the measurements.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_write
from .preprocessing import PreparedSubject

CALIBRATION_SUFFIX = ".uncertainty.json"
_BINS = 64


def prediction_and_spread(model, subject: PreparedSubject, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, raw spread) on the prepared grid, both 0 outside the mask; the prediction is the model's own."""
    if hasattr(model, "predict_spread"):
        return model.predict_spread(subject, target)
    prediction = model.predict(subject, target)
    mirrored = model.predict(_mirrored(subject), target)[::-1]
    spread = np.where(subject.mask, np.abs(prediction - mirrored) / 2, 0.0).astype(np.float32)
    return prediction, spread


def _mirrored(subject: PreparedSubject) -> PreparedSubject:
    """The subject flipped left-right (axis 0 of the RAS+ prepared grid)."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, subject.shape[0] - 1
    return dataclasses.replace(
        subject, images={c: np.ascontiguousarray(v[::-1]) for c, v in subject.images.items()},
        mask=np.ascontiguousarray(subject.mask[::-1]), affine=subject.affine @ flip,
        lesion=None if subject.lesion is None else np.ascontiguousarray(subject.lesion[::-1]))


@dataclasses.dataclass
class Calibration:
    """Raw spread -> expected |error| (normalised units): a non-decreasing piecewise-linear map through ``knots``."""

    family: str
    task: str
    target: str
    spread: list[float]
    error: list[float]
    fitted_on: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def fit(cls, family: str, task: str, target: str, spreads: Sequence[np.ndarray], errors: Sequence[np.ndarray],
            fitted_on: Sequence[str]) -> Calibration:
        """Isotonic regression of |error| on the spread over the brain voxels of validation subjects, on quantile
        bins of the spread (each subject weighted equally)."""
        from sklearn.isotonic import IsotonicRegression

        spread = np.concatenate([np.asarray(s, np.float64) for s in spreads])
        error = np.concatenate([np.asarray(e, np.float64) for e in errors])
        weight = np.concatenate([np.full(len(s), 1.0 / max(len(s), 1)) for s in spreads])
        edges = np.unique(np.quantile(spread, np.linspace(0, 1, _BINS + 1)))
        bins = np.clip(np.searchsorted(edges, spread, side="right") - 1, 0, max(len(edges) - 2, 0))
        total = np.bincount(bins, weight)
        keep = total > 0
        x = (np.bincount(bins, weight * spread)[keep] / total[keep])
        y = (np.bincount(bins, weight * error)[keep] / total[keep])
        fitted = IsotonicRegression(increasing=True).fit(x, y, sample_weight=total[keep]).predict(x)
        return cls(family, task, target, [round(float(v), 6) for v in x], [round(float(v), 6) for v in fitted],
                   list(fitted_on))

    def apply(self, spread: np.ndarray) -> np.ndarray:
        return np.interp(spread, self.spread, self.error).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        text = json.dumps(dataclasses.asdict(self))
        return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text), ".json")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not an uncertainty calibration ({err})") from None


def calibration_path(checkpoint_path: str | Path) -> Path:
    path = Path(checkpoint_path)
    return path.with_name(path.stem + CALIBRATION_SUFFIX)


def calibration_for(checkpoint_path: str | Path, target: str) -> Calibration:
    """The calibration stored beside a checkpoint, for ``target``; a ValueError naming the file when there is none."""
    path = calibration_path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"{checkpoint_path}: no uncertainty calibration ({path.name} is missing; fit one with "
                         f"python -m benchmarks.uncertainty_calibration --fit {checkpoint_path})")
    calibration = Calibration.load(path)
    if calibration.target != target:
        raise ValueError(f"{path}: calibrated for {calibration.target}, not {target}")
    return calibration
