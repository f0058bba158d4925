"""The sidecars: each group's error estimate and the run's summary of it."""

from __future__ import annotations

import pytest

from bids_denoise.interfaces.metadata import DenoisingMetadata

GROUPS = [{"Label": "b0", "BValue": 0, "Count": 2, "Volumes": [0, 5]},
          {"Label": "b1000", "BValue": 1000, "Count": 4, "Volumes": [1, 2, 3, 4]}]


def _metadata(tmp_path, estimates, note="sigma 10 from the spread of 2 b0 volumes"):
    return DenoisingMetadata(
        method="mppca", parameters={"B0Threshold": 50.0}, groups=GROUPS, n_denoised=[2, 4],
        devices=["cpu", "cpu"], run_times=[0.5, 1.0], sources=["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"],
        error_estimates=estimates, noise_note=note,
    ).run(cwd=str(tmp_path)).outputs


def test_each_group_gets_its_estimated_rmse_and_the_run_a_pooled_one(tmp_path):
    estimates = [{"EstimatedRMSE": 3.0, "ResidualRMS": 9.0, "NoiseRMS": 9.5, "Divergence": 0.1, "Values": 100,
                  "Seconds": 0.2},
                 {"EstimatedRMSE": 4.0, "ResidualRMS": 9.0, "NoiseRMS": 9.5, "Divergence": 0.1, "Values": 300,
                  "Seconds": 0.4}]
    out = _metadata(tmp_path, estimates)
    groups = out.dwi_metadata["VolumeGroups"]
    assert [g["EstimatedRMSE"] for g in groups] == [3.0, 4.0]
    assert groups[1]["ErrorEstimate"]["Values"] == 300 and "EstimatedRMSE" not in groups[1]["ErrorEstimate"]
    summary = out.dwi_metadata["ErrorEstimate"]
    assert summary["EstimatedRMSE"] == pytest.approx(((9 * 100 + 16 * 300) / 400) ** 0.5)
    assert "head mask" in summary["Region"] and "SURE" in summary["Method"]
    assert out.sigma_metadata["NoiseEstimate"].startswith("sigma 10")


def test_without_estimates_nothing_is_claimed(tmp_path):
    out = _metadata(tmp_path, [{}, {}])
    assert "ErrorEstimate" not in out.dwi_metadata
    assert all("EstimatedRMSE" not in g for g in out.dwi_metadata["VolumeGroups"])


def test_the_automatic_choice_is_recorded_per_group(tmp_path):
    estimates = [{}, {"EstimatedRMSE": 4.0, "ResidualRMS": 9.0, "NoiseRMS": 9.5, "Divergence": 0.1, "Values": 300,
                      "Seconds": 0.4, "Chosen": "MP-PCA", "Candidates": {"Patch2Self": 5.0, "MP-PCA": 4.0}}]
    group = _metadata(tmp_path, estimates).dwi_metadata["VolumeGroups"][1]
    assert group["Method"] == "MP-PCA" and group["CandidateRMSE"] == {"Patch2Self": 5.0, "MP-PCA": 4.0}
    assert "Chosen" not in group["ErrorEstimate"]


def test_a_candidate_passed_over_for_flattening_the_shells_is_recorded(tmp_path):
    estimates = [{}, {"EstimatedRMSE": 5.0, "ResidualRMS": 9.0, "NoiseRMS": 9.5, "Divergence": 0.1, "Values": 300,
                      "Chosen": "MP-PCA", "Candidates": {"Patch2Self": 4.0, "MP-PCA": 5.0},
                      "ContrastRetained": {"Patch2Self": 0.66, "MP-PCA": 0.99},
                      "PassedOver": {"Patch2Self": "kept 0.66 of the directional contrast (< 0.8)"}}]
    group = _metadata(tmp_path, estimates).dwi_metadata["VolumeGroups"][1]
    assert group["Method"] == "MP-PCA" and group["ContrastRetained"] == {"Patch2Self": 0.66, "MP-PCA": 0.99}
    assert "0.66" in group["PassedOver"]["Patch2Self"]
    assert "PassedOver" not in group["ErrorEstimate"] and "ContrastRetained" not in group["ErrorEstimate"]


def test_auto_groups_follow_the_rules_of_the_method_they_kept(tmp_path):
    """A group of 2 b0s kept from Patch2Self (which copies groups of fewer than 3) is a copy and says so;
    kept from MP-PCA it is denoised, with no note."""
    common = {"ResidualRMS": 9.0, "NoiseRMS": 9.5, "Divergence": 1.0, "Values": 100, "Candidates": {}}
    for chosen, noted in (("Patch2Self", True), ("MP-PCA", False)):
        out = DenoisingMetadata(
            method="auto", parameters={"B0Threshold": 50.0}, groups=GROUPS, n_denoised=[0 if noted else 2, 4],
            devices=["cpu", "cpu"], run_times=[0.5, 1.0], sources=["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"],
            error_estimates=[{"EstimatedRMSE": 9.5, "Chosen": chosen, **common},
                             {"EstimatedRMSE": 4.0, "Chosen": "MP-PCA", **common}],
        ).run(cwd=str(tmp_path)).outputs
        b0, dwi = out.dwi_metadata["VolumeGroups"]
        assert ("copied through: 2 volumes" in " ".join(b0.get("Notes", []))) is noted
        assert "Notes" not in dwi
