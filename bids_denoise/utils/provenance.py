"""Where an output came from: software version, git commit, container, command line, settings.

Every sidecar and ``dataset_description.json`` carry the same :func:`provenance` record, so a
derivative can be traced back to the exact code and configuration that produced it:

``Version``
    The bids_denoise version.
``GitCommit`` / ``GitDescribe``
    The commit (40 hex digits) and ``git describe --always --dirty --tags`` of the source
    tree, when bids_denoise runs from a git checkout (an editable install); ``None`` otherwise.
    A container built from a checkout without ``.git`` can set ``BIDS_DENOISE_GIT_COMMIT``.
    Computed once, when this module is imported, and never raises.
``Container``
    ``{"Type": ..., "Image": ...}`` inside the bids_denoise image (``BIDS_DENOISE_CONTAINER_IMAGE``
    and ``BIDS_DENOISE_CONTAINER_TYPE``) or any Apptainer/Singularity container; ``None`` outside.
``CommandLine``
    ``config.execution.cmdline`` as one shell-quoted string (``None`` outside the CLI).
``Configuration``
    ``config.get()`` made JSON-serialisable (paths as strings, tuples as lists), without the
    per-invocation ``execution.run_uuid``: re-running the same command must give byte-identical
    sidecars. The run identifier is in ``logs/config-<run_uuid>.toml`` and in the HTML report.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from bids_denoise.__about__ import __packagename__, __version__

#: Set by container builds that copy a checkout without its ``.git`` folder.
GIT_COMMIT_ENV = "BIDS_DENOISE_GIT_COMMIT"
#: Settings left out of the recorded configuration because they change at every invocation.
VOLATILE_SETTINGS = ("execution.run_uuid",)

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _git(args, cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _source_git_info(package_dir: Path | None = None) -> dict:
    """Commit and ``git describe`` of the checkout bids_denoise runs from, else ``None`` values.

    Only a work tree whose top level holds *this* package counts: an installed copy inside some
    unrelated repository (a site-packages folder under a user's project) reports ``None``.
    """
    info = {"GitCommit": None, "GitDescribe": None}
    try:
        package_dir = Path(package_dir or Path(__file__).resolve().parents[1])
        forced = os.environ.get(GIT_COMMIT_ENV, "").strip().lower()
        if _HEX40.match(forced):
            info["GitCommit"] = forced
            return info
        top = _git(["rev-parse", "--show-toplevel"], package_dir)
        if not top or (Path(top).resolve() / package_dir.name).resolve() != package_dir.resolve():
            return info
        commit = _git(["rev-parse", "HEAD"], package_dir)
        if commit and _HEX40.match(commit):
            info["GitCommit"] = commit
            info["GitDescribe"] = _git(["describe", "--always", "--dirty", "--tags"], package_dir)
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        return {"GitCommit": None, "GitDescribe": None}
    return info


#: Computed once at import (a git call takes milliseconds; the answer cannot change mid-run).
GIT_INFO = _source_git_info()


def git_commit() -> str | None:
    """The commit of the source checkout bids_denoise runs from, or ``None``."""
    return GIT_INFO["GitCommit"]


def container() -> dict | None:
    """``{"Type": ..., "Image": ...}`` when running in a container, else ``None``."""
    from bids_denoise.config import detect_container

    return detect_container()


def to_json_value(value):
    """``value`` with paths as strings, tuples/sets as lists and non-finite floats as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json_value(v) for v in value), key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        try:
            return to_json_value(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def resolved_configuration(settings: Mapping | None = None) -> dict:
    """``config.get()`` as JSON values, without :data:`VOLATILE_SETTINGS`."""
    if settings is None:
        from bids_denoise import config

        settings = config.get()
    settings = to_json_value(settings)
    for dotted in VOLATILE_SETTINGS:
        section, _, name = dotted.partition(".")
        if isinstance(settings.get(section), dict):
            settings[section].pop(name, None)
    return settings


def command_line(cmdline=None) -> str | None:
    """The command line as one shell-quoted string (``None`` when there is none)."""
    if cmdline is None:
        from bids_denoise import config

        cmdline = config.execution.cmdline
    cmdline = [str(arg) for arg in (cmdline or [])]
    return shlex.join(cmdline) if cmdline else None


def provenance(settings: Mapping | None = None, cmdline=None) -> dict:
    """The provenance record of this run (see the module docstring); never raises."""
    record = {
        "Software": __packagename__,
        "Version": __version__,
        **GIT_INFO,
        "Container": container(),
    }
    try:
        record["CommandLine"] = command_line(cmdline)
        record["Configuration"] = resolved_configuration(settings)
    except Exception as exc:  # noqa: BLE001 - a half-configured process still gets a record
        record.setdefault("CommandLine", None)
        record["Configuration"] = {"error": f"could not read the configuration: {exc}"}
    return record


def cli_provenance() -> dict | None:
    """:func:`provenance` when the configuration came from a command line, else ``None``.

    Library callers (tests, other pipelines) that never parsed a ``bids-denoise`` command line
    get ``None``, so what they write does not claim settings they did not use.
    """
    try:
        from bids_denoise import config

        if not config.execution.cmdline:
            return None
    except Exception:  # noqa: BLE001
        return None
    return provenance()


__all__ = [
    "GIT_INFO",
    "cli_provenance",
    "command_line",
    "container",
    "git_commit",
    "provenance",
    "resolved_configuration",
    "to_json_value",
]
