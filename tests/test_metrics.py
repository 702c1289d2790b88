import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from medsynth_app import metrics


def test_known_values():
    truth = np.zeros((4, 4, 4))
    truth[1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    mask = truth > 0
    prediction = truth + np.where(mask, 0.5, 0)
    assert metrics.mae(prediction, truth, mask) == pytest.approx(0.5)
    assert metrics.mse(prediction, truth, mask) == pytest.approx(0.25)
    assert metrics.psnr(prediction, truth, mask) == pytest.approx(10 * np.log10(7**2 / 0.25))
    assert metrics.snr(prediction, truth, mask) == pytest.approx(10 * np.log10(4.5**2 / 0.25))
    assert metrics.ssim(truth, truth, mask) == pytest.approx(1.0)


def test_masked_ssim_matches_its_definition_and_ignores_background():
    rng = np.random.default_rng(1)
    truth = ndimage.gaussian_filter(rng.random((30, 32, 28)), 2) * 10
    mask = np.zeros_like(truth, bool)
    mask[5:25, 6:26, 4:24] = True
    prediction = truth + rng.normal(0, 0.3, truth.shape)
    r = truth[mask].max() - truth[mask].min()
    _, reference_map = structural_similarity(
        np.where(mask, prediction, 0), np.where(mask, truth, 0), data_range=r, gaussian_weights=True, sigma=1.5,
        K1=0.01, K2=0.03, use_sample_covariance=False, full=True)
    assert metrics.ssim(prediction, truth, mask) == pytest.approx(reference_map[mask].mean(), abs=1e-9)
    # a wildly wrong background must not change the score
    noisy_background = np.where(mask, prediction, 1e3)
    assert metrics.ssim(noisy_background, truth, mask) == pytest.approx(metrics.ssim(prediction, truth, mask))


def test_lesion_metrics_and_paired_ttest():
    rng = np.random.default_rng(2)
    truth = rng.random((10, 10, 10)) + 1
    mask = np.ones_like(truth, bool)
    lesion = np.zeros_like(mask)
    lesion[3:6, 3:6, 3:6] = True
    scores = metrics.region_metrics(truth + 0.1, truth, mask, lesion)
    assert scores["lesion_mae"] == pytest.approx(0.1) and "lesion_ssim" in scores
    test = metrics.paired_ttest([1.0, 2.0, 3.0, 4.0], [0.5, 1.4, 2.6, 3.5])
    assert test["mean_difference"] == pytest.approx(0.5) and test["p"] < 0.01
    with pytest.raises(ValueError, match="empty mask"):
        metrics.mae(truth, truth, np.zeros_like(mask))
