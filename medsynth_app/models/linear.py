"""linear: a per-voxel least-squares map from normalised input intensities and their smoothed versions."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..preprocessing import PreparedSubject
from .base import SynthesisModel, TrainSettings, register


@register
class LinearModel(SynthesisModel):
    """target(v) = w . phi(v) + b with phi = [I_c(v), G_s * I_c(v) for each input c and scale s] and, for degree 2,
    every product of two of them; fitted by ridge-regularised least squares over every brain voxel of the training
    subjects (normal equations accumulated in float64). Degree 2 lets the map bend (FLAIR's CSF suppression)."""

    family = "linear"
    description = "Per-voxel least squares on normalised intensities and their Gaussian-smoothed versions"

    def __init__(self, inputs, targets, sigmas_mm: tuple[float, ...] = (1.0, 2.0, 4.0), degree: int = 2,
                 ridge: float = 1e-3):
        if degree not in (1, 2):
            raise ValueError(f"linear: degree must be 1 or 2, not {degree}")
        super().__init__(inputs, targets, sigmas_mm=tuple(float(s) for s in sigmas_mm), degree=int(degree),
                         ridge=float(ridge))
        self.coef: dict[str, np.ndarray] = {}

    def _features(self, subject: PreparedSubject) -> np.ndarray:
        columns = []
        for contrast in self.inputs:
            volume = subject.images[contrast][subject.mask]
            columns.append(volume)
            for sigma in self.hparams["sigmas_mm"]:
                smoothed = ndimage.gaussian_filter(subject.images[contrast], np.divide(sigma, subject.spacing))
                columns.append(smoothed[subject.mask])
        if self.hparams["degree"] == 2:
            columns += [a * b for i, a in enumerate(columns) for b in columns[i:]]
        columns.append(np.ones(int(subject.mask.sum()), dtype=np.float32))
        return np.stack(columns, axis=1).astype(np.float64)

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("linear: no training subject")
        gram, moments = 0.0, {t: 0.0 for t in self.targets}
        for subject in train:
            features = self._features(subject)
            gram = gram + features.T @ features
            for target in self.targets:
                moments[target] = moments[target] + features.T @ subject.images[target][subject.mask]
        n_features = gram.shape[0]
        regulariser = self.hparams["ridge"] * np.trace(gram) / n_features * np.eye(n_features)
        self.coef = {t: np.linalg.solve(gram + regulariser, moments[t]) for t in self.targets}
        return {"epochs": 1, "voxels": int(sum(s.mask.sum() for s in train))}

    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if target not in self.coef:
            raise ValueError(f"linear: not trained for {target} (trained: {', '.join(self.coef) or 'none'})")
        out = np.zeros(subject.shape, dtype=np.float32)
        out[subject.mask] = self._features(subject) @ self.coef[target]
        return out

    def state_dict(self) -> dict:
        return {f"coef.{t}": torch.from_numpy(c) for t, c in self.coef.items()}

    def load_state_dict(self, state: dict) -> None:
        self.coef = {key.split(".", 1)[1]: value.numpy() for key, value in state.items() if key.startswith("coef.")}
