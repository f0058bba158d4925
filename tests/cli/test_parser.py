"""Tests of bids_denoise.cli.parser: options, defaults, usage errors (64) and path checks."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from bids_denoise import __version__, config
from bids_denoise.cli.parser import _build_parser, parse_args
from bids_denoise.errors import EXIT_NO_INPUT, EXIT_USAGE, MissingInputError, UsageError

_LOGGER_NAMES = ("bids_denoise", "bids_denoise.cli", "nipype.workflow", "nipype.interface", "nipype.utils")

#: Every option the brief asks for, in all its spellings.
EXPECTED_OPTIONS = [
    "--participant-label", "--participant_label", "--session-label", "--bids-filter-file",
    "--bids-database-dir", "--method", "--b0-threshold", "--shell-tolerance", "--shell-grouping",
    "--no-b0-denoising", "--p2s-model", "--p2s-alpha", "--patch-radius", "-w", "--work-dir",
    "--nprocs", "--nthreads", "--n-cpus", "--omp-nthreads", "--mem-gb", "--use-plugin",
    "--device", "--stop-on-first-crash", "--write-graph", "--skip-bids-validation",
    "--skip_bids_validation", "-v", "--verbose", "--version", "--boilerplate-only",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_config():
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in _LOGGER_NAMES}
    config.reset()
    yield
    config.reset()
    for name, (level, handlers) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers


@pytest.fixture
def dirs(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    return {"bids": bids, "out": tmp_path / "out", "work": tmp_path / "work", "tmp": tmp_path}


@pytest.fixture
def parse(dirs):
    """Parse with the three positionals and -w filled in."""

    def _parse(*extra, level="participant"):
        return parse_args([str(dirs["bids"]), str(dirs["out"]), level, "-w", str(dirs["work"]), *extra])

    return _parse


def _usage_exit(capsys, func, *args, **kwargs):
    with pytest.raises(SystemExit) as excinfo:
        func(*args, **kwargs)
    err = capsys.readouterr().err
    return excinfo.value.code, err


# ------------------------------------------------------------------------------ defaults
def test_minimal_command_fills_config_with_defaults(parse, dirs):
    parse()
    ex = config.execution
    assert ex.bids_dir == dirs["bids"] and ex.output_dir == dirs["out"] and ex.work_dir == dirs["work"]
    assert ex.log_dir == dirs["work"] / "logs"
    assert ex.analysis_level == "participant"
    assert ex.participant_label is None and ex.session_label is None and ex.bids_filters is None
    assert ex.skip_bids_validation is False and ex.boilerplate_only is False
    assert ex.write_graph is False and ex.stop_on_first_crash is False
    assert ex.verbosity == 0 and ex.log_level == 25
    assert ex.cmdline[0] == "bids-denoise" and ex.cmdline[-2:] == ["-w", str(dirs["work"])]
    wf = config.workflow
    assert (wf.method, wf.b0_threshold, wf.shell_tolerance, wf.shell_grouping) == ("auto", 50.0, 100.0, "all")
    assert (wf.b0_denoising, wf.p2s_model, wf.p2s_alpha, wf.patch_radius, wf.device) == (True, "ols", 1.0, (1, 1, 1), "auto")
    assert wf.patch_pooling == "radial"
    nprocs = os.cpu_count()
    assert config.nipype.nprocs == nprocs
    assert config.nipype.omp_nthreads == min(nprocs, 8)
    assert config.nipype.mem_gb is None and config.nipype.use_plugin is None
    assert config.nipype.get_plugin() == {
        "plugin": "MultiProc",
        "plugin_args": {"n_procs": nprocs, "raise_insufficient": False, "mp_context": "spawn"},
    }


def test_relative_paths_are_made_absolute(dirs, monkeypatch):
    monkeypatch.chdir(dirs["tmp"])
    parse_args(["bids", "out", "participant"])
    assert config.execution.bids_dir == dirs["bids"]
    assert config.execution.output_dir == dirs["out"]
    assert config.execution.work_dir == dirs["tmp"] / "work"  # default ./work


def test_each_parse_draws_a_new_run_uuid(parse):
    parse()
    first = config.execution.run_uuid
    parse()
    assert config.execution.run_uuid != first


def test_analysis_level_is_a_free_string(parse):
    parse(level="participant1")  # rejected later by run.py with 17, not here with 64
    assert config.execution.analysis_level == "participant1"


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_participant_labels_are_normalised(parse, flag):
    parse(flag, "sub-01", "02", "sub-02", "A3")
    assert config.execution.participant_label == ["01", "02", "A3"]


def test_session_labels_are_normalised(parse):
    parse("--session-label", "ses-pre", "post")
    assert config.execution.session_label == ["pre", "post"]


@pytest.mark.parametrize("label", ["sub-", "sub-01_ses-1", "0/1", "sub-01-02"])
def test_bad_labels_exit_64(parse, capsys, label):
    code, err = _usage_exit(capsys, parse, "--participant-label", label)
    assert code == EXIT_USAGE
    assert "participant label" in err


def test_bids_filter_file_is_loaded(parse, dirs):
    filters = {"dwi": {"acquisition": None, "run": 1, "direction": "*"}}
    path = dirs["tmp"] / "filters.json"
    path.write_text(json.dumps(filters))
    parse("--bids-filter-file", str(path))
    assert config.execution.bids_filters == filters
    assert config.execution.bids_filter_file == path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"dwi": {"run": 1,}}', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"dwi": "sub-01"}', "dwi"),
    ],
)
def test_bad_bids_filter_file_exits_64_naming_the_file(parse, dirs, capsys, content, expected):
    path = dirs["tmp"] / "bad_filters.json"
    path.write_text(content)
    code, err = _usage_exit(capsys, parse, "--bids-filter-file", str(path))
    assert code == EXIT_USAGE
    assert str(path) in err
    assert expected in err
    assert "usage:" in err


def test_good_bids_filter_file(parse, dirs):
    filters = {"dwi": {"session": ["1", "2"], "acquisition": None, "run": 1}}
    path = dirs["tmp"] / "filters.json"
    path.write_text(json.dumps(filters))
    parse("--bids-filter-file", str(path))
    assert config.execution.bids_filters == filters


def test_shared_loader_checks_queries(parse, dirs, capsys):
    import bids_denoise.utils.bids  # noqa: F401
    path = dirs["tmp"] / "filters.json"
    path.write_text(json.dumps({"t1w": {"session": "1"}}))
    code, err = _usage_exit(capsys, parse, "--bids-filter-file", str(path))
    assert code == EXIT_USAGE
    assert "t1w" in err


def test_missing_bids_filter_file_exits_64(parse, dirs, capsys):
    code, err = _usage_exit(capsys, parse, "--bids-filter-file", str(dirs["tmp"] / "nope.json"))
    assert code == EXIT_USAGE
    assert "nope.json" in err


def test_bids_database_dir(parse, dirs):
    parse("--bids-database-dir", str(dirs["tmp"] / "db"))
    assert config.execution.bids_database_dir == dirs["tmp"] / "db"


# ------------------------------------------------------------------------------ method
def test_method_and_shell_options(parse):
    parse(
        "--method", "ddm2", "--b0-threshold", "5", "--shell-tolerance", "0", "--shell-grouping", "all",
        "--no-b0-denoising", "--p2s-model", "ridge", "--p2s-alpha", "0.5", "--device", "cpu",
    )  # fmt: skip
    wf = config.workflow
    assert wf.method == "ddm2"
    assert wf.b0_threshold == 5.0 and wf.shell_tolerance == 0.0
    assert wf.shell_grouping == "all" and wf.b0_denoising is False
    assert wf.p2s_model == "ridge" and wf.p2s_alpha == 0.5 and wf.device == "cpu"


@pytest.mark.parametrize(("values", "expected"), [(["2"], (2, 2, 2)), (["1", "0", "3"], (1, 0, 3)), (["0"], (0, 0, 0))])
def test_patch_radius(parse, values, expected):
    parse("--patch-radius", *values)
    assert config.workflow.patch_radius == expected


@pytest.mark.parametrize(
    "extra",
    [
        ["--unknown-option"],
        ["--method", "nlmeans"],
        ["--b0-threshold", "-1"],
        ["--b0-threshold", "abc"],
        ["--shell-tolerance", "-5"],
        ["--shell-grouping", "none"],
        ["--p2s-model", "svr"],
        ["--p2s-alpha", "0"],
        ["--p2s-alpha", "nan"],
        ["--patch-radius", "4"],
        ["--patch-radius", "-1"],
        ["--patch-radius", "1", "2"],
        ["--patch-radius", "1", "2", "3", "1"],
        ["--nprocs", "0"],
        ["--omp-nthreads", "x"],
        ["--mem-gb", "0"],
        ["--device", "tpu"],
        ["--participant-label"],
    ],
)
def test_usage_errors_exit_64_not_2(parse, capsys, extra):
    code, err = _usage_exit(capsys, parse, *extra)
    assert code == EXIT_USAGE
    assert "bids-denoise: error:" in err
    assert "usage:" in err


def test_missing_positionals_exit_64(capsys):
    code, err = _usage_exit(capsys, parse_args, [])
    assert code == EXIT_USAGE
    assert "required" in err


# ----------------------------------------------------------------------------- execution
@pytest.mark.parametrize("flag", ["--nprocs", "--nthreads", "--n-cpus", "--n_cpus"])
def test_nprocs_aliases(parse, flag):
    parse(flag, "3")
    assert config.nipype.nprocs == 3
    assert config.nipype.get_plugin()["plugin_args"]["n_procs"] == 3


@pytest.mark.parametrize(("nprocs", "omp"), [(1, 1), (2, 2), (16, 8), (64, 8)])
def test_default_omp_nthreads_is_min_of_nprocs_and_8(parse, nprocs, omp):
    parse("--nprocs", str(nprocs))
    assert config.nipype.omp_nthreads == omp


def test_omp_nthreads_larger_than_nprocs_is_capped_with_a_warning(parse, caplog):
    with caplog.at_level(logging.WARNING, logger="bids_denoise.cli"):
        parse("--nprocs", "2", "--omp-nthreads", "6")
    assert config.nipype.omp_nthreads == 2
    assert any("--omp-nthreads 6" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_omp_nthreads_within_nprocs_is_kept(parse, caplog):
    with caplog.at_level(logging.WARNING, logger="bids_denoise.cli"):
        parse("--nprocs", "4", "--omp-nthreads", "3")
    assert config.nipype.omp_nthreads == 3
    assert not any("--omp-nthreads" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("flag", ["--mem-gb", "--mem_gb"])
def test_mem_gb(parse, flag):
    parse(flag, "12.5")
    assert config.nipype.mem_gb == 12.5
    assert config.nipype.get_plugin()["plugin_args"]["memory_gb"] == 12.5


def test_work_dir_short_and_long(parse, dirs):
    parse("-w", str(dirs["tmp"] / "other"))  # the last -w wins
    assert config.execution.work_dir == dirs["tmp"] / "other"
    assert config.execution.log_dir == dirs["tmp"] / "other" / "logs"
    parse("--work-dir", str(dirs["tmp"] / "third"))
    assert config.execution.work_dir == dirs["tmp"] / "third"


def test_plugin_yaml_linear(parse, dirs):
    path = dirs["tmp"] / "plugin.yml"
    path.write_text("plugin: Linear\nplugin_args:\n  stop_on_first_crash: true\n")
    parse("--use-plugin", str(path))
    assert config.nipype.use_plugin == path
    assert config.nipype.get_plugin() == {"plugin": "Linear", "plugin_args": {"stop_on_first_crash": True}}


def test_plugin_yaml_multiproc_sets_nprocs_and_memory(parse, dirs):
    path = dirs["tmp"] / "plugin.yml"
    path.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 3\n  memory_gb: 5\n  maxtasksperchild: 1\n")
    parse("--use-plugin", str(path))
    assert config.nipype.nprocs == 3
    assert config.nipype.mem_gb == 5.0
    assert config.nipype.omp_nthreads == 3
    assert config.nipype.get_plugin() == {
        "plugin": "MultiProc",
        "plugin_args": {
            "n_procs": 3, "memory_gb": 5.0, "maxtasksperchild": 1, "raise_insufficient": False,
            "mp_context": "spawn",
        },
    }


def test_cli_nprocs_overrides_plugin_yaml(parse, dirs):
    path = dirs["tmp"] / "plugin.yml"
    path.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 3\n")
    parse("--use-plugin", str(path), "--nprocs", "2", "--mem-gb", "1")
    assert config.nipype.nprocs == 2
    assert config.nipype.get_plugin()["plugin_args"]["n_procs"] == 2
    assert config.nipype.get_plugin()["plugin_args"]["memory_gb"] == 1.0


@pytest.mark.parametrize(
    ("content", "expected"),
    [("plugin: [unclosed\n", "not valid YAML"), ("plugin_args: {}\n", "'plugin'"), ("plugin: Linear\nplugin_args: 3\n", "plugin_args")],
)
def test_bad_plugin_yaml_exits_64_naming_the_file(parse, dirs, capsys, content, expected):
    path = dirs["tmp"] / "bad_plugin.yml"
    path.write_text(content)
    code, err = _usage_exit(capsys, parse, "--use-plugin", str(path))
    assert code == EXIT_USAGE
    assert str(path) in err and expected in err


def test_missing_plugin_file_exits_64(parse, dirs, capsys):
    code, err = _usage_exit(capsys, parse, "--use-plugin", str(dirs["tmp"] / "missing.yml"))
    assert code == EXIT_USAGE
    assert "missing.yml" in err


def test_flags(parse):
    parse("--stop-on-first-crash", "--write-graph", "--skip_bids_validation", "--boilerplate-only", "-vv")
    ex = config.execution
    assert ex.stop_on_first_crash and ex.write_graph and ex.skip_bids_validation and ex.boilerplate_only
    assert ex.verbosity == 2 and ex.log_level == 15
    parse("--skip-bids-validation", "--verbose")
    assert config.execution.skip_bids_validation and config.execution.verbosity == 1
    assert config.execution.write_graph is False  # a new parse resets what is not given


# --------------------------------------------------------------------------------- paths
def test_missing_bids_dir_raises_66_with_container_hint(dirs):
    with pytest.raises(MissingInputError) as excinfo:
        parse_args([str(dirs["tmp"] / "absent"), str(dirs["out"]), "participant", "-w", str(dirs["work"])])
    assert excinfo.value.exit_code == EXIT_NO_INPUT
    message = str(excinfo.value)
    assert str(dirs["tmp"] / "absent") in message
    assert "Docker" in message and "mounted" in message


def test_bids_dir_that_is_a_file_raises_66(dirs):
    afile = dirs["tmp"] / "file.txt"
    afile.write_text("x")
    with pytest.raises(MissingInputError):
        parse_args([str(afile), str(dirs["out"]), "participant", "-w", str(dirs["work"])])


@pytest.mark.parametrize("where", [".", "derivatives", "sub/deeper", "sub-01/derivatives"])
def test_output_dir_inside_bids_dir_raises_64(dirs, where):
    out = dirs["bids"] / where
    with pytest.raises(UsageError) as excinfo:
        parse_args([str(dirs["bids"]), str(out), "participant", "-w", str(dirs["work"])])
    assert excinfo.value.exit_code == EXIT_USAGE
    assert "outside" in str(excinfo.value) and "derivatives" in str(excinfo.value)


@pytest.mark.parametrize("where", ["derivatives/bids_denoise", "derivatives/denoised/v1"])
def test_output_dir_in_the_datasets_derivatives_is_allowed(dirs, where):
    """pybids and the BIDS validator skip derivatives/, where many users keep derivatives."""
    out = dirs["bids"] / where
    parse_args([str(dirs["bids"]), str(out), "participant", "-w", str(dirs["work"])])
    assert config.execution.output_dir == out


def test_output_dir_inside_bids_dir_through_a_symlink_raises_64(dirs):
    link = dirs["tmp"] / "link"
    link.symlink_to(dirs["bids"])
    with pytest.raises(UsageError):
        parse_args([str(dirs["bids"]), str(link / "derivatives"), "participant", "-w", str(dirs["work"])])


def test_sibling_with_common_prefix_is_allowed(dirs):
    # "/x/bids-derivatives" starts with the string "/x/bids" but is not inside it
    parse_args([str(dirs["bids"]), str(dirs["tmp"] / "bids-derivatives"), "participant", "-w", str(dirs["work"])])
    assert config.execution.output_dir == dirs["tmp"] / "bids-derivatives"


def test_work_dir_inside_bids_dir_raises_64(dirs):
    with pytest.raises(UsageError) as excinfo:
        parse_args([str(dirs["bids"]), str(dirs["out"]), "participant", "-w", str(dirs["bids"] / "work")])
    assert "work" in str(excinfo.value)


def test_work_dir_equal_to_output_dir_raises_64(dirs):
    with pytest.raises(UsageError):
        parse_args([str(dirs["bids"]), str(dirs["out"]), "participant", "-w", str(dirs["out"])])


# ---------------------------------------------------------------------- version and help
def test_version(capsys):
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"bids-denoise v{__version__}"


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["--help"])
    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    for option in EXPECTED_OPTIONS:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    for positional in ("bids_dir", "output_dir", "analysis_level"):
        assert positional in text


def test_every_option_explains_itself_and_its_default():
    parser = _build_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        assert action.help and len(action.help) > 40, action.option_strings
        assert "default" in action.help.lower(), action.option_strings
    for action in parser._actions:
        if not action.option_strings:
            assert action.help and len(action.help) > 40, action.dest


def test_help_states_the_engine_defaults():
    from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE

    actions = {a.dest: a for a in _build_parser()._actions}
    assert f"Default: {B0_THRESHOLD:g}" in actions["b0_threshold"].help
    assert f"Default: {SHELL_TOLERANCE:g}" in actions["shell_tolerance"].help
    assert actions["b0_threshold"].default == B0_THRESHOLD
    assert actions["shell_tolerance"].default == SHELL_TOLERANCE


def test_parse_does_not_import_torch_for_help():
    """``--help`` stays fast: building the parser must not load PyTorch."""
    import subprocess
    import sys

    code = "import sys; import bids_denoise.cli.parser as p; p._build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_options_are_not_abbreviated(parse, capsys):
    code, _ = _usage_exit(capsys, parse, "--p2s-mod", "ols")
    assert code == EXIT_USAGE


def test_parsed_namespace_is_returned(parse):
    opts = parse("--p2s-model", "lasso")
    assert opts.p2s_model == "lasso"
    assert isinstance(opts.bids_dir, Path)


@pytest.mark.parametrize("extra, grouping", [
    ((), "all"), (("--method", "mppca"), "all"), (("--method", "ddm2"), "shell"),
    (("--method", "ddm2", "--shell-grouping", "all"), "all"), (("--shell-grouping", "shell"), "shell"),
])
def test_the_grouping_default_depends_on_the_method(parse, extra, grouping):
    parse(*extra)
    assert config.workflow.shell_grouping == grouping
