"""--method auto on one group: every candidate runs; of those that keep the directional
contrast, the lowest estimated error wins."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.errors import DataError
from bids_denoise.denoise.contrast import ContrastRetained
from bids_denoise.denoise.error import ErrorEstimate
from bids_denoise.interfaces.auto import AutoDenoiser, choose
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
    lowest = min(estimate["Candidates"], key=estimate["Candidates"].get)
    winner = estimate["Chosen"]
    if winner != lowest:
        assert estimate["ContrastRetained"][lowest] < 0.8 and lowest in estimate["PassedOver"]
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


def _estimate(rmse):
    return ErrorEstimate(rmse=rmse, n_values=1000, residual_rms=1.0, noise_rms=1.0, divergence=0.1)


def _contrast(ratio):
    return ContrastRetained(ratio=ratio, n_voxels=500, shells=((1000, 500, ratio),))


def test_a_lower_error_that_flattens_the_shells_is_passed_over():
    estimates = {"patch2self": _estimate(1.0), "mppca": _estimate(2.0)}
    chosen, passed_over = choose(["patch2self", "mppca"], estimates,
                                 {"patch2self": _contrast(0.66), "mppca": _contrast(0.99)})
    assert chosen == "mppca"
    assert "0.66" in passed_over["patch2self"] and "< 0.8" in passed_over["patch2self"]


def test_the_lowest_error_wins_among_candidates_that_keep_the_contrast():
    estimates = {"patch2self": _estimate(1.0), "mppca": _estimate(2.0)}
    chosen, passed_over = choose(["patch2self", "mppca"], estimates,
                                 {"patch2self": _contrast(0.91), "mppca": _contrast(1.05)})
    assert (chosen, passed_over) == ("patch2self", {})


def test_when_every_candidate_flattens_the_one_that_keeps_most_wins():
    estimates = {"patch2self": _estimate(1.0), "mppca": _estimate(2.0)}
    chosen, passed_over = choose(["patch2self", "mppca"], estimates,
                                 {"patch2self": _contrast(0.5), "mppca": _contrast(0.7)})
    assert chosen == "mppca" and set(passed_over) == {"patch2self"}


def test_unmeasured_groups_go_by_the_error_and_ties_by_order():
    estimates = {"patch2self": _estimate(1.0), "mppca": _estimate(1.0)}
    assert choose(["patch2self", "mppca"], estimates, {"patch2self": None, "mppca": None}) == ("patch2self", {})
    assert choose(["mppca", "patch2self"], estimates, {"patch2self": None, "mppca": None}) == ("mppca", {})
    estimates["mppca"] = _estimate(0.5)
    assert choose(["patch2self", "mppca"], estimates, {"patch2self": _contrast(0.9), "mppca": None})[0] == "mppca"
