"""The MP-PCA interface: one group with its maps; the stacking of the groups' rank maps."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.denoise.mppca import mppca
from bids_denoise.errors import DataError
from bids_denoise.interfaces.denoiser import GroupDenoiser
from bids_denoise.interfaces.mppca import MPPCA, fitted_radius
from bids_denoise.interfaces.shells import MergeGroupMaps
from tests.conftest import write_series


def _series(tmp_path, shape=(9, 8, 7), n=12, bvals=None, seed=1, name="group"):
    rng = np.random.default_rng(seed)
    basis = rng.uniform(0.5, 1.5, (3, n))
    weights = rng.uniform(200, 600, shape + (3,))
    data = (weights @ basis + rng.normal(0, 20, shape + (n,))).astype(np.float32)
    bvals = np.full(n, 1000.0) if bvals is None else bvals
    return data, write_series(tmp_path / name, data, bvals)


def _load(path):
    return np.asanyarray(nb.load(path).dataobj)


def test_the_interface_equals_the_engine_and_writes_its_maps(tmp_path):
    data, paths = _series(tmp_path)
    node = MPPCA(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=1, estimator="cordero-grande2019")
    assert isinstance(node, GroupDenoiser)
    out = node.run(cwd=str(tmp_path)).outputs
    expected = mppca(data, patch_radius=1, estimator="cordero-grande2019", progress=False)
    np.testing.assert_array_equal(_load(out.out_file), expected.denoised)
    np.testing.assert_array_equal(_load(out.sigma_file), expected.sigma)
    np.testing.assert_array_equal(_load(out.rank_file), expected.rank)
    assert out.n_denoised == 12 and _load(out.noise_file).shape == data.shape[:3]


def test_a_single_volume_is_copied_with_empty_maps(tmp_path):
    data, paths = _series(tmp_path, n=1, bvals=np.zeros(1))
    out = MPPCA(in_file=str(paths[0]), bval_file=str(paths[1])).run(cwd=str(tmp_path)).outputs
    np.testing.assert_array_equal(_load(out.out_file), data)
    assert out.n_denoised == 0 and not _load(out.sigma_file).any()


def test_a_window_too_wide_for_a_thin_axis_is_shrunk_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="2 voxel.*axis 2.*radius there is 0 instead of 2"):
        assert fitted_radius(2, (9, 8, 2)) == (2, 2, 0)
    data, paths = _series(tmp_path, shape=(9, 8, 2), n=20)
    out = MPPCA(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=2).run(cwd=str(tmp_path)).outputs
    np.testing.assert_array_equal(_load(out.out_file), mppca(data, patch_radius=(2, 2, 0), progress=False).denoised)


def test_engine_errors_name_the_file(tmp_path):
    data, paths = _series(tmp_path, shape=(3, 3, 3), n=4)
    with pytest.raises(DataError, match=str(paths[0])):  # a one-voxel window has nothing to decompose
        MPPCA(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=[0, 0, 0]).run(cwd=str(tmp_path))


def test_group_rank_maps_are_stacked_in_group_order(tmp_path):
    affine_source = _series(tmp_path, n=3)[1][0]
    maps = []
    for k, value in enumerate((3.0, 4.0)):
        path = tmp_path / f"rank{k}.nii.gz"
        nb.Nifti1Image(np.full((9, 8, 7), value, np.float32), np.eye(4)).to_filename(path)
        maps.append(str(path))
    out = MergeGroupMaps(rank_files=maps, reference_file=str(affine_source)).run(cwd=str(tmp_path)).outputs
    ranks = _load(out.rank_file)
    assert ranks.shape == (9, 8, 7, 2) and ranks[0, 0, 0, 1] == 4.0
