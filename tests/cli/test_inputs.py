"""What a new user hits first: folders that cannot be written, a failed selection, a dataset
without its description, derivatives kept inside the dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_denoise.cli.run import main
from bids_denoise.errors import EXIT_CANNOT_CREATE, EXIT_EMPTY_SELECTION, EXIT_NO_INPUT, EXIT_OK
from tests.conftest import write_series


@pytest.fixture(autouse=True)
def _isolated(isolated_app_state):
    yield


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    bvals = np.r_[np.zeros(3), np.full(10, 1000.0)]
    data = np.random.default_rng(0).uniform(100, 200, (6, 6, 4, bvals.size)).astype(np.float32)
    write_series(root / "sub-01" / "dwi", data, bvals, stem="sub-01_dwi")
    return root


def _args(bids, out, work, *extra):
    return [str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation", *extra]


def test_a_work_folder_that_cannot_be_created_exits_73_with_a_message(bids, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(_args(bids, tmp_path / "out", blocker / "work", "--boilerplate-only"))
    err = capsys.readouterr().err
    assert code == EXIT_CANNOT_CREATE
    assert f"cannot write to the work folder {blocker / 'work'}" in err and "-w/--work-dir" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # the output folder this run created is gone again


def test_a_failed_label_check_leaves_nothing_behind(bids, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(_args(bids, out, work, "--participant-label", "99")) == EXIT_EMPTY_SELECTION
    assert "sub-99" in capsys.readouterr().err
    assert not out.exists() and not work.exists()


def test_folders_that_existed_before_are_kept(bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert main(_args(bids, out, tmp_path / "work", "--participant-label", "99")) == EXIT_EMPTY_SELECTION
    assert out.is_dir()


@pytest.mark.parametrize("skip", [False, True], ids=["validated", "skip-validation"])
def test_a_missing_dataset_description_is_named(bids, tmp_path, capsys, skip):
    (bids / "dataset_description.json").unlink()
    argv = _args(bids, tmp_path / "out", tmp_path / "work")
    if not skip:
        argv.remove("--skip-bids-validation")
    assert main(argv) == EXIT_NO_INPUT
    err = capsys.readouterr().err
    assert f"{bids / 'dataset_description.json'} is missing" in err
    assert '"BIDSVersion"' in err and "--skip-bids-validation does not replace it" in err


def test_outputs_may_go_to_the_datasets_derivatives_folder(bids, capsys):
    out = bids / "derivatives" / "bids_denoise"
    assert main(_args(bids, out, bids.parent / "work", "--boilerplate-only")) == EXIT_OK
    assert (out / "logs" / "CITATION.md").is_file()
    # A second run must not index the first one's outputs as raw data.
    assert main(_args(bids, out, bids.parent / "work", "--boilerplate-only")) == EXIT_OK
    assert "1 DWI series of 1 participant" in (out / "logs" / "CITATION.md").read_text()


def test_help_lists_every_exit_status(capsys):
    assert main(["--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    for code in (0, 1, 16, 17, 18, 64, 65, 66, 73, 74):
        assert f"; {code} " in text or f"status: {code} " in text, code
