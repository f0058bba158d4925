"""QC numbers and flags: quiet on a good output, loud on removed signal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_denoise.reports import qc

SIGMA = 25.0


def _directions(n, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, 3))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def series():
    """A head with an anisotropic band (FA about 0.7) and isotropic tissue; 3 b0s and 30
    directions at b=1000; Rician noise of sigma 25 at S0 = 500 (SNR 20 on the b0s, 9 to 18 on
    the DWIs)."""
    shape = (24, 24, 8)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    head = np.repeat(((x / 0.85) ** 2 + (y / 0.85) ** 2 < 1)[..., None], shape[2], -1)
    band = head & (np.abs(y) < 0.3)[..., None]
    g = _directions(30)
    bvals = np.r_[np.zeros(3), np.full(30, 1000.0)]
    bvecs = np.r_[np.zeros((3, 3)), g].T
    iso = np.exp(-1000 * 0.8e-3 * np.ones(30))
    aniso = np.exp(-1000 * (1.7e-3 * g[:, 0] ** 2 + 0.3e-3 * (g[:, 1] ** 2 + g[:, 2] ** 2)))
    s0 = np.where(head, 500.0, 0.0)
    attenuation = np.where(band[..., None], aniso, iso)
    clean = np.concatenate([np.repeat(s0[..., None], 3, -1), s0[..., None] * attenuation], -1)
    rng = np.random.default_rng(1)
    noisy = np.hypot(clean + rng.normal(0, SIGMA, clean.shape), rng.normal(0, SIGMA, clean.shape))
    sigma = np.full(shape, SIGMA, np.float32)
    return dict(clean=clean, noisy=noisy, bvals=bvals, bvecs=bvecs, head=head, sigma=sigma)


def _numbers(series, denoised, *, rician_corrected):
    dwi = list(range(3, 33))
    noisy, head = series["noisy"][..., dwi], series["head"]
    ratio = qc.residual_ratio(noisy, denoised[..., dwi], series["sigma"], head, rician_corrected=rician_corrected)
    correlation = qc.residual_correlation(noisy, denoised[..., dwi], head, sigma=series["sigma"],
                                          rician_corrected=rician_corrected)
    fa = qc.fa_change(series["noisy"], denoised, series["bvals"], series["bvecs"], head, sigma=series["sigma"],
                      rician_corrected=rician_corrected)
    flags = qc.group_flags("b1000", ratio, correlation, int(head.sum())) + qc.run_flags(fa)
    return ratio, correlation, fa, flags


def test_a_perfect_denoiser_raises_no_flag(series):
    ratio, correlation, fa, flags = _numbers(series, series["clean"], rician_corrected=True)
    assert 0.9 < ratio < 1.1
    assert correlation < 0.05
    assert abs(fa["Change"]) < 0.03
    assert flags == []
    assert "AfterRenoised" in fa


def test_the_rician_mean_of_the_truth_is_quiet_without_the_correction(series):
    from bids_denoise.denoise.rician import rician_mean

    mean = SIGMA * rician_mean(series["clean"] / SIGMA)
    ratio, _, _, flags = _numbers(series, mean, rician_corrected=False)
    assert 0.9 < ratio < 1.1 and flags == []


def test_spatial_over_smoothing_is_flagged(series):
    blurred = ndimage.gaussian_filter(series["noisy"], (2.0, 2.0, 0, 0))
    ratio, correlation, _, flags = _numbers(series, blurred, rician_corrected=False)
    checks = {flag["Check"] for flag in flags}
    assert ratio > qc.THRESHOLDS["ResidualRatio"]
    assert "ResidualRatio" in checks
    assert all(flag["Message"].startswith("group b1000") for flag in flags if flag["Group"])


def test_removed_directional_contrast_is_flagged_by_fa(series):
    flat = series["clean"].copy()
    flat[..., 3:] = flat[..., 3:].mean(-1, keepdims=True)  # every direction the same: FA 0
    _, correlation, fa, flags = _numbers(series, flat, rician_corrected=True)
    assert fa["After"] < 0.2 < fa["Before"]
    checks = {flag["Check"] for flag in flags}
    assert "FADrop" in checks
    assert correlation > qc.THRESHOLDS["ResidualCorrelation"] and "ResidualCorrelation" in checks


def test_flag_thresholds_are_strict_and_the_band_widens_for_small_regions():
    limit = qc.THRESHOLDS["ResidualRatio"]
    assert qc.group_flags("g", limit, 0.0, 10_000) == []
    assert [f["Check"] for f in qc.group_flags("g", limit + 0.01, 0.0, 10_000)] == ["ResidualRatio"]
    floor = qc.THRESHOLDS["ResidualCorrelation"]
    assert qc.group_flags("g", 1.0, floor, 10_000) == []
    assert [f["Check"] for f in qc.group_flags("g", 1.0, floor + 0.01, 10_000)] == ["ResidualCorrelation"]
    # 100 voxels: white noise reaches 2/sqrt(100) = 0.2 > the floor, so 0.18 is not flagged
    assert qc.group_flags("g", 1.0, 0.18, 100) == []
    assert qc.group_flags("g", float("nan"), float("nan"), 100) == []
    assert qc.run_flags(None) == []
    assert qc.run_flags({"Change": -0.10, "Before": 0.5, "After": 0.45}) == []
    assert [f["Check"] for f in qc.run_flags({"Change": -0.11, "Before": 0.5, "After": 0.445})] == ["FADrop"]


def test_fa_needs_six_directions_and_a_b0(series):
    keep = [0, 3, 4, 5, 6, 7]  # one b0 and 5 directions
    assert qc.dti_fa(series["noisy"][..., keep], series["bvals"][keep], series["bvecs"][:, keep], series["head"]) is None
    no_b0 = list(range(3, 33))
    assert qc.dti_fa(series["noisy"][..., no_b0], series["bvals"][no_b0], series["bvecs"][:, no_b0],
                     series["head"]) is None


def test_dti_fa_recovers_the_band(series):
    fa = qc.dti_fa(series["clean"], series["bvals"], series["bvecs"], series["head"])
    band = (series["head"] & (np.abs(np.linspace(-1, 1, 24))[None, :, None] < 0.3))[series["head"]]
    expected = np.sqrt(0.5) * np.sqrt((1.7 - 0.3) ** 2 * 2) / np.sqrt(1.7**2 + 2 * 0.3**2)
    assert np.allclose(fa[band], expected, atol=1e-3)
    assert np.allclose(fa[~band], 0, atol=1e-3)
