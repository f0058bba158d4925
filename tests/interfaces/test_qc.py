"""The QualityControl interface: the numbers of reports.qc for every denoised group of a run."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_denoise.interfaces.qc import QualityControl
from bids_denoise.reports import qc
from tests.conftest import write_series


def _run(tmp_path, denoise, rician="none"):
    rng = np.random.default_rng(3)
    shape, sigma = (20, 20, 6), 20.0
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    head = np.repeat(((x / 0.8) ** 2 + (y / 0.8) ** 2 < 1)[..., None], shape[2], -1)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    s0 = np.where(head, 600.0 * (1 + 2 * texture), 0.0)
    bvals = np.r_[np.zeros(3), np.full(20, 1000.0)]
    clean = np.concatenate([np.repeat(s0[..., None], 3, -1), s0[..., None] * rng.uniform(0.3, 0.5, 20)], -1)
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    raw, bval, bvec = write_series(tmp_path / "raw", noisy.astype(np.float32), bvals)
    affine = nb.load(raw).affine
    files = {}
    for name, array in (("denoised", denoise(noisy, clean)), ("sigma", np.full(shape, sigma)),
                        ("region", head.astype(np.uint8))):
        files[name] = tmp_path / f"{name}.nii.gz"
        nb.Nifti1Image(np.asarray(array, np.float32 if name != "region" else np.uint8), affine).to_filename(files[name])
    groups = [{"Label": "b0", "Volumes": [0, 1, 2]}, {"Label": "b1000", "Volumes": list(range(3, 23))}]
    result = QualityControl(in_file=str(raw), denoised_file=str(files["denoised"]), bval_file=str(bval),
                            bvec_file=str(bvec), sigma_file=str(files["sigma"]), region_file=str(files["region"]),
                            groups=groups, n_denoised=[0, 20], rician_correction=rician).run(cwd=str(tmp_path))
    return result.outputs.quality_control


def test_a_good_output_is_quiet_and_copied_groups_are_skipped(tmp_path):
    quality = _run(tmp_path, lambda noisy, clean: clean, rician="mean")
    assert [row["Group"] for row in quality["Groups"]] == ["b1000"]  # the b0 group was copied through
    assert 0.9 < quality["Groups"][0]["ResidualRatio"] < 1.1
    assert quality["Flags"] == [] and quality["Thresholds"] == qc.THRESHOLDS


def test_an_over_smoothed_output_is_flagged(tmp_path):
    quality = _run(tmp_path, lambda noisy, clean: ndimage.gaussian_filter(noisy, (2, 2, 0, 0)))
    checks = {(flag["Check"], flag["Group"]) for flag in quality["Flags"]}
    assert ("ResidualRatio", "b1000") in checks and ("ResidualCorrelation", "b1000") in checks
    assert quality["Groups"][0]["ResidualRatio"] > qc.THRESHOLDS["ResidualRatio"]
