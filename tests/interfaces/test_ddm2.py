"""The DDM2 Nipype interfaces: one group file in, denoised group, noise map and history out."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
import torch

from bids_denoise.denoise.ddm2 import ddm2_denoise
from bids_denoise.errors import DataError
from bids_denoise.interfaces.ddm2 import DDM2, HISTORY_KEYS, BundleModels
from bids_denoise.utils.threads import limit_threads
from tests.conftest import write_series

TINY = dict(preset="smoke", stage1_steps=4, stage3_steps=4, sampling_steps=2, device="cpu", num_threads=1,
            progress=False)


def _cwd(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    return str(folder)


def _group(tmp_path, bvals, seed=1, shape=(10, 9, 2)):
    rng = np.random.default_rng(seed)
    data = rng.uniform(300, 800, shape)[..., None] + rng.normal(0, 25, (*shape, len(bvals)))
    data = data.astype(np.float32)
    return data, write_series(tmp_path / "group", data, bvals)


def test_interface_equals_the_engine_and_writes_the_history(tmp_path):
    bvals = np.full(6, 1000.0)
    data, paths = _group(tmp_path, bvals)
    checkpoints = tmp_path / "ckpt" / "b1000"
    out = DDM2(in_file=str(paths[0]), bval_file=str(paths[1]), checkpoint_dir=str(checkpoints), seed=3,
               save_model=True, group_label="b1000", **TINY).run(cwd=_cwd(tmp_path, "node")).outputs
    with limit_threads(1):  # same thread count as the node: same summation order
        expected = ddm2_denoise(data, bvals, preset="smoke", stage1_steps=4, stage3_steps=4, sampling_steps=2,
                                device="cpu", seed=3, progress=False)
    denoised = nb.load(out.out_file)
    np.testing.assert_allclose(denoised.get_fdata(dtype=np.float32), expected.denoised, rtol=1e-6, atol=1e-4)
    assert denoised.get_data_dtype() == np.float32
    np.testing.assert_allclose(denoised.affine, nb.load(paths[0]).affine)
    noise = nb.load(out.noise_file)
    assert noise.shape == data.shape[:3]
    np.testing.assert_allclose(noise.get_fdata(dtype=np.float32), expected.noise, rtol=1e-5, atol=1e-3)
    assert out.n_denoised == 6 and out.device == "cpu" and out.run_time > 0
    history = json.loads(open(out.history_file).read())
    assert tuple(history) == HISTORY_KEYS
    assert len(history["stage1_loss"]) == 4 and len(history["stage3_loss"]) == 4
    assert np.asarray(history["t_star"]).shape == (6, 2)
    assert history["preset"] == "smoke" and history["steps"] == {"stage1": 4, "stage3": 4, "sampling": 2}
    assert sorted(p.name for p in checkpoints.iterdir()) == ["inference.pt", "stage1.pt", "stage2.pt", "stage3.pt"]
    model = torch.load(out.model_file, weights_only=True)
    assert model["group"] == "b1000" and {"stage1", "stage3", "settings"} <= set(model)
    assert json.loads(model["settings"])["stage1_steps"] == 4


def test_b0_group_passes_through_or_uses_patch2self(tmp_path):
    bvals = np.zeros(3)
    data, paths = _group(tmp_path, bvals)
    copied = DDM2(in_file=str(paths[0]), bval_file=str(paths[1]), b0_denoising=False, save_model=True,
                  **TINY).run(cwd=_cwd(tmp_path, "a")).outputs
    np.testing.assert_array_equal(nb.load(copied.out_file).get_fdata(dtype=np.float32), data)
    assert copied.n_denoised == 0 and not nb.load(copied.noise_file).get_fdata().any()
    assert json.loads(open(copied.history_file).read())["stage1_loss"] == []
    assert not copied.model_file  # nothing was trained
    denoised = DDM2(in_file=str(paths[0]), bval_file=str(paths[1]), **TINY).run(cwd=_cwd(tmp_path, "b")).outputs
    assert denoised.n_denoised == 3
    assert not np.array_equal(nb.load(denoised.out_file).get_fdata(dtype=np.float32), data)


def test_bad_data_raise_data_error(tmp_path):
    bvals = np.full(4, 1000.0)
    data, _ = _group(tmp_path, bvals)
    data[0, 0, 0, 0] = np.nan
    paths = write_series(tmp_path / "nan", data, bvals)
    with pytest.raises(DataError, match="NaN"):
        DDM2(in_file=str(paths[0]), bval_file=str(paths[1]), **TINY).run(cwd=_cwd(tmp_path, "c"))


def test_bundle_gathers_the_models_of_a_run(tmp_path):
    from bids_denoise.denoise.ddm2.checkpoints import export_model

    files = [export_model(tmp_path / f"{label}.pt", {"group": label, "stage1": {}, "stage3": {}})
             for label in ("b1000", "b2000")]
    out = BundleModels(model_files=[str(files[0]), None, str(files[1])]).run(cwd=_cwd(tmp_path, "bundle")).outputs
    bundle = torch.load(out.out_file, weights_only=True)
    assert sorted(bundle["groups"]) == ["b1000", "b2000"]
