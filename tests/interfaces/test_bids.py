import json

import numpy as np

from bids_denoise.interfaces.bids import DerivativesDataSink
from bids_denoise.interfaces.metadata import DenoisingMetadata


def test_sink_names_from_the_source_and_writes_the_sidecar(tmp_path):
    payload = tmp_path / "denoised_dwi.nii.gz"
    payload.write_bytes(b"not really a nifti, but bytes are copied as they are")
    source = "/data/sub-01/ses-2/dwi/sub-01_ses-2_acq-multi_dir-AP_run-3_dwi.nii.gz"
    out = DerivativesDataSink(
        base_directory=str(tmp_path / "out"), source_file=source, in_file=str(payload),
        desc="denoised", suffix="dwi", meta_dict={"SkullStripped": False},
    ).run(cwd=str(tmp_path)).outputs
    expected = tmp_path / "out/sub-01/ses-2/dwi/sub-01_ses-2_acq-multi_dir-AP_run-3_desc-denoised_dwi.nii.gz"
    assert out.out_file == str(expected)
    assert expected.read_bytes() == payload.read_bytes()
    assert json.loads(expected.with_name(expected.name.replace(".nii.gz", ".json")).read_text()) == {
        "SkullStripped": False
    }
    assert not [p for p in expected.parent.iterdir() if p.name.startswith(".")]


def test_sink_takes_the_extension_given_for_gradients(tmp_path):
    bval = tmp_path / "dwi.bval"
    bval.write_text("0 1000\n")
    out = DerivativesDataSink(
        base_directory=str(tmp_path / "out"), source_file="/d/sub-02/dwi/sub-02_dwi.nii.gz",
        in_file=str(bval), desc="denoised", suffix="dwi", extension=".bval",
        meta_dict={"ignored": True},
    ).run(cwd=str(tmp_path)).outputs
    assert out.out_file.endswith("sub-02/dwi/sub-02_desc-denoised_dwi.bval")
    assert not list((tmp_path / "out/sub-02/dwi").glob("*.json"))


def test_metadata_records_groups_parameters_and_carries_raw_keys(tmp_path):
    out = DenoisingMetadata(
        method="patch2self", parameters={"B0Threshold": 50.0, "Model": "ols"},
        groups=[{"Label": "b0", "BValue": 0, "Count": 2, "Volumes": [0, 5]},
                {"Label": "b1000", "BValue": 1000, "Count": 4, "Volumes": [1, 2, 3, 4]}],
        n_denoised=[0, 4], devices=["cpu", "cpu"], run_times=[0.5, 1.25],
        sources=["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"],
        raw_metadata={"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05, "SeriesDescription": "x"},
    ).run(cwd=str(tmp_path)).outputs
    meta = out.dwi_metadata
    assert meta["SkullStripped"] is False
    assert meta["DenoisingMethod"] == "Patch2Self"
    assert meta["PhaseEncodingDirection"] == "j-" and meta["TotalReadoutTime"] == 0.05
    assert "SeriesDescription" not in meta
    assert [g["Denoised"] for g in meta["VolumeGroups"]] == [False, True]
    assert np.isclose(meta["RunTime"], 1.75)
    assert out.noise_metadata["Sources"] == meta["Sources"]


def test_sink_takes_the_extension_from_the_file_name_not_the_folders(tmp_path):
    node_dir = tmp_path / "first.last" / "work.d"
    node_dir.mkdir(parents=True)
    payload = node_dir / "denoised_dwi.nii.gz"
    payload.write_bytes(b"x")
    out = DerivativesDataSink(
        base_directory=str(tmp_path / "out"), source_file="/d/sub-03/dwi/sub-03_dwi.nii.gz",
        in_file=str(payload), desc="denoised", suffix="dwi",
    ).run(cwd=str(node_dir)).outputs
    assert out.out_file == str(tmp_path / "out/sub-03/dwi/sub-03_desc-denoised_dwi.nii.gz")
