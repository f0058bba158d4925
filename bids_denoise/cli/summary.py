"""Track what happened to each DWI run and turn it into a final summary and exit status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bids_denoise.errors import EXIT_FAILURE, EXIT_OK

OK, FAILED, SKIPPED, SUBMITTED = "ok", "failed", "skipped", "submitted"


@dataclass
class RunStatus:
    """The outcome of one run: ``ok``, ``failed`` or ``skipped`` (with why), or ``submitted``
    to a cluster by a plugin that returns before its jobs finish (SLURMGraph, SGEGraph)."""

    label: str  # the raw file, relative to the dataset
    name: str = ""  # DWIRun.name, which also names the run's workflow
    state: str = OK
    reason: str = ""
    exit_code: int = EXIT_OK
    #: things the user should know about a run that still succeeds (e.g. groups copied through)
    warnings: list = field(default_factory=list)
    #: messages of the QC flags raised on the written output (sidecar ``QualityControl.Flags``)
    qc_flags: list = field(default_factory=list)


def crash_reports(log_dir, since: float) -> list[tuple[str, str, Path]]:
    """Nipype crash files written after ``since``: (node full name, last error line, file)."""
    reports = []
    for path in sorted(Path(log_dir).glob("crash-*.txt")):
        if path.stat().st_mtime < since:
            continue
        lines = path.read_text(errors="replace").splitlines()
        node = next((line[len("Node: "):] for line in lines if line.startswith("Node: ")), "")
        errors = [line.strip() for line in lines if line.strip() and not line.startswith(" ")]
        reports.append((node, errors[-1] if errors else "unknown error", path))
    return reports


def mark_crashes(statuses: list[RunStatus], crashes) -> None:
    """Mark as failed every run whose workflow (``<name>_wf``) has a crash file."""
    for status in statuses:
        if status.state != OK:
            continue
        for node, error, path in crashes:
            if f".{status.name}_wf." in f".{node}.":
                status.state, status.exit_code = FAILED, EXIT_FAILURE
                status.reason = f"{error} (crash file: {path})"
                break


def overall_exit_code(statuses: list[RunStatus]) -> int:
    """0 if nothing failed; the failures' code if they share one; 1 otherwise."""
    codes = {status.exit_code for status in statuses if status.state == FAILED}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else EXIT_FAILURE


def format_summary(statuses: list[RunStatus]) -> str:
    """One line per run, grouped as the user reads them: ok, skipped, failed."""
    states = (OK, SUBMITTED, SKIPPED, FAILED)
    counts = {state: sum(s.state == state for s in statuses) for state in states}
    lines = ["Runs: " + ", ".join(f"{counts[state]} {state}" for state in states if counts[state] or state != SUBMITTED)]
    for state in states:
        for status in statuses:
            if status.state == state:
                why = f": {status.reason}" if status.reason else ""
                tag = state
                if status.warnings:
                    tag += f", {len(status.warnings)} warning{'s' if len(status.warnings) != 1 else ''}"
                if status.qc_flags:
                    tag += f", {len(status.qc_flags)} QC warning{'s' if len(status.qc_flags) != 1 else ''}"
                lines.append(f"  [{tag}] {status.label}{why}")
                lines.extend(f"      ! {warning}" for warning in status.warnings)
                lines.extend(f"      ! QC: {flag}" for flag in status.qc_flags)
    return "\n".join(lines)
