"""Tests of the Patch2Self engine, through its public API only.

The exactness tests compare the engine with an independent, deliberately naive reference:
for every volume ``j`` of a group, a scikit-learn regressor is fitted on a freshly built design
(the zero-padded patches of all *other* volumes of the group, the whole patch block of ``j``
left out; the target is volume ``j``) and then predicts on that same design.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bids_denoise.utils.threads import limit_threads
from sklearn.linear_model import LinearRegression, Ridge

from bids_denoise.denoise.patch2self import (
    CLIP_NEGATIVE_VALS,
    normalize_patch_radius,
    patch2self,
    patch2self_with_noise,
    resolve_device,
)

B0_THRESHOLD = 50.0
EXACT_RTOL = 1e-8
FLOAT32_RTOL = 1e-6


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These arrays are tiny: one torch and one BLAS thread per test process avoid
    oversubscribing the cores when pytest-xdist runs several workers."""
    with limit_threads(1):
        yield


def rel_err(ours, ref) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def run_p2s(data, bvals, **kwargs):
    """patch2self on the CPU without a progress bar and with expected UserWarnings silenced.

    The exactness tests use groups of two volumes and shells of a few volumes, so by default
    every group of two or more is regressed and no shell is merged.
    """
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("progress", False)
    kwargs.setdefault("min_group_volumes", 2)
    kwargs.setdefault("min_shell_volumes", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return patch2self(data, bvals, **kwargs)


def run_p2s_noise(data, bvals, **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("progress", False)
    kwargs.setdefault("min_group_volumes", 2)
    kwargs.setdefault("min_shell_volumes", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return patch2self_with_noise(data, bvals, **kwargs)


def reference_groups(bvals, grouping="shell", b0_threshold=B0_THRESHOLD):
    """Volume indices of each group, built without the package's shell code.

    Test b-values are exact nominal values, so a shell is simply one distinct value.
    """
    bvals = np.asarray(bvals, dtype=float)
    is_b0 = bvals <= b0_threshold
    groups = [np.flatnonzero(is_b0)]
    if grouping == "all":
        groups.append(np.flatnonzero(~is_b0))
    else:
        groups.extend(np.flatnonzero(bvals == b) for b in np.unique(bvals[~is_b0]))
    return [g for g in groups if g.size]


def patch_stack(volumes, radius):
    """(V, n, p) array: every zero-padded patch offset of every volume, for every voxel."""
    rx, ry, rz = radius
    nx, ny, nz, n = volumes.shape
    padded = np.pad(volumes, ((rx, rx), (ry, ry), (rz, rz), (0, 0)), mode="constant")
    shifted = [
        padded[dx:dx + nx, dy:dy + ny, dz:dz + nz].reshape(-1, n)
        for dx in range(2 * rx + 1)
        for dy in range(2 * ry + 1)
        for dz in range(2 * rz + 1)
    ]
    return np.stack(shifted, axis=2)


def make_estimator(model, alpha):
    if model == "ols":
        return LinearRegression()
    if model == "ridge":
        return Ridge(alpha=alpha)
    raise AssertionError(model)


def radial_means(stack, radius):
    """(V, n, p) patches -> (V, n, K): the mean over each squared distance from the centre,
    centre first (built here, independently of the engine's pooling matrix)."""
    rx, ry, rz = radius
    squared = [dx * dx + dy * dy + dz * dz
               for dx in range(-rx, rx + 1) for dy in range(-ry, ry + 1) for dz in range(-rz, rz + 1)]
    levels = sorted(set(squared))
    return np.stack([stack[:, :, [i for i, d in enumerate(squared) if d == level]].mean(axis=2)
                     for level in levels], axis=2)


def reference_patch2self(data, groups, radius, model="ols", alpha=1.0, fit_mask=None,
                         denoise_b0=True, bvals=None, pooling="voxel"):
    """Leave-one-volume-out least squares per volume, on a copied float64 design.

    Returns ``(prediction, denoised_indices)``: ``prediction`` holds the raw (unclipped)
    predictions of every denoised volume and the input values of every copied volume.
    ``pooling="radial"`` replaces each volume's patch by its means over each distance.
    """
    radius = tuple(radius) if isinstance(radius, tuple) else (int(radius),) * 3
    values = np.asarray(data, dtype=np.float64)
    prediction = values.copy()
    rows = slice(None) if fit_mask is None else np.asarray(fit_mask, bool).reshape(-1)
    denoised = []
    for members in groups:
        members = list(members)
        if len(members) < 2:
            continue
        if not denoise_b0 and bvals is not None and np.all(np.asarray(bvals)[members] <= B0_THRESHOLD):
            continue
        stack = patch_stack(values[..., members], radius)
        if pooling == "radial":
            stack = radial_means(stack, radius)
        n_vox = stack.shape[0]
        for j, volume in enumerate(members):
            design = np.delete(stack, j, axis=1).reshape(n_vox, -1).copy()
            target = values[..., volume].reshape(-1).copy()
            estimator = make_estimator(model, alpha)
            estimator.fit(design[rows], target[rows])
            prediction[..., volume] = estimator.predict(design).reshape(values.shape[:3])
            denoised.append(volume)
    return prediction, sorted(denoised)


def hemisphere_directions(n):
    """n well-spread unit vectors on the upper hemisphere (golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth), z], axis=1)


def fibre_signal(shape, bvals, s0=100.0):
    """Noise-free single-tensor signal with a spatially rotating fibre orientation."""
    bvals = np.asarray(bvals, dtype=float)
    dirs = np.zeros((bvals.size, 3))
    dwi = bvals > B0_THRESHOLD
    dirs[dwi] = hemisphere_directions(int(dwi.sum()))
    x, y, z = np.meshgrid(*[np.arange(s) / max(s, 1) for s in shape], indexing="ij")
    theta = 2 * np.pi * x + np.pi * y
    phi = np.pi * z + 0.3
    e1 = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=-1)
    s0_map = s0 * (1.0 + 0.3 * np.sin(2 * np.pi * y) * np.cos(np.pi * x))
    adc = 0.25e-3 + 1.6e-3 * np.einsum("xyzc,nc->xyzn", e1, dirs) ** 2
    return s0_map[..., None] * np.exp(-bvals * adc)


def noisy_dwi(shape, bvals, seed, sigma=4.0, s0=100.0):
    rng = np.random.default_rng(seed)
    signal = fibre_signal(shape, bvals, s0=s0)
    return signal + sigma * rng.normal(size=signal.shape)


# ------------------------------------------------------------------------------ exactness
B13 = [1000, 2000, 0, 1000, 2000, 1000, 0, 2000, 1000, 2000, 0, 1000, 2000]  # b0s at 2, 6, 10
B6 = [1000, 0, 2000, 1000, 0, 2000]
B10 = [1000, 0, 2000, 1000, 2000, 0, 1000, 2000, 1000, 0]
# Radius-1 designs stay well posed: voxels >> (group size - 1) * patch size.
EXACT_CASES = [
    pytest.param((7, 6, 5), B13, 0, "shell", id="7x6x5-r0-shell"),
    pytest.param((7, 6, 5), B13, 0, "all", id="7x6x5-r0-all"),
    pytest.param((7, 6, 5), B6, 1, "shell", id="7x6x5-r1-shell"),
    pytest.param((7, 6, 5), B6, 1, "all", id="7x6x5-r1-all"),
    pytest.param((7, 6, 5), B10, (1, 0, 1), "shell", id="7x6x5-r101-shell"),
    pytest.param((7, 6, 5), B10, (1, 0, 1), "all", id="7x6x5-r101-all"),
    pytest.param((9, 8, 1), B13, 0, "shell", id="9x8x1-r0-shell"),
    pytest.param((9, 8, 1), B13, 0, "all", id="9x8x1-r0-all"),
    pytest.param((9, 8, 1), B6, 1, "shell", id="9x8x1-r1-shell"),
    pytest.param((9, 8, 1), B6, 1, "all", id="9x8x1-r1-all"),
    pytest.param((4, 4, 4), B13, 0, "shell", id="4x4x4-r0-shell"),
    pytest.param((4, 4, 4), B13, 0, "all", id="4x4x4-r0-all"),
    pytest.param((4, 4, 4), B6, (1, 0, 1), "all", id="4x4x4-r101-all"),
    pytest.param((4, 4, 4), B6, 1, "shell", id="4x4x4-r1-shell"),
]
MODELS = [
    pytest.param("ols", 1.0, id="ols"),
    pytest.param("ridge", 0.1, id="ridge0.1"),
    pytest.param("ridge", 10.0, id="ridge10"),
]


@pytest.mark.parametrize("model, alpha", MODELS)
@pytest.mark.parametrize("shape, bvals, radius, grouping", EXACT_CASES)
def test_exact_against_per_volume_least_squares(shape, bvals, radius, grouping, model, alpha):
    data = noisy_dwi(shape, bvals, seed=sum(shape) + len(bvals))
    ours = run_p2s(data, bvals, patch_radius=radius, model=model, alpha=alpha, grouping=grouping,
                   clip_negative_vals=False, out_dtype=np.float64)
    ref, denoised = reference_patch2self(data, reference_groups(bvals, grouping), radius, model, alpha)
    assert ours.shape == data.shape and ours.dtype == np.float64
    assert denoised == list(range(len(bvals)))  # every volume was actually regressed
    assert rel_err(ours, ref) < EXACT_RTOL
    # The comparison is meaningful: denoising changed the data far more than the tolerance.
    assert rel_err(data, ref) > 1e3 * EXACT_RTOL


def test_grouping_changes_the_result():
    """'shell' and 'all' are different regressions; each matches only its own reference."""
    data = noisy_dwi((7, 6, 5), B13, seed=3)
    shell = run_p2s(data, B13, grouping="shell", clip_negative_vals=False, out_dtype=np.float64)
    pooled = run_p2s(data, B13, grouping="all", clip_negative_vals=False, out_dtype=np.float64)
    ref_shell, _ = reference_patch2self(data, reference_groups(B13, "shell"), 0)
    ref_all, _ = reference_patch2self(data, reference_groups(B13, "all"), 0)
    assert rel_err(shell, ref_shell) < EXACT_RTOL
    assert rel_err(pooled, ref_all) < EXACT_RTOL
    assert rel_err(shell, ref_all) > 1e-4
    assert rel_err(pooled, ref_shell) > 1e-4


B4 = [1000, 0, 1000, 0]  # two groups of two: radius-2 designs stay well posed on small images


@pytest.mark.parametrize("pooling", ["voxel", "radial"])
@pytest.mark.parametrize("shape, bvals, radius, grouping", [
    pytest.param((10, 9, 8), B4, 2, "shell", id="10x9x8-r2"),
    pytest.param((10, 9, 8), B4, (2, 1, 0), "shell", id="10x9x8-r210"),
    pytest.param((14, 12, 3), B4, (2, 2, 1), "all", id="14x12x3-r221"),
    pytest.param((7, 6, 5), B6, 1, "all", id="7x6x5-r1"),
    pytest.param((7, 6, 5), B10, (0, 1, 1), "shell", id="7x6x5-r011"),
])
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_exact_at_larger_radii_and_radial_pooling(shape, bvals, radius, grouping, pooling, with_mask):
    data = noisy_dwi(shape, bvals, seed=sum(shape) + 7)
    mask = fit_mask_for(shape, seed=9) if with_mask else None
    ours = run_p2s(data, bvals, patch_radius=radius, patch_pooling=pooling, grouping=grouping,
                   fit_mask=mask, clip_negative_vals=False, out_dtype=np.float64)
    ref, denoised = reference_patch2self(data, reference_groups(bvals, grouping), radius,
                                         fit_mask=mask, pooling=pooling)
    assert denoised == list(range(len(bvals)))
    assert rel_err(ours, ref) < EXACT_RTOL
    assert rel_err(data, ref) > 1e3 * EXACT_RTOL


def test_radial_pooling_is_a_different_regression():
    data = noisy_dwi((7, 6, 5), B6, seed=41)
    voxel = run_p2s(data, B6, patch_radius=1, clip_negative_vals=False, out_dtype=np.float64)
    radial = run_p2s(data, B6, patch_radius=1, patch_pooling="radial", clip_negative_vals=False,
                     out_dtype=np.float64)
    assert rel_err(voxel, radial) > 1e-4
    # At radius 0 there is nothing to pool.
    np.testing.assert_array_equal(run_p2s(data, B6, patch_pooling="radial"), run_p2s(data, B6))


def test_radial_pooling_with_a_regressor_object_matches_the_closed_form():
    data = noisy_dwi((7, 6, 5), B6, seed=42)
    kwargs = dict(patch_radius=1, patch_pooling="radial", clip_negative_vals=False, out_dtype=np.float64)
    closed = run_p2s(data, B6, model="ridge", alpha=0.5, **kwargs)
    estimator = run_p2s(data, B6, model=Ridge(alpha=0.5), **kwargs)
    assert rel_err(estimator, closed) < EXACT_RTOL


def test_large_offsets_keep_exactness():
    """Values far from zero (10^5 plus a signal of about 100) lose no precision: each volume is
    stored minus a constant near its mean. (At radius > 0 the zero padding makes such data an
    ill-posed regression; tests/denoise/test_patch2self_lagged.py checks the Gram itself.)"""
    data = noisy_dwi((7, 6, 5), B13, seed=43) + 1e5
    ours = run_p2s(data, B13, clip_negative_vals=False, out_dtype=np.float64)
    ref, _ = reference_patch2self(data, reference_groups(B13), 0)
    # Relative to the denoising itself, not to the 10^5 offset.
    assert np.abs(ours - ref).max() < EXACT_RTOL * np.abs(data - ref).max()


def fit_mask_for(shape, seed):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    mask = (x**2 + y**2 + z**2) < 1.8
    mask &= np.random.default_rng(seed).random(shape) > 0.15
    return mask


@pytest.mark.parametrize("model, alpha", MODELS)
@pytest.mark.parametrize(
    "bvals, radius",
    [pytest.param(B13, 0, id="r0"), pytest.param(B10, (1, 0, 1), id="r101")],
)
def test_exact_with_fit_mask(bvals, radius, model, alpha):
    shape = (7, 6, 5)
    data = noisy_dwi(shape, bvals, seed=11)
    mask = fit_mask_for(shape, seed=5)
    assert 0.4 < mask.mean() < 0.9
    ours = run_p2s(data, bvals, patch_radius=radius, model=model, alpha=alpha, fit_mask=mask,
                   clip_negative_vals=False, out_dtype=np.float64)
    ref, _ = reference_patch2self(data, reference_groups(bvals), radius, model, alpha, fit_mask=mask)
    assert rel_err(ours, ref) < EXACT_RTOL
    # Voxels outside the mask are predicted too (not copied from the input).
    outside = ~mask
    assert not np.allclose(ours[outside], data[outside])
    # Fitting on the mask is not the same as fitting on every voxel.
    ref_all_voxels, _ = reference_patch2self(data, reference_groups(bvals), radius, model, alpha)
    assert rel_err(ours, ref_all_voxels) > 1e-6


@pytest.mark.parametrize("radius", [0, 1], ids=["r0", "r1"])
def test_float32_default_output_matches_reference(radius):
    data = noisy_dwi((7, 6, 5), B6 if radius else B13, seed=21)
    bvals = B6 if radius else B13
    ours = run_p2s(data, bvals, patch_radius=radius, clip_negative_vals=False)
    assert ours.dtype == np.float32
    ref, _ = reference_patch2self(data, reference_groups(bvals), radius)
    assert rel_err(ours, ref) < FLOAT32_RTOL


def test_default_clip_is_documented_constant():
    """Without clip_negative_vals the engine uses CLIP_NEGATIVE_VALS."""
    rng = np.random.default_rng(8)
    bvals = [0] * 4 + [1000] * 10
    data = 1.0 + 3.0 * rng.normal(size=(6, 6, 5, len(bvals)))
    default = run_p2s(data, bvals)
    explicit = run_p2s(data, bvals, clip_negative_vals=CLIP_NEGATIVE_VALS)
    np.testing.assert_array_equal(default, explicit)


# ---------------------------------------------------------------------------- memory order
# nibabel returns NIfTI data Fortran-ordered; at radius 0 the engine reads them in place.


@pytest.fixture
def small_blocks(monkeypatch):
    """Voxel blocks of a few dozen voxels (one image plane per prediction block at radius > 0),
    so block edges fall everywhere in small arrays."""
    from bids_denoise.denoise.patch2self import lagged, voxelwise

    monkeypatch.setattr(voxelwise, "BLOCK_BYTES", {"cpu": 4096, "cuda": 4096})
    monkeypatch.setattr(lagged, "PREDICTION_BLOCK_BYTES", 1)


@pytest.mark.parametrize("radius", [0, (1, 0, 1)], ids=["r0", "r101"])
@pytest.mark.parametrize("grouping", ["shell", "all"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_fortran_ordered_input_is_exact(small_blocks, radius, grouping, with_mask):
    bvals = B10 if radius else B13
    data = np.asfortranarray(noisy_dwi((7, 6, 5), bvals, seed=31))
    mask = fit_mask_for((7, 6, 5), seed=3) if with_mask else None
    ours, noise = run_p2s_noise(data, bvals, patch_radius=radius, grouping=grouping, fit_mask=mask,
                                clip_negative_vals=False, out_dtype=np.float64)
    ref, denoised = reference_patch2self(data, reference_groups(bvals, grouping), radius,
                                         fit_mask=mask)
    assert rel_err(ours, ref) < EXACT_RTOL
    expected_noise = np.sqrt(np.mean((data[..., denoised] - ref[..., denoised]) ** 2, axis=-1))
    assert rel_err(noise, expected_noise) < FLOAT32_RTOL


def _as_order(data, order):
    if order == "F":
        return np.asfortranarray(data)
    if order == "strided":  # neither C- nor Fortran-contiguous
        padded = np.zeros(data.shape[:3] + (2 * data.shape[3],), dtype=data.dtype)
        padded[..., ::2] = data
        return padded[..., ::2]
    return np.ascontiguousarray(data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16])
@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="defaults"),
    pytest.param(dict(b0_denoising=False), id="b0-copied"),
    pytest.param(dict(shift_intensity=True, clip_negative_vals=False), id="shift"),
    pytest.param(dict(model="ridge", alpha=2.0, grouping="all"), id="ridge-all"),
    pytest.param(dict(model="lasso", alpha=0.5), id="lasso"),
    pytest.param(dict(patch_radius=1), id="r1"),
])
def test_memory_order_does_not_change_the_result(small_blocks, dtype, kwargs):
    bvals = B13
    data = (noisy_dwi((6, 5, 4), bvals, seed=32, s0=300.0)).astype(dtype)
    results = {
        order: run_p2s_noise(_as_order(data, order), bvals, **kwargs)
        for order in ("C", "F", "strided")
    }
    reference, reference_noise = results["C"]
    assert not np.array_equal(reference, data.astype(np.float32))
    for order in ("F", "strided"):
        out, noise = results[order]
        assert out.shape == data.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-4 * np.abs(reference).max())
        np.testing.assert_allclose(noise, reference_noise, rtol=1e-5, atol=1e-5 * reference_noise.max())


def test_fortran_input_gives_fortran_output_at_radius_0():
    """NIfTI writers then store the result without reordering it."""
    data = np.asfortranarray(noisy_dwi((6, 5, 4), B13, seed=33).astype(np.float32))
    out, noise = run_p2s_noise(data, B13)
    assert out.flags.f_contiguous and noise.flags.f_contiguous
    c_out = run_p2s(np.ascontiguousarray(data), B13)
    assert c_out.flags.c_contiguous
    np.testing.assert_allclose(out, c_out, rtol=1e-5, atol=1e-4 * np.abs(c_out).max())


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("radius", [0, 1, (1, 0, 1)], ids=["r0", "r1", "r101"])
@pytest.mark.parametrize("model, alpha", [("ols", 1.0), ("ridge", 10.0)], ids=["ols", "ridge"])
def test_cuda_matches_cpu_and_is_deterministic(radius, model, alpha):
    bvals = [0, 1000, 1000, 0, 2000, 1000, 2000, 2000, 1000, 0, 2000, 1000]
    data = noisy_dwi((16, 14, 10), bvals, seed=4).astype(np.float32)
    kwargs = dict(patch_radius=radius, model=model, alpha=alpha, clip_negative_vals=False,
                  out_dtype=np.float64)
    cpu = run_p2s(data, bvals, device="cpu", **kwargs)
    gpu1 = run_p2s(data, bvals, device="cuda", **kwargs)
    gpu2 = run_p2s(data, bvals, device="cuda", **kwargs)
    assert rel_err(gpu1, cpu) < EXACT_RTOL
    np.testing.assert_array_equal(gpu1, gpu2)
    noise_cpu = run_p2s_noise(data, bvals, device="cpu", **kwargs)[1]
    noise_gpu = run_p2s_noise(data, bvals, device="cuda", **kwargs)[1]
    assert rel_err(noise_gpu, noise_cpu) < FLOAT32_RTOL


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_request_without_cuda_raises():
    with pytest.raises(ValueError, match="(?i)cuda"):
        resolve_device("cuda")
    data = noisy_dwi((4, 4, 4), B13, seed=0)
    with pytest.raises(ValueError, match="(?i)cuda"):
        patch2self(data, B13, device="cuda", progress=False)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")).type == "cpu"


# ------------------------------------------------------------------------------ behaviour
def test_pure_noise_around_constant_stays_constant():
    rng = np.random.default_rng(2024)
    data = 30.0 + 2.0 * rng.normal(size=(20, 20, 20, 50))
    bvals = np.full(50, 30.0)  # every volume is a b0
    out = run_p2s(data, bvals)
    assert out.shape == data.shape
    assert abs(float(out.mean()) - 30.0) < 0.02
    assert abs(float(out.mean()) - float(data.mean())) < 1e-3
    assert out.std() < 0.2 * data.std()
    assert out.min() > data.min()
    assert out.max() < data.max()


def rician_phantom(seed=7, sigma=10.0):
    """A fibre bundle crossing a water-filled box: two compartments, three b-values."""
    bvals = np.r_[np.zeros(6), np.full(20, 1000.0), np.full(30, 2000.0)]
    shape = (10, 10, 8)
    dirs = np.zeros((bvals.size, 3))
    dirs[6:26] = hemisphere_directions(20)
    dirs[26:] = hemisphere_directions(30)[:, [2, 0, 1]]
    water = 3.0e-3
    fibre_dir = np.array([0.0, 1.0, 0.0])
    lam_par, lam_perp = 1.7e-3, 0.2e-3
    adc_fibre = lam_perp + (lam_par - lam_perp) * (dirs @ fibre_dir) ** 2
    fraction = np.zeros(shape)
    fraction[3:7, :, 2:6] = 0.8  # the bundle runs along y
    fraction[2, :, 2:6] = fraction[7, :, 2:6] = 0.4  # partial volume at its edge
    s0 = 100.0
    truth = s0 * (
        fraction[..., None] * np.exp(-bvals * adc_fibre)
        + (1.0 - fraction[..., None]) * np.exp(-bvals * water)
    )
    rng = np.random.default_rng(seed)
    noisy = np.sqrt((truth + sigma * rng.normal(size=truth.shape)) ** 2
                    + (sigma * rng.normal(size=truth.shape)) ** 2)
    return noisy, truth, bvals


@pytest.mark.parametrize("model, alpha, radius", [
    ("ols", 1.0, 0), ("ridge", 1.0, 0), ("ridge", 0.7, 0), ("ols", 1.0, (1, 0, 0)),
], ids=["ols-r0", "ridge1-r0", "ridge0.7-r0", "ols-r100"])
def test_phantom_max_decreases_and_rmse_improves(model, alpha, radius):
    noisy, truth, bvals = rician_phantom()
    out = run_p2s(noisy, bvals, model=model, alpha=alpha, patch_radius=radius)
    assert out.max() < noisy.max()
    rmse_noisy = np.sqrt(np.mean((noisy - truth) ** 2))
    rmse_out = np.sqrt(np.mean((out - truth) ** 2))
    assert rmse_out < 0.9 * rmse_noisy


def test_ridge_alphas_give_similar_phantom_results():
    noisy, _, bvals = rician_phantom()
    a = run_p2s(noisy, bvals, model="ridge", alpha=1.0)
    b = run_p2s(noisy, bvals, model="ridge", alpha=0.7)
    assert np.max(np.abs(a - b)) < 1.5
    assert not np.array_equal(a, b)


SMALL = (5, 5, 4)


def _small_data():
    return noisy_dwi(SMALL, B13, seed=1)


@pytest.mark.parametrize("kwargs, match", [
    pytest.param(dict(model="empty"), "model", id="model-string"),
    pytest.param(dict(model=object()), "model", id="model-object"),
    pytest.param(dict(model="ridge", alpha=0.0), "alpha", id="ridge-alpha-0"),
    pytest.param(dict(model="ridge", alpha=-1.0), "alpha", id="ridge-alpha-neg"),
    pytest.param(dict(model="lasso", alpha=0.0), "alpha", id="lasso-alpha-0"),
    pytest.param(dict(patch_radius=4), "patch_radius|radius", id="radius-4"),
    pytest.param(dict(patch_radius=-1), "patch_radius|radius", id="radius-neg"),
    pytest.param(dict(patch_radius=(1, 1)), "patch_radius|radius", id="radius-2tuple"),
    pytest.param(dict(patch_radius=1.5), "patch_radius|radius", id="radius-float"),
    pytest.param(dict(patch_radius=True), "patch_radius|radius", id="radius-bool"),
    pytest.param(dict(patch_radius=(0, 0, 4)), "patch_radius|radius", id="radius-tuple-4"),
    pytest.param(dict(grouping="shells"), "grouping", id="grouping"),
    pytest.param(dict(b0_threshold=-1), "b0_threshold", id="b0-threshold"),
    pytest.param(dict(fit_mask=np.ones((5, 5, 3), bool)), "fit_mask", id="mask-shape"),
    pytest.param(dict(fit_mask=np.zeros(SMALL, bool)), "fit_mask", id="mask-empty"),
    pytest.param(dict(out_dtype=np.int16), "out_dtype", id="out-dtype-int16"),
    pytest.param(dict(out_dtype=np.float16), "out_dtype", id="out-dtype-float16"),
    pytest.param(dict(device="tpu"), "device", id="device-tpu"),
])
def test_invalid_arguments_raise(kwargs, match):
    data = _small_data()
    with pytest.raises(ValueError, match=match):
        patch2self(data, B13, progress=False, **kwargs)


def test_radius_larger_than_image_raises():
    data = noisy_dwi((3, 6, 6), B13, seed=2)
    with pytest.raises(ValueError, match="(?i)radius"):
        patch2self(data, B13, patch_radius=3, progress=False, device="cpu")
    with pytest.raises(ValueError, match="(?i)radius"):
        patch2self(data, B13, patch_radius=(3, 0, 0), progress=False, device="cpu")


@pytest.mark.parametrize("shape", [(5, 5, 4), (5, 5, 4, 13, 1), (13,)], ids=["3d", "5d", "1d"])
def test_non_4d_data_raises(shape):
    data = np.ones(shape)
    with pytest.raises(ValueError, match="4D"):
        patch2self(data, B13, progress=False, device="cpu")


@pytest.mark.parametrize("bvals", [B13[:-1], B13 + [1000]], ids=["short", "long"])
def test_bvals_length_mismatch_raises(bvals):
    with pytest.raises(ValueError, match="(?i)b-?val|volume"):
        patch2self(_small_data(), bvals, progress=False, device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_data_raises(bad, dtype):
    data = _small_data().astype(dtype)
    data[2, 1, 3, 7] = bad
    with pytest.raises(ValueError, match="(?i)nan|inf|finite"):
        patch2self(data, B13, progress=False, device="cpu")


@pytest.mark.parametrize("bvals", [
    pytest.param([0, -5] + B13[2:], id="negative"),
    pytest.param([0, np.nan] + B13[2:], id="nan"),
])
def test_invalid_bvals_raise(bvals):
    with pytest.raises(ValueError, match="(?i)b-?val"):
        patch2self(_small_data(), bvals, progress=False, device="cpu")


@pytest.mark.parametrize("radius", [0, 1])
def test_single_slice_keeps_shape(radius):
    rng = np.random.default_rng(64)
    bvals = [0] * 5 + [1000] * 5
    data = (100 + 10 * rng.normal(size=(64, 64, 1, 10))).astype(np.float32)
    out = run_p2s(data, bvals, patch_radius=radius)
    assert out.shape == data.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.array_equal(out, data)


def test_float32_and_float64_inputs_agree():
    bvals = [0, 0, 0] + [1000] * 12
    data64 = noisy_dwi((8, 7, 6), bvals, seed=32)
    data32 = data64.astype(np.float32)
    out32 = run_p2s(data32, bvals)
    out64 = run_p2s(data64, bvals)
    same_values = run_p2s(data32.astype(np.float64), bvals)
    assert out32.dtype == out64.dtype == np.float32
    assert rel_err(out32, same_values) < FLOAT32_RTOL
    assert rel_err(out32, out64) < 1e-5


def test_b0_passthrough_is_exact_with_interleaved_b0s():
    b0_positions = [2, 5, 8, 11]
    bvals = np.full(14, 1000.0)
    bvals[b0_positions] = 0.0
    data = noisy_dwi((8, 8, 6), bvals, seed=12).astype(np.float32)
    out = run_p2s(data, bvals, b0_denoising=False, clip_negative_vals=False)
    np.testing.assert_array_equal(out[..., b0_positions], data[..., b0_positions])
    dwis = [i for i in range(14) if i not in b0_positions]
    for i in dwis:
        assert not np.array_equal(out[..., i], data[..., i])
    # With b0 denoising on, those same volumes are denoised.
    out_on = run_p2s(data, bvals, b0_denoising=True, clip_negative_vals=False)
    for i in b0_positions:
        assert not np.array_equal(out_on[..., i], data[..., i])
    # The DWIs do not depend on the b0 setting.
    assert rel_err(out_on[..., dwis], out[..., dwis]) < FLOAT32_RTOL


@pytest.mark.parametrize("dtype", [np.float64, np.int16])
def test_single_b0_is_copied_with_warning(dtype):
    bvals = [1000, 1000, 1000, 0] + [1000] * 8
    data = np.round(noisy_dwi((6, 6, 5), bvals, seed=13) * 10).astype(dtype)
    with pytest.warns(UserWarning, match="b0"):
        out = patch2self(data, bvals, progress=False, device="cpu", out_dtype=np.float64,
                         clip_negative_vals=False)
    np.testing.assert_array_equal(out[..., 3], data[..., 3].astype(np.float64))
    assert not np.array_equal(out[..., 0], data[..., 0].astype(np.float64))


def test_warning_for_small_group():
    bvals = [0, 0, 0] + [1000] * 10
    data = noisy_dwi((6, 6, 5), bvals, seed=14)
    with pytest.warns(UserWarning, match="b0") as record:
        patch2self(data, bvals, progress=False, device="cpu")
    assert all("b1000" not in str(w.message) for w in record)  # the group of 10 is fine


def test_no_warning_for_groups_of_ten():
    bvals = [0] * 10 + [1000] * 10
    data = noisy_dwi((6, 6, 5), bvals, seed=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        patch2self(data, bvals, progress=False, device="cpu")


def correlation_matrix(a, b):
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return a.T @ b / a.shape[0]


@pytest.mark.parametrize("n_vol, n_b0", [(13, 3), (66, 6)])
def test_every_output_volume_is_its_own(n_vol, n_b0):
    """Guards against DIPY v3's trailing-volume bug (N not a multiple of 5)."""
    bvals = np.r_[np.zeros(n_b0), np.full(n_vol - n_b0, 1000.0)]
    data = noisy_dwi((12, 12, 8), bvals, seed=n_vol, sigma=1.0)
    out = run_p2s(data, bvals)
    flat = out.reshape(-1, n_vol)
    for i in range(n_vol):
        for j in range(i + 1, n_vol):
            assert not np.array_equal(flat[:, i], flat[:, j]), (i, j)
    corr = correlation_matrix(out, data)
    best = corr.argmax(axis=1)
    dwis = np.arange(n_b0, n_vol)
    np.testing.assert_array_equal(best[dwis], dwis)
    # Each b0 output resembles the b0 inputs more than any DWI input.
    assert np.all(best[:n_b0] < n_b0)


def test_integer_inputs_do_not_wrap_or_truncate_uint16():
    rng = np.random.default_rng(16)
    bvals = [0, 0, 0] + [1000] * 12
    shape = (8, 8, 6)
    # A ramp from 0 (a third of the image) up to saturation, scaled a little per volume.
    ramp = np.clip(np.arange(shape[0]) / (shape[0] - 1) - 0.3, 0, None) / 0.7
    signal = 66000.0 * ramp[:, None, None, None] * np.r_[np.ones(3), np.linspace(0.9, 1.0, 12)]
    values = signal + 300.0 * rng.normal(size=shape + (15,))
    data = np.clip(np.round(values), 0, 65535).astype(np.uint16)
    assert (data == 0).mean() > 0.1 and (data > 65000).mean() > 0.01
    out = run_p2s(data, bvals, clip_negative_vals=False)
    same = run_p2s(data.astype(np.float64), bvals, clip_negative_vals=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, same, rtol=0, atol=1e-6 * 65535)
    assert out.min() < 0  # negative predictions stay negative ...
    assert out.min() > -2000  # ... and are not wrapped to ~65535
    assert out.max() < 70000
    near_zero = data < 1000
    assert np.abs(out[near_zero]).max() < 3000  # no wrapped values where the signal is ~0
    assert np.any(out != np.round(out))  # not truncated to integers
    ref, _ = reference_patch2self(data, reference_groups(bvals), 0)
    assert rel_err(out, ref) < FLOAT32_RTOL
    clipped = run_p2s(data, bvals, clip_negative_vals=True)
    assert clipped.min() >= 0


def test_integer_inputs_do_not_wrap_or_truncate_int16():
    bvals = [0, 0, 0] + [1000] * 12
    signal = noisy_dwi((8, 8, 6), bvals, seed=17, sigma=4.0) * 300.0  # up to about 32000
    signal[:3] -= 30000.0  # a slab of large negative values
    data = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    assert data.max() > 20000 and data.min() < -25000
    out = run_p2s(data, bvals, clip_negative_vals=False)
    same = run_p2s(data.astype(np.float64), bvals, clip_negative_vals=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, same, rtol=0, atol=1e-6 * 32768)
    assert out.min() < -25000 and out.max() > 20000
    assert np.any(out != np.round(out))
    ref, _ = reference_patch2self(data, reference_groups(bvals), 0)
    assert rel_err(out, ref) < FLOAT32_RTOL


def _noisy_near_zero(seed=18):
    rng = np.random.default_rng(seed)
    bvals = [0] * 10 + [1000] * 12
    data = 3.0 + 4.0 * rng.normal(size=(7, 7, 6, len(bvals)))
    data[..., 10:] += 5.0 * np.sin(np.arange(12))
    return data, bvals


def test_clip_negative_vals_removes_negatives():
    data, bvals = _noisy_near_zero()
    raw = run_p2s(data, bvals, clip_negative_vals=False, out_dtype=np.float64)
    assert raw.min() < 0  # precondition: there is something to clip
    clipped = run_p2s(data, bvals, clip_negative_vals=True, out_dtype=np.float64)
    assert clipped.min() >= 0
    np.testing.assert_array_equal(clipped, np.maximum(raw, 0.0))


@pytest.mark.parametrize("out_dtype", [np.float64, np.float32])
def test_shift_intensity_matches_noisy_minimum(out_dtype):
    data, bvals = _noisy_near_zero()
    raw = run_p2s(data, bvals, clip_negative_vals=False, out_dtype=np.float64)
    out = run_p2s(data, bvals, shift_intensity=True, clip_negative_vals=False, out_dtype=out_dtype)
    noisy_min = data.min(axis=(0, 1, 2))
    rtol = 1e-12 if out_dtype == np.float64 else 1e-6
    np.testing.assert_allclose(out.min(axis=(0, 1, 2)), noisy_min, rtol=rtol, atol=rtol * np.abs(data).max())
    # A pure per-volume constant was added to the raw predictions.
    offsets = (out.astype(np.float64) - raw).reshape(-1, len(bvals))
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[0], offsets.shape),
                               atol=1e-4 if out_dtype == np.float32 else 1e-9)
    assert not np.allclose(out, raw)


def test_shift_and_clip_together_warn_and_clip():
    data, bvals = _noisy_near_zero()
    clipped = run_p2s(data, bvals, clip_negative_vals=True, shift_intensity=False)
    with pytest.warns(UserWarning, match="(?i)clip"):
        both = patch2self(data, bvals, clip_negative_vals=True, shift_intensity=True,
                          progress=False, device="cpu")
    assert both.min() >= 0
    np.testing.assert_array_equal(both, clipped)


@pytest.mark.parametrize("radius", [0, 1])
def test_cpu_runs_are_bitwise_deterministic(radius):
    bvals = [0, 0, 0] + [1000] * 10 + [2000] * 8
    data = noisy_dwi((9, 8, 7), bvals, seed=19)
    a, noise_a = run_p2s_noise(data, bvals, patch_radius=radius)
    b, noise_b = run_p2s_noise(data, bvals, patch_radius=radius)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(noise_a, noise_b)
    np.testing.assert_array_equal(run_p2s(data, bvals, patch_radius=radius), a)


@pytest.mark.parametrize("dtype, kwargs", [
    (np.float64, {}),
    (np.float32, dict(patch_radius=1)),
    (np.int16, dict(shift_intensity=True, clip_negative_vals=False)),
    (np.uint16, dict(fit_mask="mask")),
    (np.float32, dict(model="lasso", alpha=0.5)),
    (np.float64, dict(b0_denoising=False, grouping="all")),
])
def test_input_is_never_modified(dtype, kwargs):
    bvals = [0, 0, 0] + [1000] * 6 + [2000] * 6
    data = (noisy_dwi((6, 6, 5), bvals, seed=20) * 10).astype(dtype)
    if kwargs.get("fit_mask") == "mask":
        kwargs = dict(kwargs, fit_mask=fit_mask_for((6, 6, 5), seed=1))
    before = data.copy()
    bvals_arr = np.array(bvals, dtype=float)
    bvals_before = bvals_arr.copy()
    run_p2s(data, bvals_arr, **kwargs)
    run_p2s_noise(data, bvals_arr, **kwargs)
    np.testing.assert_array_equal(data, before)
    np.testing.assert_array_equal(bvals_arr, bvals_before)
    assert data.dtype == before.dtype


@pytest.mark.parametrize("b0_denoising", [True, False])
@pytest.mark.parametrize("radius", [0, (1, 0, 1)], ids=["r0", "r101"])
def test_noise_map_is_rms_of_leave_one_out_residuals(b0_denoising, radius):
    bvals = B10 + [1000, 2000, 1000, 2000]
    data = noisy_dwi((7, 6, 5), bvals, seed=22)
    out, noise = run_p2s_noise(data, bvals, patch_radius=radius, b0_denoising=b0_denoising,
                               clip_negative_vals=False, out_dtype=np.float64)
    ref, denoised = reference_patch2self(data, reference_groups(bvals), radius,
                                         denoise_b0=b0_denoising, bvals=bvals)
    assert rel_err(out, ref) < EXACT_RTOL
    expected = np.sqrt(np.mean((data[..., denoised] - ref[..., denoised]) ** 2, axis=-1))
    assert noise.shape == data.shape[:3]
    assert noise.dtype == np.float32
    assert rel_err(noise, expected) < FLOAT32_RTOL
    # The map does not depend on post-processing.
    _, noise_clipped = run_p2s_noise(data, bvals, patch_radius=radius, b0_denoising=b0_denoising,
                                     clip_negative_vals=True)
    np.testing.assert_allclose(noise_clipped, noise, rtol=1e-6)
    # patch2self returns the same volumes.
    plain = run_p2s(data, bvals, patch_radius=radius, b0_denoising=b0_denoising,
                    clip_negative_vals=False, out_dtype=np.float64)
    assert rel_err(plain, out) < EXACT_RTOL


@pytest.mark.parametrize("bvals, kwargs", [
    pytest.param([0] * 12, dict(b0_denoising=False), id="b0s-not-denoised"),
    pytest.param([0, 1000, 2000], {}, id="groups-of-one"),
])
def test_noise_map_is_zero_when_nothing_is_denoised(bvals, kwargs):
    data = noisy_dwi((5, 5, 4), bvals, seed=23)
    out, noise = run_p2s_noise(data, bvals, out_dtype=np.float64, **kwargs)
    np.testing.assert_array_equal(out, data)
    assert noise.dtype == np.float32 and noise.shape == data.shape[:3]
    assert not noise.any()


@pytest.mark.parametrize("shape, bvals", [
    pytest.param((4, 4, 4), [1000, 1000], id="4x4x4-N2"),
    pytest.param((4, 4, 4), [0, 1000, 1000, 1000, 1000], id="4x4x4-N5"),
    pytest.param((3, 3, 3), [1000] * 1000, id="3x3x3-N1000"),
    pytest.param((3, 3, 3), [0] * 40 + [1000] * 480 + [2000] * 480, id="3x3x3-N1000-shells"),
])
def test_volume_count_extremes(shape, bvals):
    data = np.random.default_rng(len(bvals)).normal(100, 5, size=shape + (len(bvals),))
    out = run_p2s(data, bvals)
    assert out.shape == data.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_n2_matches_reference_when_asked_for():
    bvals = [1000, 1000]
    data = noisy_dwi((4, 4, 4), bvals, seed=24)
    with pytest.warns(UserWarning):
        out = patch2self(data, bvals, progress=False, device="cpu", clip_negative_vals=False,
                         out_dtype=np.float64, min_group_volumes=2)
    ref, _ = reference_patch2self(data, [[0, 1]], 0)
    assert rel_err(out, ref) < EXACT_RTOL


@pytest.mark.parametrize("radius", [0, 1])
def test_groups_below_the_minimum_are_copied_with_a_warning(radius):
    bvals = [0, 0] + [1000] * 12  # a pair of b0s: by default too few to regress
    data = noisy_dwi((6, 5, 4), bvals, seed=44)
    with pytest.warns(UserWarning, match=r"group b0: copied through: 2 volumes"):
        out = patch2self(data, bvals, patch_radius=radius, progress=False, device="cpu",
                         clip_negative_vals=False, out_dtype=np.float64)
    np.testing.assert_array_equal(out[..., :2], data[..., :2])
    ref, _ = reference_patch2self(data, [list(range(2, 14))], radius)
    assert rel_err(out[..., 2:], ref[..., 2:]) < EXACT_RTOL
    # Three b0s are regressed.
    bvals3 = [0, 0, 0] + [1000] * 11
    out3 = run_p2s(data, bvals3, patch_radius=radius, min_group_volumes=3)
    assert not np.array_equal(out3[..., :3], data[..., :3].astype(np.float32))


def test_small_shells_are_merged_with_a_warning():
    bvals = [0, 0, 0] + [1000] * 12 + [2000] * 4
    data = noisy_dwi((6, 5, 4), bvals, seed=45)
    with pytest.warns(UserWarning, match=r"shells b1000 \(12\), b2000 \(4\) merged"):
        out = patch2self(data, bvals, progress=False, device="cpu", clip_negative_vals=False,
                         out_dtype=np.float64)
    ref, _ = reference_patch2self(data, [[0, 1, 2], list(range(3, 19))], 0)
    assert rel_err(out, ref) < EXACT_RTOL


@pytest.mark.parametrize("kwargs", [dict(min_group_volumes=0), dict(min_shell_volumes=1.5),
                                    dict(min_group_volumes=True)])
def test_invalid_group_minimums_raise(kwargs):
    data = noisy_dwi((4, 4, 4), B6, seed=46)
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        patch2self(data, B6, progress=False, device="cpu", **kwargs)


def test_sklearn_regressor_object_equals_ridge_string():
    bvals = [0, 0, 0] + [1000] * 8
    data = noisy_dwi((6, 6, 5), bvals, seed=25)
    by_name = run_p2s(data, bvals, model="ridge", alpha=0.1, clip_negative_vals=False,
                      out_dtype=np.float64)
    estimator = Ridge(alpha=0.1)
    by_object = run_p2s(data, bvals, model=estimator, clip_negative_vals=False,
                        out_dtype=np.float64)
    assert rel_err(by_object, by_name) < EXACT_RTOL
    assert not hasattr(estimator, "coef_")  # the caller's estimator is not fitted in place


def test_sklearn_regressor_object_with_radius_and_mask():
    bvals = B6
    data = noisy_dwi((7, 6, 5), bvals, seed=26)
    mask = fit_mask_for((7, 6, 5), seed=2)
    kwargs = dict(patch_radius=(1, 0, 1), fit_mask=mask, clip_negative_vals=False,
                  out_dtype=np.float64)
    by_object = run_p2s(data, bvals, model=LinearRegression(), **kwargs)
    ref, _ = reference_patch2self(data, reference_groups(bvals), (1, 0, 1), fit_mask=mask)
    assert rel_err(by_object, ref) < EXACT_RTOL


def test_lasso_runs():
    bvals = [0, 0, 0] + [1000] * 8
    data = noisy_dwi((6, 6, 5), bvals, seed=27)
    out = run_p2s(data, bvals, model="lasso", alpha=0.5)
    assert out.shape == data.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.array_equal(out, data.astype(np.float32))


def test_progress_false_prints_nothing(capsys):
    data = noisy_dwi((5, 5, 4), B13, seed=28)
    run_p2s(data, B13, progress=False)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_progress_true_shows_a_bar(capsys):
    data = noisy_dwi((5, 5, 4), B13, seed=28)
    run_p2s(data, B13, progress=True)
    captured = capsys.readouterr()
    assert "Patch2Self" in captured.err
    assert "%" in captured.err or "vol" in captured.err


# ------------------------------------------------------------------------------ patch radius
@pytest.mark.parametrize("value, expected", [
    (0, (0, 0, 0)),
    (2, (2, 2, 2)),
    (3, (3, 3, 3)),
    ([1, 0, 2], (1, 0, 2)),
    ((0, 1, 0), (0, 1, 0)),
    (np.array(1), (1, 1, 1)),
    (np.int64(2), (2, 2, 2)),
    (np.array([1, 1, 1]), (1, 1, 1)),
    (np.array([0, 2, 1], dtype=np.int32), (0, 2, 1)),
    (np.array([1]), (1, 1, 1)),
])
def test_normalize_patch_radius_valid(value, expected):
    result = normalize_patch_radius(value)
    assert result == expected
    assert isinstance(result, tuple) and all(type(r) is int for r in result)


@pytest.mark.parametrize("value", [
    4, -1, (1, 1), [1, 1, 1, 1], 1.5, (1, 0.5, 1), True, (True, False, True),
    np.array([1, 1]), np.array([[1, 1, 1]]), "1", (0, 0, -1),
])
def test_normalize_patch_radius_invalid(value):
    with pytest.raises(ValueError, match="patch_radius"):
        normalize_patch_radius(value)
