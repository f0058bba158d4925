"""The run-level noise interfaces: the noise map with its head mask, the Rician correction."""

from __future__ import annotations

import nibabel as nb
import numpy as np

from bids_denoise.denoise.masks import brain_mask, mean_b0
from bids_denoise.denoise.noise import measure_noise
from bids_denoise.denoise.rician import correct_rician_bias
from bids_denoise.interfaces.noise import EstimateNoise, RicianCorrection
from tests.conftest import write_series


def _load(path):
    return np.asanyarray(nb.load(path).dataobj)


def _head_series(tmp_path, n_b0=4, n_dwi=16, shape=(16, 16, 6), sigma=8.0):
    rng = np.random.default_rng(5)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    head = np.repeat(((x / 0.7) ** 2 + (y / 0.7) ** 2 < 1)[..., None], shape[2], -1)
    s0 = np.where(head, 400.0, 0.0)
    decay = rng.uniform(0.2, 0.6, n_dwi)
    clean = np.concatenate([np.repeat(s0[..., None], n_b0, -1), s0[..., None] * decay], -1)
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    bvals = np.r_[np.zeros(n_b0), np.full(n_dwi, 1000.0)]
    return noisy.astype(np.float32), bvals, write_series(tmp_path / "run", noisy.astype(np.float32), bvals)


def test_the_noise_map_is_the_engines_with_the_head_it_was_measured_in(tmp_path):
    data, bvals, paths = _head_series(tmp_path)
    out = EstimateNoise(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=1).run(cwd=str(tmp_path)).outputs
    region = brain_mask(mean_b0(data, bvals))
    np.testing.assert_array_equal(_load(out.region_file) > 0, region)
    expected = measure_noise(data, bvals, region=region, patch_radius=(1, 1, 1))
    np.testing.assert_allclose(_load(out.sigma_file), expected.sigma, rtol=1e-6)
    assert out.noise_source == expected.source and out.noise_note == expected.note
    assert abs(out.noise_level - 8.0) < 0.4


def test_the_rician_correction_applies_the_noise_map(tmp_path):
    data, _, paths = _head_series(tmp_path)
    sigma_file = EstimateNoise(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=1).run(
        cwd=str(tmp_path)).outputs.sigma_file
    corrected = RicianCorrection(in_file=str(paths[0]), sigma_file=sigma_file).run(cwd=str(tmp_path)).outputs.out_file
    np.testing.assert_allclose(_load(corrected), correct_rician_bias(data, _load(sigma_file)), rtol=1e-6)
