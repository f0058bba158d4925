"""Groups too small to denoise on their own: every decision is logged, recorded in the sidecar
and listed as a warning next to the run's status in the summary."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.cli.run import main
from tests.conftest import write_series

pytestmark = pytest.mark.slow

# two b0s (too few to regress), then two shells of 6 (merged: fewer than 10 each)
BVALS = np.array([0, 1000, 2000, 1000, 2000, 0, 1000, 2000, 1000, 2000, 1000, 2000, 1000, 2000], float)


@pytest.fixture(autouse=True)
def _isolated(isolated_app_state):
    yield


@pytest.fixture
def dataset(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "small", "BIDSVersion": "1.10.0"}))
    rng = np.random.default_rng(3)
    signal = rng.uniform(300, 900, (9, 8, 6))[..., None] * np.exp(-BVALS / 1500)
    data = (signal + rng.normal(0, 20, signal.shape)).astype(np.float32)
    write_series(bids / "sub-01" / "dwi", data, BVALS, stem="sub-01_dwi")
    plugin = tmp_path / "linear.yml"
    plugin.write_text("plugin: Linear\n")
    return bids, data, plugin


def test_small_groups_are_reported_everywhere(dataset, tmp_path, capsys):
    bids, data, plugin = dataset
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                 "--use-plugin", str(plugin), "--method", "patch2self", "--shell-grouping", "shell",
                 "--rician-correction", "none"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    summary = printed.out
    assert "[ok, 2 warnings] sub-01/dwi/sub-01_dwi.nii.gz" in summary
    assert "! group b0: copied through: 2 volumes" in summary
    assert "! group b1000to2000: shells b1000 (6), b2000 (6) merged" in summary

    sidecar = json.loads((out / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.json").read_text())
    groups = {group["Label"]: group for group in sidecar["VolumeGroups"]}
    assert set(groups) == {"b0", "b1000to2000"}
    assert groups["b0"]["Denoised"] is False
    assert "copied through: 2 volumes" in groups["b0"]["Notes"][0]
    assert groups["b1000to2000"]["Denoised"] is True
    assert groups["b1000to2000"]["Count"] == 12
    assert "merged" in groups["b1000to2000"]["Notes"][0]

    denoised = np.asanyarray(nb.load(out / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.nii.gz").dataobj)
    np.testing.assert_array_equal(denoised[..., [0, 5]], data[..., [0, 5]])  # b0s copied
    assert not np.allclose(denoised[..., 1:5], data[..., 1:5])  # shells denoised


def test_a_run_without_decisions_has_a_plain_ok(dataset, tmp_path, capsys):
    bids, _, plugin = dataset
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--use-plugin", str(plugin), "--method", "patch2self", "--no-b0-denoising",
                 "--shell-grouping", "all"])
    summary = capsys.readouterr().out
    assert code == 0
    assert "  [ok] sub-01/dwi/sub-01_dwi.nii.gz" in summary
    assert "warning" not in summary
