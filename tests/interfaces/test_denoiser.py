"""What every denoiser interface shares: the error estimate from a second, perturbed run."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.denoise.error import estimate_error, perturbation
from bids_denoise.denoise.patch2self import patch2self
from bids_denoise.interfaces.mppca import MPPCA
from bids_denoise.interfaces.patch2self import Patch2Self
from tests.conftest import write_series

SIGMA = 15.0


def _group(tmp_path, n=12, bvals=None):
    rng = np.random.default_rng(2)
    shape = (12, 12, 5)
    basis = rng.uniform(0.5, 1.5, (3, n))
    clean = rng.uniform(100, 300, shape + (3,)) @ basis
    noisy = np.hypot(clean + rng.normal(0, SIGMA, clean.shape), rng.normal(0, SIGMA, clean.shape)).astype(np.float32)
    bvals = np.full(n, 1000.0) if bvals is None else bvals
    paths = write_series(tmp_path / "group", noisy, bvals)
    sigma = tmp_path / "sigma.nii.gz"
    region = tmp_path / "head.nii.gz"
    nb.Nifti1Image(np.full(shape, SIGMA, np.float32), np.eye(4)).to_filename(sigma)
    head = np.zeros(shape, np.float32)
    head[2:10, 2:10] = 1
    nb.Nifti1Image(head, np.eye(4)).to_filename(region)
    return noisy, clean, bvals, paths, str(sigma), str(region)


def test_the_interface_estimates_the_error_of_its_output(tmp_path):
    noisy, clean, bvals, paths, sigma, region = _group(tmp_path)
    out = Patch2Self(in_file=str(paths[0]), bval_file=str(paths[1]), sigma_file=sigma, region_file=region,
                     clip_negative_vals=False).run(cwd=str(tmp_path)).outputs
    estimate = out.error_estimate
    head = np.asanyarray(nb.load(region).dataobj) > 0
    # the same computation from the engine, with the same probe
    probe, eps = perturbation(noisy, np.full(noisy.shape[:3], SIGMA), head)
    run = lambda y: patch2self(y, bvals, grouping="all", clip_negative_vals=False, progress=False)  # noqa: E731
    expected = estimate_error(noisy=noisy, denoised=run(noisy), perturbed=run(noisy + eps * probe), probe=probe,
                              epsilon=eps, sigma=np.full(noisy.shape[:3], SIGMA), region=head)
    assert estimate["EstimatedRMSE"] == pytest.approx(expected.rmse, rel=1e-4)
    assert estimate["Values"] == head.sum() * noisy.shape[3] and estimate["Seconds"] >= 0
    true = np.sqrt(np.mean((np.asanyarray(nb.load(out.out_file).dataobj) - clean)[head] ** 2))
    assert estimate["EstimatedRMSE"] == pytest.approx(true, rel=0.25)


def test_a_copied_group_has_the_noise_as_its_error(tmp_path):
    noisy, clean, bvals, paths, sigma, region = _group(tmp_path, n=2, bvals=np.zeros(2))
    out = MPPCA(in_file=str(paths[0]), bval_file=str(paths[1]), b0_denoising=False, sigma_file=sigma,
                region_file=region).run(cwd=str(tmp_path)).outputs
    assert out.n_denoised == 0
    assert out.error_estimate["Divergence"] == pytest.approx(1.0, abs=0.1)
    assert out.error_estimate["EstimatedRMSE"] == pytest.approx(SIGMA, rel=0.15)


def test_no_estimate_without_the_noise_map_or_when_switched_off(tmp_path):
    _, _, _, paths, sigma, region = _group(tmp_path)
    plain = Patch2Self(in_file=str(paths[0]), bval_file=str(paths[1])).run(cwd=str(tmp_path)).outputs
    assert plain.error_estimate == {}
    off = Patch2Self(in_file=str(paths[0]), bval_file=str(paths[1]), sigma_file=sigma, region_file=region,
                     estimate_error=False).run(cwd=str(tmp_path)).outputs
    assert off.error_estimate == {}
