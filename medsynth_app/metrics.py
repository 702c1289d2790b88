"""Image-quality metrics exactly as EVALUATION.md defines them (inside a mask, on normalised volumes)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

METRICS = ("psnr", "ssim", "mae", "mse", "snr")


def _masked(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if prediction.shape != truth.shape or truth.shape != mask.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, truth {truth.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("empty mask: no voxel to score")
    return prediction[mask].astype(np.float64), truth[mask].astype(np.float64)


def mae(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    p, t = _masked(prediction, truth, mask)
    return float(np.mean(np.abs(p - t)))


def mse(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    p, t = _masked(prediction, truth, mask)
    return float(np.mean((p - t) ** 2))


def data_range(truth: np.ndarray, mask: np.ndarray) -> float:
    """R = max(t) - min(t) over the mask."""
    values = truth[mask]
    return float(values.max() - values.min())


def psnr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """10 log10(R^2 / MSE)."""
    return float(10 * np.log10(data_range(truth, mask) ** 2 / mse(prediction, truth, mask)))


def snr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """10 log10(mean(t)^2 / MSE): the measure of the LSDN and 3-D autoencoder papers."""
    return float(10 * np.log10(truth[mask].astype(np.float64).mean() ** 2 / mse(prediction, truth, mask)))


def ssim(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """3-D SSIM, Gaussian window sigma 1.5, K1 0.01, K2 0.03, data range R, population covariance, on volumes zeroed
    outside the mask, the SSIM map averaged over the mask only."""
    _masked(prediction, truth, mask)
    p = np.where(mask, prediction, 0.0).astype(np.float64)
    t = np.where(mask, truth, 0.0).astype(np.float64)
    return float(ssim_map(p, t, data_range(truth, mask))[mask].mean())


def ssim_map(p: np.ndarray, t: np.ndarray, value_range: float, sigma: float = 1.5) -> np.ndarray:
    """The SSIM map of Wang et al. (2004) with Gaussian windows (truncated at 3.5 sigma, reflected borders) and
    population covariances: scikit-image's ``structural_similarity(gaussian_weights=True, full=True)``, written out
    so that volumes thinner than its 7-voxel minimum (2-D slices stored as 3-D) are scored too."""
    smooth = lambda x: ndimage.gaussian_filter(x, sigma, truncate=3.5, mode="reflect")  # noqa: E731
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    mp, mt = smooth(p), smooth(t)
    vp, vt, cov = smooth(p * p) - mp**2, smooth(t * t) - mt**2, smooth(p * t) - mp * mt
    return ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp**2 + mt**2 + c1) * (vp + vt + c2))


def all_metrics(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return {name: globals()[name](prediction, truth, mask) for name in METRICS}


def region_metrics(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                   lesion: np.ndarray | None) -> dict[str, float]:
    """Metrics in the brain mask, plus ``lesion_*`` inside the lesion mask when one is given and not empty."""
    scores = all_metrics(prediction, truth, mask)
    if lesion is not None and (lesion & mask).sum() > 1:
        inside = lesion & mask
        scores.update({f"lesion_{name}": value for name, value in all_metrics(prediction, truth, inside).items()})
    return scores


def paired_ttest(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test over test subjects (scipy.stats.ttest_rel): mean difference a - b, t and p."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired t-test needs two equally long lists of at least 2 subjects")
    result = stats.ttest_rel(a, b)
    return {"mean_difference": float(np.mean(np.subtract(a, b))), "t": float(result.statistic),
            "p": float(result.pvalue), "n": len(a)}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) of every metric over subjects."""
    keys = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
    out = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=np.float64)
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "n": int(len(values))}
    return out
