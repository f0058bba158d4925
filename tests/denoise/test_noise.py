"""The run's noise level: MP-PCA corrected for the Rician variance, and the b0 repeats."""

from __future__ import annotations

import numpy as np
import pytest

from bids_denoise.denoise.mppca import mppca
from bids_denoise.denoise.noise import (
    b0_repeat_sigma,
    correct_mppca_sigma,
    estimate_noise_level,
    measure_noise,
)

SIGMA = 10.0


def _rician(signal, rng, sigma=SIGMA):
    return np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))


def _series(seed=0, shape=(14, 14, 6), n_b0=6, n_dwi=40):
    """Low-rank head-like signal: b0s at SNR 20, diffusion-weighted volumes at SNR 0.5 to 4."""
    rng = np.random.default_rng(seed)
    s0 = np.full(shape, 20 * SIGMA)
    decay = rng.uniform(0.02, 0.2, (2, n_dwi))
    weights = rng.dirichlet((1, 1), shape)
    dwi = s0[..., None] * (weights @ decay)
    clean = np.concatenate([np.repeat(s0[..., None], n_b0, -1), dwi], -1)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dwi, 1000.0)]
    return _rician(clean, rng).astype(np.float32), bvals


def test_b0_repeats_give_sigma_within_2_percent():
    data, bvals = _series()
    region = np.ones(data.shape[:3], bool)
    assert b0_repeat_sigma(data[..., bvals == 0], region) == pytest.approx(SIGMA, rel=0.02)
    assert b0_repeat_sigma(data[..., :2], region) is None  # two b0s are too few
    assert b0_repeat_sigma(data[..., :6], np.zeros(data.shape[:3], bool)) is None


def test_the_rician_correction_brings_mppca_closer_to_sigma():
    data, bvals = _series(seed=1)
    result = mppca(data[..., bvals > 0], patch_radius=2, progress=False)
    raw = float(np.median(result.sigma))
    corrected = float(np.median(correct_mppca_sigma(result.sigma, result.denoised)))
    assert raw < 0.93 * SIGMA  # the magnitude's variance is below sigma^2 at low SNR
    assert abs(corrected - SIGMA) < 0.5 * abs(raw - SIGMA)


def test_agreeing_b0_repeats_set_the_level_and_mppca_the_shape():
    data, bvals = _series(seed=2)
    region = np.ones(data.shape[:3], bool)
    level = measure_noise(data, bvals, region=region)
    assert level.source == "b0 repeats" and "6 b0 volumes" in level.note
    assert np.sqrt(np.mean(level.sigma.astype(float) ** 2)) == pytest.approx(level.b0_level, rel=1e-5)
    assert level.b0_level == pytest.approx(SIGMA, rel=0.02)


def test_b0s_that_disagree_with_mppca_are_not_trusted():
    data, bvals = _series(seed=3)
    drifting = data.copy()
    drifting[..., :6] *= np.linspace(0.8, 1.2, 6)  # signal drift between the b0s
    region = np.ones(data.shape[:3], bool)
    level = measure_noise(drifting, bvals, region=region)
    assert level.source == "MP-PCA" and "motion or signal drift" in level.note
    assert level.b0_level > 1.25 * level.mppca_level


def test_without_repeated_b0s_mppca_alone_is_used():
    data, bvals = _series(seed=4, n_b0=1)
    result = mppca(data, patch_radius=2, progress=False)
    level = estimate_noise_level(mppca_sigma=result.sigma, mppca_denoised=result.denoised,
                                 b0s=data[..., :1], region=np.ones(data.shape[:3], bool))
    assert level.source == "MP-PCA" and level.b0_level is None and "fewer than 3 b0" in level.note
    np.testing.assert_array_equal(level.sigma, correct_mppca_sigma(result.sigma, result.denoised))


def test_noise_map_survives_a_high_rank_series_in_small_windows():
    """Many b-values, 100 volumes, 5x5x5 windows (125 voxels): a signal of rank 40 makes the
    Veraart 2016 noise bulk collapse (the DSI and multi-shell ROIs of ../shared/data showed it);
    the default estimator (Cordero-Grande 2019) keeps the level near the truth."""
    rng = np.random.default_rng(3)
    shape, n, rank = (8, 10, 10), 100, 40
    clean = 500 + rng.normal(size=(*shape, rank)) * 10 @ rng.normal(size=(rank, n))  # 250 to 750
    data = _rician(clean, rng).astype(np.float32)
    bvals = np.r_[0.0, np.linspace(300, 4000, n - 1)]  # one b0: the level comes from MP-PCA
    region = np.ones(shape, bool)
    default = measure_noise(data, bvals, region=region, device="cpu")
    veraart = measure_noise(data, bvals, region=region, estimator="veraart2016", device="cpu")
    assert default.source == "MP-PCA"
    assert default.mppca_level == pytest.approx(SIGMA, rel=0.25)
    assert veraart.mppca_level < 0.5 * SIGMA  # what the default avoids
