"""Tests of bids_denoise.config: defaults, TOML round trip, plugin and Nipype settings."""

from __future__ import annotations

import copy
import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from bids_denoise import config
from bids_denoise.denoise import shells

_LOGGER_NAMES = ("bids_denoise", "bids_denoise.cli", "nipype.workflow", "nipype.interface", "nipype.utils")


@pytest.fixture(autouse=True)
def clean_config():
    """Start every test from the defaults and put loggers and Nipype's config back afterwards."""
    from nipype import config as ncfg

    saved_loggers = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in _LOGGER_NAMES
    }
    saved_nipype = {s: dict(ncfg._config.items(s, raw=True)) for s in ncfg._config.sections()}
    config.reset()
    yield
    config.reset()
    for name, (level, handlers, propagate) in saved_loggers.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
    for section, values in saved_nipype.items():
        for key, value in values.items():
            ncfg._config.set(section, key, value)


def _non_default_settings(tmp_path: Path) -> dict:
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text("plugin: MultiProc\n")
    return {
        "execution": {
            "bids_dir": tmp_path / "bids",
            "output_dir": tmp_path / "out",
            "work_dir": tmp_path / "work",
            "analysis_level": "group",
            "participant_label": ["01", "02"],
            "session_label": ["pre"],
            "bids_filters": {"dwi": {"acquisition": None, "run": [1, 2], "direction": "*"}},
            "bids_filter_file": tmp_path / "filters.json",
            "bids_database_dir": tmp_path / "db",
            "skip_bids_validation": True,
            "boilerplate_only": True,
            "write_graph": True,
            "stop_on_first_crash": True,
            "run_uuid": "20250101-000000_deadbeef",
            "cmdline": ["bids-denoise", str(tmp_path / "bids"), "out", "group"],
            "verbosity": 2,
        },
        "nipype": {
            "plugin": "LegacyMultiProc",
            "plugin_args": {"n_procs": 3, "raise_insufficient": True, "maxtasksperchild": 1},
            "nprocs": 3,
            "omp_nthreads": 2,
            "mem_gb": 7.5,
            "use_plugin": plugin_file,
        },
        "workflow": {
            "method": "ddm2",
            "b0_threshold": 20.0,
            "shell_tolerance": 60.0,
            "shell_grouping": "all",
            "b0_denoising": False,
            "p2s_model": "ridge",
            "p2s_alpha": 0.25,
            "patch_radius": (1, 2, 3),
            "device": "cpu",
        },
    }


# ------------------------------------------------------------------------------ defaults
def test_defaults_follow_the_engine_constants():
    assert config.workflow.method == "auto"
    assert config.workflow.rician_correction == "mean"
    assert config.workflow.b0_threshold == shells.B0_THRESHOLD == 50.0
    assert config.workflow.shell_tolerance == shells.SHELL_TOLERANCE == 100.0
    assert config.workflow.shell_grouping == "all"
    assert config.workflow.b0_denoising is True
    assert config.workflow.p2s_model == "ols"
    assert config.workflow.p2s_alpha == 1.0
    assert config.workflow.patch_radius == (1, 1, 1) and config.workflow.patch_pooling == "radial"
    assert config.workflow.device == "auto"
    assert config.nipype.plugin == "MultiProc"
    assert config.nipype.crashfile_format == "txt"
    assert 1 <= config.nipype.omp_nthreads <= min(config.nipype.nprocs, 8)


def test_default_paths_and_run_uuid():
    assert config.execution.work_dir == Path("work").absolute()
    assert config.execution.log_dir == config.execution.work_dir / "logs"
    assert re.fullmatch(r"\d{8}-\d{6}_[0-9a-f]{8}", config.execution.run_uuid)
    first = config.execution.run_uuid
    config.reset()
    assert config.execution.run_uuid != first


def test_patch_radius_limit_comes_from_the_registry():
    from bids_denoise.denoise.methods.patch2self import MAX_PATCH_RADIUS
    from bids_denoise.denoise.patch2self import MAX_PATCH_RADIUS as ENGINE_MAX

    assert MAX_PATCH_RADIUS == ENGINE_MAX
    config.workflow.load({"patch_radius": MAX_PATCH_RADIUS}, init=False)
    assert config.workflow.patch_radius == (MAX_PATCH_RADIUS,) * 3
    with pytest.raises(ValueError, match="patch_radius"):
        config.workflow.load({"patch_radius": MAX_PATCH_RADIUS + 1}, init=False)
    config.reset()


def test_environment(monkeypatch):
    monkeypatch.setenv(config.CONTAINER_ENV, "bidsdenoise/bids_denoise:0.1.0")
    config.reset()
    assert config.environment.in_container is True
    assert config.environment.container_image == "bidsdenoise/bids_denoise:0.1.0"
    monkeypatch.delenv(config.CONTAINER_ENV)
    config.reset()
    assert config.environment.in_container is False
    assert config.environment.container_image is None
    import nipype

    assert config.environment.nipype_version == nipype.__version__
    from bids_denoise import __version__

    assert config.environment.version == __version__


# --------------------------------------------------------------------------- round trip
def test_toml_round_trip_is_exact(tmp_path):
    config.from_dict(_non_default_settings(tmp_path))
    before = config.get()
    # the settings really differ from the defaults, so the comparison below can fail
    config.reset()
    assert config.get()["execution"] != before["execution"]
    assert config.get()["workflow"] != before["workflow"]

    config.from_dict(_non_default_settings(tmp_path))
    path = config.to_filename(tmp_path / "deep" / "config.toml")
    assert path.is_file()
    config.reset()
    config.load(path)
    after = config.get()
    assert after == before
    assert isinstance(config.execution.bids_dir, Path)
    assert isinstance(config.nipype.use_plugin, Path)
    assert config.workflow.patch_radius == (1, 2, 3)
    assert isinstance(config.workflow.patch_radius, tuple)
    assert config.execution.bids_filters == {"dwi": {"acquisition": None, "run": [1, 2], "direction": "*"}}
    assert config.execution.log_level == 15
    # a second dump is identical to the first
    assert config.dumps() == path.read_text()


def test_round_trip_restores_optional_none(tmp_path):
    config.from_dict({"execution": {"participant_label": None, "bids_dir": tmp_path}})
    path = config.to_filename(tmp_path / "config.toml")
    config.from_dict({"execution": {"participant_label": ["99"], "bids_filters": {"dwi": {}}}})
    config.load(path)
    assert config.execution.participant_label is None
    assert config.execution.bids_filters is None
    assert config.execution.bids_dir == tmp_path


def test_dumps_drops_none_and_writes_paths_as_strings(tmp_path):
    config.from_dict({"execution": {"bids_dir": tmp_path / "bids"}, "nipype": {"mem_gb": None}})
    document = tomllib.loads(config.dumps())
    assert document["execution"]["bids_dir"] == str(tmp_path / "bids")
    assert "participant_label" not in document["execution"]
    assert "mem_gb" not in document["nipype"]
    assert document["workflow"]["patch_radius"] == [1, 1, 1]
    assert "layout" not in document["execution"]


def test_layout_is_not_serialised(tmp_path):
    config.execution.layout = object()
    assert "layout" not in config.get()["execution"]
    config.to_filename(tmp_path / "c.toml")
    assert "layout" not in (tmp_path / "c.toml").read_text()


def test_environment_is_never_loaded(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[environment]\nversion = "9.9.9"\n\n[workflow]\nmethod = "ddm2"\n')
    config.load(path)
    assert config.environment.version != "9.9.9"
    assert config.workflow.method == "ddm2"


def test_from_dict_accepts_flat_keys_and_rejects_unknown(tmp_path):
    config.from_dict({"workflow.p2s_model": "lasso", "execution.work_dir": tmp_path / "w"})
    assert config.workflow.p2s_model == "lasso"
    assert config.execution.work_dir == tmp_path / "w"
    assert config.execution.log_dir == tmp_path / "w" / "logs"  # follows the work dir
    with pytest.raises(KeyError):
        config.from_dict({"workflow": {"no_such_setting": 1}})
    with pytest.raises(KeyError):
        config.from_dict({"nosection": {"a": 1}})
    flat = config.get(flat=True)
    assert flat["workflow.p2s_model"] == "lasso"
    assert "environment.version" in flat


def test_workflow_values_are_normalised_and_checked():
    config.from_dict({"workflow": {"patch_radius": 2, "b0_threshold": 10}})
    assert config.workflow.patch_radius == (2, 2, 2)
    assert config.workflow.b0_threshold == 10.0 and isinstance(config.workflow.b0_threshold, float)
    with pytest.raises(ValueError):
        config.from_dict({"workflow": {"patch_radius": 4}})
    with pytest.raises(ValueError):
        config.from_dict({"workflow": {"method": "nlmeans"}})
    with pytest.raises(ValueError):
        config.from_dict({"workflow": {"p2s_alpha": 0}})
    with pytest.raises(ValueError):
        config.from_dict({"workflow": {"shell_tolerance": -1}})


def test_reset_does_not_share_mutable_defaults():
    config.nipype.plugin_args["n_procs"] = 999
    config.execution.cmdline.append("x")
    config.reset()
    assert config.nipype.plugin_args.get("n_procs") != 999
    assert config.execution.cmdline == []


# ------------------------------------------------------------------------------- nipype
def test_get_plugin_syncs_multiproc_arguments():
    config.from_dict({"nipype": {"plugin": "MultiProc", "plugin_args": {"maxtasksperchild": 1}, "nprocs": 3, "mem_gb": 4}})
    plugin = config.nipype.get_plugin()
    assert plugin == {
        "plugin": "MultiProc",
        "plugin_args": {
            "maxtasksperchild": 1, "n_procs": 3, "raise_insufficient": False, "memory_gb": 4.0,
            "mp_context": "spawn",
        },
    }
    # the returned dict is a copy
    plugin["plugin_args"]["n_procs"] = 1
    assert config.nipype.get_plugin()["plugin_args"]["n_procs"] == 3


def test_get_plugin_leaves_other_plugins_alone():
    config.from_dict({"nipype": {"plugin": "SLURM", "plugin_args": {"sbatch_args": "-p short"}, "nprocs": 4}})
    assert config.nipype.get_plugin() == {"plugin": "SLURM", "plugin_args": {"sbatch_args": "-p short"}}


def test_nipype_init_sets_the_nipype_config(tmp_path):
    from nipype import config as ncfg

    config.from_dict({"execution": {"work_dir": tmp_path / "work", "stop_on_first_crash": True}})
    config.nipype.init()
    assert ncfg.get("execution", "crashdump_dir") == str(tmp_path / "work" / "logs")
    assert ncfg.get("execution", "crashfile_format") == "txt"
    assert ncfg.getboolean("execution", "stop_on_first_crash") is True
    assert ncfg.get("execution", "hash_method") == "content"
    assert ncfg.getboolean("execution", "remove_unnecessary_outputs") is False


# ------------------------------------------------------------------------------ loggers
@pytest.mark.parametrize(("verbosity", "level"), [(0, 25), (1, 20), (2, 15), (3, 10), (7, 10)])
def test_loggers_follow_verbosity(verbosity, level):
    assert config.log_level_from_verbosity(verbosity) == level
    config.from_dict({"execution": {"verbosity": verbosity}})
    assert config.execution.log_level == level
    config.loggers.init()
    for logger in (config.loggers.cli, config.loggers.workflow, config.loggers.interface):
        assert logger.level == level


def test_logger_writes_to_current_stderr(capsys):
    config.loggers.init()
    config.loggers.init()  # idempotent: one handler
    handlers = [h for h in config.loggers.default.handlers if isinstance(h, config._StderrHandler)]
    assert len(handlers) == 1
    config.loggers.cli.warning("a warning for the test")
    assert "a warning for the test" in capsys.readouterr().err


def test_sections_cannot_be_instantiated():
    with pytest.raises(RuntimeError):
        config.workflow()
    # and get() returns copies
    values = config.workflow.get()
    values["method"] = "changed"
    assert config.workflow.method == "auto"
    assert copy.deepcopy(config.get()) == config.get()


def test_nipype_init_sets_logname_even_for_a_uid_without_a_passwd_entry(monkeypatch, tmp_path):
    import getpass

    def no_passwd_entry():
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.delenv("LOGNAME", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    config.from_dict({"execution": {"work_dir": tmp_path / "work"}})
    config.nipype.init()
    assert os.environ["LOGNAME"] == str(os.getuid())


def test_multiproc_workers_are_spawned_unless_the_plugin_file_says_otherwise():
    # Forked workers deadlocked in PyTorch's thread pool when torch had run in the parent.
    config.from_dict({"nipype": {"plugin": "MultiProc", "plugin_args": {}, "nprocs": 2}})
    assert config.nipype.get_plugin()["plugin_args"]["mp_context"] == "spawn"
    config.from_dict({"nipype": {"plugin": "MultiProc", "plugin_args": {"mp_context": "forkserver"}, "nprocs": 2}})
    assert config.nipype.get_plugin()["plugin_args"]["mp_context"] == "forkserver"
    config.from_dict({"nipype": {"plugin": "Linear", "plugin_args": {}, "nprocs": 2}})
    assert "mp_context" not in config.nipype.get_plugin()["plugin_args"]
