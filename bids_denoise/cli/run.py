"""``bids-denoise``: the command-line entry point.

:func:`main` runs one BIDS App invocation and returns its exit status. Every anticipated
failure is a :class:`~bids_denoise.errors.BidsDenoiseError` whose ``exit_code`` becomes the
status (see :mod:`bids_denoise.errors`); a failing Nipype workflow returns 1.

Flow
----
1. Parse the command line into :mod:`bids_denoise.config` and set up logging.
2. Check the analysis level (17), the method and the device (64).
3. Validate the input dataset unless ``--skip-bids-validation`` (16).
4. Index the dataset and select the DWI runs (18 if labels/filters select none, 66 if the
   dataset has no DWI at all).
5. ``group``: summarise the existing outputs into ``group_summary.tsv`` and stop.
6. Write the resolved configuration to ``<work_dir>/<run_uuid>/config.toml``.
7. ``--boilerplate-only``: write ``<output_dir>/logs/CITATION.{md,bib,html}`` and stop.
8. Build the workflow, write ``dataset_description.json`` and ``.bidsignore``, run it.
9. Write ``<output_dir>/sub-<label>.html`` reports (even after a failure; never fails the run).
10. Print what was processed and where the outputs and logs are.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

from bids_denoise.cli.summary import (
    FAILED,
    SKIPPED,
    SUBMITTED,
    RunStatus,
    crash_reports,
    format_summary,
    mark_crashes,
    overall_exit_code,
)
from bids_denoise.cli.version import PROG
from bids_denoise.errors import (
    CannotCreateError,
    EXIT_FAILURE,
    EXIT_IO,
    EXIT_OK,
    AnalysisLevelError,
    BidsDenoiseError,
    EmptySelectionError,
    MissingInputError,
    UsageError,
    ValidationError,
)

#: Levels this app accepts (BIDS Apps 1.0 names).
ANALYSIS_LEVELS = ("participant", "group")
#: Methods the parser knows but this version cannot run yet, with the message to show.
UNAVAILABLE_METHODS: dict = {}
#: Environment variables that cap the threads of numerical libraries in every process.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Name of the group-level table, written at the root of the output folder.
GROUP_SUMMARY = "group_summary.tsv"
#: Sidecars of the denoised series that the group level summarises.
DENOISED_SIDECAR_GLOB = "*_desc-denoised_dwi.json"
GROUP_COLUMNS = ("subject", "session", "acquisition", "direction", "run", "method", "groups", "runtime_s", "sidecar")
_ENTITY_RE = re.compile(r"(?:^|_)(sub|ses|acq|dir|run)-([A-Za-z0-9]+)")
_ENTITY_COLUMNS = {"sub": "subject", "ses": "session", "acq": "acquisition", "dir": "direction", "run": "run"}


def _config():
    from bids_denoise import config

    return config


# ----------------------------------------------------------------------------------- checks
def check_analysis_level(level: str) -> None:
    """Raise :class:`AnalysisLevelError` (17) unless ``level`` is supported."""
    if level not in ANALYSIS_LEVELS:
        raise AnalysisLevelError(
            f"analysis level {level!r} is not supported; choose one of: {', '.join(ANALYSIS_LEVELS)}"
        )


def check_method(method: str) -> None:
    """Raise :class:`UsageError` (64) for methods that this version cannot run."""
    if method in UNAVAILABLE_METHODS:
        raise UsageError(UNAVAILABLE_METHODS[method])


def check_device(device: str) -> None:
    """Raise :class:`UsageError` (64) when ``--device cuda`` is asked for but none is visible."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was requested but PyTorch sees no CUDA device (in a container, pass the "
            "GPU through, e.g. docker run --gpus all or apptainer run --nv); use --device auto or cpu."
        )


def check_ddm2_runtime(runs_by_subject: dict) -> float | None:
    """DDM2 only: log the estimated run time; on the CPU refuse (64) unless smoke or --force.

    The estimate (:func:`bids_denoise.denoise.ddm2.settings.estimate_series_seconds`) uses the
    header shape and b-values of every selected run, the preset and overrides, the device and
    ``--omp-nthreads``. Returns the estimate in seconds (``None`` for other methods).
    """
    config = _config()
    settings = config.workflow
    if settings.method != "ddm2" or not runs_by_subject:
        return None
    import nibabel as nb
    import numpy as np
    import torch

    from bids_denoise.denoise.ddm2.settings import estimate_series_seconds, format_duration

    cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    total, nruns, estimated = 0.0, 0, 0
    for runs in runs_by_subject.values():
        for run in runs:
            nruns += 1
            try:
                shape = nb.load(run.dwi_file).shape
                bvals = np.loadtxt(run.bval_file, ndmin=1).ravel()
            except (OSError, ValueError) as exc:  # the workflow reports bad inputs properly
                config.loggers.cli.warning("Cannot estimate the DDM2 time of %s (%s).", run.dwi_file, exc)
                continue
            if len(shape) != 4 or bvals.size != shape[3]:
                continue
            estimated += 1
            total += estimate_series_seconds(
                shape, bvals, settings.ddm2_preset, device=device, n_threads=config.nipype.omp_nthreads,
                b0_threshold=settings.b0_threshold, shell_tolerance=settings.shell_tolerance,
                grouping=settings.shell_grouping, **settings.ddm2_overrides(),
            )
    duration = f"about {format_duration(total)}" if estimated else "an unknown time"
    estimate = (
        f"DDM2 with preset '{settings.ddm2_preset}' on the {device.upper()} is estimated to take "
        f"{duration} for {nruns} run(s), one model per shell"
    )
    if device == "cpu" and settings.ddm2_preset != "smoke" and not settings.force:
        raise UsageError(
            f"{estimate}. DDM2 needs a CUDA GPU (in a container: docker run --gpus all, or apptainer "
            "run --nv). Use --ddm2-preset smoke to test the installation on the CPU, --method "
            "patch2self for CPU denoising, or --force to run on the CPU anyway."
        )
    config.loggers.cli.log(config.IMPORTANT, "%s.", estimate)
    return total


def validate_input() -> None:
    """Run the BIDS validator on the input; raise :class:`ValidationError` (16) if it fails."""
    config = _config()
    log = config.loggers.cli
    from bids_denoise.utils.validator import validate_input_dataset

    excluded = []
    labels = config.execution.participant_label
    if labels:
        # issues inside subjects that are not processed must not block this run
        present = [p.name[4:] for p in Path(config.execution.bids_dir).glob("sub-*") if p.is_dir()]
        excluded = sorted(set(present) - set(labels))
    ok, report = validate_input_dataset(config.execution.bids_dir, exclude_subjects=excluded)
    if ok is None:
        log.warning(
            "The BIDS validator is not installed; the input dataset %s is NOT validated. %s",
            config.execution.bids_dir,
            report or "",
        )
        return
    if not ok:
        raise ValidationError(
            f"the input dataset {config.execution.bids_dir} failed BIDS validation "
            f"(use --skip-bids-validation to proceed anyway):\n{report or '(no report)'}"
        )
    log.info("The input dataset passed BIDS validation.")


def collect_runs(statuses: list | None = None) -> dict:
    """Index the input and select the DWI runs of every selected subject.

    Returns ``{subject_label: [DWIRun, ...]}`` with only subjects that have runs. Runs that
    cannot be used (no gradients, empty file) are appended to ``statuses`` when it is given.
    """
    from bids_denoise.utils.bids import collect_dwi_runs, collect_participants, init_layout

    config = _config()
    execution = config.execution
    log = config.loggers.cli
    layout = init_layout(execution.bids_dir, database_dir=execution.bids_database_dir)
    execution.layout = layout
    subjects = list(collect_participants(layout, participant_label=execution.participant_label) or [])

    runs_by_subject = {}
    problems = [] if statuses is not None else None
    for subject in subjects:
        runs = list(
            collect_dwi_runs(layout, subject, sessions=execution.session_label,
                             bids_filters=execution.bids_filters, problems=problems)
            or []
        )
        if runs:
            runs_by_subject[subject] = runs
        else:
            log.warning("No DWI run was selected for sub-%s; it is skipped.", subject)

    for dwi_file, error, skipped in problems or []:
        statuses.append(RunStatus(_relative(dwi_file), state=SKIPPED if skipped else FAILED,
                                  reason=str(error), exit_code=0 if skipped else error.exit_code))
    if not runs_by_subject and not any(status.state == FAILED for status in statuses or []):
        selection = []
        if execution.participant_label:
            selection.append(f"participants {', '.join(execution.participant_label)}")
        if execution.session_label:
            selection.append(f"sessions {', '.join(execution.session_label)}")
        if execution.bids_filters:
            selection.append(f"the filters in {execution.bids_filter_file or '--bids-filter-file'}")
        if selection:
            raise EmptySelectionError(
                f"no DWI run in {execution.bids_dir} matches {' and '.join(selection)}. "
                "Check the labels (without sub-/ses-) and the filters."
            )
        raise MissingInputError(
            f"the dataset {execution.bids_dir} contains no DWI series (sub-*/[ses-*/]dwi/*_dwi.nii[.gz]) "
            "to denoise."
        )
    return runs_by_subject


def set_thread_limits(nthreads: int) -> None:
    """Cap OpenMP/MKL/OpenBLAS (inherited by Nipype's worker processes) and PyTorch threads."""
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(int(nthreads))
    import torch

    torch.set_num_threads(int(nthreads))


# ------------------------------------------------------------------------------ group level
def _format_groups(groups) -> str:
    """``b0:6;b1000:60`` from the sidecar's ``VolumeGroups``."""
    return ";".join(f"{group['Label']}:{group['Count']}" for group in groups)


def summarise_outputs(output_dir: Path, participants=None, sessions=None) -> list[dict]:
    """One row per ``*_desc-denoised_dwi.json`` under ``output_dir`` (see :data:`GROUP_COLUMNS`)."""
    log = _config().loggers.cli
    rows = []
    for sidecar in sorted(Path(output_dir).rglob(DENOISED_SIDECAR_GLOB)):
        row = dict.fromkeys(GROUP_COLUMNS)
        for key, value in _ENTITY_RE.findall(sidecar.name):
            row[_ENTITY_COLUMNS[key]] = value
        if participants and row["subject"] not in participants:
            continue
        if sessions and row["session"] not in sessions:
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            log.warning("Cannot read %s (%s); its row has no metadata.", sidecar, exc)
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        row["method"] = meta.get("DenoisingMethod")
        row["groups"] = _format_groups(meta.get("VolumeGroups", [])) or None
        row["runtime_s"] = meta.get("RunTime")
        row["sidecar"] = sidecar.relative_to(output_dir).as_posix()
        rows.append(row)
    return rows


def run_group_level() -> int:
    """Write ``<output_dir>/group_summary.tsv``, or log that there is nothing to do."""
    config = _config()
    execution = config.execution
    rows = summarise_outputs(execution.output_dir, execution.participant_label, execution.session_label)
    if not rows:
        config.loggers.cli.log(
            config.IMPORTANT,
            "No denoised outputs (%s) in %s: nothing to do at the group level.",
            DENOISED_SIDECAR_GLOB,
            execution.output_dir,
        )
        print(f"{PROG}: nothing to do at the group level (no {DENOISED_SIDECAR_GLOB} in {execution.output_dir}).")
        return EXIT_OK
    out_file = Path(execution.output_dir) / GROUP_SUMMARY
    with open(out_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=GROUP_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "n/a" if value is None else value for key, value in row.items()})
    print(f"{PROG}: group summary of {len(rows)} denoised series written to {out_file}")
    return EXIT_OK


# ------------------------------------------------------------------------------ boilerplate
def write_boilerplate() -> Path:
    """Write ``<output_dir>/logs/CITATION.md`` (the methods text), ``.bib`` and ``.html``."""
    from bids_denoise.reports.boilerplate import write_citation_files
    from bids_denoise.workflows.base import build_boilerplate

    return write_citation_files(_config().execution.output_dir, build_boilerplate())["md"]


def write_config_copy() -> Path | None:
    """Save the resolved configuration as ``<output_dir>/logs/config-<run_uuid>.toml``."""
    config = _config()
    try:
        from bids_denoise.utils.atomic import atomic_write_text

        target = execution_output() / "logs" / f"config-{config.execution.run_uuid}.toml"
        return atomic_write_text(target, config.dumps())
    except Exception as exc:  # noqa: BLE001 - provenance must not stop the run
        config.loggers.cli.warning("Could not save the configuration to the output folder (%s).", exc)
        return None


def write_reports(subjects, since: float | None = None) -> list:
    """Write ``<output_dir>/sub-<label>.html`` for ``subjects``; a failure only warns."""
    config = _config()
    try:
        from bids_denoise.reports.html import generate_reports

        return generate_reports(execution_output(), sorted(subjects), run_uuid=config.execution.run_uuid,
                                log_dir=config.execution.log_dir, since=since)
    except Exception as exc:  # noqa: BLE001 - reports must never change the exit status
        config.loggers.cli.warning("The HTML reports could not be written (%s).", exc)
        return []


# -------------------------------------------------------------------------- participant level
def _relative(dwi_file) -> str:
    try:
        return Path(dwi_file).relative_to(_config().execution.bids_dir).as_posix()
    except ValueError:
        return str(dwi_file)


def write_graph(wf) -> None:
    """Draw the workflow as SVG into ``<work_dir>/<run_uuid>/`` (a failure only warns)."""
    config = _config()
    target = Path(config.execution.work_dir) / config.execution.run_uuid / "graph.dot"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        wf.write_graph(graph2use="colored", format="svg", simple_form=True, dotfilename=str(target))
    except Exception as exc:  # Graphviz missing or failing must not stop the run
        config.loggers.cli.warning("Could not write the workflow graph (%s).", exc)


def preflight_runs(runs_by_subject: dict, statuses: list) -> dict:
    """Check every run before any work starts and return those that can be processed.

    A bad run is recorded as failed (or stops everything with ``--stop-on-first-crash``).
    Runs that need more memory than ``--mem-gb``, or earlier outputs made with other
    settings, stop the whole run before it starts.
    """
    from bids_denoise.denoise.patch2self import estimate_memory_gb
    from bids_denoise.interfaces.metadata import METHOD_NAMES
    from bids_denoise.utils.preflight import check_run, conflicting_outputs
    from bids_denoise.workflows.base import denoising_parameters

    config = _config()
    settings, log = config.workflow, config.loggers.cli
    parameters, method = denoising_parameters(), METHOD_NAMES[settings.method]
    kept, too_big, conflicts = {}, [], []
    for subject, runs in runs_by_subject.items():
        for run in runs:
            status = RunStatus(_relative(run.dwi_file), run.name)
            statuses.append(status)
            try:
                checked = check_run(run, b0_threshold=settings.b0_threshold, patch_radius=settings.patch_radius,
                                    grouping=settings.shell_grouping, shell_tolerance=settings.shell_tolerance,
                                    b0_denoising=settings.b0_denoising)
            except BidsDenoiseError as err:
                if config.execution.stop_on_first_crash:
                    raise
                log.error("%s", err)
                status.state, status.reason, status.exit_code = FAILED, str(err), err.exit_code
                continue
            for warning in checked.warnings:
                log.warning("%s", warning)
            for decision in checked.decisions:
                log.warning("%s: %s", status.label, decision)
            status.warnings = list(checked.decisions)
            need = estimate_memory_gb(checked.shape, patch_radius=settings.patch_radius,
                                      group_size=checked.largest_group, device=settings.device)
            if config.nipype.mem_gb and need > config.nipype.mem_gb:
                too_big.append(f"{status.label} needs about {need:.1f} GB")
            conflicts += conflicting_outputs(run, execution_output(), method=method, parameters=parameters)
            kept.setdefault(subject, []).append(run)
    if too_big:
        raise UsageError(
            f"not started: {'; '.join(too_big)}, more than --mem-gb {config.nipype.mem_gb:g}. Raise "
            "--mem-gb, or lower --patch-radius."
        )
    if conflicts:
        raise UsageError(
            "not started: the output folder holds derivatives made with other settings, which this "
            f"run would overwrite: {'; '.join(conflicts)}. Use another output folder, or remove them."
        )
    return kept


def execution_output() -> Path:
    return Path(_config().execution.output_dir)


def check_output_dir() -> None:
    """Create the output folder and prove it is writable, before any work starts."""
    output_dir = execution_output()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".bids_denoise_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CannotCreateError(f"cannot write to the output folder {output_dir}: {err.strerror or err}") from err


def run_participant_level(runs_by_subject: dict, statuses: list) -> int:
    """Build and run the Nipype workflow, then summarise every run; return the exit status."""
    config = _config()
    execution = config.execution
    log = config.loggers.cli
    log_dir = Path(execution.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    output_dir = execution_output()
    citation, reports = None, []
    if runs_by_subject:
        config.nipype.init()
        set_thread_limits(config.nipype.omp_nthreads)

        from bids_denoise.workflows.base import init_bids_denoise_wf

        wf = init_bids_denoise_wf(runs_by_subject)
        if not getattr(wf, "base_dir", None):
            wf.base_dir = str(execution.work_dir)
        if execution.write_graph:
            write_graph(wf)

        from bids_denoise.utils.derivatives import write_bidsignore, write_derivative_description

        write_derivative_description(output_dir=output_dir, bids_dir=execution.bids_dir)
        write_bidsignore(output_dir)
        if config.workflow.method == "ddm2" and config.workflow.ddm2_save_model:
            write_bidsignore(output_dir, ("*_model.pt",))  # trained networks have no BIDS rule
        citation = write_boilerplate()
        write_config_copy()

        nruns = sum(len(runs) for runs in runs_by_subject.values())
        log.log(config.IMPORTANT, "Denoising %d DWI run(s) of %d subject(s).", nruns, len(runs_by_subject))
        started = time.time()
        try:
            wf.run(**config.nipype.get_plugin())
        except Exception as exc:
            log.critical("The bids_denoise workflow failed: %s", exc)
            crashes = crash_reports(log_dir, since=started)
            mark_crashes(statuses, crashes)
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
        reports = write_reports(runs_by_subject, since=started)

    code = overall_exit_code(statuses)
    lines = [f"{PROG}: {'finished' if code == EXIT_OK else 'finished with errors'}.", format_summary(statuses),
             f"  Outputs: {output_dir}"]
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


def _mark_missing_outputs(runs_by_subject: dict, statuses: list) -> None:
    """A run reported ok must have its denoised series on disk (a stopped run has none)."""
    from bids_denoise.utils.derivatives import derivative_path

    by_name = {status.name: status for status in statuses}
    for runs in runs_by_subject.values():
        for run in runs:
            status = by_name[run.name]
            expected = derivative_path(run.dwi_file, execution_output(), desc="denoised", suffix="dwi",
                                       extension=".nii.gz")
            if status.state == "ok" and not expected.exists():
                status.state, status.exit_code = FAILED, EXIT_FAILURE
                status.reason = "no output was written (the run stopped before this run finished)"


# ------------------------------------------------------------------------------------ main
def _main(argv) -> int:
    from bids_denoise.cli.parser import parse_args

    config = _config()
    try:
        parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (64)
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    config.loggers.init()
    execution = config.execution
    log = config.loggers.cli
    log.info("Running %s", " ".join(execution.cmdline))

    check_analysis_level(execution.analysis_level)
    check_method(config.workflow.method)
    check_device(config.workflow.device)

    if execution.skip_bids_validation:
        log.info("BIDS validation skipped (--skip-bids-validation).")
    else:
        validate_input()

    if execution.analysis_level == "group":
        return run_group_level()

    check_output_dir()
    statuses = []
    runs_by_subject = preflight_runs(collect_runs(statuses), statuses)

    config_file = config.to_filename(Path(execution.work_dir) / execution.run_uuid / "config.toml")
    log.info("Configuration written to %s", config_file)

    if execution.boilerplate_only:
        citation = write_boilerplate()
        print(f"{PROG}: methods boilerplate written to {citation}")
        return EXIT_OK

    check_ddm2_runtime(runs_by_subject)
    return run_participant_level(runs_by_subject, statuses)


def main(argv=None) -> int:
    """Run ``bids-denoise`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        return _main(argv)
    except BidsDenoiseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            where = f" while writing {exc.filename}" if exc.filename else ""
            print(f"{PROG}: error: no space left on the device{where}; nothing partial was kept. "
                  "Free space (or use another output folder) and run again.", file=sys.stderr)
            return EXIT_IO
        # a bug or an unexpected environment problem
        traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
