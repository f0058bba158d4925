"""The error estimate without ground truth, checked against the truth on synthetic series."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_denoise.denoise.error import ErrorEstimate, estimate_error, perturbation, pooled_rmse
from bids_denoise.denoise.rician import correct_rician_bias

SIGMA = 10.0
SHAPE = (32, 32, 10, 20)


def _truth(level):
    """Positive signal, ``level`` x sigma at most: smooth blobs with sharp-edged 'ventricles',
    times a decay over volumes."""
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.uniform(0.5, 1.5, SHAPE[:3]), 2)
    field[8:14, 6:26, 2:8] *= 0.3
    decay = np.linspace(1.0, 0.3, SHAPE[3])
    return level * SIGMA * field[..., None] * decay


def _rician(truth, seed=0):
    rng = np.random.default_rng(seed)
    return np.hypot(truth + rng.normal(0, SIGMA, truth.shape), rng.normal(0, SIGMA, truth.shape))


def _smooth(data, width):
    return ndimage.uniform_filter(np.asarray(data, np.float64), size=(width, width, width, 1), mode="nearest")


def _estimate(denoiser, noisy, rician_correction="none", seed=1):
    sigma = np.full(SHAPE[:3], SIGMA)
    region = np.ones(SHAPE[:3], bool)
    probe, eps = perturbation(noisy, sigma, region, seed=seed)
    return estimate_error(noisy=noisy, denoised=denoiser(noisy), perturbed=denoiser(noisy + eps * probe),
                          probe=probe, epsilon=eps, sigma=sigma, region=region,
                          rician_correction=rician_correction)


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - b) ** 2)))


@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_the_estimate_follows_the_true_error_of_linear_smoothers(width):
    truth = _truth(30)  # high SNR: Rician is nearly Gaussian
    noisy = _rician(truth)
    estimate = _estimate(lambda y: _smooth(y, width), noisy)
    true = _rmse(_smooth(noisy, width), truth)
    assert estimate.rmse == pytest.approx(true, rel=0.1)
    if width == 1:  # the identity copies the noise: divergence 1, error = the noise
        assert estimate.divergence == pytest.approx(1.0, abs=0.02)
        assert true == pytest.approx(SIGMA, rel=0.05)


def test_over_smoothing_is_seen_as_a_large_error():
    truth = _truth(30)
    noisy = _rician(truth)
    good, blurred = _estimate(lambda y: _smooth(y, 3), noisy), _estimate(lambda y: _smooth(y, 15), noisy)
    assert blurred.rmse > 1.5 * good.rmse
    assert blurred.residual_rms > 1.2 * blurred.noise_rms  # signal left in the residual


def test_at_low_snr_the_rician_bias_is_part_of_the_error():
    truth = _truth(2)  # 0.6 to 3 sigma: the Rician floor matters
    noisy = _rician(truth, seed=3)
    plain = _estimate(lambda y: _smooth(y, 3), noisy)
    assert plain.rmse == pytest.approx(_rmse(_smooth(noisy, 3), truth), rel=0.15)
    corrected = _estimate(lambda y: _smooth(y, 3), noisy, rician_correction="mean")
    true_corrected = _rmse(correct_rician_bias(_smooth(noisy, 3), SIGMA), truth)
    assert corrected.rmse == pytest.approx(true_corrected, rel=0.15)
    assert true_corrected < _rmse(_smooth(noisy, 3), truth)


def test_only_the_region_counts():
    truth = _truth(30)
    noisy = _rician(truth)
    region = np.zeros(SHAPE[:3], bool)
    region[4:12] = True
    sigma = np.full(SHAPE[:3], SIGMA)
    probe, eps = perturbation(noisy, sigma, region)
    ruined = _smooth(noisy, 3)
    ruined[16:] = 0  # outside the region: no effect
    estimate = estimate_error(noisy=noisy, denoised=ruined, perturbed=_smooth(noisy + eps * probe, 3), probe=probe,
                              epsilon=eps, sigma=sigma, region=region)
    assert estimate.n_values == region.sum() * SHAPE[3]
    assert estimate.rmse == pytest.approx(_rmse(ruined[region], truth[region]), rel=0.1)


def test_pooling_and_bad_arguments():
    a = ErrorEstimate(rmse=3.0, n_values=10, residual_rms=1, noise_rms=1, divergence=0)
    b = ErrorEstimate(rmse=4.0, n_values=30, residual_rms=1, noise_rms=1, divergence=0)
    assert pooled_rmse([a, b]) == pytest.approx(np.sqrt((90 + 480) / 40))
    assert pooled_rmse([]) is None
    assert set(a.as_dict()) == {"EstimatedRMSE", "ResidualRMS", "NoiseRMS", "Divergence", "Values"}
    noisy = np.ones(SHAPE)
    with pytest.raises(ValueError, match="one 4D shape"):
        estimate_error(noisy=noisy, denoised=noisy[..., :3], perturbed=noisy, probe=noisy, epsilon=1.0,
                       sigma=np.ones(SHAPE[:3]), region=np.ones(SHAPE[:3], bool))
    with pytest.raises(ValueError, match="rician_correction"):
        estimate_error(noisy=noisy, denoised=noisy, perturbed=noisy, probe=noisy, epsilon=1.0,
                       sigma=np.ones(SHAPE[:3]), region=np.ones(SHAPE[:3], bool), rician_correction="koay")
    probe, eps = perturbation(noisy, np.zeros(SHAPE[:3]), np.ones(SHAPE[:3], bool))
    assert eps == 1.0 and probe.shape == SHAPE and probe.dtype == np.float32
