"""Build the dataset-level workflow graph from the example dataset without running it."""

import pytest

from bids_denoise import config
from bids_denoise.data import example_dataset
from bids_denoise.utils.bids import collect_dwi_runs, collect_participants, init_layout
from bids_denoise.workflows.base import init_bids_denoise_wf


@pytest.fixture
def runs_by_subject(isolated_app_state, tmp_path):
    layout = init_layout(example_dataset())
    config.from_dict({
        "execution": {"bids_dir": example_dataset(), "output_dir": tmp_path / "out", "work_dir": tmp_path / "work"},
        "workflow": {"method": "patch2self", "b0_threshold": 70.0, "shell_grouping": "all", "patch_radius": 1},
    })
    return {s: collect_dwi_runs(layout, s) for s in collect_participants(layout)}


def test_one_subject_workflow_and_one_run_workflow_per_run(runs_by_subject):
    wf = init_bids_denoise_wf(runs_by_subject)
    names = wf.list_node_names()
    assert wf.base_dir == str(config.execution.work_dir)
    for subject, runs in runs_by_subject.items():
        for run in runs:
            prefix = f"sub_{subject}_wf.{run.name}_wf"
            for node in ("dwi_denoise_wf.split_shells", "dwi_denoise_wf.denoise", "dwi_denoise_wf.merge_shells",
                         "metadata", "ds_dwi", "ds_bval", "ds_bvec", "ds_noise"):
                assert f"{prefix}.{node}" in names, f"{prefix}.{node} missing"
    assert len({run.name for runs in runs_by_subject.values() for run in runs}) == 5


def test_settings_from_config_reach_every_node(runs_by_subject):
    wf = init_bids_denoise_wf(runs_by_subject)
    run = runs_by_subject["02"][0]
    prefix = f"sub_02_wf.{run.name}_wf"
    split = wf.get_node(f"{prefix}.dwi_denoise_wf.split_shells")
    denoise = wf.get_node(f"{prefix}.dwi_denoise_wf.denoise")
    assert split.inputs.b0_threshold == 70.0 and denoise.inputs.b0_threshold == 70.0
    assert split.inputs.grouping == "all"
    assert denoise.inputs.patch_radius == [1, 1, 1]
    metadata = wf.get_node(f"{prefix}.metadata")
    assert metadata.inputs.parameters["B0Threshold"] == 70.0
    assert metadata.inputs.sources[0] == f"bids:raw:sub-02/dwi/{run.dwi_file.name}"


def test_sinks_name_outputs_after_the_raw_run(runs_by_subject):
    wf = init_bids_denoise_wf(runs_by_subject)
    run = runs_by_subject["01"][0]
    prefix = f"sub_01_wf.{run.name}_wf"
    expected = {"ds_dwi": ("denoised", "dwi"), "ds_bval": ("denoised", "dwi"),
                "ds_bvec": ("denoised", "dwi"), "ds_noise": ("noise", "dwimap")}
    for name, (desc, suffix) in expected.items():
        sink = wf.get_node(f"{prefix}.{name}")
        assert (sink.inputs.desc, sink.inputs.suffix) == (desc, suffix)
        assert sink.inputs.source_file == str(run.dwi_file)
        assert sink.inputs.base_directory == str(config.execution.output_dir)
