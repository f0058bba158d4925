"""The ready-made recipes under ``workflows/``: the Slurm array script, the Nipype plugin
files, and the scripts that run them on a real Slurm cluster (``make test-slurm``)."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import yaml

from bids_denoise import config
from bids_denoise.data import example_dataset

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
SBATCH = WORKFLOWS / "slurm" / "bids_denoise_array.sbatch"
PLUGIN_FILES = sorted((WORKFLOWS / "plugins").glob("*.yml"))
CI_SCRIPTS = [REPO / "scripts" / "ci" / name for name in ("start_slurm.sh", "test_slurm.sh")]
SBATCH_OPTION_RE = re.compile(r"^(--[a-z][a-z-]*)(=\S+)?$|^(-[A-Za-z])$")
#: sbatch long options, for when sbatch itself is not installed to ask (`sbatch --help`).
KNOWN_SBATCH_OPTIONS = {
    "--account", "--array", "--chdir", "--constraint", "--cpus-per-gpu", "--cpus-per-task", "--error",
    "--exclusive", "--export", "--gpus", "--gpus-per-node", "--gpus-per-task", "--gres", "--job-name",
    "--mail-type", "--mail-user", "--mem", "--mem-per-cpu", "--mem-per-gpu", "--nodes", "--ntasks",
    "--output", "--partition", "--qos", "--time", "--tmp",
}


def _sbatch_options() -> set[str]:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return KNOWN_SBATCH_OPTIONS
    text = subprocess.run([sbatch, "--help"], capture_output=True, text=True, timeout=30).stdout
    return set(re.findall(r"(--[a-z][a-z-]+)", text)) or KNOWN_SBATCH_OPTIONS


# ------------------------------------------------------------------------- the sbatch script
def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_directives_parse_and_precede_the_first_command():
    lines = SBATCH.read_text().splitlines()
    assert lines[0].startswith("#!/bin/bash")
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    known = _sbatch_options()
    directives = []
    for number, line in enumerate(lines):
        match = re.match(r"^(#{1,2})SBATCH\s+(.*)$", line)
        if not match:
            assert "SBATCH" not in line.split("#", 1)[0], f"line {number + 1}: {line}"
            continue
        # sbatch stops reading #SBATCH lines at the first command
        assert number < first_command, f"#SBATCH on line {number + 1} comes after the first command"
        option = match.group(2).strip()
        assert SBATCH_OPTION_RE.match(option), f"line {number + 1}: cannot parse {option!r}"
        assert option.split("=", 1)[0] in known, f"line {number + 1}: unknown sbatch option {option!r}"
        directives.append((match.group(1) == "#", option))
    active = {option.split("=", 1)[0] for is_active, option in directives if is_active}
    commented = {option.split("=", 1)[0] for is_active, option in directives if not is_active}
    assert {"--cpus-per-task", "--mem", "--time", "--output"} <= active
    assert "--gres" in commented and "--gres" not in active  # the GPU is opt-in


def test_every_setting_is_documented_in_the_header():
    text = SBATCH.read_text()
    header = text.split("#SBATCH", 1)[0]
    settings = re.findall(r"^([A-Z_]+)=\$\{\1:-", text, flags=re.MULTILINE)
    assert {"BIDS_DIR", "OUTPUT_DIR", "IMAGE", "WORKDIR", "PARTICIPANTS_FILE", "GPU", "DRY_RUN"} <= set(settings)
    for name in settings:
        assert re.search(rf"^#\s+{name}\s", header, flags=re.MULTILINE), f"{name} is not explained in the header"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", [SBATCH, *CI_SCRIPTS], ids=lambda p: p.name)
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", CI_SCRIPTS, ids=lambda p: p.name)
def test_ci_scripts_are_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _render(tmp_path, **env):
    """Run the array script with only ``env`` (and PATH) in the environment."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "DRY_RUN": "1", "GPU": "0"}
    full.update({key: str(value) for key, value in env.items()})
    return subprocess.run(["bash", str(SBATCH)], env=full, capture_output=True, text=True, timeout=60)


def _command(result) -> list[str]:
    lines = [line for line in result.stdout.splitlines() if not line.startswith("bids_denoise_array:")]
    assert len(lines) == 1, result.stdout
    import shlex

    return shlex.split(lines[0])


@pytest.fixture
def array_env(tmp_path):
    return {
        "BIDS_DIR": example_dataset(),
        "OUTPUT_DIR": tmp_path / "derivatives",
        "IMAGE": tmp_path / "bids_denoise.sif",
        "SCRATCH": tmp_path / "scratch",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_MEM_PER_NODE": "16384",
    }


@pytest.mark.parametrize(("task", "label"), [(1, "01"), (2, "02")])
def test_dry_run_renders_the_container_command_of_the_task(tmp_path, array_env, task, label):
    result = _render(tmp_path, SLURM_ARRAY_TASK_ID=task, **array_env)
    assert result.returncode == 0, result.stderr
    command = _command(result)
    workdir = tmp_path / "scratch" / "bids_denoise_work" / f"sub-{label}"
    joined = " ".join(command)
    assert command[:3] == ["apptainer", "run", "--cleanenv"]
    assert "--nv" not in command
    assert f"-B {example_dataset()}:/data:ro" in joined
    assert f"-B {tmp_path / 'derivatives'}:/out" in joined
    assert f"-B {workdir}:/work" in joined
    image = command.index(str(tmp_path / "bids_denoise.sif"))
    assert command[image + 1 : image + 4] == ["/data", "/out", "participant"]
    assert command[command.index("--participant-label") + 1] == label
    assert command[command.index("-w") + 1] == "/work"
    assert command[command.index("--nprocs") + 1] == "4"
    assert command[command.index("--mem-gb") + 1] == "16.0"
    assert "--skip-bids-validation" in command
    assert not workdir.exists(), "a dry run must not create the work dir"
    assert f"task {task}/2: sub-{label}" in result.stdout


def test_gpu_participants_file_and_memory_per_cpu(tmp_path, array_env):
    listing = tmp_path / "participants.txt"
    listing.write_text("# pilot subjects first\nsub-02\n\n01  \n")
    array_env.pop("SLURM_MEM_PER_NODE")
    result = _render(
        tmp_path, SLURM_ARRAY_TASK_ID=1, GPU=1, PARTICIPANTS_FILE=listing, SLURM_MEM_PER_CPU=2048,
        WORKDIR=tmp_path / "work", EXTRA_ARGS="--shell-grouping all --patch-radius 1", RUNTIME="singularity",
        **array_env,
    )
    assert result.returncode == 0, result.stderr
    command = _command(result)
    assert command[:4] == ["singularity", "run", "--cleanenv", "--nv"]
    assert command[command.index("--participant-label") + 1] == "02"
    assert f"{tmp_path / 'work' / 'sub-02'}:/work" in command
    assert command[command.index("--mem-gb") + 1] == "8.0"  # 2048 MB x 4 CPUs
    assert command[-4:] == ["--shell-grouping", "all", "--patch-radius", "1"]


def test_participant_id_column_is_found_anywhere_in_participants_tsv(tmp_path, array_env):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("age\tparticipant_id\tsex\r\n30\tsub-ctl01\tF\r\n41\tsub-pat07\tM\r\n")
    array_env["BIDS_DIR"] = bids
    result = _render(tmp_path, SLURM_ARRAY_TASK_ID=2, **array_env)
    assert result.returncode == 0, result.stderr
    command = _command(result)
    assert command[command.index("--participant-label") + 1] == "pat07"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3"}, "array task 3, but only 2 participants"),
        ({"SLURM_ARRAY_TASK_ID": "0"}, "array task ids start at 1"),
        ({}, "SLURM_ARRAY_TASK_ID is not set"),
        ({"SLURM_ARRAY_TASK_ID": "1", "BIDS_DIR": ""}, "set BIDS_DIR"),
        ({"SLURM_ARRAY_TASK_ID": "1", "IMAGE": ""}, "set IMAGE"),
        ({"SLURM_ARRAY_TASK_ID": "1", "GPU": "maybe"}, "GPU must be"),
    ],
)
def test_mistakes_stop_with_a_message(tmp_path, array_env, changes, message):
    array_env.update(changes)
    result = _render(tmp_path, **array_env)
    assert result.returncode == 64
    assert message in result.stderr


def test_validate_only_checks_the_whole_dataset_once(tmp_path, array_env):
    result = _render(tmp_path, VALIDATE_ONLY=1, **array_env)
    assert result.returncode == 0, result.stderr
    command = _command(result)
    assert "--boilerplate-only" in command
    assert "--skip-bids-validation" not in command and "--participant-label" not in command


def test_runtime_none_runs_the_command_and_cleans_the_work_dir(tmp_path, array_env):
    """Without DRY_RUN the command really runs; its exit status is the task's."""
    recorder = tmp_path / "bids-denoise"
    recorder.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\nexit "${FAKE_STATUS:-0}"\n')
    recorder.chmod(0o755)
    common = dict(array_env, RUNTIME="none", BIDS_DENOISE=recorder, DRY_RUN=0, SLURM_ARRAY_TASK_ID=1,
                  RECORD=tmp_path / "args.txt", WORKDIR=tmp_path / "work")
    common.pop("IMAGE")
    ok = _render(tmp_path, CLEAN_WORKDIR=1, **common)
    assert ok.returncode == 0, ok.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")
    assert args[:3] == [str(example_dataset()), str(tmp_path / "derivatives"), "participant"]
    assert args[args.index("-w") + 1] == str(tmp_path / "work" / "sub-01")
    assert not (tmp_path / "work" / "sub-01").exists()  # CLEAN_WORKDIR=1 after success
    failed = _render(tmp_path, CLEAN_WORKDIR=1, FAKE_STATUS=16, **common)
    assert failed.returncode == 16
    assert (tmp_path / "work" / "sub-01").is_dir()  # kept to resume
    assert "finished with exit status 16" in failed.stdout


# --------------------------------------------------------------------------- plugin files
@pytest.fixture
def clean_config():
    from nipype import config as ncfg

    saved = {s: dict(ncfg._config.items(s, raw=True)) for s in ncfg._config.sections()}
    config.reset()
    yield
    config.reset()
    for section, values in saved.items():
        for key, value in values.items():
            ncfg._config.set(section, key, value)


def _plugin_class(name):
    from nipype.pipeline import plugins

    return getattr(plugins, f"{name}Plugin", None)


def _accepted_plugin_args(cls) -> set[str]:
    """The plugin_args keys that a Nipype plugin class (or its bases) reads."""
    keys = set()
    for klass in inspect.getmro(cls):
        if not klass.__module__.startswith("nipype"):
            continue
        source = inspect.getsource(sys.modules[klass.__module__])
        keys |= set(re.findall(r"plugin_args(?:\"\])?(?:\.get\(|\[)\s*[\"'](\w+)[\"']", source))
        keys |= set(re.findall(r"[\"'](\w+)[\"']\s+in\s+(?:kwargs\[\"plugin_args\"\]|(?:self\.)?plugin_args)", source))
    return keys


def test_the_recipes_cover_local_slurm_and_sge():
    assert {p.name for p in PLUGIN_FILES} >= {"multiproc.yml", "slurm.yml", "slurm_graph.yml", "sge.yml"}


@pytest.mark.parametrize("plugin_file", PLUGIN_FILES, ids=lambda p: p.name)
def test_plugin_file_names_a_nipype_plugin_and_its_arguments(plugin_file, monkeypatch):
    settings = yaml.safe_load(plugin_file.read_text())
    assert set(settings) <= {"plugin", "plugin_args"}
    cls = _plugin_class(settings["plugin"])
    assert cls is not None, f"nipype.pipeline.plugins has no {settings['plugin']}Plugin"
    args = settings.get("plugin_args") or {}
    unknown = set(args) - _accepted_plugin_args(cls)
    assert not unknown, f"{settings['plugin']} does not read plugin_args {sorted(unknown)}"
    if "sbatch_args" in args:
        assert "--export=ALL" in args["sbatch_args"]  # the venv and thread settings must reach the jobs
        assert not re.search(r"(^|\s)(-o|-e|--output|--error)\b", args["sbatch_args"])
    from nipype.pipeline.plugins import sge

    monkeypatch.setattr(sge.QstatSubstitute, "_run_qstat", lambda *a, **k: None)  # no qstat here
    cls(plugin_args=dict(args))  # what Workflow.run does with the plugin name


@pytest.mark.parametrize("plugin_file", PLUGIN_FILES, ids=lambda p: p.name)
def test_the_app_accepts_the_plugin_file(plugin_file, tmp_path, clean_config):
    from bids_denoise.cli.parser import parse_args

    settings = yaml.safe_load(plugin_file.read_text())
    parse_args([str(example_dataset()), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                "--nprocs", "3", "--use-plugin", str(plugin_file)])
    plugin = config.nipype.get_plugin()
    assert plugin["plugin"] == settings["plugin"]
    assert config.nipype.use_plugin == plugin_file
    for key, value in (settings.get("plugin_args") or {}).items():
        assert plugin["plugin_args"][key] == value
    if settings["plugin"] in config.MULTIPROC_PLUGINS:
        assert plugin["plugin_args"]["n_procs"] == 3  # --nprocs wins over the file
    # the configuration round-trips through the run's config.toml
    saved = config.to_filename(tmp_path / "config.toml")
    config.reset()
    config.load(saved)
    assert config.nipype.get_plugin() == plugin


# ---------------------------------------------------------------- the comparison used by CI
def _compare(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "ci" / "compare_derivatives.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _fake_derivatives(root: Path, value=1.0, runtime=1.5):
    (root / "sub-01" / "dwi").mkdir(parents=True)
    data = np.full((3, 3, 2, 4), value, np.float32)
    nb.Nifti1Image(data, np.eye(4)).to_filename(root / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.nii.gz")
    sidecar = {"RunTime": runtime, "Devices": ["cpu"],
               "VolumeGroups": [{"Label": "b0", "Device": "cpu", "Count": 4,
                                 "ErrorEstimate": {"EstimatedRMSE": 2.5, "Seconds": runtime / 10}}]}
    (root / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.json").write_text(json.dumps(sidecar))
    (root / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.bval").write_text("0 1000 1000 1000\n")
    (root / ".bids_denoise.lock").write_text("")


def test_compare_derivatives_ignores_volatile_keys_and_tiny_differences(tmp_path):
    _fake_derivatives(tmp_path / "a")
    _fake_derivatives(tmp_path / "b", value=1.0 + 1e-7, runtime=99.0)
    result = _compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("MATCH: 3 files")


def test_compare_derivatives_scales_the_image_tolerance_with_its_range(tmp_path):
    """A rounding difference near the noise floor of a bright image passes; on a dim image it does not."""
    for name, peak in (("bright", 2000.0), ("dim", 1.0)):
        for side, extra in (("a", 0.0), ("b", 4e-4)):
            _fake_derivatives(tmp_path / name / side, value=peak)
            path = tmp_path / name / side / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.nii.gz"
            data = np.asanyarray(nb.load(path).dataobj).copy()
            data[0, 0, 0, 1] = 0.005 * peak + extra  # a low value, where --rtol gives no slack
            nb.Nifti1Image(data, np.eye(4)).to_filename(path)
    assert _compare(tmp_path / "bright" / "a", tmp_path / "bright" / "b").returncode == 0
    dim = _compare(tmp_path / "dim" / "a", tmp_path / "dim" / "b")
    assert dim.returncode == 1 and "voxel values differ" in dim.stdout
    strict = _compare(tmp_path / "bright" / "a", tmp_path / "bright" / "b", "--range-tol", "0")
    assert strict.returncode == 1 and "1 voxel values differ" in strict.stdout


def test_compare_derivatives_reports_differences(tmp_path):
    _fake_derivatives(tmp_path / "a")
    _fake_derivatives(tmp_path / "b", value=1.01)
    sidecar = tmp_path / "b" / "sub-01" / "dwi" / "sub-01_desc-denoised_dwi.json"
    sidecar.write_text(sidecar.read_text().replace('"Count": 4', '"Count": 5'))
    (tmp_path / "b" / "extra.tsv").write_text("x\n")
    result = _compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 1
    assert "extra.tsv: only in B" in result.stdout
    assert "voxel values differ" in result.stdout
    assert "$.VolumeGroups[0].Count: 4 vs 5" in result.stdout


def test_compare_derivatives_matches_run_records_by_name_and_needs_figures_to_have_content(tmp_path):
    for side, run_id in (("a", "20250101-120000_1a2b3c4d"), ("b", "20260202-130000_5e6f7a8b")):
        _fake_derivatives(tmp_path / side)
        (tmp_path / side / "logs").mkdir()
        (tmp_path / side / "logs" / f"config-{run_id}.toml").write_text(f"run_uuid = '{run_id}'\n")
        (tmp_path / side / "sub-01.html").write_text(f"<p>{side}</p>")
    result = _compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 0, result.stdout
    (tmp_path / "b" / "sub-01.html").write_text("")
    (tmp_path / "a" / "logs" / "config-20250101-120000_1a2b3c4d.toml").unlink()
    result = _compare(tmp_path / "a", tmp_path / "b", "--ignore-key", "Count")
    assert result.returncode == 1
    assert "sub-01.html: empty in B" in result.stdout
    assert "logs/config-<run_uuid>.toml: only in B" in result.stdout


# --------------------------------------------------------------------- a real Slurm cluster
def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_answers(), reason="no Slurm cluster answers (scripts/ci/start_slurm.sh starts one)")
def test_the_app_on_slurm_equals_multiproc(tmp_path):
    """scripts/ci/test_slurm.sh against the running cluster (which it leaves running)."""
    env = dict(os.environ, PYTHON=sys.executable, SLURM_TEST_DIR=str(tmp_path / "slurm_test"))
    result = subprocess.run(["bash", str(REPO / "scripts" / "ci" / "test_slurm.sh")], env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "all Slurm modes match the MultiProc run" in result.stdout
