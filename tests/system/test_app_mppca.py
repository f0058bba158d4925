"""--method mppca and --rician-correction through the whole app: outputs, sidecars, validator."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.cli.run import main
from bids_denoise.utils.validator import validate_derivatives
from tests.conftest import write_series

pytestmark = pytest.mark.slow
BVALS = np.r_[np.zeros(3), np.full(12, 1000.0), np.full(12, 2000.0)]


@pytest.fixture(autouse=True)
def _isolated(isolated_app_state):
    yield


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "mppca", "BIDSVersion": "1.10.0"}))
    rng = np.random.default_rng(5)
    signal = rng.uniform(300, 900, (10, 9, 7))[..., None] * np.exp(-BVALS / 1500)
    data = (signal + rng.normal(0, 20, signal.shape)).astype(np.float32)
    write_series(root / "sub-01" / "dwi", data, BVALS, stem="sub-01_dwi")
    return root


def test_mppca_with_rician_correction_writes_its_maps_and_passes_the_validator(bids, tmp_path):
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                 "--nprocs", "1", "--method", "mppca", "--rician-correction", "mean", "--mppca-patch-radius", "1",
                 "--shell-grouping", "shell"])
    assert code == 0
    folder = out / "sub-01" / "dwi"
    sigma = np.asanyarray(nb.load(folder / "sub-01_desc-sigma_dwimap.nii.gz").dataobj)
    ranks = np.asanyarray(nb.load(folder / "sub-01_desc-rank_dwimap.nii.gz").dataobj)
    assert sigma.shape == (10, 9, 7) and 5 < np.median(sigma) < 40  # noise sd 20
    assert ranks.shape == (10, 9, 7, 3)  # one map per group: b0, b1000, b2000
    sidecar = json.loads((folder / "sub-01_desc-denoised_dwi.json").read_text())
    assert sidecar["DenoisingMethod"] == "MP-PCA"
    assert sidecar["DenoisingParameters"]["RicianCorrection"] == "mean"
    assert sidecar["DenoisingParameters"]["PatchRadius"] == [1, 1, 1]
    assert "MP-PCA" in json.loads((folder / "sub-01_desc-sigma_dwimap.json").read_text())["Description"]
    assert (out / "sub-01" / "figures" / "sub-01_desc-mppcamaps_dwi.png").is_file()
    text = (out / "logs" / "CITATION.md").read_text()
    assert "[@veraart2016]" in text and "[@koay2006]" in text
    assert "@article{koay2006," in (out / "logs" / "CITATION.bib").read_text()
    ok, report = validate_derivatives(out)
    assert ok in (True, None), report
