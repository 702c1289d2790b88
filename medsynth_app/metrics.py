"""Image-quality metrics exactly as EVALUATION.md defines them (inside a mask, on normalised volumes), the BraSyn
challenge's metrics beside them, lesion conspicuity and lesion detection."""
from __future__ import annotations

import math

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


def _decibels(signal_power: float, error: float) -> float:
    """10 log10(signal / error); a perfect prediction (error 0) is infinitely good, not an error."""
    return math.inf if error == 0 else float(10 * np.log10(signal_power / error))


def psnr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """10 log10(R^2 / MSE); inf when the prediction equals the truth in the mask."""
    return _decibels(data_range(truth, mask) ** 2, mse(prediction, truth, mask))


def snr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """10 log10(mean(t)^2 / MSE): the measure of the LSDN and 3-D autoencoder papers; inf for a perfect prediction."""
    return _decibels(truth[mask].astype(np.float64).mean() ** 2, mse(prediction, truth, mask))


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


def percentile_scaled(volume: np.ndarray, mask: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """BraSyn's intensity scale: the volume clipped to its own ``low``-``high`` percentiles inside the mask and mapped
    to [0, 1], 0 outside the mask. A volume that is constant in the mask maps to 0."""
    values = volume[mask].astype(np.float64)
    lo, hi = np.percentile(values, [low, high])
    scaled = np.zeros(volume.shape, dtype=np.float64)
    if hi > lo:
        scaled[mask] = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return scaled


def brasyn_metrics(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                   lesion: np.ndarray | None = None) -> dict[str, float]:
    """The BraSyn challenge's metrics (EVALUATION.md): prediction and truth each `percentile_scaled` in the brain
    mask; the SSIM map of the two (data range 1) averaged over the brain (``brasyn_ssim``), inside the lesion
    (``brasyn_ssim_lesion``) and in the brain outside it (``brasyn_ssim_healthy``); PSNR over the brain with peak 1
    (``brasyn_psnr``). A constant prediction maps to 0 and so scores low inside a lesion, which is bright or dark
    against its surroundings."""
    _masked(prediction, truth, mask)
    p, t = percentile_scaled(prediction, mask), percentile_scaled(truth, mask)
    similarity = ssim_map(p, t, 1.0)
    scores = {"brasyn_psnr": _decibels(1.0, float(np.mean((p[mask] - t[mask]) ** 2))),
              "brasyn_ssim": float(similarity[mask].mean())}
    inside = _lesion_in(mask, lesion)
    if inside is not None:
        scores["brasyn_ssim_lesion"] = float(similarity[inside].mean())
        if (mask & ~inside).any():
            scores["brasyn_ssim_healthy"] = float(similarity[mask & ~inside].mean())
    return scores


def conspicuity(volume: np.ndarray, mask: np.ndarray, lesion: np.ndarray, margin: int = 2) -> float:
    """How much a lesion stands out: the volume's mean inside the lesion (within the brain mask) over its median in
    the brain farther than ``margin`` voxels from the lesion. A constant volume scores 1; NaN when undefined (no
    lesion voxel, no brain away from it, or a background median that is not positive)."""
    inside = lesion & mask
    around = mask & ~ndimage.binary_dilation(inside, ndimage.generate_binary_structure(3, 1), iterations=margin)
    background = float(np.median(volume[around])) if around.any() else math.nan
    if not inside.any() or not background > 0:
        return math.nan
    return float(volume[inside].astype(np.float64).mean() / background)


# The z-score (within the brain) above which a FLAIR voxel counts as a lesion candidate: the threshold with the best
# mean Dice against the lesion masks on acquired FLAIRs, written by `python -m benchmarks.detection_threshold
# --studies ../shared/data` (docs/lesions.md).
DETECTION_Z = 1.2
DETECTED_LESION_VOXELS = 10  # lesions of at most this many voxels are left out of lesion-wise sensitivity


def hyperintensities(volume: np.ndarray, mask: np.ndarray, z: float = DETECTION_Z) -> np.ndarray:
    """The detection rule: brain voxels whose z-score within the brain mask exceeds ``z`` (none for a constant)."""
    values = volume[mask].astype(np.float64)
    found = np.zeros(volume.shape, dtype=bool)
    if values.std() > 0:
        found[mask] = (values - values.mean()) / values.std() > z
    return found


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return math.nan if total == 0 else 2.0 * int((a & b).sum()) / total


def lesion_sensitivity(found: np.ndarray, lesion: np.ndarray, min_voxels: int = DETECTED_LESION_VOXELS) -> float:
    """The fraction of the lesions (26-connected components of more than ``min_voxels`` voxels) that hold at least
    one found voxel; NaN when there is no such lesion."""
    labels, count = ndimage.label(lesion, ndimage.generate_binary_structure(3, 3))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    large = np.flatnonzero(sizes > min_voxels)
    large = large[large > 0]
    if not len(large):
        return math.nan
    hit = np.unique(labels[found & (labels > 0)])
    return float(np.isin(large, hit).mean())


def detection(volume: np.ndarray, mask: np.ndarray, lesion: np.ndarray, z: float = DETECTION_Z) -> dict[str, float]:
    """Dice against the lesion mask and lesion-wise sensitivity of the `hyperintensities` of ``volume``."""
    found, inside = hyperintensities(volume, mask, z), lesion & mask
    return {"dice": dice(found, inside), "sensitivity": lesion_sensitivity(found, inside)}


def tune_detection_z(cases, candidates=tuple(np.round(np.arange(1.0, 4.01, 0.1), 2))) -> tuple[float, float]:
    """(z, mean Dice): the candidate threshold of `hyperintensities` with the best mean Dice over ``cases``, each an
    acquired FLAIR with its brain mask and lesion mask (volume, mask, lesion)."""
    cases = list(cases)
    if not cases:
        raise ValueError("no acquired FLAIR with a lesion mask to tune the detection threshold on")
    scores = {z: float(np.mean([dice(hyperintensities(v, m, z), les & m) for v, m, les in cases])) for z in candidates}
    best = max(scores, key=scores.get)
    return float(best), scores[best]


def conspicuity_kept(predicted: float, acquired: float) -> float:
    """The fraction of the acquired lesion's conspicuity a prediction keeps, (C_pred - 1) / (C_acquired - 1): 0 for a
    constant, negative for a lesion drawn darker than its surroundings when it is brighter; NaN when undefined."""
    return (predicted - 1) / (acquired - 1) if acquired != 1 and not math.isnan(acquired) else math.nan


def _lesion_in(mask: np.ndarray, lesion: np.ndarray | None) -> np.ndarray | None:
    """The lesion voxels inside the brain mask, or None when there are fewer than two."""
    if lesion is None:
        return None
    inside = lesion & mask
    return inside if inside.sum() > 1 else None


def region_metrics(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                   lesion: np.ndarray | None) -> dict[str, float]:
    """Metrics in the brain mask and the BraSyn metrics; with a lesion mask (at least two voxels in the brain) also
    ``lesion_*`` inside it and the conspicuity of the lesion in the prediction (``lesion_conspicuity``) and in the
    truth (``acquired_lesion_conspicuity``), the fraction of it kept (``lesion_conspicuity_kept``), and the `detection`
    Dice and lesion-wise sensitivity of the prediction (``lesion_detection_*``) and of the truth
    (``acquired_lesion_detection_*``).

    ``lesion_ssim`` is the brain's SSIM map (the one ``ssim`` averages) averaged inside the lesion: the map of the
    lesion alone, zero around it, is dominated by the lesion's own edge, which any prediction reproduces, so that a
    constant scored as high there as a model."""
    scores = {**all_metrics(prediction, truth, mask), **brasyn_metrics(prediction, truth, mask, lesion)}
    inside = _lesion_in(mask, lesion)
    if inside is not None:
        scores.update({f"lesion_{name}": globals()[name](prediction, truth, inside)
                       for name in METRICS if name != "ssim"})
        p = np.where(mask, prediction, 0.0).astype(np.float64)
        t = np.where(mask, truth, 0.0).astype(np.float64)
        scores["lesion_ssim"] = float(ssim_map(p, t, data_range(truth, mask))[inside].mean())
        scores["lesion_conspicuity"] = conspicuity(prediction, mask, inside)
        scores["acquired_lesion_conspicuity"] = conspicuity(truth, mask, inside)
        scores["lesion_conspicuity_kept"] = conspicuity_kept(scores["lesion_conspicuity"],
                                                             scores["acquired_lesion_conspicuity"])
        for prefix, volume in (("", prediction), ("acquired_", truth)):
            scores.update({f"{prefix}lesion_detection_{k}": v for k, v in detection(volume, mask, inside).items()})
    return scores


def json_ready(value):
    """``value`` (nested dicts, lists, numbers) with every infinite or NaN float written as the string "inf",
    "-inf" or "nan", so that the JSON written from it is valid (JSON has no Infinity) and still says what it was."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def paired_ttest(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired t-test over test subjects (scipy.stats.ttest_rel): mean difference a - b, t and p."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired t-test needs two equally long lists of at least 2 subjects")
    result = stats.ttest_rel(a, b)
    return {"mean_difference": float(np.mean(np.subtract(a, b))), "t": float(result.statistic),
            "p": float(result.pvalue), "n": len(a)}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) of every metric over the subjects where it is defined (not NaN:
    e.g. lesion-wise sensitivity of a subject without a lesion over 10 voxels)."""
    keys = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
    out = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row and not _is_nan(row[key])], dtype=np.float64)
        if not len(values):
            continue
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "n": int(len(values))}
    return out


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
