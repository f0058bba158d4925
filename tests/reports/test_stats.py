"""Noise estimates and residual statistics on synthetic data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from bids_denoise.denoise.masks import mean_b0
from bids_denoise.reports.stats import estimate_sigma, pearson, residual_statistics


def _head(shape=(40, 40, 12), background=True):
    """A smooth ellipsoid 'brain' with bright 'ventricles', in a dark background (or none)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.2) ** 2 < 1
    image = np.where(brain, 600.0, 8.0 if background else 450.0)
    image[(np.abs(x) < 0.15) & (np.abs(y) < 0.4) & brain] = 1500.0
    return ndimage.gaussian_filter(image, 1.0), brain


# -------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("sigma", [5.0, 20.0])
def test_estimate_sigma_recovers_white_noise_on_smooth_anatomy(sigma):
    image, brain = _head((64, 64, 10))
    noisy = image + np.random.default_rng(2).normal(0, sigma, image.shape)
    estimate = estimate_sigma(noisy, brain)
    assert estimate == pytest.approx(sigma, rel=0.15)


def test_estimate_sigma_edge_cases():
    assert np.isnan(estimate_sigma(np.ones((1, 5, 5))))
    assert np.isnan(estimate_sigma(np.ones((5, 5, 1)), np.zeros((5, 5, 1), bool)))
    assert estimate_sigma(np.ones((8, 8, 2))) == 0.0
    assert estimate_sigma(np.random.default_rng(0).normal(0, 3, (30, 30))) == pytest.approx(3, rel=0.15)


def test_pearson():
    a = np.arange(10.0)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert np.isnan(pearson(a, np.ones(10)))
    assert np.isnan(pearson([1.0], [2.0]))


# ---------------------------------------------------------------------------------- residuals
@pytest.fixture(scope="module")
def series():
    """A 4D series with a b0 group (4) and one shell (12), white noise sigma 10."""
    image, brain = _head((32, 32, 8))
    bvals = np.array([0, 0] + [1000] * 6 + [0, 0] + [1000] * 6, float)
    attenuation = np.where(bvals > 0, 0.4, 1.0)
    rng = np.random.default_rng(3)
    clean = image[..., None] * attenuation * (1 + 0.05 * rng.standard_normal(len(bvals)))
    noisy = clean + rng.normal(0, 10, clean.shape)
    groups = [{"Label": "b0", "BValue": 0, "Count": 4, "Volumes": [0, 1, 8, 9]},
              {"Label": "b1000", "BValue": 1000, "Count": 12, "Volumes": [2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]}]
    return noisy, clean, bvals, groups, brain


def test_ideal_denoiser_leaves_white_residuals(series):
    noisy, clean, bvals, groups, brain = series
    stats = residual_statistics(noisy, clean, groups, brain, anatomy=mean_b0(clean, bvals), bvals=bvals)
    json.dumps(stats, allow_nan=False)
    chance = stats["CorrelationChanceLevel"]
    assert chance == pytest.approx(2 / np.sqrt(brain.sum()))
    for group in stats["Groups"]:
        assert group["Denoised"] is True
        assert group["ResidualStd"] == pytest.approx(10, rel=0.05)
        assert group["SigmaBefore"] == pytest.approx(10, rel=0.25)
        assert group["SigmaAfter"] < 0.5 * group["SigmaBefore"]
        assert group["SNRAfter"] > group["SNRBefore"] and group["SNRGain"] > 1
        assert group["MaxAbsCorrelation"] < 2 * chance
        assert group["MaxAbsAnatomyCorrelation"] < 2 * chance
        histogram = group["Histogram"]
        assert len(histogram["Edges"]) == len(histogram["Counts"]) + 1
        assert sum(histogram["Counts"]) + histogram["Outside"] == brain.sum() * group["Count"]
    volumes = stats["Volumes"]
    assert volumes["Index"] == list(range(16)) and volumes["BValue"] == bvals.tolist()
    assert volumes["Group"][0] == "b0" and volumes["Group"][2] == "b1000"


def test_oversmoothing_shows_anatomy_in_the_residual(series):
    noisy, clean, bvals, groups, brain = series
    blurred = ndimage.gaussian_filter(clean, (2, 2, 2, 0))  # removes edges: anatomy in the residual
    stats = residual_statistics(noisy, blurred, groups, brain, anatomy=mean_b0(clean, bvals))
    chance = stats["CorrelationChanceLevel"]
    assert all(g["MedianAbsAnatomyCorrelation"] > 5 * chance for g in stats["Groups"])


def test_copied_group_is_reported_as_not_denoised(series):
    noisy, clean, bvals, groups, brain = series
    denoised = clean.copy()
    denoised[..., groups[0]["Volumes"]] = noisy[..., groups[0]["Volumes"]]
    stats = residual_statistics(noisy, denoised, groups, brain)
    b0 = stats["Groups"][0]
    assert b0["Denoised"] is False and b0["ResidualStd"] == 0
    assert b0["MedianAbsCorrelation"] is None and b0["Histogram"] is None
    assert b0["SigmaAfter"] == b0["SigmaBefore"] and b0["SNRGain"] == pytest.approx(1.0)
    assert stats["Volumes"]["ResidualSignalCorrelation"][0] is None
    json.dumps(stats, allow_nan=False)


def test_residual_statistics_checks_shapes(series):
    noisy, clean, _, groups, brain = series
    with pytest.raises(ValueError):
        residual_statistics(noisy, clean[..., :3], groups, brain)
    with pytest.raises(ValueError):
        residual_statistics(noisy, clean, groups, brain[:-1])
    # an empty mask falls back to every voxel
    stats = residual_statistics(noisy, clean, groups, np.zeros_like(brain))
    assert stats["MaskVoxels"] == brain.size
