"""Tests of bids_denoise.cli.run.main: the flow and every exit status.

The dataset indexing, validator, derivatives writers and workflow come from other modules;
here they are replaced by fakes installed in ``sys.modules`` so that these tests exercise the
CLI's own logic (and keep doing so whether or not those modules exist yet).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from bids_denoise import __version__, config
import bids_denoise.cli.workflow as workflow_module
from bids_denoise.cli.run import main
from bids_denoise.cli.workflow import THREAD_ENV_VARS
from bids_denoise.errors import (
    EXIT_ANALYSIS_LEVEL,
    EXIT_EMPTY_SELECTION,
    EXIT_FAILURE,
    EXIT_NO_INPUT,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VALIDATION,
)



@dataclass
class FakeRun:
    subject: str
    dwi_file: Path

    @property
    def name(self):
        return f"sub_{self.subject}_{self.dwi_file.name.split('.')[0]}"


class FakeWorkflow:
    def __init__(self, app):
        self.app = app
        self.base_dir = None
        self.name = "bids_denoise_wf"

    def write_graph(self, **kwargs):
        self.app.calls.append("write_graph")
        self.app.graph_kwargs = kwargs
        Path(kwargs["dotfilename"]).with_suffix(".svg").write_text("<svg/>")

    def run(self, plugin=None, plugin_args=None):
        app = self.app
        import torch

        app.calls.append("run")
        app.run_kwargs = {"plugin": plugin, "plugin_args": plugin_args}
        app.env_at_run = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
        app.torch_threads_at_run = torch.get_num_threads()
        app.description_at_run = (app.out / "dataset_description.json").is_file()
        app.bidsignore_at_run = (app.out / ".bidsignore").is_file()
        if app.run_error is not None:
            raise app.run_error


class FakeApp:
    """Stands in for utils.validator, utils.bids, utils.derivatives and workflows.base."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.bids = tmp_path / "bids"
        self.out = tmp_path / "out"
        self.work = tmp_path / "work"
        self.bids.mkdir()
        (self.bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
        self.validation = (True, "")
        self.subjects = ["01", "02"]
        self.runs = {
            "01": [FakeRun("01", self.bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz")],
            "02": [
                FakeRun("02", self.bids / "sub-02" / "dwi" / "sub-02_run-1_dwi.nii.gz"),
                FakeRun("02", self.bids / "sub-02" / "dwi" / "sub-02_run-2_dwi.nii.gz"),
            ],
        }
        self.calls = []
        self.collect_args = []
        self.run_error = None
        self.boilerplate = "# Methods\n\nDenoised by the lead's boilerplate.\n"
        self.workflow = None
        self.runs_received = None

    # utils.validator
    def validate_input_dataset(self, bids_dir, *, exclude_subjects=(), timeout=None):
        self.calls.append("validate")
        assert Path(bids_dir) == self.bids
        self.excluded = list(exclude_subjects)
        return self.validation

    # utils.bids
    def init_layout(self, bids_dir, database_dir=None):
        self.calls.append("init_layout")
        self.layout_args = (bids_dir, database_dir)
        return {"fake_layout": str(bids_dir)}

    def collect_participants(self, layout, participant_label=None):
        self.calls.append("collect_participants")
        self.participant_label_received = participant_label
        if participant_label:
            return [s for s in self.subjects if s in participant_label]
        return list(self.subjects)

    def collect_dwi_runs(self, layout, subject, sessions=None, bids_filters=None, problems=None):
        self.collect_args.append((subject, sessions, bids_filters))
        return list(self.runs.get(subject, []))

    # utils.derivatives
    def write_derivative_description(self, output_dir, bids_dir, *, container=None):
        self.calls.append("write_derivative_description")
        assert (Path(output_dir), Path(bids_dir)) == (self.out, self.bids)
        Path(output_dir, "dataset_description.json").write_text(json.dumps({"Name": "bids_denoise"}))

    def write_bidsignore(self, output_dir):
        self.calls.append("write_bidsignore")
        Path(output_dir, ".bidsignore").write_text("logs/\n")

    # workflows.base
    def init_bids_denoise_wf(self, runs_by_subject):
        self.calls.append("init_wf")
        self.runs_received = runs_by_subject
        self.workflow = FakeWorkflow(self)
        return self.workflow

    def build_boilerplate(self, runs_by_subject=None):
        self.calls.append("build_boilerplate")
        return self.boilerplate

    def argv(self, *extra, level="participant"):
        return [str(self.bids), str(self.out), level, "-w", str(self.work), *extra]


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def app(tmp_path, monkeypatch):
    fake = FakeApp(tmp_path)
    from bids_denoise.utils.bids import load_bids_filters

    monkeypatch.setitem(sys.modules, "bids_denoise.utils.validator",
                        _module("bids_denoise.utils.validator", validate_input_dataset=fake.validate_input_dataset))
    monkeypatch.setitem(sys.modules, "bids_denoise.utils.bids",
                        _module("bids_denoise.utils.bids", init_layout=fake.init_layout, load_bids_filters=load_bids_filters,
                                collect_participants=fake.collect_participants, collect_dwi_runs=fake.collect_dwi_runs))
    monkeypatch.setitem(sys.modules, "bids_denoise.utils.derivatives",
                        _module("bids_denoise.utils.derivatives", write_derivative_description=fake.write_derivative_description,
                                write_bidsignore=fake.write_bidsignore))
    monkeypatch.setitem(sys.modules, "bids_denoise.workflows.base",
                        _module("bids_denoise.workflows.base", init_bids_denoise_wf=fake.init_bids_denoise_wf,
                                build_boilerplate=fake.build_boilerplate))  # fmt: skip
    # Fake runs have no files: the per-run data checks have tests of their own.
    monkeypatch.setattr(workflow_module, "preflight", _accept_all_runs)
    monkeypatch.setattr(workflow_module, "_mark_missing_outputs", lambda runs, statuses: None)
    return fake


def _accept_all_runs(runs_by_subject, statuses):
    from bids_denoise.cli.summary import RunStatus

    statuses.extend(RunStatus(str(r.dwi_file), r.name) for runs in runs_by_subject.values() for r in runs)
    return runs_by_subject


@pytest.fixture(autouse=True)
def isolate(isolated_app_state):
    yield


# ------------------------------------------------------------------------------- success
def test_participant_run_succeeds(app, capsys):
    assert main(app.argv("--nprocs", "2", "--omp-nthreads", "1")) == EXIT_OK
    assert app.calls == [
        "validate", "init_layout", "collect_participants", "init_wf",
        "write_derivative_description", "write_bidsignore", "build_boilerplate", "run",
    ]  # fmt: skip
    # derivatives metadata exist before the workflow runs (parallel participants)
    assert app.description_at_run and app.bidsignore_at_run
    assert app.run_kwargs == config.nipype.get_plugin()
    assert app.run_kwargs == {
        "plugin": "MultiProc", "plugin_args": {"n_procs": 2, "raise_insufficient": False, "mp_context": "spawn"},
    }
    assert app.runs_received == app.runs
    assert app.workflow.base_dir == str(app.work)
    assert app.layout_args == (app.bids, None)
    out = capsys.readouterr().out
    assert "sub-02/dwi/sub-02_run-2_dwi.nii.gz" in out
    assert str(app.out) in out and str(app.work / "logs") in out
    assert (app.out / "logs" / "CITATION.md").read_text() == app.boilerplate
    assert (app.work / "logs").is_dir()


def test_thread_limits_are_set_before_the_run(app):
    assert main(app.argv("--nprocs", "3", "--omp-nthreads", "2")) == EXIT_OK
    assert app.env_at_run == dict.fromkeys(THREAD_ENV_VARS, "2")
    assert app.torch_threads_at_run == 2


def test_omp_larger_than_nprocs_is_capped_for_the_run(app):
    assert main(app.argv("--nprocs", "1", "--omp-nthreads", "4")) == EXIT_OK
    assert config.nipype.omp_nthreads == 1
    assert app.env_at_run == dict.fromkeys(THREAD_ENV_VARS, "1")
    assert app.torch_threads_at_run == 1


def test_config_toml_is_written_and_round_trips(app):
    assert main(app.argv("--participant-label", "sub-02", "--p2s-model", "ridge", "--patch-radius", "1", "0", "2")) == EXIT_OK
    path = app.work / config.execution.run_uuid / "config.toml"
    assert path.is_file()
    before = config.get()
    config.reset()
    assert config.get() != before
    config.load(path)
    assert config.get() == before
    assert config.execution.participant_label == ["02"]
    assert config.workflow.patch_radius == (1, 0, 2)


def test_labels_filters_and_database_reach_the_collectors(app):
    filters = app.tmp / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": None}}))
    argv = app.argv(
        "--participant_label", "sub-01", "--session-label", "ses-a", "--bids-filter-file", str(filters),
        "--bids-database-dir", str(app.tmp / "db"),
    )  # fmt: skip
    assert main(argv) == EXIT_OK
    assert app.participant_label_received == ["01"]
    assert app.collect_args == [("01", ["a"], {"dwi": {"acquisition": None}})]
    assert app.layout_args == (app.bids, app.tmp / "db")
    assert list(app.runs_received) == ["01"]
    assert config.execution.layout == {"fake_layout": str(app.bids)}


def test_subject_without_runs_is_skipped(app):
    app.runs["01"] = []
    assert main(app.argv()) == EXIT_OK
    assert list(app.runs_received) == ["02"]


def test_stop_on_first_crash_reaches_nipype(app):
    from nipype import config as ncfg

    assert main(app.argv("--stop-on-first-crash")) == EXIT_OK
    assert ncfg.getboolean("execution", "stop_on_first_crash") is True
    assert ncfg.get("execution", "crashdump_dir") == str(app.work / "logs")


def test_write_graph(app):
    assert main(app.argv("--write-graph")) == EXIT_OK
    assert "write_graph" in app.calls
    assert app.graph_kwargs["graph2use"] == "colored" and app.graph_kwargs["format"] == "svg"
    assert app.graph_kwargs["simple_form"] is True
    assert Path(app.graph_kwargs["dotfilename"]).parent == app.work / config.execution.run_uuid


def test_write_graph_failure_only_warns(app, capsys):
    def broken(**kwargs):
        raise OSError("dot not found")

    original = app.init_bids_denoise_wf

    def init(runs):
        wf = original(runs)
        wf.write_graph = broken
        return wf

    sys.modules["bids_denoise.workflows.base"].init_bids_denoise_wf = init
    assert main(app.argv("--write-graph")) == EXIT_OK
    assert "dot not found" in capsys.readouterr().err


# -------------------------------------------------------------------------- exit status
def test_workflow_failure_returns_1_and_points_to_crash_files(app, capsys):
    app.run_error = RuntimeError("Workflow did not execute cleanly. Check log for details")
    assert main(app.argv()) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "did not execute cleanly" in err
    assert str(app.work / "logs") in err


def test_validation_failure_exits_16_with_report(app, capsys):
    app.validation = (False, "[ERROR] NIFTI_HEADER_UNREADABLE sub-01/dwi/sub-01_dwi.nii.gz")
    assert main(app.argv()) == EXIT_VALIDATION
    err = capsys.readouterr().err
    assert "NIFTI_HEADER_UNREADABLE" in err
    assert "--skip-bids-validation" in err
    assert "init_layout" not in app.calls and "run" not in app.calls


def test_validator_not_installed_warns_and_continues(app, capsys):
    app.validation = (None, "bids-validator-deno was not found")
    assert main(app.argv()) == EXIT_OK
    err = capsys.readouterr().err
    assert "not installed" in err and "NOT validated" in err
    assert "run" in app.calls


def test_validator_ignores_subjects_that_are_not_selected(app):
    for sub in ("01", "02", "03"):
        (app.bids / f"sub-{sub}").mkdir()
    assert main(app.argv("--participant-label", "02")) == EXIT_OK
    assert app.excluded == ["01", "03"]
    assert main(app.argv()) == EXIT_OK
    assert app.excluded == []


def test_skip_bids_validation_does_not_call_the_validator(app):
    app.validation = (False, "would fail")
    assert main(app.argv("--skip-bids-validation")) == EXIT_OK
    assert "validate" not in app.calls


@pytest.mark.parametrize("level", ["session", "participant1", "Participant", ""])
def test_unknown_analysis_level_exits_17(app, capsys, level):
    assert main(app.argv(level=level)) == EXIT_ANALYSIS_LEVEL
    err = capsys.readouterr().err
    assert "participant" in err and "group" in err
    assert err.startswith("bids-denoise: error:")
    assert app.calls == []


def test_labels_that_select_nothing_exit_18(app, capsys):
    assert main(app.argv("--participant-label", "99")) == EXIT_EMPTY_SELECTION
    assert "99" in capsys.readouterr().err
    assert "init_wf" not in app.calls


def test_filters_that_select_nothing_exit_18(app, capsys):
    app.runs = {}
    filters = app.tmp / "f.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "nope"}}))
    assert main(app.argv("--bids-filter-file", str(filters))) == EXIT_EMPTY_SELECTION
    assert str(filters) in capsys.readouterr().err


def test_dataset_without_dwi_exits_66(app, capsys):
    app.runs = {}
    assert main(app.argv()) == EXIT_NO_INPUT
    assert "no DWI" in capsys.readouterr().err


def test_missing_bids_dir_exits_66(app, capsys):
    argv = app.argv()
    argv[0] = str(app.tmp / "not-mounted")
    assert main(argv) == EXIT_NO_INPUT
    err = capsys.readouterr().err
    assert str(app.tmp / "not-mounted") in err and "mounted" in err


@pytest.mark.parametrize("extra", [["--bogus"], ["--nprocs", "-3"], ["--patch-radius", "9"]])
def test_usage_errors_exit_64(app, capsys, extra):
    assert main(app.argv(*extra)) == EXIT_USAGE
    assert "error" in capsys.readouterr().err
    assert app.calls == []


def test_output_inside_bids_exits_64(app, capsys):
    argv = app.argv()
    argv[1] = str(app.bids / "sub-01")
    assert main(argv) == EXIT_USAGE
    assert "outside" in capsys.readouterr().err


def test_ddm2_on_the_cpu_is_refused_without_force(app, capsys):
    # the CPU guard (tests/workflows/test_ddm2.py checks it on real data, with the estimate)
    assert main(app.argv("--method", "ddm2", "--device", "cpu")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "DDM2 with this preset needs a CUDA GPU" in err and "--force" in err
    assert "--ddm2-preset cpu" in err
    assert "init_wf" not in app.calls and "run" not in app.calls


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_device_without_gpu_exits_64(app, capsys):
    assert main(app.argv("--device", "cuda")) == EXIT_USAGE
    assert "CUDA" in capsys.readouterr().err


def test_unexpected_exception_exits_1(app, capsys):
    def broken(layout, participant_label=None):
        raise KeyError("boom")

    sys.modules["bids_denoise.utils.bids"].collect_participants = broken
    assert main(app.argv()) == EXIT_FAILURE
    assert "boom" in capsys.readouterr().err


def test_version_and_help_return_0(capsys):
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"bids-denoise v{__version__}"
    assert main(["--help"]) == EXIT_OK
    assert "--p2s-model" in capsys.readouterr().out


# --------------------------------------------------------------------------- boilerplate
def test_boilerplate_only_uses_the_workflow_boilerplate(app):
    assert main(app.argv("--boilerplate-only")) == EXIT_OK
    assert (app.out / "logs" / "CITATION.md").read_text() == app.boilerplate
    assert "init_wf" not in app.calls and "run" not in app.calls
    assert (app.work / config.execution.run_uuid / "config.toml").is_file()


def _write_sidecar(out_dir, relative, content):
    path = out_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def test_group_level_writes_a_summary(app, capsys):
    _write_sidecar(app.out, "sub-01/dwi/sub-01_desc-denoised_dwi.json",
                   {"DenoisingMethod": "patch2self", "RunTime": 12.5,
                    "VolumeGroups": [{"Label": "b0", "Count": 2}, {"Label": "b1000", "Count": 30}]})
    _write_sidecar(app.out, "sub-02/ses-a/dwi/sub-02_ses-a_acq-multi_run-2_desc-denoised_dwi.json",
                   {"DenoisingMethod": "patch2self"})
    _write_sidecar(app.out, "sub-02/ses-a/dwi/sub-02_ses-a_desc-preproc_dwi.json", {"x": 1})  # not ours
    assert main(app.argv(level="group")) == EXIT_OK
    assert "init_wf" not in app.calls
    with open(app.out / "group_summary.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 2
    assert rows[0]["subject"] == "01" and rows[0]["session"] == "n/a"
    assert rows[0]["method"] == "patch2self" and rows[0]["runtime_s"] == "12.5"
    assert rows[0]["groups"] == "b0:2;b1000:30"
    assert (rows[1]["subject"], rows[1]["session"], rows[1]["acquisition"], rows[1]["run"]) == ("02", "a", "multi", "2")
    assert rows[1]["groups"] == "n/a"
    assert rows[1]["sidecar"] == "sub-02/ses-a/dwi/sub-02_ses-a_acq-multi_run-2_desc-denoised_dwi.json"
    assert "group_summary.tsv" in capsys.readouterr().out


def test_group_level_has_the_error_estimate_and_qc_columns(app):
    _write_sidecar(app.out, "sub-01/dwi/sub-01_desc-denoised_dwi.json", {
        "DenoisingMethod": "auto",
        "VolumeGroups": [{"Label": "b0", "Count": 2, "Method": "MP-PCA", "EstimatedRMSE": 3.5},
                         {"Label": "b1000", "Count": 30, "Method": "Patch2Self", "EstimatedRMSE": 7.25}],
        "QualityControl": {
            "Groups": [{"Group": "b0", "ResidualRatio": 0.9, "ResidualCorrelation": 0.01},
                       {"Group": "b1000", "ResidualRatio": 1.4, "ResidualCorrelation": 0.2}],
            "FA": {"Voxels": 10, "Before": 0.55, "After": 0.41, "AfterRenoised": 0.45, "Change": -0.18},
            "Flags": [{"Check": "ResidualRatio", "Group": "b1000", "Message": "m1"},
                      {"Check": "FADrop", "Group": None, "Message": "m2"}],
        },
    })
    _write_sidecar(app.out, "sub-02/dwi/sub-02_desc-denoised_dwi.json", {"DenoisingMethod": "patch2self"})
    assert main(app.argv(level="group")) == EXIT_OK
    with open(app.out / "group_summary.tsv") as handle:
        first, second = csv.DictReader(handle, delimiter="\t")
    assert first["group_methods"] == "b0:MP-PCA;b1000:Patch2Self"
    assert first["estimated_rmse"] == "b0:3.5;b1000:7.25"
    assert first["residual_ratio"] == "b0:0.9;b1000:1.4"
    assert first["residual_correlation"] == "b0:0.01;b1000:0.2"
    assert (first["fa_high_before"], first["fa_high_after"]) == ("0.55", "0.41")
    assert first["qc_warnings"] == "2" and first["qc_checks"] == "ResidualRatio(b1000);FADrop"
    assert second["qc_warnings"] == "n/a" and second["estimated_rmse"] == "n/a"


def test_run_summary_counts_qc_warnings():
    from bids_denoise.cli.summary import RunStatus, format_summary

    text = format_summary([RunStatus("sub-01/dwi/a_dwi.nii.gz", qc_flags=["group b1000: residual", "FA fell"]),
                           RunStatus("sub-02/dwi/b_dwi.nii.gz")])
    assert "[ok, 2 QC warnings] sub-01/dwi/a_dwi.nii.gz" in text
    assert "      ! QC: FA fell" in text
    assert "[ok] sub-02/dwi/b_dwi.nii.gz" in text


def test_qc_messages_come_from_the_sidecar(tmp_path):
    from bids_denoise.cli.workflow import qc_messages

    sidecar = tmp_path / "x_desc-denoised_dwi.json"
    sidecar.write_text(json.dumps({"QualityControl": {"Flags": [{"Check": "FADrop", "Message": "FA fell"}]}}))
    assert qc_messages(sidecar) == ["FA fell"]
    sidecar.write_text("{broken")
    assert qc_messages(sidecar) == []
    assert qc_messages(tmp_path / "missing.json") == []


def test_group_level_respects_participant_labels(app):
    _write_sidecar(app.out, "sub-01/dwi/sub-01_desc-denoised_dwi.json", {"DenoisingMethod": "patch2self"})
    _write_sidecar(app.out, "sub-02/dwi/sub-02_desc-denoised_dwi.json", {"DenoisingMethod": "patch2self"})
    assert main(app.argv("--participant-label", "02", level="group")) == EXIT_OK
    with open(app.out / "group_summary.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["subject"] for r in rows] == ["02"]


def test_group_level_with_nothing_to_do(app, capsys):
    assert main(app.argv(level="group")) == EXIT_OK
    assert "nothing to do at the group level" in capsys.readouterr().out
    assert not (app.out / "group_summary.tsv").exists()


def test_group_level_survives_a_broken_sidecar(app):
    _write_sidecar(app.out, "sub-01/dwi/sub-01_desc-denoised_dwi.json", "{not json")
    assert main(app.argv(level="group")) == EXIT_OK
    rows = (app.out / "group_summary.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("01\t")


# --------------------------------------------------------------------- the real process
def _run_cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, "-m", "bids_denoise.cli.run", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_process_exit_status_for_version_and_usage(tmp_path):
    result = _run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"bids-denoise v{__version__}"
    result = _run_cli(str(tmp_path), str(tmp_path / "out"), "participant", "--no-such-flag", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "bids-denoise: error:" in result.stderr


@pytest.mark.slow  # two app processes: ~4-6 s
def test_process_exit_status_for_missing_input_and_level(tmp_path):
    result = _run_cli(str(tmp_path / "absent"), str(tmp_path / "out"), "participant", cwd=tmp_path)
    assert result.returncode == EXIT_NO_INPUT
    assert "bids-denoise: error:" in result.stderr
    (tmp_path / "bids").mkdir()
    result = _run_cli(str(tmp_path / "bids"), str(tmp_path / "out"), "session", cwd=tmp_path)
    assert result.returncode == EXIT_ANALYSIS_LEVEL


# ------------------------------------------------------- with the real utils modules
def _tiny_dataset(root: Path, subjects=("01", "02")) -> Path:
    import nibabel as nib
    import numpy as np

    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    bvals = [0, 1000, 1000, 1000, 1000, 1000]
    (root / "dwi.bval").write_text(" ".join(map(str, bvals)) + "\n")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, len(bvals)))
    vecs /= np.linalg.norm(vecs, axis=0)
    vecs[:, 0] = 0
    (root / "dwi.bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in vecs) + "\n")
    for sub in subjects:
        dwi = root / f"sub-{sub}" / "dwi"
        dwi.mkdir(parents=True)
        data = rng.uniform(50, 100, size=(4, 4, 3, len(bvals))).astype("float32")
        nib.save(nib.Nifti1Image(data, np.eye(4)), dwi / f"sub-{sub}_dwi.nii.gz")
        (dwi / f"sub-{sub}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}))
    return root


@pytest.fixture
def real_utils(tmp_path, monkeypatch):
    """Real utils.bids, utils.derivatives and boilerplate; only the workflow graph is faked."""
    import bids_denoise.utils.bids  # noqa: F401
    import bids_denoise.utils.derivatives  # noqa: F401
    (tmp_path / "fake").mkdir()
    fake = FakeApp(tmp_path / "fake")
    fake.bids = _tiny_dataset(tmp_path / "ds")
    fake.out = tmp_path / "derivatives"
    fake.work = tmp_path / "work"
    from bids_denoise.workflows.base import build_boilerplate, denoising_parameters

    monkeypatch.setitem(sys.modules, "bids_denoise.workflows.base",
                        _module("bids_denoise.workflows.base", init_bids_denoise_wf=fake.init_bids_denoise_wf,
                                build_boilerplate=build_boilerplate,
                                denoising_parameters=denoising_parameters))  # fmt: skip
    # The fake workflow writes no derivatives.
    monkeypatch.setattr(workflow_module, "_mark_missing_outputs", lambda runs, statuses: None)
    return fake


def test_real_utils_participant_run(real_utils, capsys):
    app = real_utils
    assert main(app.argv("--skip-bids-validation", "--participant-label", "sub-02", "--nprocs", "1")) == EXIT_OK
    assert list(app.runs_received) == ["02"]
    (run,) = app.runs_received["02"]
    assert run.dwi_file == app.bids / "sub-02" / "dwi" / "sub-02_dwi.nii.gz"
    assert run.bval_file == app.bids / "dwi.bval"
    description = json.loads((app.out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert app.description_at_run and app.bidsignore_at_run
    assert "Patch2Self" in (app.out / "logs" / "CITATION.md").read_text()
    assert "sub-02/dwi/sub-02_dwi.nii.gz" in capsys.readouterr().out


def test_real_utils_unknown_participant_exits_18(real_utils, capsys):
    assert main(real_utils.argv("--skip-bids-validation", "--participant-label", "07")) == EXIT_EMPTY_SELECTION
    assert "sub-07" in capsys.readouterr().err


def test_real_utils_filters_that_select_nothing_exit_18(real_utils):
    filters = real_utils.tmp / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "multi"}}))
    assert main(real_utils.argv("--skip-bids-validation", "--bids-filter-file", str(filters))) == EXIT_EMPTY_SELECTION


def test_real_utils_dataset_without_dwi_exits_66(real_utils):
    for nifti in real_utils.bids.rglob("*_dwi.nii.gz"):
        nifti.unlink()
    assert main(real_utils.argv("--skip-bids-validation")) == EXIT_NO_INPUT


def _real_validator_or_skip():
    from bids_denoise.utils import validator

    if validator.find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")


def test_real_validator_rejects_a_broken_dataset_with_16(real_utils, capsys):
    _real_validator_or_skip()
    (real_utils.bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz").write_bytes(b"not a nifti")
    assert main(real_utils.argv()) == EXIT_VALIDATION
    assert "NIFTI_HEADER_UNREADABLE" in capsys.readouterr().err
    assert real_utils.runs_received is None


def test_real_validator_ignores_a_broken_unselected_subject(real_utils):
    _real_validator_or_skip()
    (real_utils.bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz").write_bytes(b"not a nifti")
    assert main(real_utils.argv("--participant-label", "02", "--nprocs", "1")) == EXIT_OK
    assert list(real_utils.runs_received) == ["02"]


# ------------------------------------------------------------- with a real Nipype graph
def _report_threads(fail):
    import os

    if fail:
        raise ValueError("deliberate failure inside a node")
    return os.environ.get("OMP_NUM_THREADS")


def _nipype_wf_factory(fail):
    def init_bids_denoise_wf(runs_by_subject):
        from nipype.interfaces.utility import Function
        from nipype.pipeline import engine as pe

        wf = pe.Workflow(name="bids_denoise_wf")
        node = pe.Node(Function(input_names=["fail"], output_names=["threads"], function=_report_threads), name="probe")
        node.inputs.fail = fail
        wf.add_nodes([node])
        return wf

    return init_bids_denoise_wf


@pytest.mark.parametrize("plugin", [pytest.param("MultiProc", marks=pytest.mark.slow), "Linear"])  # MultiProc: ~4.5 s
def test_real_nipype_success_and_worker_threads(app, monkeypatch, plugin):
    monkeypatch.setattr(sys.modules["bids_denoise.workflows.base"], "init_bids_denoise_wf", _nipype_wf_factory(False))
    plugin_file = app.tmp / "plugin.yml"
    plugin_file.write_text(f"plugin: {plugin}\n")
    assert main(app.argv("--nprocs", "2", "--omp-nthreads", "1", "--use-plugin", str(plugin_file))) == EXIT_OK
    results = list((app.work / "bids_denoise_wf" / "probe").glob("result_probe.pklz"))
    assert results
    from nipype.utils.filemanip import loadpkl

    assert loadpkl(results[0]).outputs.threads == "1"


@pytest.mark.slow  # a real Nipype run: ~4 s
def test_real_nipype_failure_exits_1_and_leaves_a_crash_file(app, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["bids_denoise.workflows.base"], "init_bids_denoise_wf", _nipype_wf_factory(True))
    assert main(app.argv("--nprocs", "1")) == EXIT_FAILURE
    crash_files = list((app.work / "logs").glob("crash-*.txt"))
    assert crash_files, list(app.work.rglob("*"))
    assert "deliberate failure inside a node" in crash_files[0].read_text()
    assert str(app.work / "logs") in capsys.readouterr().err


def test_graph_plugins_report_runs_as_submitted(app, capsys, tmp_path):
    plugin = tmp_path / "graph.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  dont_resubmit_completed_jobs: true\n")
    assert main(app.argv("--use-plugin", str(plugin))) == EXIT_OK
    assert app.run_kwargs["plugin"] == "SLURMGraph"
    out = capsys.readouterr().out
    assert "[submitted]" in out and "queued on the cluster" in out and "0 failed" in out


def test_group_notes_recorded_while_running_come_from_the_sidecar(tmp_path):
    from bids_denoise.cli.workflow import group_notes

    sidecar = tmp_path / "x_desc-denoised_dwi.json"
    sidecar.write_text(json.dumps({"VolumeGroups": [
        {"Label": "b0", "Notes": ["copied through: 2 volumes, and groups of fewer than 3 are not denoised"]},
        {"Label": "dwi"}]}))
    assert group_notes(sidecar) == ["group b0: copied through: 2 volumes, and groups of fewer than 3 are not denoised"]
    assert group_notes(tmp_path / "missing.json") == []
