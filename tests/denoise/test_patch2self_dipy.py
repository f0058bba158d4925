"""Cross-check of our Patch2Self against DIPY's version 1 (the original algorithm).

DIPY 1.12.1 version 1 is mathematically correct on integer input only (for float input
scikit-learn centres DIPY's design matrix in place before the prediction, which offsets every
volume). DIPY pools all diffusion-weighted shells into one group, so ours runs with
``grouping="all"``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bids_denoise.denoise.patch2self import patch2self
from bids_denoise.utils.threads import limit_threads
from tests.denoise.test_patch2self import rel_err

pytestmark = pytest.mark.dipy

RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These arrays are tiny: one torch and one BLAS thread per test process avoid
    oversubscribing the cores when pytest-xdist runs several workers."""
    with limit_threads(1):
        yield


@pytest.fixture(scope="module")
def dipy_patch2self():
    pytest.importorskip("dipy")
    module = pytest.importorskip("dipy.denoise.patch2self")
    return module.patch2self


@pytest.fixture(scope="module")
def int16_series():
    """10x10x6, 2 interleaved b0s and 16 DWIs on two shells, int16 values up to ~5000."""
    rng = np.random.default_rng(1121)
    bvals = np.r_[0.0, np.full(8, 1000.0), 0.0, np.full(8, 2000.0)]
    shape = (10, 10, 6)
    x, y, z = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    dirs = rng.normal(size=(bvals.size, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    theta = np.pi * (x + 0.5 * y)
    fibre = np.stack([np.cos(theta), np.sin(theta), 0.3 * z], axis=-1)
    fibre /= np.linalg.norm(fibre, axis=-1, keepdims=True)
    adc = 0.3e-3 + 1.5e-3 * np.einsum("xyzc,nc->xyzn", fibre, dirs) ** 2
    s0 = 4000.0 * (1.0 + 0.2 * np.sin(3 * x) * np.cos(2 * z))
    signal = s0[..., None] * np.exp(-bvals * adc)
    noisy = signal + 150.0 * rng.normal(size=signal.shape)
    return np.round(noisy).astype(np.int16), bvals


@pytest.mark.parametrize("model, radius", [
    pytest.param("ols", (0, 0, 0), id="ols-r0"),
    pytest.param("ols", (1, 1, 1), id="ols-r1"),
    pytest.param("ridge", (0, 0, 0), id="ridge-r0"),
])
def test_matches_dipy_version1_on_int16(dipy_patch2self, int16_series, model, radius):
    data, bvals = int16_series
    before = data.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = dipy_patch2self(
            data, bvals, model=model, alpha=1.0, version=1, patch_radius=radius,
            shift_intensity=False, clip_negative_vals=False, out_dtype=np.float32,
        )
        ours = patch2self(  # DIPY also regresses a pair of b0s, which we copy by default
            data, bvals, model=model, alpha=1.0, patch_radius=radius, grouping="all",
            clip_negative_vals=False, device="cpu", progress=False, min_group_volumes=2,
        )
    np.testing.assert_array_equal(data, before)
    assert ours.shape == expected.shape == data.shape
    assert ours.dtype == np.float32
    # DIPY actually denoised (the comparison is not input vs input) ...
    assert rel_err(data, expected) > 100 * RTOL
    # ... and we agree with it.
    assert rel_err(ours, expected) < RTOL
