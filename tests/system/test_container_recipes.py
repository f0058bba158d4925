"""The container recipes: Dockerfile, singularity.def, .dockerignore (no Docker needed).

Apptainer cannot be installed where the tests run, so ``singularity.def`` is checked by parsing
it against the Dockerfile: the same entry point, OCI labels and environment, with the caches
moved to a writable place at run time (its ``%environment`` script is run with ``sh``). The
last test runs the app with a read-only copy of the package, as inside a read-only image.

The parsers understand the subset of syntax the recipes use (line continuations, exec-form
ENTRYPOINT, ``KEY=VALUE`` ENV/LABEL, ``export KEY=VALUE``): a recipe that drifts from it fails
here loudly rather than being misread.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys

import pytest

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
SINGULARITY_DEF = REPO_ROOT / "singularity.def"

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def substitute(value: str, variables: dict) -> str:
    """Expand ``$VAR`` and ``${VAR}`` from ``variables`` (unknown names stay as written)."""
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str | None
    parent: str
    instructions: list = field(default_factory=list)

    def all(self, keyword: str) -> list:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict
    stages: list
    directives: list

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def chain(self, name: str) -> list:
        """The stage and its ancestors inside this Dockerfile, base first."""
        chain = []
        stage = self.stage(name)
        while True:
            chain.insert(0, stage)
            try:
                stage = self.stage(stage.parent)
            except KeyError:
                return chain

    def _pairs(self, name: str, keyword: str) -> dict:
        variables = dict(self.global_args)
        values: dict = {}
        for stage in self.chain(name):
            for inst in stage.instructions:
                if inst.keyword == "ARG":
                    key, _, default = inst.args.partition("=")
                    variables[key.strip()] = default.strip().strip('"')
                elif inst.keyword in ("ENV", "LABEL"):
                    for key, value in parse_pairs(inst.args).items():
                        value = substitute(value, {**variables, **(values if keyword == "ENV" else {})})
                        if inst.keyword == keyword:
                            values[key] = value
                        if inst.keyword == "ENV":
                            variables[key] = value
        return values

    def env(self, name: str) -> dict:
        """ENV of the image built with ``--target name`` (ARG defaults substituted)."""
        return self._pairs(name, "ENV")

    def labels(self, name: str) -> dict:
        """LABELs of the image built with ``--target name`` (ARG defaults substituted)."""
        return self._pairs(name, "LABEL")

    def last(self, name: str, keyword: str) -> Instruction | None:
        found = None
        for stage in self.chain(name):
            for inst in stage.all(keyword):
                found = inst
        return found

    def arg_default(self, key: str) -> str | None:
        if key in self.global_args:
            return self.global_args[key]
        for stage in self.stages:
            for inst in stage.all("ARG"):
                name, sep, default = inst.args.partition("=")
                if name.strip() == key and sep:
                    return default.strip().strip('"')
        return None


def parse_pairs(args: str) -> dict:
    """``KEY=VALUE KEY2="VALUE 2"`` (ENV, LABEL) as a dict; refuses the legacy ``ENV KEY VALUE``."""
    pairs = {}
    for token in shlex.split(args, posix=True):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"not a KEY=VALUE pair: {token!r} in {args!r}")
        pairs[key] = value
    return pairs


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Instructions grouped by stage; continuation lines joined, comments dropped."""
    lines = path.read_text().splitlines()
    directives = [l for l in lines if re.match(r"^#\s*\w+\s*=", l)]
    logical, buffer, start = [], "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        logical.append((start, buffer))
        buffer = ""
    global_args, stages = {}, []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            if not match:
                raise ValueError(f"cannot parse FROM at line {number}: {args}")
            stages.append(Stage(name=match.group(2), parent=match.group(1)))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM (line {number})")
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return Dockerfile(path=path, global_args=global_args, stages=stages, directives=directives)


def exec_form(args: str) -> list:
    """The JSON array of an exec-form ENTRYPOINT/CMD."""
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form array: {args}")
    return value


# ----------------------------------------------------------------------------- singularity.def
@dataclass
class DefinitionFile:
    header: dict
    sections: dict
    comments: list


def parse_definition(path: Path = SINGULARITY_DEF) -> DefinitionFile:
    """Header keywords (``Bootstrap``, ``From``) and ``%section`` bodies of a definition file."""
    header, sections, comments = {}, {}, []
    current = None
    for raw in path.read_text().splitlines():
        if raw.startswith("%"):
            current = raw[1:].split()[0]
            if current in sections:
                raise ValueError(f"section %{current} appears twice")
            sections[current] = []
            continue
        if current is None:
            stripped = raw.strip()
            if stripped.startswith("#"):
                comments.append(stripped)
            elif stripped:
                key, sep, value = stripped.partition(":")
                if not sep:
                    raise ValueError(f"bad header line: {raw!r}")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(raw)
    return DefinitionFile(header=header, sections={k: "\n".join(v).strip("\n") for k, v in sections.items()},
                          comments=comments)


def definition_labels(body: str) -> dict:
    """``%labels``: one ``KEY VALUE`` per line."""
    labels = {}
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            labels[key] = value.strip()
    return labels


def definition_exports(body: str) -> dict:
    """``export KEY=VALUE`` lines of ``%environment`` (values unquoted, not expanded)."""
    exports = {}
    for line in body.splitlines():
        match = re.match(r"^\s*export\s+(\w+)=(.*)$", line)
        if match:
            exports[match.group(1)] = shlex.split(match.group(2))[0] if match.group(2) else ""
    return exports


# ==============================================================================================
# The recipes, as parsed once
# ==============================================================================================
needs_recipes = pytest.mark.skipif(
    not (DOCKERFILE.is_file() and SINGULARITY_DEF.is_file()),
    reason="the container recipes are not beside the tests (e.g. inside the test image)",
)
pytestmark = needs_recipes

#: The target users run (the Dockerfile's last stage) and the stage holding the runtime setup.
PRODUCTION = "production"
#: Cache locations that must be writable at run time (Docker: under HOME; Apptainer: re-rooted).
CACHE_VARS = ("XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "TRITON_CACHE_DIR")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
OCI_REQUIRED = ("title", "description", "version", "source", "licenses", "revision")
#: Set by the Apptainer runtime itself (HOME) or only meaningful to Docker.
NOT_IN_DEFINITION = ("HOME",)


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


@pytest.fixture(scope="module")
def definition():
    return parse_definition()


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _image_name(dockerfile) -> str:
    return f"{dockerfile.arg_default('IMAGE_NAME')}:{dockerfile.arg_default('VERSION')}"


# ==============================================================================================
# Dockerfile
# ==============================================================================================
def test_base_image_is_a_bookworm_slim_build_arg(dockerfile):
    default = dockerfile.global_args.get("BASE_IMAGE")
    assert default and "bookworm" in default and "slim" in default
    assert dockerfile.stages[0].parent in ("${BASE_IMAGE}", "$BASE_IMAGE")
    # Every stage starts from the base image or from another stage of this file.
    names = {s.name for s in dockerfile.stages}
    assert all(s.parent in names or s.parent == dockerfile.stages[0].parent for s in dockerfile.stages)


def test_multi_stage_with_production_last_and_a_test_target(dockerfile):
    names = [s.name for s in dockerfile.stages]
    assert len(names) >= 3 and len(set(names)) == len(names)
    assert names[-1] == PRODUCTION, "the default target (last stage) must be the production image"
    assert "test" in names
    # The production image does not carry the build tools of the dependency stages.
    assert "deps" not in [s.name for s in dockerfile.chain(PRODUCTION)]


def test_no_syntax_directive_so_builds_work_offline(dockerfile):
    # "# syntax=docker/dockerfile:1" makes BuildKit pull the frontend from Docker Hub.
    assert not [d for d in dockerfile.directives if "syntax" in d.lower()]


def test_entrypoint_and_non_root_user(dockerfile):
    assert exec_form(dockerfile.last(PRODUCTION, "ENTRYPOINT").args) == ["bids-denoise"]
    user = dockerfile.last(PRODUCTION, "USER").args
    assert user not in ("root", "0") and not user.startswith("0:")
    runs = " ".join(i.args for s in dockerfile.chain(PRODUCTION) for i in s.all("RUN"))
    assert "useradd" in runs and f"--home-dir {dockerfile.env(PRODUCTION)['HOME']}" in runs
    # Writable by any uid (docker run -u UID:GID).
    assert re.search(r"chmod -R a\+rwX " + re.escape(dockerfile.env(PRODUCTION)["HOME"]), runs)


def test_caches_live_under_the_writable_home(dockerfile):
    env = dockerfile.env(PRODUCTION)
    home = env["HOME"]
    for name in CACHE_VARS:
        assert env[name].startswith(home + "/"), f"{name}={env[name]} is not under HOME={home}"
    assert env["PYTHONNOUSERSITE"] == "1"  # no ~/.local packages leaking in (Apptainer binds HOME)


def test_thread_variables_default_to_one(dockerfile):
    env = dockerfile.env(PRODUCTION)
    assert all(env[name] == "1" for name in THREAD_VARS)


def test_container_identity_fills_generated_by(dockerfile):
    from bids_denoise import config

    env = dockerfile.env(PRODUCTION)
    assert env[config.CONTAINER_ENV] == _image_name(dockerfile)
    assert env[config.CONTAINER_TYPE_ENV] == "docker"
    # The test image does not pretend to be the released one.
    assert config.CONTAINER_ENV not in dockerfile.env("test")


def test_oci_labels(dockerfile):
    labels = dockerfile.labels(PRODUCTION)
    for key in OCI_REQUIRED:
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    from bids_denoise import __about__

    assert labels["org.opencontainers.image.source"] == __about__.__url__
    # revision and version come from build arguments (set by scripts/ci/test_container.sh).
    revision = [i.args for i in dockerfile.stage(PRODUCTION).all("LABEL") if "image.revision" in i.args]
    assert revision and "${VCS_REF}" in revision[0]


def test_version_default_matches_the_package(dockerfile):
    from bids_denoise import __about__

    assert dockerfile.arg_default("VERSION") == __about__.__version__
    assert dockerfile.labels(PRODUCTION)["org.opencontainers.image.version"] == __about__.__version__


def test_torch_pin_is_inside_the_pyproject_range(dockerfile, pyproject):
    from packaging.requirements import Requirement

    pinned = dockerfile.arg_default("TORCH_VERSION")
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned or ""), "torch must be pinned to an exact version"
    torch_req = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch"))
    assert torch_req.specifier.contains(pinned)
    # The default index (PyPI) serves the CUDA build for Linux x86_64.
    assert dockerfile.arg_default("TORCH_INDEX_URL") == ""


def test_dependencies_are_installed_before_the_source_is_copied(dockerfile):
    """Layer caching: a source change must not reinstall the dependencies."""
    # The dependency list comes from pyproject.toml alone, in a stage of its own.
    requirements = dockerfile.stage("requirements")
    assert [shlex.split(i.args)[0] for i in requirements.all("COPY")] == ["pyproject.toml"]
    deps = dockerfile.stage("deps").instructions
    copies = [i for i in deps if i.keyword == "COPY"]
    assert [i.args.split()[0] for i in copies] == ["--from=requirements"]
    pip_runs = [i for i in deps if i.keyword == "RUN" and "pip install" in i.args]
    torch_run = next(i for i in pip_runs if "torch==" in i.args)
    reqs_run = next(i for i in pip_runs if "requirements.txt" in i.args)
    # torch (the biggest layer) does not depend on the dependency list at all
    assert torch_run.line < copies[0].line < reqs_run.line
    # The sources enter only in the wheel stage, after its own dependency layer.
    wheel = dockerfile.stage("wheel")
    source_copy = next(i for i in wheel.instructions if i.keyword == "COPY" and "bids_denoise" in i.args)
    assert all(i.line < source_copy.line for i in wheel.instructions if "pip install" in i.args)
    # The runtime image copies the dependency venv before the (small) package layer.
    runtime = [i for s in dockerfile.chain(PRODUCTION) for i in s.instructions if i.keyword == "COPY"]
    assert [i.args.split()[0] for i in runtime[:2]] == ["--from=deps", "--from=wheel"]


def test_validator_extra_is_installed(dockerfile, pyproject):
    assert "validator" in pyproject["project"]["optional-dependencies"]
    runs = " ".join(i.args for i in dockerfile.stage("requirements").all("RUN"))
    assert '["optional-dependencies"]["validator"]' in runs and '["dependencies"]' in runs


def test_ca_bundle_only_as_a_build_secret(dockerfile):
    for stage in dockerfile.stages:
        for inst in stage.instructions:
            if inst.keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", inst.args) \
                    and "--no-index" not in inst.args and "--no-deps --no-build-isolation" not in inst.args:
                assert "--mount=type=secret,id=ca" in inst.args, f"line {inst.line}: pip without the CA secret"
                assert "PIP_CERT=/run/secrets/ca" in inst.args
            if inst.keyword in ("COPY", "ADD"):
                assert "ca-certificates.crt" not in inst.args and ".crt" not in inst.args, inst.args
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        assert name not in dockerfile.env(PRODUCTION)


def test_build_only_settings_do_not_leak_into_the_image(dockerfile):
    env = dockerfile.env(PRODUCTION)
    assert "DEBIAN_FRONTEND" not in env
    assert not [k for k in env if k.startswith("PIP_")]


def test_dockerignore_sends_only_what_the_dockerfile_copies(dockerfile):
    patterns = [l.strip() for l in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]

    def ignored(rel: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            if fnmatch.fnmatch(rel, body) or fnmatch.fnmatch(rel.split("/")[0], body):
                result = not negate
        return result

    for stage in dockerfile.stages:
        for inst in stage.all("COPY"):
            if inst.args.startswith("--from="):
                continue
            for source in shlex.split(inst.args)[:-1]:
                assert not ignored(source), f"{source} is copied but excluded by .dockerignore"
                # (inside the test image the package sources are left out on purpose)
                assert (REPO_ROOT / source).exists() or not (REPO_ROOT / "bids_denoise").is_dir(), source
    for heavy in (".venv", ".git", "benchmarks", "demo-work", "work", "bids_denoise.egg-info"):
        assert ignored(heavy), f"{heavy} would be sent to the Docker daemon"


# ==============================================================================================
# singularity.def
# ==============================================================================================
def test_definition_bootstraps_from_the_docker_image(dockerfile, definition):
    assert definition.header["Bootstrap"] == "docker-daemon"
    assert definition.header["From"] == _image_name(dockerfile)
    # The variant for a pushed image is documented next to it.
    assert any(re.search(r"Bootstrap:\s*docker\s*$", c) for c in definition.comments)
    assert any(f"From: {_image_name(dockerfile)}" in c for c in definition.comments)


def test_definition_sections(definition):
    for section in ("labels", "environment", "runscript", "help"):
        assert definition.sections.get(section, "").strip(), f"%{section} is missing or empty"


def test_runscript_execs_the_docker_entrypoint(dockerfile, definition):
    entrypoint = exec_form(dockerfile.last(PRODUCTION, "ENTRYPOINT").args)
    lines = [l.strip() for l in definition.sections["runscript"].splitlines()
             if l.strip() and not l.strip().startswith("#")]
    assert lines == [f'exec {" ".join(entrypoint)} "$@"']


def test_labels_match_the_dockerfile(dockerfile, definition):
    docker = {k: v for k, v in dockerfile.labels(PRODUCTION).items() if k.startswith("org.opencontainers.")}
    # The revision is only known at build time; the SIF inherits it from the Docker image.
    docker.pop("org.opencontainers.image.revision")
    assert definition_labels(definition.sections["labels"]) == docker


def test_environment_matches_the_dockerfile(dockerfile, definition):
    docker = dockerfile.env(PRODUCTION)
    exports = definition_exports(definition.sections["environment"])
    for name in NOT_IN_DEFINITION:
        assert name not in exports, f"{name} is set by Apptainer itself"
    for name, value in docker.items():
        if name in NOT_IN_DEFINITION:
            continue
        assert name in exports, f"{name} is set in the Dockerfile but not in %environment"
        if name in CACHE_VARS:
            # Re-rooted at a writable place at run time, never at the read-only image HOME.
            assert not exports[name].startswith(docker["HOME"]), name
        elif name == "BIDS_DENOISE_CONTAINER_TYPE":
            assert exports[name] in ("singularity", "apptainer")
        else:
            assert exports[name] == value, f"{name}: {exports[name]!r} != Dockerfile {value!r}"
    assert not set(exports) - set(docker), "variables only in %environment"


def _source_environment(definition, tmp_path, home, extra=None):
    script = tmp_path / "environment.sh"
    script.write_text(definition.sections["environment"] + "\n")
    names = " ".join(f'"${name}"' for name in CACHE_VARS)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(tmp_path / "tmp")}
    env.update(extra or {})
    (tmp_path / "tmp").mkdir(exist_ok=True)
    result = subprocess.run(["sh", "-eu", "-c", f'. "{script}"; printf "%s\\n" {names}'],
                            env=env, capture_output=True, text=True, check=True)
    return dict(zip(CACHE_VARS, result.stdout.splitlines()))


def test_environment_puts_caches_in_a_writable_home(definition, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    caches = _source_environment(definition, tmp_path, home)
    for name, value in caches.items():
        assert Path(value).is_relative_to(home / ".cache"), (name, value)
    assert (home / ".cache").is_dir()


def test_environment_falls_back_to_tmp_without_a_writable_home(definition, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # mkdir under a regular file fails, even for root
    caches = _source_environment(definition, tmp_path, blocker / "home")
    fallback = tmp_path / "tmp" / f"bids_denoise-{os.getuid()}"
    for name, value in caches.items():
        assert Path(value).is_relative_to(fallback), (name, value)
    assert fallback.is_dir()


# ==============================================================================================
# The app writes nothing inside its own install tree (the image is read-only under Apptainer)
# ==============================================================================================
def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


def _read_only_prefix(folder: Path) -> list:
    """A command prefix that runs its command with ``folder`` mounted read-only, or ``[]``.

    Root ignores file modes, so for root the tree is made read-only with a bind mount in a
    private mount namespace (``unshare``); the probe checks that a write really fails.
    """
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return []
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _RO_MOUNT, str(folder)]
    probe = subprocess.run([*prefix, "touch", str(folder / ".write-probe")], capture_output=True)
    if (folder / ".write-probe").exists():
        (folder / ".write-probe").unlink()
        return []
    return prefix if probe.returncode != 0 and b"Read-only" in probe.stderr else []


@pytest.mark.slow
def test_the_app_writes_nothing_in_its_install_tree(tmp_path):
    """Run the example dataset from a read-only copy of the package; nothing may appear there.

    The copy is chmod a-w; as root (which ignores file modes) it is also bind-mounted read-only
    when the kernel allows it. Either way no file may appear or change there. The outputs are
    also checked against .circleci/example_ds_outputs.txt, the list the container smoke test
    expects.
    """
    import bids_denoise
    from bids_denoise.data import example_dataset

    site = tmp_path / "site"
    package = site / "bids_denoise"
    shutil.copytree(Path(bids_denoise.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Byte-compile now (as pip does at install time), then freeze the tree.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    before = _snapshot(site)

    scratch = tmp_path / "scratch"
    for folder in ("home", "out", "work"):
        (scratch / folder).mkdir(parents=True)
    prefix = _read_only_prefix(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BIDS_DENOISE_"))}
    env.update(PYTHONPATH=str(site), HOME=str(scratch / "home"), TMPDIR=str(scratch / "home"))
    code = ("import sys, bids_denoise; "
            "assert bids_denoise.__file__.startswith(sys.argv[1]), bids_denoise.__file__; "
            "from bids_denoise.cli.run import main; sys.exit(main(sys.argv[2:]))")
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(site), str(example_dataset()), str(scratch / "out"),
             "participant", "-w", str(scratch / "work"), "--nprocs", "2", "--omp-nthreads", "1"],
            env=env, cwd=scratch / "home", capture_output=True, text=True, timeout=900,
        )
        after = _snapshot(site)
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert after == before, {k: after.get(k) for k in set(after) ^ set(before)}

    expected = (REPO_ROOT / ".circleci" / "example_ds_outputs.txt").read_text().split()
    run_uuid = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}")  # logs/config-<run_uuid>.toml
    written = sorted({run_uuid.sub("<run_uuid>", p.relative_to(scratch / "out").as_posix())
                      for p in (scratch / "out").rglob("*") if p.is_file() and p.name != ".bids_denoise.lock"})
    assert written == sorted(expected), (
        "the outputs changed: update .circleci/example_ds_outputs.txt (the container smoke test "
        "compares against it)"
    )
