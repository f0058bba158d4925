"""Shared fixtures: small DWI series written to disk."""

from __future__ import annotations

import warnings

import nibabel as nb
import numpy as np
import pytest

# Volumes interleaved across a b0 group (one stored at b=5) and two shells.
MULTISHELL_BVALS = np.array([0, 1000, 2000, 1000, 5, 2000, 1000, 2000, 1000, 2000, 0, 1000, 2000], float)


def write_series(folder, data, bvals, *, affine=None, stem="dwi", seed=0):
    """Write ``data`` with FSL gradients; returns (dwi, bval, bvec) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([2.0, 2.0, 2.5, 1.0])
        affine[:3, 3] = [-8.0, -7.0, -6.0]
    img = nb.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    paths = (folder / f"{stem}.nii.gz", folder / f"{stem}.bval", folder / f"{stem}.bvec")
    img.to_filename(paths[0])
    np.savetxt(paths[1], np.asarray(bvals)[None], fmt="%g")
    directions = np.random.default_rng(seed).normal(size=(3, len(bvals)))
    np.savetxt(paths[2], directions / np.linalg.norm(directions, axis=0), fmt="%.6f")
    return paths


@pytest.fixture
def multishell_series(tmp_path):
    """An (8, 7, 5, 13) float32 series with interleaved b0s and two shells, on disk."""
    rng = np.random.default_rng(0)
    bvals = MULTISHELL_BVALS
    signal = rng.uniform(200, 900, (8, 7, 5))[..., None] * np.exp(-bvals / 1500)
    data = (signal + rng.normal(0, 20, signal.shape)).astype(np.float32)
    paths = write_series(tmp_path / "input", data, bvals)
    return data, bvals, paths


@pytest.fixture(autouse=True)
def _quiet_small_group_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Patch2Self: group .* volumes", category=UserWarning)
        yield


@pytest.fixture
def isolated_app_state(monkeypatch):
    """Reset bids_denoise's config; restore threads, loggers and Nipype's config afterwards.

    ``bids_denoise.cli.run.main`` sets all of these process-wide, so in-process CLI tests
    use this fixture to stay independent of each other.
    """
    import logging

    import torch
    from nipype import config as nipype_config

    from bids_denoise import config
    from bids_denoise.cli.workflow import THREAD_ENV_VARS

    for name in (*THREAD_ENV_VARS, "NIPYPE_NO_ET"):
        monkeypatch.setenv(name, "sentinel")
    threads = torch.get_num_threads()
    names = ("bids_denoise", "bids_denoise.cli", "nipype.workflow", "nipype.interface", "nipype.utils")
    saved_loggers = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    saved_nipype = {s: dict(nipype_config._config.items(s, raw=True)) for s in nipype_config._config.sections()}
    config.reset()
    yield
    config.reset()
    torch.set_num_threads(threads)
    for name, (level, handlers) in saved_loggers.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers
    for section, values in saved_nipype.items():
        for key, value in values.items():
            nipype_config._config.set(section, key, value)
