"""The participant level: preflight, build and run the Nipype graph, then summarise."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bids_denoise import config
from bids_denoise.cli.inputs import relative_label
from bids_denoise.cli.summary import (
    FAILED,
    SUBMITTED,
    RunStatus,
    crash_reports,
    format_summary,
    mark_crashes,
    overall_exit_code,
)
from bids_denoise.cli.version import PROG
from bids_denoise.errors import EXIT_FAILURE, EXIT_OK, UsageError
from bids_denoise.outputs import OUTPUTS

#: Environment variables that cap the threads of numerical libraries in every process.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def execution_output() -> Path:
    return Path(config.execution.output_dir)


def preflight(runs_by_subject: dict, statuses: list) -> dict:
    """Check every run before any work starts; return those that can be processed.

    A bad run is recorded as failed (or stops everything with ``--stop-on-first-crash``).
    Runs that need more memory than ``--mem-gb``, or earlier outputs made with other
    settings, stop the whole run before it starts. What the checks read is kept on the runs.
    """
    from bids_denoise.utils.preflight import preflight_runs

    log = config.loggers.cli
    result = preflight_runs(
        runs_by_subject, settings=config.workflow, output_dir=execution_output(), mem_gb=config.nipype.mem_gb,
        stop_on_first_crash=config.execution.stop_on_first_crash, relative=relative_label,
    )
    for run, err in result.failed:
        log.error("%s", err)
        statuses.append(RunStatus(relative_label(run.dwi_file), run.name, state=FAILED, reason=str(err),
                                  exit_code=err.exit_code))
    for runs in result.kept.values():
        for run in runs:
            label = relative_label(run.dwi_file)
            for warning in run.check.warnings:
                log.warning("%s", warning)
            for decision in run.check.decisions:
                log.warning("%s: %s", label, decision)
            statuses.append(RunStatus(label, run.name, warnings=list(run.check.decisions)))
    if result.too_big:
        raise UsageError(
            f"not started: {'; '.join(result.too_big)}, more than --mem-gb {config.nipype.mem_gb:g}. Raise "
            "--mem-gb, or lower the method's memory use (e.g. --patch-radius)."
        )
    if result.conflicts:
        raise UsageError(
            "not started: the output folder holds derivatives made with other settings, which this "
            f"run would overwrite: {'; '.join(result.conflicts)}. Use another output folder, or remove them."
        )
    return result.kept


def set_thread_limits(nthreads: int) -> None:
    """Cap OpenMP/MKL/OpenBLAS (inherited by Nipype's worker processes) and PyTorch threads."""
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(int(nthreads))
    import torch

    torch.set_num_threads(int(nthreads))


def write_graph(wf) -> None:
    """Draw the workflow as SVG into ``<work_dir>/<run_uuid>/`` (a failure only warns)."""
    target = Path(config.execution.work_dir) / config.execution.run_uuid / "graph.dot"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        wf.write_graph(graph2use="colored", format="svg", simple_form=True, dotfilename=str(target))
    except Exception as exc:  # Graphviz missing or failing must not stop the run
        config.loggers.cli.warning("Could not write the workflow graph (%s).", exc)


def write_boilerplate(runs_by_subject=None) -> Path:
    """Write ``<output_dir>/logs/CITATION.md`` (the methods text), ``.bib`` and ``.html``."""
    from bids_denoise.reports.boilerplate import write_citation_files
    from bids_denoise.workflows.base import build_boilerplate

    return write_citation_files(config.execution.output_dir, build_boilerplate(runs_by_subject))["md"]


def write_config_copy() -> Path | None:
    """Save the resolved configuration as ``<output_dir>/logs/config-<run_uuid>.toml``."""
    try:
        from bids_denoise.utils.atomic import atomic_write_text

        target = execution_output() / "logs" / f"config-{config.execution.run_uuid}.toml"
        return atomic_write_text(target, config.dumps())
    except Exception as exc:  # noqa: BLE001 - provenance must not stop the run
        config.loggers.cli.warning("Could not save the configuration to the output folder (%s).", exc)
        return None


def write_reports(subjects, since: float | None = None) -> list:
    """Write ``<output_dir>/sub-<label>.html`` for ``subjects``; a failure only warns."""
    try:
        from bids_denoise.reports.html import generate_reports

        return generate_reports(execution_output(), sorted(subjects), run_uuid=config.execution.run_uuid,
                                log_dir=config.execution.log_dir, since=since)
    except Exception as exc:  # noqa: BLE001 - reports must never change the exit status
        config.loggers.cli.warning("The HTML reports could not be written (%s).", exc)
        return []


def _mark_missing_outputs(runs_by_subject: dict, statuses: list) -> None:
    """A run reported ok must have its denoised series on disk (a stopped run has none); the QC
    flags of its sidecar are added to its summary."""
    by_name = {status.name: status for status in statuses}
    for runs in runs_by_subject.values():
        for run in runs:
            status = by_name[run.name]
            if status.state == "ok" and not OUTPUTS["dwi"].path(run.dwi_file, execution_output()).exists():
                status.state, status.exit_code = FAILED, EXIT_FAILURE
                status.reason = "no output was written (the run stopped before this run finished)"
            elif status.state == "ok":
                sidecar = OUTPUTS["dwi"].sidecar_path(run.dwi_file, execution_output())
                status.qc_flags = qc_messages(sidecar)
                for note in group_notes(sidecar):  # decisions taken while running (--method auto)
                    if note not in status.warnings:
                        status.warnings.append(note)


def group_notes(sidecar) -> list[str]:
    """``group <label>: <note>`` for every decision recorded in a sidecar's VolumeGroups."""
    import json

    try:
        groups = json.loads(Path(sidecar).read_text()).get("VolumeGroups") or []
    except (OSError, ValueError):
        return []
    return [f"group {group.get('Label')}: {note}" for group in groups for note in group.get("Notes", [])]


def qc_messages(sidecar) -> list[str]:
    """The messages of the QC flags recorded in a denoised series' sidecar (none if unreadable)."""
    import json

    try:
        quality = json.loads(Path(sidecar).read_text()).get("QualityControl") or {}
    except (OSError, ValueError):
        return []
    return [str(flag.get("Message", flag.get("Check"))) for flag in quality.get("Flags", [])]


def _run_graph(runs_by_subject: dict, statuses: list) -> tuple:
    """Build, describe and run the graph; return (methods text, reports)."""
    execution, log = config.execution, config.loggers.cli
    config.nipype.init()
    set_thread_limits(config.nipype.omp_nthreads)

    from bids_denoise.utils.derivatives import write_bidsignore, write_derivative_description
    from bids_denoise.workflows.base import init_bids_denoise_wf

    wf = init_bids_denoise_wf(runs_by_subject)
    if not getattr(wf, "base_dir", None):
        wf.base_dir = str(execution.work_dir)
    if execution.write_graph:
        write_graph(wf)
    output_dir = execution_output()
    write_derivative_description(output_dir=output_dir, bids_dir=execution.bids_dir)
    write_bidsignore(output_dir)
    model = OUTPUTS["model"]
    if model.method == config.workflow.method and getattr(config.workflow, f"{model.method}_save_model", False):
        write_bidsignore(output_dir, model.bidsignore)  # trained networks have no BIDS rule
    citation = write_boilerplate(runs_by_subject)
    write_config_copy()

    nruns = sum(len(runs) for runs in runs_by_subject.values())
    log.log(config.IMPORTANT, "Denoising %d DWI run(s) of %d subject(s).", nruns, len(runs_by_subject))
    started = time.time()
    try:
        wf.run(**config.nipype.get_plugin())
    except Exception as exc:
        log.critical("The bids_denoise workflow failed: %s", exc)
        mark_crashes(statuses, crash_reports(execution.log_dir, since=started))
        if not any(status.state == FAILED for status in statuses):
            for status in statuses:  # a failure outside any run's nodes
                if status.state == "ok":
                    status.state, status.exit_code = FAILED, EXIT_FAILURE
                    status.reason = f"the workflow failed: {str(exc).splitlines()[0]}"
    if config.nipype.get_plugin()["plugin"].endswith("Graph"):
        # Graph plugins return once the jobs are queued; outputs appear when they finish.
        for status in statuses:
            if status.state == "ok":
                status.state, status.reason = SUBMITTED, "queued on the cluster"
    else:
        _mark_missing_outputs(runs_by_subject, statuses)
    return citation, write_reports(runs_by_subject, since=started)


def run_participant_level(runs_by_subject: dict, statuses: list) -> int:
    """Run the graph for the selected runs, then summarise every run; return the exit status."""
    execution = config.execution
    log_dir = Path(execution.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    citation, reports = _run_graph(runs_by_subject, statuses) if runs_by_subject else (None, [])
    code = overall_exit_code(statuses)
    lines = [f"{PROG}: {'finished' if code == EXIT_OK else 'finished with errors'}.", format_summary(statuses),
             f"  Outputs: {execution_output()}"]
    if citation:
        lines.append(f"  Methods: {citation}")
    if reports:
        lines.append(f"  Reports: {', '.join(str(path) for path in reports)}")
    lines += [
        f"  Logs and crash files: {log_dir}",
        f"  Configuration: {Path(execution.work_dir) / execution.run_uuid / 'config.toml'}",
    ]
    if code != EXIT_OK:
        lines.append(f"  Run again with the same -w {execution.work_dir} to resume after fixing the cause.")
    print("\n".join(lines), file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code
