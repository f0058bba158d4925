"""Discovery of DWI runs with pybids (bids_denoise.utils.bids).

Layouts are written into tmp_path from dicts shaped after bids-examples datasets that hold
DWI (ds114, eeg_rest_fmri, ds000117, dwi_deriv), plus the entities those examples lack
(run-, dir-, part-). NIfTIs are tiny real images unless a test needs an empty file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_denoise.errors import (
    EXIT_EMPTY_SELECTION,
    EXIT_NO_INPUT,
    EmptySelectionError,
    MissingInputError,
    UsageError,
)
from bids_denoise.utils.bids import (
    DWIRun,
    collect_dwi_runs,
    collect_participants,
    init_layout,
    load_bids_filters,
)

BVAL_7 = "0 1000 1000 1000 0 1000 1000\n"
BVEC_7 = "0 1 0 0 0 0.6 0.8\n0 0 1 0 0 0.8 0\n0 0 0 1 0 0 0.6\n"


# ----------------------------------------------------------------------------------------------
# Layout builder
# ----------------------------------------------------------------------------------------------
def _tiny_nifti(path: Path, n_volumes: int = 7) -> None:
    data = np.arange(2 * 2 * 2 * n_volumes, dtype=np.int16).reshape(2, 2, 2, n_volumes)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def make_dataset(root: Path, files: dict) -> Path:
    """Write ``files`` (relative path -> content) under ``root`` as a BIDS dataset.

    Content: ``"nifti"`` for a tiny 4D image, ``"empty"`` for a 0-byte file, a dict for JSON,
    a str for text. ``dataset_description.json`` is added unless given.
    """
    files = {"dataset_description.json": {"Name": "test", "BIDSVersion": "1.10.0"}, **files}
    for relpath, content in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "nifti":
            _tiny_nifti(path)
        elif content == "empty":
            path.write_bytes(b"")
        elif isinstance(content, dict):
            path.write_text(json.dumps(content))
        else:
            path.write_text(content)
    return root


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*")}


def _names(runs):
    return [r.dwi_file.name for r in runs]


@pytest.fixture
def ds114(tmp_path):
    """ds114-like: two sessions, gradient tables only at the dataset root, no DWI JSON."""
    files = {"dwi.bval": BVAL_7, "dwi.bvec": BVEC_7}
    for sub in ("01", "02", "03"):
        for ses in ("test", "retest"):
            files[f"sub-{sub}/ses-{ses}/dwi/sub-{sub}_ses-{ses}_dwi.nii.gz"] = "nifti"
            files[f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz"] = "nifti"
        files[f"sub-{sub}/ses-test/func/sub-{sub}_ses-test_task-x_bold.nii.gz"] = "nifti"
    return make_dataset(tmp_path / "ds114", files)


@pytest.fixture
def eeg_rest_fmri(tmp_path):
    """eeg_rest_fmri-like: two acq- series per subject, JSON inherited from the root."""
    files = {
        "acq-NODDI10DIR_dwi.json": {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05},
        "acq-NODDI33DIR_dwi.json": {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.06},
    }
    for sub in ("32", "35"):
        for acq in ("NODDI10DIR", "NODDI33DIR"):
            stem = f"sub-{sub}/dwi/sub-{sub}_acq-{acq}_dwi"
            files.update({f"{stem}.nii.gz": "nifti", f"{stem}.bval": BVAL_7,
                          f"{stem}.bvec": BVEC_7})
    return make_dataset(tmp_path / "eeg_rest_fmri", files)


@pytest.fixture
def ds000117(tmp_path):
    """ds000117-like: ses-mri has DWI, ses-meg has only meg/ and anat/."""
    stem = "sub-01/ses-mri/dwi/sub-01_ses-mri_dwi"
    return make_dataset(tmp_path / "ds000117", {
        f"{stem}.nii.gz": "nifti", f"{stem}.bval": BVAL_7, f"{stem}.bvec": BVEC_7,
        f"{stem}.json": {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.0555},
        "sub-01/ses-meg/meg/sub-01_ses-meg_task-facerecognition_run-01_meg.fif": "x",
        "sub-01/ses-meg/anat/sub-01_ses-meg_headshape.pos": "x",
        "sub-01/ses-mri/anat/sub-01_ses-mri_T1w.nii.gz": "nifti",
    })


@pytest.fixture
def runs_and_dirs(tmp_path):
    """run- and dir- entities (absent from bids-examples DWI); run-01 keeps its padding."""
    files = {}
    for name in ("sub-01_dir-AP_run-01_dwi", "sub-01_dir-AP_run-02_dwi", "sub-01_dir-PA_dwi"):
        stem = f"sub-01/dwi/{name}"
        files.update({f"{stem}.nii.gz": "nifti", f"{stem}.bval": BVAL_7, f"{stem}.bvec": BVEC_7})
    return make_dataset(tmp_path / "runs", files)


# ----------------------------------------------------------------------------------------------
# init_layout
# ----------------------------------------------------------------------------------------------
def test_init_layout_missing_folder(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist") as err:
        init_layout(tmp_path / "nope")
    assert err.value.exit_code == EXIT_NO_INPUT
    assert "container" in str(err.value)


def test_init_layout_without_description_names_the_file(tmp_path):
    (tmp_path / "sub-01" / "dwi").mkdir(parents=True)
    with pytest.raises(MissingInputError, match="dataset_description.json"):
        init_layout(tmp_path)


def test_init_layout_on_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(UsageError):
        init_layout(target)


def test_init_layout_never_writes_into_the_dataset(ds114):
    before = _snapshot(ds114)
    layout = init_layout(ds114)
    collect_dwi_runs(layout, "01")
    assert _snapshot(ds114) == before


def test_init_layout_indexes_dwi_but_skips_func(ds114):
    layout = init_layout(ds114)
    assert layout.get(suffix="dwi", extension=".nii.gz")
    assert layout.get(suffix="T1w")
    assert not layout.get(suffix="bold")


def test_database_dir_is_used_and_reused(ds114, tmp_path):
    db = tmp_path / "work" / "bids_db"
    layout = init_layout(ds114, database_dir=db)
    assert any(db.iterdir()), "the pybids index should be written where told"
    again = init_layout(ds114, database_dir=db)
    assert Path(again.root) == Path(layout.root)
    assert len(collect_dwi_runs(again, "01")) == 2


def test_database_dir_made_for_another_dataset_is_rebuilt(ds114, ds000117, tmp_path):
    db = tmp_path / "bids_db"
    init_layout(ds114, database_dir=db)
    layout = init_layout(ds000117, database_dir=db)
    assert Path(layout.root) == ds000117
    assert collect_participants(layout) == ["01"]


def test_database_dir_inside_the_dataset_is_refused(ds114):
    with pytest.raises(UsageError, match="never writes into the input"):
        init_layout(ds114, database_dir=ds114 / "derivatives" / "db")
    assert not (ds114 / "derivatives").exists()


# ----------------------------------------------------------------------------------------------
# Participants
# ----------------------------------------------------------------------------------------------
def test_collect_participants_all_and_prefixes(ds114):
    layout = init_layout(ds114)
    assert collect_participants(layout) == ["01", "02", "03"]
    assert collect_participants(layout, ["sub-02", "01", "02"]) == ["01", "02"]
    assert collect_participants(layout, "sub-03") == ["03"]


def test_unknown_participant_lists_missing_and_available(ds114):
    layout = init_layout(ds114)
    with pytest.raises(EmptySelectionError) as err:
        collect_participants(layout, ["01", "sub-99", "zz"])
    message = str(err.value)
    assert err.value.exit_code == EXIT_EMPTY_SELECTION
    assert "sub-99" in message and "sub-zz" in message
    assert "Available: sub-01, sub-02, sub-03" in message
    assert "container" in message
    assert "sub-01," not in message.split("Available")[0]  # 01 exists: not reported missing


def test_dataset_without_subjects(tmp_path):
    layout = init_layout(make_dataset(tmp_path / "empty", {}))
    with pytest.raises(EmptySelectionError, match="No subjects"):
        collect_participants(layout)


# ----------------------------------------------------------------------------------------------
# DWI runs
# ----------------------------------------------------------------------------------------------
def test_ds114_root_level_gradients_are_inherited(ds114):
    runs = collect_dwi_runs(init_layout(ds114), "sub-01")
    assert _names(runs) == ["sub-01_ses-retest_dwi.nii.gz", "sub-01_ses-test_dwi.nii.gz"]
    for run in runs:
        assert run.bval_file == ds114 / "dwi.bval"
        assert run.bvec_file == ds114 / "dwi.bvec"
        assert run.metadata == {}
        assert run.entities["subject"] == "01"
    assert {r.entities["session"] for r in runs} == {"test", "retest"}
    assert [r.name for r in runs] == ["sub_01_ses_retest", "sub_01_ses_test"]


@pytest.mark.parametrize("sessions", [["test"], ["ses-test"], "ses-test"])
def test_session_labels_with_or_without_prefix(ds114, sessions):
    runs = collect_dwi_runs(init_layout(ds114), "01", sessions=sessions)
    assert _names(runs) == ["sub-01_ses-test_dwi.nii.gz"]


def test_eeg_rest_fmri_two_acquisitions_with_inherited_json(eeg_rest_fmri):
    runs = collect_dwi_runs(init_layout(eeg_rest_fmri), "32")
    by_acq = {r.entities["acquisition"]: r for r in runs}
    assert set(by_acq) == {"NODDI10DIR", "NODDI33DIR"}
    assert by_acq["NODDI10DIR"].metadata == {"PhaseEncodingDirection": "j-",
                                             "TotalReadoutTime": 0.05}
    assert by_acq["NODDI33DIR"].metadata["PhaseEncodingDirection"] == "j"
    for acq, run in by_acq.items():
        assert run.bval_file.name == f"sub-32_acq-{acq}_dwi.bval"
        assert run.bvec_file.name == f"sub-32_acq-{acq}_dwi.bvec"
    assert len({r.name for r in runs}) == 2


def test_session_without_dwi_is_not_an_error(ds000117):
    layout = init_layout(ds000117)
    runs = collect_dwi_runs(layout, "01")
    assert _names(runs) == ["sub-01_ses-mri_dwi.nii.gz"]
    assert runs[0].metadata["TotalReadoutTime"] == 0.0555
    assert collect_dwi_runs(layout, "01", sessions=["meg"]) == []
    assert len(collect_dwi_runs(layout, "01", sessions=["mri", "ses-meg"])) == 1


def test_runs_and_directions(runs_and_dirs):
    runs = collect_dwi_runs(init_layout(runs_and_dirs), "01")
    assert [r.entities for r in runs] == [
        {"subject": "01", "direction": "AP", "run": "01"},
        {"subject": "01", "direction": "AP", "run": "02"},
        {"subject": "01", "direction": "PA"},
    ]
    assert [r.name for r in runs] == ["sub_01_dir_AP_run_01", "sub_01_dir_AP_run_02",
                                      "sub_01_dir_PA"]
    for run in runs:
        assert run.bval_file.name == run.dwi_file.name.replace(".nii.gz", ".bval")


def test_run_less_gradients_are_shared_by_runs(tmp_path):
    stem = "sub-01/ses-1/dwi/sub-01_ses-1_acq-multi"
    root = make_dataset(tmp_path / "shared", {
        f"{stem}_run-1_dwi.nii.gz": "nifti", f"{stem}_run-2_dwi.nii.gz": "nifti",
        f"{stem}_dwi.bval": BVAL_7, f"{stem}_dwi.bvec": BVEC_7, f"{stem}_dwi.json": {"A": 1},
        f"{stem}_run-2_dwi.json": {"B": 2},
    })
    runs = collect_dwi_runs(init_layout(root), "01")
    assert [r.bval_file.name for r in runs] == ["sub-01_ses-1_acq-multi_dwi.bval"] * 2
    assert runs[0].metadata == {"A": 1}
    assert runs[1].metadata == {"A": 1, "B": 2}


def test_scanner_maps_are_ignored(tmp_path):
    """dwi_deriv-like: ADC, FA, ... next to the DWI are not runs."""
    files = {"sub-01/dwi/sub-01_dwi.nii": "nifti", "sub-01/dwi/sub-01_dwi.bval": BVAL_7,
             "sub-01/dwi/sub-01_dwi.bvec": BVEC_7, "sub-01/dwi/sub-01_dwi.json": {"X": 1}}
    for suffix in ("ADC", "FA", "S0map", "colFA", "expADC", "trace"):
        files[f"sub-01/dwi/sub-01_{suffix}.nii"] = "nifti"
        files[f"sub-01/dwi/sub-01_{suffix}.json"] = {"Y": 2}
    runs = collect_dwi_runs(init_layout(make_dataset(tmp_path / "dwi_deriv", files)), "01")
    assert _names(runs) == ["sub-01_dwi.nii"]
    assert runs[0].metadata == {"X": 1}


def test_empty_nifti_is_skipped_with_a_warning(tmp_path, caplog):
    stem = "sub-01/dwi/sub-01"
    root = make_dataset(tmp_path / "zero", {
        f"{stem}_run-1_dwi.nii.gz": "empty", f"{stem}_run-2_dwi.nii.gz": "nifti",
        "dwi.bval": BVAL_7, "dwi.bvec": BVEC_7,
    })
    with caplog.at_level(logging.WARNING, logger="bids_denoise.utils.bids"):
        runs = collect_dwi_runs(init_layout(root), "01")
    assert _names(runs) == ["sub-01_run-2_dwi.nii.gz"]
    assert "sub-01_run-1_dwi.nii.gz" in caplog.text and "empty" in caplog.text


@pytest.mark.parametrize("missing", [".bval", ".bvec"])
def test_missing_gradient_file_names_the_nifti(tmp_path, missing):
    stem = "sub-01/dwi/sub-01_dwi"
    files = {f"{stem}.nii.gz": "nifti", f"{stem}.bval": BVAL_7, f"{stem}.bvec": BVEC_7}
    del files[stem + missing]
    layout = init_layout(make_dataset(tmp_path / "nograd", files))
    with pytest.raises(MissingInputError, match=re.escape(missing)) as err:
        collect_dwi_runs(layout, "01")
    assert "sub-01_dwi.nii.gz" in str(err.value)


def test_inheritance_never_borrows_a_file_with_other_entities(tmp_path):
    """pybids' get_nearest offers a root acq-dsi_dwi.bval to a run without acq-; refuse it."""
    files = {"acq-dsi_dwi.bval": "15 1000\n", "acq-dsi_dwi.bvec": "0 1\n0 0\n0 0\n",
             "sub-01/dwi/sub-01_acq-dsi_dwi.nii.gz": "nifti",
             "sub-01/dwi/sub-01_dwi.nii.gz": "nifti"}
    layout = init_layout(make_dataset(tmp_path / "guard", files))
    with pytest.raises(MissingInputError, match="sub-01_dwi.nii.gz"):
        collect_dwi_runs(layout, "01")

    (tmp_path / "guard" / "dwi.bval").write_text(BVAL_7)
    (tmp_path / "guard" / "dwi.bvec").write_text(BVEC_7)
    runs = collect_dwi_runs(init_layout(tmp_path / "guard"), "01")
    gradients = {r.dwi_file.name: r.bval_file.name for r in runs}
    assert gradients == {"sub-01_acq-dsi_dwi.nii.gz": "acq-dsi_dwi.bval",
                         "sub-01_dwi.nii.gz": "dwi.bval"}


def test_inheritance_checks_entities_we_do_not_keep(tmp_path):
    """A rec-b gradient table is not the table of a run without rec- (or with rec-a)."""
    stem = "sub-01/dwi/sub-01"
    files = {f"{stem}_dwi.nii.gz": "nifti", f"{stem}_rec-b_dwi.bval": BVAL_7,
             f"{stem}_rec-b_dwi.bvec": BVEC_7}
    layout = init_layout(make_dataset(tmp_path / "rec", files))
    with pytest.raises(MissingInputError, match="sub-01_dwi.nii.gz"):
        collect_dwi_runs(layout, "01")


def test_phase_parts_are_left_out_by_default(tmp_path):
    files = {"dwi.bval": BVAL_7, "dwi.bvec": BVEC_7}
    for part in ("mag", "phase"):
        files[f"sub-01/dwi/sub-01_part-{part}_dwi.nii.gz"] = "nifti"
    layout = init_layout(make_dataset(tmp_path / "parts", files))
    runs = collect_dwi_runs(layout, "01")
    assert [r.entities.get("part") for r in runs] == ["mag"]
    assert runs[0].name == "sub_01_part_mag"
    phase = collect_dwi_runs(layout, "01", bids_filters={"dwi": {"part": "phase"}})
    assert [r.entities.get("part") for r in phase] == ["phase"]


def test_runs_that_would_share_output_names_are_refused(tmp_path):
    files = {"dwi.bval": BVAL_7, "dwi.bvec": BVEC_7,
             "sub-01/dwi/sub-01_rec-a_dwi.nii.gz": "nifti",
             "sub-01/dwi/sub-01_rec-b_dwi.nii.gz": "nifti"}
    layout = init_layout(make_dataset(tmp_path / "clash", files))
    with pytest.raises(UsageError, match="overwrite each other"):
        collect_dwi_runs(layout, "01")
    runs = collect_dwi_runs(layout, "01", bids_filters={"dwi": {"reconstruction": "a"}})
    assert _names(runs) == ["sub-01_rec-a_dwi.nii.gz"]


def test_dwirun_name_is_nipype_safe_and_runs_are_hashable(runs_and_dirs):
    runs = collect_dwi_runs(init_layout(runs_and_dirs), "01")
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", r.name) for r in runs)
    assert len(set(runs)) == len(runs)
    odd = DWIRun(Path("a"), Path("b"), Path("c"), {"subject": "01", "acquisition": "x.y"}, {})
    assert odd.name == "sub_01_acq_x_y"


# ----------------------------------------------------------------------------------------------
# BIDS filter file
# ----------------------------------------------------------------------------------------------
def _filter_file(tmp_path, content) -> Path:
    path = tmp_path / "filters.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_filter_file_selects_an_acquisition(eeg_rest_fmri, tmp_path):
    filters = load_bids_filters(_filter_file(tmp_path, {"dwi": {"acquisition": "NODDI33DIR"}}))
    runs = collect_dwi_runs(init_layout(eeg_rest_fmri), "35", bids_filters=filters)
    assert _names(runs) == ["sub-35_acq-NODDI33DIR_dwi.nii.gz"]


def test_filter_null_and_star(runs_and_dirs, tmp_path):
    layout = init_layout(runs_and_dirs)
    without_run = load_bids_filters(_filter_file(tmp_path, '{"dwi": {"run": null}}'))
    assert _names(collect_dwi_runs(layout, "01", bids_filters=without_run)) == [
        "sub-01_dir-PA_dwi.nii.gz"]
    with_run = load_bids_filters(_filter_file(tmp_path, '{"dwi": {"run": "*"}}'))
    assert _names(collect_dwi_runs(layout, "01", bids_filters=with_run)) == [
        "sub-01_dir-AP_run-01_dwi.nii.gz", "sub-01_dir-AP_run-02_dwi.nii.gz"]
    as_list = {"dwi": {"direction": ["PA", None]}}
    assert _names(collect_dwi_runs(layout, "01", bids_filters=as_list)) == [
        "sub-01_dir-PA_dwi.nii.gz"]


def test_filter_and_sessions_intersect(ds114):
    layout = init_layout(ds114)
    runs = collect_dwi_runs(layout, "02", sessions=["test"],
                            bids_filters={"dwi": {"session": ["test", "retest"]}})
    assert _names(runs) == ["sub-02_ses-test_dwi.nii.gz"]


def test_filter_file_with_a_json_syntax_error_names_the_file(tmp_path):
    path = _filter_file(tmp_path, '{"dwi": {"session": "1",}}')
    with pytest.raises(UsageError) as err:
        load_bids_filters(path)
    assert str(path) in str(err.value) and "line 1" in str(err.value)


@pytest.mark.parametrize("content, match", [
    ({"bold": {"task": "rest"}}, "unknown query"),
    ({"dwi": {"sesion": "1"}}, "not a BIDS entity"),
    ({"dwi": {"subject": "01"}}, "participant-label"),
    ({"dwi": {"session": {"a": 1}}}, "expected a label"),
    ({"dwi": ["session"]}, "must map entity names"),
    (["dwi"], "top level"),
])
def test_invalid_filter_files(tmp_path, content, match):
    with pytest.raises(UsageError, match=match):
        load_bids_filters(_filter_file(tmp_path, content))


def test_missing_filter_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_bids_filters(tmp_path / "nope.json")


def test_filter_dict_is_checked_when_passed_directly(ds114):
    with pytest.raises(UsageError):
        collect_dwi_runs(init_layout(ds114), "01", bids_filters={"dwi": {"bogus": "x"}})
