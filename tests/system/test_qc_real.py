"""QC flags on real scanner data (../shared/data): the DSI set split into its tiny shells, each
regressed from 3 to 15 volumes, leaves signal in the residual; an MP-PCA run of the same set does
not remove diffusion contrast."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_denoise.workflows.dwi import init_dwi_denoise_wf

pytestmark = pytest.mark.slow

DSI = Path(__file__).resolve().parents[3] / "shared" / "data" / "dipy_small101D_dsi_b0_15"


def _quality(tmp_path, **settings):
    if not (DSI / "dwi.nii.gz").is_file():
        pytest.skip(f"{DSI} is not available")
    wf = init_dwi_denoise_wf(omp_nthreads=1, error_estimate=False, **settings)
    wf.base_dir = str(tmp_path)
    for field, suffix in (("dwi_file", ".nii.gz"), ("bval_file", ".bval"), ("bvec_file", ".bvec")):
        setattr(wf.inputs.inputnode, field, str(DSI / f"dwi{suffix}"))
    result = wf.run()
    node = next(n for n in result.nodes() if n.name == "quality_control")
    return node.result.outputs.quality_control


def test_tiny_dsi_shells_are_flagged(tmp_path):
    quality = _quality(tmp_path, method="patch2self", shell_grouping="shell", min_shell_volumes=1)
    groups = [row["Group"] for row in quality["Groups"]]
    assert len(groups) >= 10  # b0 copied through, a dozen tiny shells
    flagged = {flag["Group"] for flag in quality["Flags"] if flag["Check"] == "ResidualRatio"}
    assert len(flagged) >= len(groups) - 1  # signal left in the residual of (nearly) every shell


def test_mppca_keeps_fa_on_the_dsi_set(tmp_path):
    quality = _quality(tmp_path, method="mppca", shell_grouping="all")
    assert quality["FA"] is not None and abs(quality["FA"]["Change"]) < 0.05
    assert not [flag for flag in quality["Flags"] if flag["Check"] == "FADrop"]
