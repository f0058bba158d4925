"""Provenance: git commit, container, command line and configuration in sidecars and descriptions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_denoise import __version__, config
from bids_denoise.interfaces.metadata import DenoisingMetadata
from bids_denoise.utils import provenance
from bids_denoise.utils.derivatives import write_derivative_description

PACKAGE_DIR = Path(provenance.__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parent
IN_CHECKOUT = shutil.which("git") is not None and (REPO_ROOT / ".git").exists()


@pytest.fixture(autouse=True)
def _clean_config(monkeypatch):
    for name in ("BIDS_DENOISE_CONTAINER_IMAGE", "BIDS_DENOISE_CONTAINER_TYPE", "APPTAINER_CONTAINER",
                 "SINGULARITY_CONTAINER", "BIDS_DENOISE_GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    config.reset()
    yield
    config.reset()


def _cli_configured(tmp_path):
    config.from_dict({
        "execution": {"bids_dir": tmp_path / "raw", "output_dir": tmp_path / "out", "work_dir": tmp_path / "work",
                      "cmdline": ["bids-denoise", str(tmp_path / "raw"), str(tmp_path / "out"), "participant",
                                  "--patch-radius", "1"]},
        "workflow": {"patch_radius": 1},
    }, init=False)


# --------------------------------------------------------------------------------------- git
@pytest.mark.skipif(not IN_CHECKOUT, reason="not running from a git checkout")
def test_git_commit_of_the_checkout_is_recorded():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit() == head
    assert provenance.GIT_INFO["GitDescribe"]


def test_no_git_commit_outside_a_checkout(tmp_path):
    fake_package = tmp_path / "site-packages" / "bids_denoise"
    fake_package.mkdir(parents=True)
    assert provenance._source_git_info(fake_package) == {"GitCommit": None, "GitDescribe": None}


def test_an_unrelated_enclosing_repository_is_not_ours(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    package = tmp_path / "lib" / "site-packages" / "bids_denoise"
    package.mkdir(parents=True)
    assert provenance._source_git_info(package)["GitCommit"] is None


def test_git_failures_never_raise(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert provenance._source_git_info(PACKAGE_DIR) == {"GitCommit": None, "GitDescribe": None}
    monkeypatch.setattr(provenance, "_git", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert provenance._source_git_info(PACKAGE_DIR) == {"GitCommit": None, "GitDescribe": None}


def test_git_commit_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIDS_DENOISE_GIT_COMMIT", "A" * 40)
    assert provenance._source_git_info(tmp_path)["GitCommit"] == "a" * 40
    monkeypatch.setenv("BIDS_DENOISE_GIT_COMMIT", "not-a-sha")
    assert provenance._source_git_info(tmp_path)["GitCommit"] is None


def test_import_is_fast_and_cached():
    # the value is computed once at import; calling the accessor again runs no git
    assert provenance.git_commit() is provenance.GIT_INFO["GitCommit"]


# --------------------------------------------------------------------------------- container
def test_container_from_the_image_variables(monkeypatch):
    assert provenance.container() is None
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/bids_denoise.sif")
    assert provenance.container() == {"Type": "apptainer", "Image": "/images/bids_denoise.sif"}
    monkeypatch.setenv("BIDS_DENOISE_CONTAINER_IMAGE", "bidsdenoise/bids_denoise:0.1.0")
    assert provenance.container() == {"Type": "docker", "Image": "bidsdenoise/bids_denoise:0.1.0"}
    monkeypatch.setenv("BIDS_DENOISE_CONTAINER_TYPE", "podman")
    assert provenance.container()["Type"] == "podman"


# ----------------------------------------------------------------------------- configuration
def test_resolved_configuration_is_json_and_reproducible(tmp_path):
    _cli_configured(tmp_path)
    settings = provenance.resolved_configuration()
    assert json.loads(json.dumps(settings, allow_nan=False)) == settings
    assert "run_uuid" not in settings["execution"]
    assert settings["execution"]["output_dir"] == str(tmp_path / "out")
    assert settings["workflow"]["patch_radius"] == [1, 1, 1]
    assert settings["environment"]["version"] == __version__
    config.execution.run_uuid = "another"
    assert provenance.resolved_configuration() == settings


def test_to_json_value_handles_numpy_paths_and_nan():
    import numpy as np

    value = provenance.to_json_value({"a": (Path("/x"), np.float32(1.5), float("nan")), 2: {np.int64(3)}})
    assert value == {"a": ["/x", 1.5, None], "2": [3]}


def test_provenance_record(tmp_path, monkeypatch):
    _cli_configured(tmp_path)
    monkeypatch.setenv("BIDS_DENOISE_CONTAINER_IMAGE", "bids_denoise:test")
    record = provenance.provenance()
    assert set(record) == {"Software", "Version", "GitCommit", "GitDescribe", "Container", "CommandLine",
                           "Configuration"}
    assert record["Version"] == __version__
    assert record["Container"] == {"Type": "docker", "Image": "bids_denoise:test"}
    assert record["CommandLine"].startswith("bids-denoise ") and record["CommandLine"].endswith("--patch-radius 1")
    assert record["GitCommit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["GitCommit"])
    json.dumps(record, allow_nan=False)


def test_command_line_is_shell_quoted():
    assert provenance.command_line(["bids-denoise", "/data/my study", "out"]) == "bids-denoise '/data/my study' out"
    assert provenance.command_line([]) is None


def test_cli_provenance_only_after_a_command_line(tmp_path):
    assert provenance.cli_provenance() is None
    _cli_configured(tmp_path)
    assert provenance.cli_provenance()["CommandLine"].startswith("bids-denoise")


# ----------------------------------------------------------------------- sidecars and description
def _metadata(**extra):
    node = DenoisingMetadata(
        method="patch2self", parameters={"B0Threshold": 50.0},
        groups=[{"Label": "b0", "BValue": 0, "Count": 2, "Volumes": [0, 1]}],
        n_denoised=[2], devices=["cpu"], run_times=[0.5], sources=["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"], **extra,
    )
    return node.run().outputs


def test_sidecars_carry_the_provenance(tmp_path):
    _cli_configured(tmp_path)
    outputs = _metadata(provenance=provenance.provenance())
    for sidecar in (outputs.dwi_metadata, outputs.noise_metadata):
        record = sidecar["Provenance"]
        assert record["Version"] == __version__ and "GitCommit" in record and "Container" in record
        assert record["CommandLine"].startswith("bids-denoise")
        assert record["Configuration"]["workflow"]["patch_radius"] == [1, 1, 1]
    assert "Provenance" not in _metadata().dwi_metadata


def test_the_run_workflow_passes_provenance_to_the_sidecars(tmp_path):
    from bids_denoise.data import example_dataset
    from bids_denoise.utils.bids import collect_dwi_runs, init_layout
    from bids_denoise.workflows.base import init_run_wf

    _cli_configured(tmp_path)
    config.execution.bids_dir = example_dataset()
    run = collect_dwi_runs(init_layout(example_dataset()), "02")[0]
    metadata = init_run_wf(run).get_node("metadata")
    assert metadata.inputs.provenance["CommandLine"].startswith("bids-denoise")
    assert metadata.inputs.provenance["Configuration"]["workflow"]["patch_radius"] == [1, 1, 1]


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Raw", "BIDSVersion": "1.9.0"}))
    return root


def test_description_records_provenance_of_a_cli_run(tmp_path, raw):
    _cli_configured(tmp_path)
    description = json.loads(write_derivative_description(tmp_path / "out", raw).read_text())
    ours = description["GeneratedBy"][0]
    assert ours["Name"] == "bids_denoise" and ours["Version"] == __version__
    assert ours["Provenance"]["CommandLine"].startswith("bids-denoise")
    assert "GitCommit" in ours["Provenance"] and "Container" in ours["Provenance"]
    assert ours["Provenance"]["Configuration"]["execution"]["output_dir"] == str(tmp_path / "out")


def test_description_provenance_explicit_and_disabled(tmp_path, raw):
    description = json.loads(write_derivative_description(tmp_path / "a", raw, provenance={"X": 1}).read_text())
    assert description["GeneratedBy"][0]["Provenance"] == {"X": 1}
    _cli_configured(tmp_path)
    description = json.loads(write_derivative_description(tmp_path / "b", raw, provenance=False).read_text())
    assert "Provenance" not in description["GeneratedBy"][0]
    # without a command line (library use) nothing is claimed
    config.reset()
    description = json.loads(write_derivative_description(tmp_path / "c", raw).read_text())
    assert "Provenance" not in description["GeneratedBy"][0]


def test_description_keeps_the_first_runs_record(tmp_path, raw):
    _cli_configured(tmp_path)
    path = write_derivative_description(tmp_path / "out", raw)
    first = path.read_text()
    config.execution.cmdline = ["bids-denoise", "other", "command"]
    write_derivative_description(tmp_path / "out", raw)
    assert path.read_text() == first


def test_provenance_import_does_not_need_config_or_nipype():
    code = ("import sys; import bids_denoise.utils.provenance as p; "
            "assert 'nipype' not in sys.modules and 'bids_denoise.config' not in sys.modules; print(p.GIT_INFO)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
