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
from bids_denoise.denoise.mppca import _cpu as cpu_engine
from bids_denoise.denoise.mppca import _lapack as lapack


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
    [((9, 8, 7), 12, 1, 3.0), ((9, 8, 7), 12, 2, 0.6), ((7, 6, 5), 30, 1, 1.5), ((8, 7, 6), 26, 1, 1.5)],
    # r1-wide: M = 27 <= N = 30, the M x M Gram; r1-tall26: M = 27 > N = 26. Gram matrices of
    # 24 x 24 and more (the last two) go through the CPU engine's LAPACK eigensolver.
    ids=["r1", "r2", "r1-wide", "r1-tall26"],
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
@pytest.mark.parametrize(("radius", "n_volumes"), [(1, 20), (2, 20), (2, 30)])
def test_matches_dipy_mppca(radius, n_volumes):
    # (2, 30): 30 x 30 Gram matrices, the CPU engine's LAPACK eigensolver (20 x 20: eigh).
    localpca = pytest.importorskip("dipy.denoise.localpca")
    _, noisy = low_rank_series((12, 11, 10), n_volumes, rank=3, sigma=5.0, slope=1.5, seed=10)
    ours = run(noisy, patch_radius=radius)
    # DIPY works in float64 for float64 input, clips at 0 (nothing is negative here) and
    # returns the same weighted root-mean-square sigma map.
    theirs, their_sigma = localpca.mppca(noisy, patch_radius=radius, return_sigma=True, suppress_warning=True)
    assert np.abs(ours.denoised - theirs).max() <= 1e-6 * np.abs(theirs).max()
    np.testing.assert_allclose(ours.sigma, their_sigma, rtol=1e-5)


# ----------------------------------------------------------------------------- 9. CPU engine
needs_lapack = pytest.mark.skipif(lapack.routines() is None, reason="SciPy exports no LAPACK to ctypes")


def _with_spectrum(values, seed):
    """Symmetric matrices ``Q diag(values) Q^T`` with random orthogonal ``Q`` (float64)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, float)
    q, _ = np.linalg.qr(rng.normal(size=(len(values), len(values))))
    return torch.from_numpy((q * values) @ q.T)


def _check_eigen(matrices, counts, *, value_tol=1e-12, vector_tol=1e-9):
    """TridiagonalEigen against torch.linalg.eigh: eigenvalues; orthonormal eigenvectors of the
    ``counts[i]`` largest eigenvalues (residuals); where a gap separates them from the others,
    the same subspace (compared through projectors: any basis of a repeated eigenvalue is right)."""
    matrices = torch.stack(list(matrices)).contiguous()
    c, k, _ = matrices.shape
    ref_values, ref_vectors = torch.linalg.eigh(matrices)
    solver = lapack.TridiagonalEigen(c, k, lapack.routines())
    values = torch.from_numpy(solver.eigenvalues(matrices.clone()).copy())
    scale = ref_values.abs().amax(1, keepdim=True)
    assert ((values - ref_values).abs() <= value_tol * scale).all()
    counts = np.asarray(counts)
    width = max(int(counts.max()), 1)
    vectors = solver.top_vectors(counts, width)
    assert not solver.failed
    for i, kept in enumerate(counts.tolist()):
        assert not vectors[i, :, : width - kept].any()  # unused columns stay zero
        if kept == 0:
            continue
        v = vectors[i, :, width - kept :]
        assert torch.allclose(v.mT @ v, torch.eye(kept, dtype=v.dtype), atol=1e-12)
        residual = matrices[i] @ v - v * ref_values[i, k - kept :]
        assert residual.abs().max() <= vector_tol * scale[i]
        if kept < k and ref_values[i, k - kept] - ref_values[i, k - kept - 1] > 1e-6 * scale[i]:
            u = ref_vectors[i, :, k - kept :]
            assert (v @ v.mT - u @ u.mT).abs().max() <= vector_tol
    return values, vectors


@needs_lapack
@pytest.mark.parametrize("k", [2, 3, 24, 66])
def test_tridiagonal_eigen_matches_eigh(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(5, 2 * k + 3, k))
    x[:, :, : min(3, k)] *= [40.0, 12.0, 5.0][: min(3, k)]  # a few well separated top components
    grams = torch.from_numpy(x.transpose(0, 2, 1) @ x)
    _check_eigen(grams, [min(k, n) for n in (0, 1, 2, 3, k)])


@needs_lapack
def test_tridiagonal_eigen_repeated_and_clustered_eigenvalues():
    k = 30
    spectra = [
        [9.0] * 3 + [4.0] * 5 + list(np.linspace(0.1, 1.0, k - 8)),  # exactly repeated
        [9.0, 9.0 * (1 + 1e-12), 9.0 * (1 - 1e-12)] + list(np.linspace(0.1, 1.0, k - 3)),  # clustered
        [5.0] * k,  # a multiple of the identity
    ]
    matrices = [_with_spectrum(values, seed) for seed, values in enumerate(spectra)]
    # A whole cluster (the top 3) is a determined subspace; 2 of 3, or 4 of the identity's 30,
    # are any orthonormal eigenvectors of the repeated eigenvalue.
    _check_eigen(matrices, [3, 3, 4])
    _check_eigen(matrices, [2, 2, 30])
    _check_eigen(matrices[:1], [8])  # both clusters


@needs_lapack
def test_tridiagonal_eigen_rank_deficient():
    # Gram matrices of exactly rank-deficient data: k - r zero eigenvalues (up to round-off).
    rng = np.random.default_rng(3)
    k, r = 40, 6
    x = rng.normal(size=(4, 50, r)) @ rng.normal(size=(4, r, k))
    grams = torch.from_numpy(x.transpose(0, 2, 1) @ x)
    values, _ = _check_eigen(grams, [r, r, 1, 0])
    assert (values[:, : k - r].abs() <= 1e-12 * values[:, -1:]).all()


@needs_lapack
def test_tridiagonal_eigen_can_fail():
    # The check above would catch wrong vectors: the projector onto the wrong eigenvectors.
    grams = _with_spectrum(np.linspace(1.0, 30.0, 30), 0)[None]
    solver = lapack.TridiagonalEigen(1, 30, lapack.routines())
    solver.eigenvalues(grams.clone())
    solver.values[0, -1] = solver.values[0, -2]  # a wrong shift for the largest eigenvalue
    v = solver.top_vectors(np.array([1]), 1)[0]
    u = torch.linalg.eigh(grams[0])[1][:, -1:]
    assert (v @ v.mT - u @ u.mT).abs().max() > 0.1


def test_box_sum_matches_loop():
    rng = np.random.default_rng(4)
    image = torch.from_numpy(rng.normal(size=(2, 7, 6, 5)))
    window = (3, 1, 2)
    out = cpu_engine.box_sum(image, window)
    expected = torch.zeros_like(image)
    for x, y, z in itertools.product(range(7), range(6), range(5)):
        expected[:, x, y, z] = image[:, max(0, x - 2) : x + 1, y : y + 1, max(0, z - 1) : z + 1].sum((1, 2, 3))
    assert torch.allclose(out, expected, atol=1e-12)


@needs_lapack
@pytest.mark.parametrize("reconstruction", ["overlap", "center"])
@pytest.mark.parametrize("estimator", ["veraart2016", "cordero-grande2019"])
def test_cpu_engine_matches_dense_engine(monkeypatch, reconstruction, estimator):
    # Small chunks and two workers: many chunk boundaries, the per-worker sums, and windows of
    # every rank; the dense engine (float64 eigh, one block) is the reference.
    _, noisy = low_rank_series((11, 10, 9), 30, rank=4, sigma=3.0, slope=1.2, seed=11)
    mask = np.zeros(noisy.shape[:3], bool)
    mask[2:9, 1:8, 3:9] = True
    radius = engine._check_radius(2, noisy.shape[:3])
    dense = engine._run(noisy, radius, mask, estimator, reconstruction, torch.device("cpu"), False, torch.float64)
    monkeypatch.setattr(cpu_engine, "CHUNK_BYTES", 8 * 125 * 30 * 5)  # 5 windows per chunk
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = run(noisy, mask=mask, estimator=estimator, reconstruction=reconstruction)
        second = run(noisy, mask=mask, estimator=estimator, reconstruction=reconstruction)
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(first.denoised, second.denoised)  # independent of thread scheduling
    assert np.array_equal(first.rank, second.rank) and np.array_equal(first.sigma, second.sigma)
    assert np.abs(first.denoised - dense.denoised).max() <= 1e-6 * np.abs(dense.denoised).max()
    np.testing.assert_allclose(first.sigma, dense.sigma, rtol=1e-6)
    np.testing.assert_allclose(first.rank, dense.rank, rtol=1e-6, atol=1e-6)
    assert len(np.unique(first.rank[mask])) > 1  # windows of different ranks


@needs_lapack
def test_cpu_engine_lapack_and_eigh_paths_agree(monkeypatch):
    # 12 x 12 Gram matrices go to torch.linalg.eigh; forced through LAPACK they must agree,
    # including windows whose LAPACK call is reported as failed (dense fallback).
    _, noisy = low_rank_series((9, 8, 7), 12, rank=3, sigma=3.0, slope=2.0, seed=12)
    default = run(noisy, patch_radius=1)
    monkeypatch.setattr(cpu_engine, "LAPACK_MIN_SIZE", 2)
    forced = run(noisy, patch_radius=1)
    original = lapack.TridiagonalEigen.top_vectors

    def flaky(self, counts, width):
        out = original(self, counts, width)
        self.failed.extend([0, len(counts) - 1])
        return out

    monkeypatch.setattr(lapack.TridiagonalEigen, "top_vectors", flaky)
    fallback = run(noisy, patch_radius=1)
    peak = np.abs(default.denoised).max()
    for other in (forced, fallback):
        assert np.abs(other.denoised - default.denoised).max() <= 1e-6 * peak
        np.testing.assert_allclose(other.sigma, default.sigma, rtol=1e-6)
        np.testing.assert_allclose(other.rank, default.rank, rtol=1e-6)
