"""--method auto on one group: every candidate runs, the lowest estimated error wins."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.errors import DataError
from bids_denoise.interfaces.auto import AutoDenoiser
from bids_denoise.interfaces.mppca import MPPCA
from bids_denoise.interfaces.patch2self import Patch2Self
from tests.interfaces.test_denoiser import _group


def _load(path):
    return np.asanyarray(nb.load(path).dataobj)


def test_auto_keeps_the_candidate_with_the_lowest_estimate(tmp_path):
    _, _, _, paths, sigma, region = _group(tmp_path)
    common = dict(in_file=str(paths[0]), bval_file=str(paths[1]), sigma_file=sigma, region_file=region)
    inputs = {"patch2self": {"patch_radius": [1, 1, 1], "patch_pooling": "radial"}, "mppca": {"patch_radius": [1, 1, 1]}}
    (tmp_path / "auto").mkdir()
    (tmp_path / "single").mkdir()
    out = AutoDenoiser(candidates=["patch2self", "mppca"], candidate_inputs=inputs, **common).run(
        cwd=str(tmp_path / "auto")).outputs
    estimate = out.error_estimate
    assert set(estimate["Candidates"]) == {"Patch2Self", "MP-PCA"}
    winner = min(estimate["Candidates"], key=estimate["Candidates"].get)
    assert estimate["Chosen"] == winner and estimate["EstimatedRMSE"] == estimate["Candidates"][winner]
    single = {"Patch2Self": Patch2Self(**common, **inputs["patch2self"]),
              "MP-PCA": MPPCA(**common, **inputs["mppca"])}[winner].run(cwd=str(tmp_path / "single")).outputs
    np.testing.assert_array_equal(_load(out.out_file), _load(single.out_file))
    assert single.error_estimate["EstimatedRMSE"] == pytest.approx(estimate["EstimatedRMSE"], rel=1e-6)
    assert out.chosen == {"Patch2Self": "patch2self", "MP-PCA": "mppca"}[winner]


def test_auto_without_a_noise_map_is_a_clear_error(tmp_path):
    _, _, _, paths, _, _ = _group(tmp_path)
    with pytest.raises(DataError, match="noise map"):
        AutoDenoiser(in_file=str(paths[0]), bval_file=str(paths[1]), candidates=["patch2self"]).run(
            cwd=str(tmp_path))
