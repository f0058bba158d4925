"""The directional contrast a denoiser keeps, measured without the truth."""

from __future__ import annotations

import numpy as np
import pytest

from bids_denoise.denoise.contrast import directional_contrast

SIGMA = 20.0


def _series(n_directions=30, n_b0=2, seed=0):
    """Anisotropic tensors on a 12x12x4 grid: (truth, noisy, bvals, sigma map, region)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_directions, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    axes = rng.standard_normal((12, 12, 4, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    cosine2 = np.einsum("xyzk,nk->xyzn", axes, directions) ** 2
    adc = 0.3e-3 + 1.4e-3 * cosine2  # prolate tensors: FA about 0.7
    bvals = np.r_[np.zeros(n_b0), np.full(n_directions, 1000.0)]
    truth = np.concatenate([np.full((12, 12, 4, n_b0), 1000.0), 1000.0 * np.exp(-1000.0 * adc)], axis=3)
    noisy = truth + rng.normal(0.0, SIGMA, truth.shape)
    return truth, noisy, bvals, np.full((12, 12, 4), SIGMA), np.ones((12, 12, 4), bool)


def test_the_truth_keeps_all_of_the_contrast():
    truth, noisy, bvals, sigma, region = _series()
    kept = directional_contrast(noisy=noisy, denoised=truth, bvals=bvals, sigma=sigma, region=region)
    assert kept.ratio == pytest.approx(1.0, abs=0.05)
    assert kept.n_voxels > 400 and [b for b, _, _ in kept.shells] == [1000]


@pytest.mark.parametrize("shrink", [0.0, 0.5, 0.8])
def test_shrinking_towards_the_shell_mean_keeps_the_square_of_the_factor(shrink):
    truth, noisy, bvals, sigma, region = _series()
    shell = bvals > 50
    flattened = truth.copy()
    mean = truth[..., shell].mean(axis=3, keepdims=True)
    flattened[..., shell] = mean + shrink * (truth[..., shell] - mean)
    kept = directional_contrast(noisy=noisy, denoised=flattened, bvals=bvals, sigma=sigma, region=region)
    assert kept.ratio == pytest.approx(shrink**2, abs=0.05)


def test_the_noisy_input_itself_is_not_mistaken_for_the_signal():
    _, noisy, bvals, sigma, region = _series()
    kept = directional_contrast(noisy=noisy, denoised=noisy, bvals=bvals, sigma=sigma, region=region)
    # the noise variance is in the output but not in the signal estimate
    assert 1.0 < kept.ratio < 1.1


def test_shells_are_pooled_and_reported_each():
    truth, noisy, bvals, sigma, region = _series(n_directions=30)
    bvals = bvals.copy()
    bvals[17:] = 2000.0
    kept = directional_contrast(noisy=noisy, denoised=truth, bvals=bvals, sigma=sigma, region=region)
    assert [b for b, _, _ in kept.shells] == [1000, 2000]
    assert kept.n_voxels == sum(count for _, count, _ in kept.shells)


def test_no_measurement_without_enough_directions_or_signal():
    truth, noisy, bvals, sigma, region = _series(n_directions=5)
    assert directional_contrast(noisy=noisy, denoised=truth, bvals=bvals, sigma=sigma, region=region) is None
    _, _, many, _, _ = _series()
    flat = np.full((12, 12, 4, many.size), 500.0)
    isotropic = flat + np.random.default_rng(1).normal(0, SIGMA, flat.shape)
    assert directional_contrast(noisy=isotropic, denoised=flat, bvals=many, sigma=sigma, region=region) is None
    b0_only = np.zeros(bvals.size)
    assert directional_contrast(noisy=noisy, denoised=truth, bvals=b0_only, sigma=sigma, region=region) is None


def test_mismatched_inputs_are_named():
    truth, noisy, bvals, sigma, region = _series()
    with pytest.raises(ValueError, match="one 4D shape"):
        directional_contrast(noisy=noisy, denoised=truth[..., :-1], bvals=bvals, sigma=sigma, region=region)
    with pytest.raises(ValueError, match="b-values"):
        directional_contrast(noisy=noisy, denoised=truth, bvals=bvals[:-1], sigma=sigma, region=region)
