""".circleci/config.yml runs the same container checks as ``make test-container``.

The CircleCI jobs call ``scripts/ci/test_container.sh`` with a list of steps; the Makefile's
``test-container`` target calls the same script with no steps (= all of them). These tests
keep the three in step: every step CircleCI names exists in the script, together the jobs run
every step the script runs by default, the jobs depend on each other as in nipreps (build once,
then unit/smoke, then a re-run that reuses the smoke job's work dir, deploy on tags only), and
the expected-output list matches the bundled example dataset.

They also keep ``.ci/run``, the Makefile's test targets and pyproject.toml's default selection in
step: plain ``pytest`` and ``make test-fast`` leave out the ``slow`` tests, ``make test`` (which
``.ci/run`` calls) runs every test, and every test file the CI files name exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / ".circleci" / "config.yml"
MAKEFILE = REPO_ROOT / "Makefile"
SCRIPT = REPO_ROOT / "scripts" / "ci" / "test_container.sh"
OUTPUTS = REPO_ROOT / ".circleci" / "example_ds_outputs.txt"
CI_RUN = REPO_ROOT / ".ci" / "run"
PYPROJECT = REPO_ROOT / "pyproject.toml"
SCRIPT_RELATIVE = "scripts/ci/test_container.sh"

pytestmark = pytest.mark.skipif(not (CONFIG.is_file() and MAKEFILE.is_file() and SCRIPT.is_file()),
                                reason="the CI files are not beside the tests (e.g. inside the test image)")


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CONFIG.read_text())


def _script_steps() -> tuple[list, set]:
    """(default steps, every accepted step) of scripts/ci/test_container.sh."""
    text = SCRIPT.read_text()
    default = re.search(r"^ALL_STEPS=\(([^)]*)\)", text, re.MULTILINE).group(1).split()
    case = re.search(r"^\s*((?:[\w-]+\s*\|\s*)+[\w-]+)\)\s*$", text, re.MULTILINE).group(1)
    accepted = {step.strip() for step in case.split("|")}
    return default, accepted


def _makefile_targets() -> dict:
    """Makefile targets and their recipe lines."""
    targets, current = {}, None
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-]+)\s*:(?!=)(.*)$", line)
        if match and not line.startswith("\t"):
            current = match.group(1)
            targets[current] = []
        elif line.startswith("\t") and current:
            targets[current].append(line.strip())
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            current = None
    return targets


def _run_commands(job: dict, commands: dict) -> list:
    """Shell commands of a job, with reusable ``commands:`` expanded."""
    out = []
    for step in job.get("steps", []):
        if isinstance(step, str):
            name, body = step, None
        else:
            name, body = next(iter(step.items()))
        if name == "run":
            out.append(body["command"] if isinstance(body, dict) else body)
        elif name in commands:
            out += _run_commands(commands[name], commands)
    return out


def _script_calls(job: dict, commands: dict) -> list:
    """Steps passed to scripts/ci/test_container.sh by each call in the job."""
    calls = []
    for command in _run_commands(job, commands):
        for line in command.splitlines():
            if SCRIPT_RELATIVE not in line:
                continue
            words = shlex.split(line)
            index = next(i for i, w in enumerate(words) if w.endswith(SCRIPT_RELATIVE))
            calls.append(words[index + 1:])
    return calls


# ----------------------------------------------------------------------------------------------
def test_config_is_valid_circleci_2_1(config):
    assert str(config["version"]) == "2.1"
    assert {"jobs", "workflows"} <= set(config)


def test_jobs_as_in_nipreps(config):
    assert {"build", "unit", "smoke", "rerun", "deploy"} <= set(config["jobs"])


def test_makefile_target_calls_the_script():
    targets = _makefile_targets()
    assert "test-container" in targets, "Makefile has no test-container target"
    recipe = " ".join(targets["test-container"])
    assert SCRIPT_RELATIVE in recipe
    # Called with no step arguments (the script's default: all steps), or with a make
    # variable that is empty unless set on the command line.
    after = recipe.split(SCRIPT_RELATIVE, 1)[1].strip()
    variable = re.fullmatch(r"\$\((\w+)\)", after)
    if variable:
        default = re.search(rf"^{variable.group(1)}\s*\??=(.*)$", MAKEFILE.read_text(), re.MULTILINE)
        assert default and default.group(1).strip() == "", f"{variable.group(1)} must default to empty"
    else:
        assert after == "" or after.startswith(("&&", ";", "|")), after
    assert "test-container" in re.search(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.MULTILINE).group(1)


def test_the_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash")


def test_every_step_named_in_circleci_exists(config):
    _, accepted = _script_steps()
    commands = config.get("commands", {})
    for name, job in config["jobs"].items():
        for steps in _script_calls(job, commands):
            assert steps, f"job {name} calls the script without steps (that would run everything)"
            unknown = set(steps) - accepted
            assert not unknown, f"job {name} calls unknown step(s) {unknown}"


def test_circleci_runs_every_step_of_make_test_container(config):
    default, _ = _script_steps()
    commands = config.get("commands", {})
    ran = {step for job in config["jobs"].values() for call in _script_calls(job, commands) for step in call}
    missing = set(default) - ran
    assert not missing, f"make test-container runs {sorted(missing)} but no CircleCI job does"


def test_job_order(config):
    commands = config.get("commands", {})
    jobs = {}
    for entry in config["workflows"]["build_test_deploy"]["jobs"]:
        name, settings = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        jobs[name] = settings or {}
    assert set(jobs) >= {"build", "unit", "smoke", "rerun", "deploy"}
    assert jobs["unit"]["requires"] == ["build"] and jobs["smoke"]["requires"] == ["build"]
    assert jobs["rerun"]["requires"] == ["smoke"]
    assert set(jobs["deploy"]["requires"]) == {"unit", "smoke", "rerun"}
    deploy_filters = jobs["deploy"]["filters"]
    assert deploy_filters["branches"]["ignore"] == "/.*/" and deploy_filters["tags"]["only"]
    # The steps each job needs come in the right order.
    calls = {name: [s for call in _script_calls(job, commands) for s in call]
             for name, job in config["jobs"].items()}
    build = calls["build"]
    assert build.index("build") < build.index("save") and build.index("base") < build.index("build")
    for name in ("unit", "smoke", "rerun", "deploy"):
        assert calls[name][0] == "load", f"job {name} must load the image first"
    assert calls["smoke"].index("smoke") < calls["smoke"].index("compare")
    assert "unit" in calls["unit"] and "rerun" in calls["rerun"]


def test_workspace_carries_the_image_and_the_work_dir(config):
    env = config["executors"]["docker-vm"]["environment"]
    root = "/tmp/workspace"
    assert env["IMAGE_ARCHIVE"].startswith(root + "/images/")
    assert env["CI_DIR"].startswith(root + "/")
    persisted = {name: [p for step in job["steps"] if isinstance(step, dict)
                        for p in step.get("persist_to_workspace", {}).get("paths", [])]
                 for name, job in config["jobs"].items()}
    assert "images" in persisted["build"]
    smoke_dir = Path(env["CI_DIR"], "smoke").relative_to(root).as_posix()
    assert smoke_dir in persisted["smoke"], "the rerun job needs the smoke job's out and work dirs"


def test_base_image_matches_the_dockerfile_suite(config):
    base = config["executors"]["docker-vm"]["environment"]["BASE_IMAGE"]
    default = re.search(r"^ARG BASE_IMAGE=(\S+)", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base.split(":")[1] == default.split(":")[1] == "bookworm-slim"


def test_expected_output_list_matches_the_example_dataset():
    from bids_denoise.data import example_dataset

    lines = OUTPUTS.read_text().splitlines()
    assert lines == sorted(set(lines)), "sorted (LC_ALL=C), one path per line, no duplicates"
    assert all(line and not line.startswith(("/", "./")) and ".bids_denoise.lock" not in line for line in lines)
    expected = {"dataset_description.json", ".bidsignore", "logs/CITATION.md"}
    for raw in example_dataset().rglob("sub-*_dwi.nii.gz"):
        rel = raw.relative_to(example_dataset()).as_posix().replace("_dwi.nii.gz", "")
        expected |= {f"{rel}_desc-denoised_dwi{ext}" for ext in (".nii.gz", ".json", ".bval", ".bvec")}
        expected |= {f"{rel}_desc-noise_dwimap{ext}" for ext in (".nii.gz", ".json")}
    assert expected <= set(lines), sorted(expected - set(lines))


# ----------------------------------------------------------------------------------------------
# make test / make test-fast / plain pytest / .ci/run
# ----------------------------------------------------------------------------------------------
#: One test per marker that decides a selection, and an unmarked one.
PROBE_TESTS = """
import pytest


def test_unmarked():
    pass


@pytest.mark.slow
def test_slow():
    pass


@pytest.mark.slow
@pytest.mark.gpu
def test_slow_gpu():
    pass


@pytest.mark.gpu
def test_gpu():
    pass


@pytest.mark.container
def test_container():
    pass


@pytest.mark.slurm
def test_slurm():
    pass
"""
ALL_PROBES = {"test_unmarked", "test_slow", "test_slow_gpu", "test_gpu", "test_container", "test_slurm"}


def _make_pytest_args(target: str) -> list:
    """The pytest arguments of a Makefile target (what follows ``python -m pytest``), less ``-n N``."""
    recipe = _makefile_targets()[target]
    (line,) = [line for line in recipe if "-m pytest" in line]
    words = shlex.split(line)
    args = words[words.index("pytest") + 1:]
    while "-n" in args:  # xdist's worker count does not change the selection
        index = args.index("-n")
        del args[index:index + 2]
    return args


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A project with this pyproject.toml (markers, addopts, testpaths) and the probe tests."""
    root = tmp_path_factory.mktemp("selection")
    shutil.copy(PYPROJECT, root / "pyproject.toml")
    (root / "tests").mkdir()
    (root / "tests" / "test_probe.py").write_text(PROBE_TESTS)
    return root


def _selected(root: Path, args: list) -> set:
    """Names of the probe tests that ``pytest ARGS`` selects, run in ``root``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.split("::", 1)[1] for line in result.stdout.splitlines() if "::" in line}


def test_plain_pytest_leaves_out_the_slow_tests(probe):
    assert _selected(probe, []) == ALL_PROBES - {"test_slow", "test_slow_gpu"}


def test_make_test_fast_is_what_plain_pytest_runs(probe):
    args = _make_pytest_args("test-fast")
    assert _selected(probe, args) == _selected(probe, [])


def test_make_test_runs_every_test(probe):
    """Its -m replaces the default one; the gpu, container and slurm tests skip themselves."""
    args = _make_pytest_args("test")
    assert "tests" in args
    assert _selected(probe, args) == ALL_PROBES


@pytest.mark.skipif(not CI_RUN.is_file(), reason=".ci/run is not beside the tests (e.g. inside the test image)")
def test_ci_runs_make_test():
    commands = [line.strip() for line in CI_RUN.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for target in ("test", "test-container", "test-slurm"):
        assert f"make {target}" in commands, f".ci/run does not run make {target}"


def test_every_test_file_named_by_ci_exists():
    files = [MAKEFILE, CONFIG, *sorted((REPO_ROOT / "scripts" / "ci").glob("*.sh"))]
    if CI_RUN.is_file():
        files.append(CI_RUN)
    named = {(path.name, match) for path in files
             for match in re.findall(r"\btests/[\w/]+\.py\b", path.read_text())}
    assert any(match == "tests/system/test_container_image.py" for _, match in named)
    missing = sorted((name, match) for name, match in named if not (REPO_ROOT / match).is_file())
    assert not missing, missing
