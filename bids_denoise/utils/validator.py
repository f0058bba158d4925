"""Run bids-validator-deno on the input dataset (and, in tests, on our derivatives).

bids-validator-deno is the schema-based BIDS validator shipped on PyPI as a JavaScript bundle
run by the ``deno`` wheel. It works offline as long as no ``--schema`` URL is given (the schema
is bundled) and exits 16 when it finds errors, which matches the BIDS execution spec's exit
code for "input failed validation".

The functions return ``(ok, message)`` and never raise for validation outcomes, so the caller
decides what a failure means (exit 16, or a warning with ``--skip-bids-validation``):

* ``(True, summary)``: no errors (warnings are listed in the summary);
* ``(False, errors)``: errors, one block per issue code with example locations;
* ``(None, reason)``: the validator is not installed, timed out or crashed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

LOGGER = logging.getLogger(__name__)

VALIDATOR_EXECUTABLE = "bids-validator-deno"
#: Exit status of bids-validator-deno when the dataset has errors.
VALIDATOR_ERROR_EXIT = 16
#: How many locations to show per issue code before summarising the rest.
MAX_LOCATIONS = 5


def find_validator() -> Path | None:
    """Path of ``bids-validator-deno``: next to the running Python first, then on ``PATH``.

    Looking next to ``sys.executable`` finds the copy installed in the same virtual
    environment even when that environment is not activated (the CLI entry point is often
    called by its full path, e.g. in containers).
    """
    local = Path(sys.executable).parent / VALIDATOR_EXECUTABLE
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(VALIDATOR_EXECUTABLE)
    return Path(found) if found else None


def _environment(scratch: Path) -> dict:
    env = dict(os.environ)
    # No network at start-up (deno would check for its own updates) and no ANSI colours.
    env.setdefault("DENO_NO_UPDATE_CHECK", "1")
    env["NO_COLOR"] = "1"
    # Read-only $HOME (Singularity/Apptainer, docker --read-only): give deno a writable cache.
    if "DENO_DIR" not in env:
        home_cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        if not _writable(home_cache):
            env["DENO_DIR"] = str(scratch / "deno")
    return env


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _format_issues(result: dict, severity: str) -> list[str]:
    every = result.get("issues", {}).get("issues", [])
    issues = [i for i in every if i.get("severity") == severity]
    messages = result.get("issues", {}).get("codeMessages", {})
    by_code: dict[str, list[dict]] = {}
    for issue in issues:
        by_code.setdefault(issue.get("code", "UNKNOWN"), []).append(issue)
    blocks = []
    for code, group in sorted(by_code.items()):
        reason = (messages.get(code) or "").strip().splitlines()
        lines = [f"[{severity.upper()}] {code}" + (f": {reason[0]}" if reason else "")]
        locations = []
        for issue in group:
            where = issue.get("location") or ""
            detail = issue.get("subCode") or issue.get("issueMessage") or ""
            text = f"{where} ({detail})" if detail else where
            if text and text not in locations:
                locations.append(text)
        lines += [f"    {loc}" for loc in locations[:MAX_LOCATIONS]]
        if len(locations) > MAX_LOCATIONS:
            lines.append(f"    ... and {len(locations) - MAX_LOCATIONS} more")
        blocks.append("\n".join(lines))
    return blocks


def _summary(result: dict, dataset: Path) -> str:
    summary = result.get("summary", {})
    warnings = sorted({i.get("code") for i in result.get("issues", {}).get("issues", [])
                       if i.get("severity") == "warning"})
    text = (f"{dataset}: no BIDS errors ({summary.get('totalFiles', '?')} files, "
            f"{len(summary.get('subjects', []))} subject(s), schema "
            f"{summary.get('schemaVersion', '?')})")
    if warnings:
        text += f"; warnings: {', '.join(warnings)}"
    return text


def _run_validator(
    dataset: Path, extra_args: Sequence[str], config: dict | None, timeout: float | None
) -> tuple[bool | None, str]:
    executable = find_validator()
    if executable is None:
        return None, (f"{VALIDATOR_EXECUTABLE} is not installed, so {dataset} was not validated "
                      "(pip install 'bids_denoise[validator]', or pass --skip-bids-validation).")
    if not dataset.is_dir():
        return False, f"{dataset} is not a folder."

    with tempfile.TemporaryDirectory(prefix="bids_denoise_validator_") as scratch:
        scratch = Path(scratch)
        outfile = scratch / "result.json"
        cmd = [str(executable), str(dataset), "--format", "json", "--outfile", str(outfile),
               *extra_args]
        if config:
            config_file = scratch / "config.json"
            config_file.write_text(json.dumps(config))
            cmd += ["--config", str(config_file)]
        LOGGER.info("Running %s", " ".join(cmd))
        try:
            # cwd=scratch: the validator may call git in its working directory.
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=scratch, env=_environment(scratch), check=False)
        except subprocess.TimeoutExpired:
            return None, f"{VALIDATOR_EXECUTABLE} did not finish within {timeout} s."
        except OSError as err:
            return None, f"{VALIDATOR_EXECUTABLE} could not be started: {err}"
        try:
            result = json.loads(outfile.read_text())
        except (OSError, json.JSONDecodeError):
            result = None

    if proc.returncode not in (0, VALIDATOR_ERROR_EXIT) or result is None:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-20:])
        return None, f"{VALIDATOR_EXECUTABLE} failed (exit {proc.returncode}): {tail}"
    if proc.returncode == 0:
        return True, _summary(result, dataset)
    errors = _format_issues(result, "error")
    return False, f"{dataset} is not valid BIDS:\n" + "\n".join(errors or ["(no details)"])


def validate_input_dataset(
    bids_dir, *, exclude_subjects: Iterable[str] = (), timeout: float | None = None
) -> tuple[bool | None, str]:
    """Validate the raw input dataset with bids-validator-deno.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Dataset root.
    exclude_subjects : iterable of str, optional
        Subjects not being processed (labels with or without ``sub-``); issues located inside
        their folders are ignored, so a broken unrelated subject does not block a run.
    timeout : float, optional
        Seconds before giving up (``(None, ...)`` is returned). Default: no limit.

    Returns
    -------
    tuple of (bool or None, str)
        ``(True, summary)``, ``(False, error report)`` or ``(None, why it did not run)``.
    """
    labels = [str(s).strip() for s in exclude_subjects]
    labels = sorted({s[4:] if s.startswith("sub-") else s for s in labels if s})
    config = None
    if labels:
        # Config locations without a leading "/" are gitignore-style globs.
        config = {"ignore": [{"location": f"sub-{label}/**"} for label in labels]}
    return _run_validator(Path(bids_dir).absolute(), [], config, timeout)


def validate_derivatives(output_dir, *, timeout: float | None = None) -> tuple[bool | None, str]:
    """Validate a bids_denoise output folder as a BIDS-Derivatives dataset.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset (its own ``.bidsignore`` is honoured).
    timeout : float, optional
        Seconds before giving up.

    Returns
    -------
    tuple of (bool or None, str)
        As :func:`validate_input_dataset`.
    """
    output_dir = Path(output_dir).absolute()
    # bids-validator-deno 3.0.2 crashes (UnknownIssueCodeError: UNSUPPORTED_DATASET_TYPE)
    # instead of reporting a dataset of the wrong type, so check the type first.
    description_file = output_dir / "dataset_description.json"
    try:
        description = json.loads(description_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return False, f"{description_file} is missing or not valid JSON ({err})."
    dataset_type = description.get("DatasetType") if isinstance(description, dict) else None
    if dataset_type != "derivative":
        return False, (f"{output_dir} is not a derivative dataset "
                       f"(DatasetType={dataset_type!r} in {description_file.name}).")
    return _run_validator(output_dir, ["--datasetTypes", "derivative"], None, timeout)


__all__ = ["find_validator", "validate_derivatives", "validate_input_dataset"]
