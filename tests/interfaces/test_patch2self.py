import nibabel as nb
import numpy as np

from bids_denoise.denoise.patch2self import patch2self_with_noise
from bids_denoise.interfaces.patch2self import Patch2Self
from tests.conftest import write_series


def _group(tmp_path, bvals, seed=1):
    rng = np.random.default_rng(seed)
    data = (rng.uniform(300, 800, (7, 6, 5))[..., None] + rng.normal(0, 25, (7, 6, 5, len(bvals))))
    return data.astype(np.float32), write_series(tmp_path / "group", data.astype(np.float32), bvals)


def test_interface_equals_the_engine_on_one_group(tmp_path):
    bvals = np.full(12, 1000.0)
    data, paths = _group(tmp_path, bvals)
    out = Patch2Self(in_file=str(paths[0]), bval_file=str(paths[1]), patch_radius=[1, 1, 0]).run(
        cwd=str(tmp_path)
    ).outputs
    expected, noise = patch2self_with_noise(data, bvals, patch_radius=(1, 1, 0), grouping="all", progress=False)
    np.testing.assert_array_equal(nb.load(out.out_file).get_fdata(dtype=np.float32), expected)
    np.testing.assert_array_equal(nb.load(out.noise_file).get_fdata(dtype=np.float32), noise)
    assert out.n_denoised == 12
    assert out.device == "cpu"
    assert out.run_time >= 0


def test_b0_group_is_copied_when_b0_denoising_is_off(tmp_path):
    bvals = np.zeros(4)
    data, paths = _group(tmp_path, bvals)
    out = Patch2Self(in_file=str(paths[0]), bval_file=str(paths[1]), b0_denoising=False).run(
        cwd=str(tmp_path)
    ).outputs
    np.testing.assert_array_equal(nb.load(out.out_file).get_fdata(dtype=np.float32), data)
    assert out.n_denoised == 0
    assert not nb.load(out.noise_file).get_fdata().any()
