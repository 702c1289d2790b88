"""Quality gates relative to trivial predictors.

A synthesis model is worth something only where it beats what needs no model: the constant in the brain (the
acquired target's own brain mean: the best constant in MSE, known only to an oracle; 1 on mean-normalised volumes) and
each input copied as the target. A gate scores those on the same prepared subject with the project's metrics
(`medsynth_app.metrics.region_metrics`) and requires a stated margin over the better of them in PSNR and SSIM, and,
where the subject has a lesion mask, that the prediction keeps a stated fraction of the lesions' conspicuity
(conspicuity - 1, which is 0 for a constant). Margins are measured and written beside each test.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medsynth_app.metrics import conspicuity_kept, region_metrics
from medsynth_app.preprocessing import PreparedSubject


def score(prediction: np.ndarray, subject: PreparedSubject, target: str) -> dict[str, float]:
    return region_metrics(prediction, subject.images[target], subject.mask, subject.lesion)


def trivial_predictions(subject: PreparedSubject, target: str, inputs: Sequence[str]) -> dict[str, np.ndarray]:
    truth = subject.images[target]
    constant = np.where(subject.mask, truth[subject.mask].mean(), 0).astype(np.float32)
    return {"constant": constant, **{f"copy {c}": subject.images[c] for c in inputs}}


def trivial_scores(subject: PreparedSubject, target: str, inputs: Sequence[str]) -> dict[str, dict[str, float]]:
    return {name: score(p, subject, target) for name, p in trivial_predictions(subject, target, inputs).items()}


def kept_conspicuity(scores: Mapping[str, float]) -> float:
    """The fraction of the acquired lesions' conspicuity a prediction keeps: (C_pred - 1) / (C_acquired - 1); NaN
    (which fails every gate) when the prediction's is undefined."""
    return conspicuity_kept(float(scores["lesion_conspicuity"]), float(scores["acquired_lesion_conspicuity"]))


def assert_beats_trivial(scores: Mapping[str, float], subject: PreparedSubject, target: str, inputs: Sequence[str], *,
                         psnr: float, ssim: float, conspicuity: float | None = None,
                         lesion_ssim: float | None = None, label: str = "",
                         trivial: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Assert that ``scores`` (the model's `score` on ``subject``) beat the best trivial predictor by ``psnr`` dB and
    ``ssim`` (and by ``lesion_ssim`` in BraSyn's SSIM inside the lesion, when given), and keep at least the fraction
    ``conspicuity`` of the lesions' conspicuity where the subject has a lesion mask (a gate on such a subject must
    state it). Scores read from JSON may hold "inf" or "nan" (see `metrics.json_ready`). Returns the trivial
    predictors' scores."""
    trivial = dict(trivial or trivial_scores(subject, target, inputs))
    margins = [("psnr", psnr), ("ssim", ssim)] + ([("brasyn_ssim_lesion", lesion_ssim)] if lesion_ssim is not None
                                                  else [])
    for metric, margin in margins:
        name, best = max(((n, s[metric]) for n, s in trivial.items()), key=lambda item: item[1])
        assert float(scores[metric]) >= best + margin, (
            f"{label}: {metric} {float(scores[metric]):.3f} is not {margin} above the best trivial predictor "
            f"({name}, {best:.3f})")
    if "acquired_lesion_conspicuity" in scores:
        assert conspicuity is not None, f"{label}: the subject has lesions; state the conspicuity to keep"
        kept = kept_conspicuity(scores)
        assert kept >= conspicuity, (f"{label}: keeps {kept:.2f} of the lesions' conspicuity "
                                     f"({float(scores['lesion_conspicuity']):.3f} against the acquired "
                                     f"{float(scores['acquired_lesion_conspicuity']):.3f}), not {conspicuity}")
    return trivial


def assert_beats(scores: Mapping[str, float], other: Mapping[str, float], *, psnr: float, ssim: float,
                 label: str = "") -> None:
    """Assert a margin over another model (e.g. the forest, where a test claims to beat it) on the same subject."""
    for metric, margin in (("psnr", psnr), ("ssim", ssim)):
        assert scores[metric] >= other[metric] + margin, (
            f"{label}: {metric} {scores[metric]:.3f} is not {margin} above {other[metric]:.3f}")
