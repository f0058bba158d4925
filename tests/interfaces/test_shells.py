import nibabel as nb
import numpy as np
import pytest

from bids_denoise.errors import DataError
from bids_denoise.interfaces.shells import MergeShells, SplitShells


def _split(paths, tmp_path, **kwargs):
    node_dir = tmp_path / "split"
    node_dir.mkdir()
    split = SplitShells(in_file=str(paths[0]), bval_file=str(paths[1]), **kwargs)
    return split.run(cwd=str(node_dir)).outputs


def test_split_groups_by_shell_keeping_acquisition_order(multishell_series, tmp_path):
    data, bvals, paths = multishell_series
    out = _split(paths, tmp_path, min_shell_volumes=1)
    assert [g["Label"] for g in out.groups] == ["b0", "b1000", "b2000"]
    assert out.group_indices == [[0, 4, 10], [1, 3, 6, 8, 11], [2, 5, 7, 9, 12]]
    for path, bval_path, index in zip(out.group_files, out.group_bval_files, out.group_indices):
        np.testing.assert_array_equal(nb.load(path).get_fdata(dtype=np.float32), data[..., index])
        np.testing.assert_array_equal(np.loadtxt(bval_path, ndmin=1), bvals[index])


def test_split_gives_each_group_its_own_bvecs(multishell_series, tmp_path):
    _, _, paths = multishell_series
    assert _split(paths, tmp_path, min_shell_volumes=1).group_bvec_files == []  # none without bvec_file
    (tmp_path / "with").mkdir()
    (tmp_path / "bad").mkdir()
    out = _split(paths, tmp_path / "with", min_shell_volumes=1, bvec_file=str(paths[2]))
    bvecs = np.loadtxt(paths[2])
    assert len(out.group_bvec_files) == 3
    for path, index in zip(out.group_bvec_files, out.group_indices):
        np.testing.assert_allclose(np.loadtxt(path, ndmin=2), bvecs[:, index], atol=1e-7)
    np.savetxt(tmp_path / "bad.bvec", bvecs[:, :5])
    with pytest.raises(DataError, match="3 rows"):
        _split(paths, tmp_path / "bad", bvec_file=str(tmp_path / "bad.bvec"))


def test_split_merges_small_shells_and_says_so(multishell_series, tmp_path):
    _, _, paths = multishell_series
    out = _split(paths, tmp_path)  # shells of 5 volumes: fewer than 10
    assert [g["Label"] for g in out.groups] == ["b0", "b1000to2000"]
    assert out.group_indices[1] == [1, 2, 3, 5, 6, 7, 8, 9, 11, 12]
    assert "b1000 (5), b2000 (5)" in out.groups[1]["Notes"][0]


def test_split_threshold_and_grouping_are_honoured(multishell_series, tmp_path):
    _, _, paths = multishell_series
    out = _split(paths, tmp_path, b0_threshold=1, grouping="all")
    # b=5 is not a b0 under a threshold of 1, and all DWIs are pooled.
    assert [g["Label"] for g in out.groups] == ["b0", "dwi"]
    assert out.group_indices[0] == [0, 10]
    assert 4 in out.group_indices[1]


def test_split_merge_round_trip_restores_order_and_geometry(multishell_series, tmp_path):
    data, _, paths = multishell_series
    out = _split(paths, tmp_path)
    merge_dir = tmp_path / "merge"
    merge_dir.mkdir()
    merged = MergeShells(
        in_files=out.group_files, group_indices=out.group_indices, reference_file=str(paths[0])
    ).run(cwd=str(merge_dir)).outputs
    result, reference = nb.load(merged.out_file), nb.load(paths[0])
    np.testing.assert_array_equal(result.get_fdata(dtype=np.float32), data)
    assert result.get_data_dtype() == np.float32
    np.testing.assert_array_equal(result.affine, reference.affine)
    assert result.header.get_zooms() == reference.header.get_zooms()
    assert int(result.header["qform_code"]) == int(reference.header["qform_code"])
    assert int(result.header["sform_code"]) == int(reference.header["sform_code"])


def test_merge_refuses_groups_that_do_not_cover_every_volume(multishell_series, tmp_path):
    _, _, paths = multishell_series
    out = _split(paths, tmp_path, min_shell_volumes=1)
    merge = MergeShells(
        in_files=out.group_files[:2], group_indices=out.group_indices[:2], reference_file=str(paths[0])
    )
    with pytest.raises(DataError, match="groups cover volumes"):
        merge.run(cwd=str(tmp_path))


def test_merge_weights_noise_maps_by_denoised_volumes(multishell_series, tmp_path):
    _, _, paths = multishell_series
    out = _split(paths, tmp_path)
    shape = nb.load(paths[0]).shape[:3]
    noise_files = []
    for value, name in ((3.0, "a"), (4.0, "b"), (0.0, "c")):
        path = tmp_path / f"noise_{name}.nii.gz"
        nb.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)).to_filename(path)
        noise_files.append(str(path))
    merged = MergeShells(
        in_files=out.group_files, group_indices=out.group_indices, reference_file=str(paths[0]),
        noise_files=noise_files, noise_weights=[1, 2, 0],
    ).run(cwd=str(tmp_path)).outputs
    expected = np.sqrt((1 * 9 + 2 * 16) / 3)
    np.testing.assert_allclose(nb.load(merged.noise_file).get_fdata(), expected, rtol=1e-6)


def test_split_rejects_a_bval_count_that_differs_from_the_image(multishell_series, tmp_path):
    _, bvals, paths = multishell_series
    np.savetxt(paths[1], bvals[:-1][None], fmt="%g")
    with pytest.raises(DataError, match="12 b-values for an image with 13 volumes"):
        _split(paths, tmp_path)
