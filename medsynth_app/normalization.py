"""Intensity normalisation with kept parameters, so a prediction can be returned on a plausible intensity scale."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("mean", "percentile", "zscore")


@dataclass(frozen=True)
class IntensityNorm:
    """normalised = (value - offset) / scale, inside the brain mask.

    mean: negatives clipped to 0, divided by the mean in the mask (EVALUATION.md step 3, Chartsias et al.);
    percentile: 0.5-99.5 percentiles mapped to [0, 1] (BraSyn); zscore: zero mean, unit variance in the mask.
    """

    method: str
    offset: float
    scale: float

    @classmethod
    def fit(cls, volume: np.ndarray, mask: np.ndarray, method: str = "mean") -> IntensityNorm:
        values = volume[mask].astype(np.float64)
        if values.size == 0:
            raise ValueError("empty brain mask: cannot normalise intensities")
        if method == "mean":
            offset, scale = 0.0, float(np.clip(values, 0, None).mean())
        elif method == "percentile":
            low, high = np.percentile(values, [0.5, 99.5])
            offset, scale = float(low), float(high - low)
        elif method == "zscore":
            offset, scale = float(values.mean()), float(values.std())
        else:
            raise ValueError(f"unknown normalisation {method!r}; expected one of {', '.join(METHODS)}")
        if not scale > 0:
            raise ValueError(f"constant intensities inside the brain mask ({method} normalisation impossible)")
        return cls(method, offset, scale)

    def apply(self, volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
        values = np.clip(volume, 0, None) if self.method == "mean" else volume
        out = ((values - self.offset) / self.scale).astype(np.float32)
        if self.method == "percentile":
            np.clip(out, 0.0, 1.0, out=out)
        out[~mask] = 0.0
        return out

    def invert(self, volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = (volume * self.scale + self.offset).astype(np.float32)
        out[~mask] = 0.0
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IntensityNorm:
        return cls(str(data["method"]), float(data["offset"]), float(data["scale"]))

    @classmethod
    def typical(cls, norms: list[IntensityNorm]) -> IntensityNorm:
        """The median parameters over training subjects: the scale a synthetic image is returned on."""
        if not norms:
            raise ValueError("no normalisation to summarise")
        return cls(norms[0].method, float(np.median([n.offset for n in norms])),
                   float(np.median([n.scale for n in norms])))
