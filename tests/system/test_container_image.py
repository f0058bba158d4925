"""The built Docker image, checked from the host (needs a Docker engine: marked ``container``).

Run by ``scripts/ci/test_container.sh image-tests`` (part of ``make test-container``), which
names the freshly built image in ``BIDS_DENOISE_TEST_IMAGE``. Without that variable the tests
skip, so an old image left in a daemon is never tested by mistake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.system.test_container_recipes import CACHE_VARS, PRODUCTION, parse_dockerfile

IMAGE = os.environ.get("BIDS_DENOISE_TEST_IMAGE")
DOCKER = os.environ.get("DOCKER") or shutil.which("docker") or "docker"

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(not IMAGE, reason="BIDS_DENOISE_TEST_IMAGE is not set (scripts/ci/test_container.sh sets it)"),
]


def docker(*args, check=True, timeout=300):
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def run_python(code: str, *docker_opts: str) -> str:
    return docker("run", "--rm", "--network", "none", *docker_opts, "--entrypoint", "python", IMAGE,
                  "-c", code).stdout


@pytest.fixture(scope="module")
def config():
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} does not exist")
    return json.loads(docker("image", "inspect", IMAGE).stdout)[0]["Config"]


def test_image_config_matches_the_dockerfile(config):
    dockerfile = parse_dockerfile()
    assert config["Entrypoint"] == ["bids-denoise"]
    assert config["User"] == "bidsdenoise"
    env = dict(item.split("=", 1) for item in config["Env"])
    for name, value in dockerfile.env(PRODUCTION).items():
        if name == "BIDS_DENOISE_CONTAINER_IMAGE":
            assert value.rsplit(":", 1)[1] in env[name]  # IMAGE_NAME may be overridden at build time
        else:
            assert env.get(name) == value, name
    expected = dockerfile.labels(PRODUCTION)
    for key, value in expected.items():
        if key.endswith((".revision", ".version")):
            assert config["Labels"].get(key), key  # set from build arguments
        else:
            assert config["Labels"].get(key) == value, key


def test_version_runs_without_network():
    result = docker("run", "--rm", "--network", "none", IMAGE, "--version")
    from bids_denoise import __about__

    assert __about__.__version__ in result.stdout


def test_pytorch_is_a_cuda_build():
    out = run_python("import torch; print(torch.__version__, torch.version.cuda)")
    version, cuda = out.split()
    assert cuda != "None", f"torch {version} in the image is a CPU-only build"


@pytest.mark.parametrize("user", [None, "4242:4242"], ids=["image-user", "arbitrary-uid"])
def test_home_and_caches_are_writable_by_any_user(user):
    code = (
        "import os, pathlib\n"
        f"for name in ['HOME', *{list(CACHE_VARS)!r}]:\n"
        "    path = pathlib.Path(os.environ[name]); path.mkdir(parents=True, exist_ok=True)\n"
        "    (path / f'probe-{os.getuid()}').write_text('ok')\n"
        "print(os.getuid())\n"
    )
    opts = ("-u", user) if user else ()
    assert run_python(code, *opts).strip() == (user.split(":")[0] if user else "1000")


@pytest.mark.parametrize("user", [None, "4242:4242"], ids=["image-user", "arbitrary-uid"])
def test_the_install_tree_is_not_writable_at_run_time(user):
    opts = ("-u", user) if user else ()
    result = docker("run", "--rm", "--network", "none", *opts, "--entrypoint", "find", IMAGE,
                    "/opt/venv", "/usr", "-writable", "-not", "-type", "l", "-print", "-quit")
    assert result.stdout.strip() == ""


def test_read_only_root_file_system_with_tmpfs():
    result = docker("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                    "--tmpfs", "/home/bidsdenoise", IMAGE, "--help")
    assert "participant" in result.stdout
