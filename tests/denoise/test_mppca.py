"""Tests of the MP-PCA engine :mod:`bids_denoise.denoise.mppca`.

The reference below is written independently of the engine: plain NumPy, one window after
the other, an SVD of the centred Casorati matrix instead of a Gram eigendecomposition, and
the Marchenko-Pastur classifier as the explicit loop of Veraart et al. (2016) that removes
the largest eigenvalue while the remaining spectrum is wider than an MP bulk.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bids_denoise.denoise import mppca as engine
from bids_denoise.denoise.mppca import MPPCAResult, mppca


# ----------------------------------------------------------------------------- reference
def _reference_split(singular_values, n_rows, n_columns, estimator):
    """(sigma^2, number of kept components) of one centred M x N patch, from its SVD."""
    q = max(n_rows, n_columns)
    r = min(n_rows - 1, n_columns)  # centring removes one dimension
    lam = np.sort(singular_values**2)[::-1][:r] / q  # descending
    n_signal = 0
    while True:
        noise = lam[n_signal:]
        p = noise.size
        sigma2 = noise.mean()
        gamma = p / q if estimator == "veraart2016" else p / (q - (r - p))
        if noise[0] - noise[-1] <= 4 * np.sqrt(gamma) * sigma2:
            break
        n_signal += 1
    edge = (1 + np.sqrt(r / q)) ** 2 * sigma2
    return sigma2, int(np.sum(lam >= edge))


def _reference_window(data, start, window, estimator):
    """Denoised rows, sigma^2 and rank of the window whose first voxel is ``start``."""
    block = data[tuple(slice(s, s + w) for s, w in zip(start, window))]
    patch = block.reshape(-1, data.shape[3])
    mean = patch.mean(axis=0)
    u, s, vt = np.linalg.svd(patch - mean, full_matrices=False)
    sigma2, rank = _reference_split(s, *patch.shape, estimator)
    estimate = (u[:, :rank] * s[:rank]) @ vt[:rank] + mean
    return estimate.reshape(block.shape), sigma2, rank


def reference_mppca(data, radius, estimator="veraart2016", reconstruction="overlap"):
    """Loop implementation: returns (denoised, sigma, rank) in float64."""
    data = np.asarray(data, dtype=np.float64)
    spatial = data.shape[:3]
    radius = [0 if n == 1 else radius for n in spatial]
    window = [2 * r + 1 for r in radius]
    out = np.zeros(data.shape)
    sigma = np.zeros(spatial)
    rank = np.zeros(spatial)
    if reconstruction == "overlap":
        weights = np.zeros(spatial)
        for start in itertools.product(*(range(n - w + 1) for n, w in zip(spatial, window))):
            estimate, sigma2, k = _reference_window(data, start, window, estimator)
            region = tuple(slice(s, s + w) for s, w in zip(start, window))
            weight = 1.0 / (1.0 + k)
            out[region] += weight * estimate
            weights[region] += weight
            sigma[region] += weight * sigma2
            rank[region] += weight * k
        return out / weights[..., None], np.sqrt(sigma / weights), rank / weights
    for voxel in itertools.product(*(range(n) for n in spatial)):
        start = [min(max(v - r, 0), n - w) for v, r, n, w in zip(voxel, radius, spatial, window)]
        estimate, sigma2, k = _reference_window(data, start, window, estimator)
        out[voxel] = estimate[tuple(v - s for v, s in zip(voxel, start))]
        sigma[voxel] = np.sqrt(sigma2)
        rank[voxel] = k
    return out, sigma, rank


# ----------------------------------------------------------------------------- phantoms
def low_rank_series(shape, n_volumes, rank=3, *, sigma=1.0, slope=1.0, seed=0):
    """A baseline plus ``rank`` components that ramp linearly in space, plus Gaussian noise.

    Inside any window the centred ramps (x, y, z and x + y - z ...) are linearly independent,
    so the signal has exactly ``rank`` components above the centred mean in every window.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    patterns = [grids[0], grids[1], grids[2], grids[0] + grids[1] - grids[2], grids[0] * 0.5 - grids[1]]
    profiles = rng.normal(size=(rank, n_volumes))
    signal = 500.0 + 20.0 * rng.normal(size=n_volumes)
    signal = np.broadcast_to(signal, (*shape, n_volumes)).copy()
    for j in range(rank):
        signal += slope * patterns[j][..., None] * profiles[j]
    noisy = signal + rng.normal(0, sigma, signal.shape)
    return signal, noisy


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - b) ** 2)))


def run(data, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return mppca(data, **kwargs)


# ----------------------------------------------------------------------------- 1. reference
@pytest.mark.parametrize("estimator", ["veraart2016", "cordero-grande2019"])
@pytest.mark.parametrize("reconstruction", ["overlap", "center"])
@pytest.mark.parametrize(
    ("shape", "n_volumes", "radius", "slope"),
    [((9, 8, 7), 12, 1, 3.0), ((9, 8, 7), 12, 2, 0.6), ((7, 6, 5), 30, 1, 1.5)],
    ids=["r1", "r2", "r1-wide"],  # r1-wide: M = 27 <= N = 30, the M x M Gram
)
def test_matches_loop_reference(estimator, reconstruction, shape, n_volumes, radius, slope):
    # The slopes make the windows keep different numbers of components (weights differ).
    _, noisy = low_rank_series(shape, n_volumes, rank=3, sigma=4.0, slope=slope, seed=1)
    noisy = noisy.astype(np.float32)  # both sides then see the same numbers
    ours = run(noisy, patch_radius=radius, estimator=estimator, reconstruction=reconstruction)
    den, sigma, rank = reference_mppca(noisy, radius, estimator, reconstruction)
    assert len(np.unique(rank)) > 1 and rank.max() >= 2
    scale = np.abs(den).max()
    assert np.abs(ours.denoised - den).max() <= 1e-5 * scale
    assert np.abs(ours.sigma - sigma).max() <= 1e-5 * sigma.max()
    assert np.abs(ours.rank - rank).max() <= 1e-4 * rank.max()


# ----------------------------------------------------------------------------- 2. pure noise
@pytest.mark.parametrize("estimator", ["veraart2016", "cordero-grande2019"])
@pytest.mark.parametrize(
    ("shape", "n_volumes", "radius"),
    [((20, 20, 20), 30, 2), ((14, 14, 14), 60, 1)],
    ids=["M>N", "M<N"],  # M < N: 27 voxels, 60 volumes (DIPY's sigma is sqrt(N/M) too high there)
)
def test_sigma_of_pure_noise(estimator, shape, n_volumes, radius):
    true_sigma = 7.0
    rng = np.random.default_rng(2)
    data = 300.0 + rng.normal(0, true_sigma, (*shape, n_volumes))
    result = run(data, estimator=estimator, patch_radius=radius)
    assert abs(np.median(result.sigma) / true_sigma - 1) < 0.05
    assert np.median(result.rank) < 0.5  # nothing but noise is found
    # Averaging over windows with nothing to keep: the output is the local mean, far less noisy.
    assert rmse(result.denoised, 300.0) < 0.3 * true_sigma


# ----------------------------------------------------------------------------- 3. rank
@pytest.mark.parametrize("estimator", ["veraart2016", "cordero-grande2019"])
def test_recovers_rank_of_low_rank_signal(estimator):
    signal, noisy = low_rank_series((14, 14, 14), 30, rank=3, sigma=1.0, slope=1.0, seed=3)
    center = run(noisy, estimator=estimator, reconstruction="center")
    values, counts = np.unique(center.rank, return_counts=True)
    assert values[np.argmax(counts)] == 3 and np.median(center.rank) == 3
    assert center.rank.min() == 3  # no signal component is ever lost
    # Interior voxels have one window each (border voxels share shifted windows). The largest
    # noise eigenvalue of a finite window exceeds the asymptotic MP edge now and then
    # (Tracy-Widom fluctuations; measured 7-15 % of windows here), so one noise component
    # is sometimes kept.
    interior = center.rank[2:-2, 2:-2, 2:-2]
    assert np.mean(interior == 3) > 0.8
    overlap = run(noisy, estimator=estimator)
    assert 3 <= np.median(overlap.rank) < 3.25  # a weighted mean of window ranks
    assert rmse(overlap.denoised, signal) < 0.45 * rmse(noisy, signal)
    assert abs(np.median(overlap.sigma) - 1.0) < 0.05


# ----------------------------------------------------------------------------- 4. CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("reconstruction", ["overlap", "center"])
def test_cuda_matches_cpu(reconstruction):
    _, noisy = low_rank_series((24, 22, 20), 40, rank=3, sigma=2.0, slope=1.0, seed=4)
    cpu = run(noisy, reconstruction=reconstruction, device="cpu")
    # The CUDA default (float64 eigh) agrees to round-off.
    gpu = run(noisy, reconstruction=reconstruction, device="cuda")
    assert np.abs(gpu.denoised - cpu.denoised).max() <= 1e-5 * np.abs(cpu.denoised).max()
    assert np.allclose(gpu.sigma, cpu.sigma, rtol=1e-5)
    assert np.array_equal(np.round(gpu.rank, 3), np.round(cpu.rank, 3))
    # float32 eigh on CUDA (not the default): within 1e-4 of the peak, sigma within 1e-3.
    array = np.asarray(noisy)
    fast = engine._run(
        array, (2, 2, 2), None, "veraart2016", reconstruction, torch.device("cuda"), False, torch.float32
    )
    assert np.abs(fast.denoised - cpu.denoised).max() <= 1e-4 * np.abs(cpu.denoised).max()
    assert np.allclose(fast.sigma, cpu.sigma, rtol=1e-3)


# ----------------------------------------------------------------------------- 5. errors
def _bad(kind):
    good = np.ones((6, 6, 6, 5), np.float32) + np.arange(5)
    cases = {
        "nan": (np.where(np.arange(5) == 2, np.nan, good), {}, "NaN or infinite"),
        "inf": (np.where(np.arange(5) == 2, np.inf, good), {}, "NaN or infinite"),
        "3d": (good[..., 0], {}, "4D array"),
        "one volume": (good[..., :1], {}, "at least 2 volumes"),
        "radius too large": (good, {"patch_radius": 3}, "needs a window of 7 voxels"),
        "radius tuple too large": (good, {"patch_radius": (1, 1, 4)}, "axis 2"),
        "negative radius": (good, {"patch_radius": -1}, ">= 0"),
        "float radius": (good, {"patch_radius": 1.5}, "int or a 3-tuple"),
        "radius of 2": (good, {"patch_radius": (1, 1)}, "int or a 3-tuple"),
        "single voxel patch": (good, {"patch_radius": 0}, "at least 2 voxels"),
        "estimator": (good, {"estimator": "exp3"}, "estimator must be one of"),
        "reconstruction": (good, {"reconstruction": "median"}, "reconstruction must be one of"),
        "mask shape": (good, {"mask": np.ones((6, 6, 5), bool)}, "spatial shape"),
        "complex": (good.astype(np.complex64), {}, "real integer or floating"),
        "device": (good, {"device": "tpu"}, "device must be"),
    }
    return cases[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "nan", "inf", "3d", "one volume", "radius too large", "radius tuple too large",
        "negative radius", "float radius", "radius of 2", "single voxel patch", "estimator",
        "reconstruction", "mask shape", "complex", "device",
    ],
)
def test_bad_input_raises(kind):
    data, kwargs, message = _bad(kind)
    with pytest.raises(ValueError, match=message):
        run(data, **{"patch_radius": 1, **kwargs})


# ----------------------------------------------------------------------------- 6. layouts
def test_input_untouched_and_layouts_dtypes_agree():
    _, noisy = low_rank_series((10, 9, 8), 14, rank=2, sigma=3.0, seed=6)
    as_int = np.round(noisy).astype(np.int16)
    reference = run(as_int, patch_radius=1)
    assert isinstance(reference, MPPCAResult)
    assert reference.denoised.dtype == np.float32 and reference.denoised.shape == as_int.shape
    assert reference.sigma.dtype == np.float32 and reference.sigma.shape == as_int.shape[:3]
    big = np.zeros((20, 9, 8, 28), np.float64)
    big[::2, :, :, ::2] = as_int
    variants = {
        "int16": as_int,
        "float32": as_int.astype(np.float32),
        "float64": as_int.astype(np.float64),
        "fortran": np.asfortranarray(as_int.astype(np.float64)),
        "strided": big[::2, :, :, ::2],
        "transposed": np.transpose(np.transpose(as_int, (3, 2, 1, 0)).copy(), (3, 2, 1, 0)),
    }
    for name, variant in variants.items():
        before = variant.copy()
        result = run(variant, patch_radius=1)
        assert np.array_equal(variant, before), name
        np.testing.assert_allclose(result.denoised, reference.denoised, rtol=1e-6, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(result.sigma, reference.sigma, rtol=1e-6, err_msg=name)
    assert np.array_equal(big[::2, :, :, ::2], as_int)  # the parent of the view too


def test_mask_copies_outside_and_keeps_inside():
    _, noisy = low_rank_series((12, 11, 10), 16, rank=3, sigma=2.0, seed=7)
    mask = np.zeros(noisy.shape[:3], bool)
    mask[3:9, 2:7, 4:10] = True
    for reconstruction in ("overlap", "center"):
        full = run(noisy, reconstruction=reconstruction)
        masked = run(noisy, mask=mask, reconstruction=reconstruction)
        np.testing.assert_allclose(masked.denoised[mask], full.denoised[mask], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(masked.sigma[mask], full.sigma[mask], rtol=1e-6)
        np.testing.assert_array_equal(masked.denoised[~mask], noisy.astype(np.float32)[~mask])
        assert not masked.sigma[~mask].any() and not masked.rank[~mask].any()
    empty = run(noisy, mask=np.zeros_like(mask))
    np.testing.assert_array_equal(empty.denoised, noisy.astype(np.float32))


def test_rank_dtypes_and_progress(capsys):
    _, noisy = low_rank_series((8, 8, 8), 10, rank=2, sigma=2.0, seed=8)
    assert run(noisy, patch_radius=1, reconstruction="center").rank.dtype == np.int32
    assert run(noisy, patch_radius=1, reconstruction="overlap", progress=True).rank.dtype == np.float32
    assert "MP-PCA" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 7. small data
@pytest.mark.parametrize("reconstruction", ["overlap", "center"])
@pytest.mark.parametrize(
    ("shape", "n_volumes", "rank"),
    [((14, 13, 12), 6, 2), ((30, 28, 1), 20, 3), ((30, 28, 1), 40, 3)],
    ids=["6-volumes", "one-slice", "one-slice-wide"],
)
def test_small_series_are_denoised(reconstruction, shape, n_volumes, rank):
    signal, noisy = low_rank_series(shape, n_volumes, rank=rank, sigma=2.0, slope=2.0, seed=9)
    result = run(noisy, reconstruction=reconstruction)
    assert result.denoised.shape == noisy.shape
    assert rmse(result.denoised, signal) < 0.8 * rmse(noisy, signal)
    assert 0.7 < np.median(result.sigma) / 2.0 < 1.3


# ----------------------------------------------------------------------------- 8. DIPY
@pytest.mark.dipy
@pytest.mark.parametrize("radius", [1, 2])
def test_matches_dipy_mppca(radius):
    localpca = pytest.importorskip("dipy.denoise.localpca")
    _, noisy = low_rank_series((12, 11, 10), 20, rank=3, sigma=5.0, slope=1.5, seed=10)
    ours = run(noisy, patch_radius=radius)
    # DIPY works in float64 for float64 input, clips at 0 (nothing is negative here) and
    # returns the same weighted root-mean-square sigma map.
    theirs, their_sigma = localpca.mppca(noisy, patch_radius=radius, return_sigma=True, suppress_warning=True)
    assert np.abs(ours.denoised - theirs).max() <= 1e-6 * np.abs(theirs).max()
    np.testing.assert_allclose(ours.sigma, their_sigma, rtol=1e-5)
