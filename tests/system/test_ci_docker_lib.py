"""Which docker client ``ensure_docker`` (scripts/ci/docker_lib.sh) settles on.

The library is sourced by a real bash, with only stub executables and a few coreutils on PATH:
no root, network, Docker or apt is needed. The machine modelled is the one that broke
``make test-container``: a docker 28 CLI without the buildx plugin on PATH, and Debian's
docker.io (whose 20.10 client builds with BuildKit and no buildx) not installed yet. The stub
``apt-get`` "installs" docker.io by creating its client and dockerd at the paths given by
DEBIAN_DOCKER_CLIENT and DEBIAN_DOCKERD, and every client's ``info`` succeeds, so the daemon
"answers" and none is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_LIB = REPO_ROOT / "scripts" / "ci" / "docker_lib.sh"
BASH = shutil.which("bash")
# What the library and the stubs run besides bash builtins (the real ones, linked into PATH).
TOOLS = ("id", "date", "env", "seq", "sleep", "tail", "dirname", "mkdir", "chmod", "cp")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def write_stub(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{BASH}\n{body}")
    path.chmod(0o755)
    return path


def client_stub(path: Path, name: str, *, buildx: bool) -> Path:
    """A docker client that logs its calls as ``NAME DOCKER_BUILDKIT=... ARGS`` and has a daemon."""
    buildx_rc = 0 if buildx else 1
    return write_stub(
        path,
        f"""echo "{name} DOCKER_BUILDKIT=${{DOCKER_BUILDKIT:-}} $*" >>"$STUB_LOG"
case "$1" in
    buildx)
        [[ {buildx_rc} == 0 ]] || echo "docker: 'buildx' is not a docker command." >&2
        exit {buildx_rc} ;;
    info) [[ "$*" != *--format* ]] || echo "stub, storage vfs" ;;
esac
exit 0
""",
    )


class Machine:
    """A PATH of stubs: ``docker`` (buildx or not), ``sudo``, and ``apt-get`` that installs docker.io."""

    def __init__(self, root: Path, *, docker_buildx: bool = False, docker_io_installed: bool = False):
        self.root = root
        self.bin = root / "bin"
        self.tools = root / "tools"
        self.log = root / "calls.log"
        self.debian_client = root / "debian" / "usr" / "bin" / "docker"
        self.debian_dockerd = root / "debian" / "usr" / "sbin" / "dockerd"
        self.tools.mkdir(parents=True)
        for tool in TOOLS:
            real = shutil.which(tool)
            assert real, f"{tool} not found"
            (self.tools / tool).symlink_to(real)
        self.log.touch()
        client_stub(self.bin / "docker", "docker", buildx=docker_buildx)
        # Debian's docker.io 20.10 client: no buildx plugin, but built-in BuildKit.
        pool = client_stub(root / "pool" / "docker", "debian", buildx=False)
        write_stub(root / "pool" / "dockerd", 'echo "dockerd $*" >>"$STUB_LOG"\n')
        write_stub(self.bin / "sudo", '[[ "$1" != -n ]] || shift\nexec "$@"\n')
        write_stub(
            self.bin / "apt-get",
            f"""echo "apt-get $*" >>"$STUB_LOG"
if [[ " $* " == *" install "* && " $* " == *" docker.io "* ]]; then
    mkdir -p "{self.debian_client.parent}" "{self.debian_dockerd.parent}"
    cp "{pool}" "{self.debian_client}"
    cp "{pool.parent / 'dockerd'}" "{self.debian_dockerd}"
fi
""",
        )
        if docker_io_installed:
            subprocess.run([str(self.bin / "apt-get"), "install", "docker.io"], env=self.env(), check=True)
            self.log.write_text("")

    def env(self, **extra: str) -> dict:
        return {
            "PATH": f"{self.bin}:{self.tools}",
            "HOME": str(self.root),
            "LC_ALL": "C",
            "STUB_LOG": str(self.log),
            "DEBIAN_DOCKER_CLIENT": str(self.debian_client),
            "DEBIAN_DOCKERD": str(self.debian_dockerd),
            # Only used if the stub daemon did not answer: keep even that away from the host.
            "DOCKER_STORAGE_DRIVER": "vfs",
            "DOCKER_DATA_ROOT": str(self.root / "data-root"),
            "DOCKERD_LOG": str(self.root / "dockerd.log"),
            **extra,
        }

    def ensure_docker(self, **extra_env: str) -> dict:
        """Source the library, run ensure_docker and a build; the resulting settings and calls."""
        script = f"""set -euo pipefail
source "{DOCKER_LIB}"
ensure_docker
echo "DOCKER=$DOCKER"
echo "BUILD_MODE=$(build_mode)"
: >"$STUB_LOG.build"
STUB_LOG=$STUB_LOG.build docker_build -t image .
"""
        result = subprocess.run(
            [BASH, "-c", script], env=self.env(**extra_env), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        out = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        out["calls"] = self.log.read_text().splitlines()
        out["build_calls"] = Path(f"{self.log}.build").read_text().splitlines()
        return out


def test_fresh_machine_uses_the_client_docker_io_brings(tmp_path):
    # Checked against the unfixed library (pick_docker_client honouring any set DOCKER, and
    # ensure_docker picking once before installing docker.io as well as after): this test then
    # fails with DOCKER == "docker", the buildx-less client.
    machine = Machine(tmp_path)
    got = machine.ensure_docker()
    assert any(c.startswith("apt-get ") and " install " in c and c.endswith(" docker.io") for c in got["calls"])
    assert machine.debian_client.exists()
    assert got["DOCKER"] == str(machine.debian_client)
    assert got["BUILD_MODE"] == "builtin"
    # The build goes through the Debian client's built-in BuildKit, never the buildx-less CLI.
    assert got["build_calls"][-1] == "debian DOCKER_BUILDKIT=1 build -t image ."
    assert not any(c.startswith("docker ") and " build " in f"{c} " for c in got["build_calls"])


def test_docker_io_already_installed(tmp_path):
    machine = Machine(tmp_path, docker_io_installed=True)
    got = machine.ensure_docker()
    assert not any(c.startswith("apt-get ") for c in got["calls"])
    assert got["DOCKER"] == str(machine.debian_client)
    assert got["BUILD_MODE"] == "builtin"


@pytest.mark.parametrize("user_client", ["docker", "custom"])
def test_user_set_docker_is_honoured(tmp_path, user_client):
    # Even "docker", the buildx-less client that the library itself would drop for docker.io's.
    machine = Machine(tmp_path)
    if user_client == "custom":
        user_client = str(client_stub(tmp_path / "elsewhere" / "docker", "custom", buildx=True))
    got = machine.ensure_docker(DOCKER=user_client)
    assert machine.debian_client.exists()
    assert got["DOCKER"] == user_client
    assert got["build_calls"][-1].split(" ", 1)[0] == ("docker" if user_client == "docker" else "custom")


def test_docker_with_buildx_is_preferred(tmp_path):
    machine = Machine(tmp_path, docker_buildx=True)
    got = machine.ensure_docker()
    # docker.io is still installed, for its daemon; its client is not needed.
    assert machine.debian_client.exists()
    assert got["DOCKER"] == "docker"
    assert got["BUILD_MODE"] == "buildx"
    assert got["build_calls"][-1] == "docker DOCKER_BUILDKIT= buildx build --load -t image ."


def test_a_client_the_library_picked_is_picked_again(tmp_path):
    # The sequence of the old ensure_docker: pick, install docker.io, pick again. The second pick
    # must not take the first (a value this library set, not the user) as final.
    machine = Machine(tmp_path)
    script = f"""set -euo pipefail
source "{DOCKER_LIB}"
DOCKER=$(pick_docker_client)
echo "FIRST=$DOCKER"
apt_install docker.io
DOCKER=$(pick_docker_client)
echo "SECOND=$DOCKER"
"""
    result = subprocess.run([BASH, "-c", script], env=machine.env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["FIRST=docker", f"SECOND={machine.debian_client}"]
