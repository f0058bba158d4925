"""Removing the Rician noise floor (bids_denoise.denoise.rician)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_denoise.denoise.rician import correct_rician_bias, rician_mean, rician_variance


def _rician_magnitudes(nu, sigma, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.abs(nu + sigma * rng.normal(size=n) + 1j * sigma * rng.normal(size=n))


def test_the_rician_mean_has_its_known_limits():
    assert rician_mean(0.0) == pytest.approx(np.sqrt(np.pi / 2), rel=1e-12)
    assert rician_mean(30.0) == pytest.approx(np.sqrt(30.0**2 + 1.0), rel=1e-6)
    samples = _rician_magnitudes(2.0, 1.0, 2_000_000)
    assert rician_mean(2.0) == pytest.approx(samples.mean(), rel=2e-3)


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0, 4.0, 10.0, 60.0])
def test_the_mean_correction_recovers_the_true_signal_from_the_mean_magnitude(nu):
    sigma = 3.0
    mean = sigma * rician_mean(nu / sigma)
    assert correct_rician_bias(np.array([mean]), sigma)[0] == pytest.approx(nu, rel=1e-4)


def test_values_at_or_below_the_noise_mean_become_zero_and_signs_are_kept_at_zero():
    sigma = 2.0
    out = correct_rician_bias(np.array([-5.0, 0.0, 1.0, sigma * np.sqrt(np.pi / 2)]), sigma)
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_moments_correction_and_maps():
    signal = np.full((2, 2, 1, 3), 5.0)
    sigma = np.array([[[1.0], [2.0]], [[0.0], [3.0]]])  # 3D map, broadcast over volumes
    out = correct_rician_bias(signal, sigma, method="moments")
    np.testing.assert_allclose(out[0, 0], np.sqrt(25 - 2), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], np.sqrt(25 - 8), rtol=1e-6)
    np.testing.assert_allclose(out[1, 0], 5.0)  # sigma 0: unchanged
    np.testing.assert_allclose(out[1, 1], np.sqrt(25 - 18), rtol=1e-6)
    low = correct_rician_bias(np.full((1, 1, 1, 2), 2.0), np.full((1, 1, 1), 2.0), method="moments")
    np.testing.assert_array_equal(low, 0.0)  # S^2 < 2 sigma^2
    assert out.dtype == np.float32


def test_mean_correction_lowers_less_than_moments_for_a_denoised_mean():
    mean = 3.0 * rician_mean(5.0 / 3.0)  # a denoised value for nu = 5, sigma = 3
    by_mean = correct_rician_bias(np.array([mean]), 3.0)[0]
    by_moments = correct_rician_bias(np.array([mean]), 3.0, method="moments")[0]
    assert abs(by_mean - 5.0) < 1e-3 and by_moments < 4.5  # moments over-corrects means


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma=-1.0), "non-negative"), (dict(sigma=np.nan), "finite"),
    (dict(sigma=np.ones((3, 3))), "does not fit"), (dict(sigma=1.0, method="koay"), "method"),
])
def test_bad_arguments_raise(kwargs, match):
    sigma = kwargs.pop("sigma")
    with pytest.raises(ValueError, match=match):
        correct_rician_bias(np.ones((2, 2, 2, 2)), sigma, **kwargs)


def test_the_rician_variance_matches_sampled_magnitudes():
    rng = np.random.default_rng(3)
    for nu in (0.0, 1.0, 2.5, 8.0):
        magnitude = np.hypot(nu + rng.normal(size=400_000), rng.normal(size=400_000))
        assert rician_variance(nu) == pytest.approx(magnitude.var(), rel=0.01)
    assert rician_variance(0.0) == pytest.approx(2 - np.pi / 2)
    assert rician_variance(40.0) == pytest.approx(1.0, abs=1e-3)
