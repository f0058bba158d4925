"""Checks of the command line's targets and the selection of the DWI runs to denoise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bids_denoise import config
from bids_denoise.cli.summary import FAILED, SKIPPED, RunStatus
from bids_denoise.errors import (
    AnalysisLevelError,
    CannotCreateError,
    EmptySelectionError,
    MissingInputError,
    UsageError,
    ValidationError,
)

#: Levels this app accepts (BIDS Apps 1.0 names).
ANALYSIS_LEVELS = ("participant", "group")
_LOCK_FILE = ".bids_denoise.lock"


def check_analysis_level(level: str) -> None:
    """Raise :class:`AnalysisLevelError` (17) unless ``level`` is supported."""
    if level not in ANALYSIS_LEVELS:
        raise AnalysisLevelError(
            f"analysis level {level!r} is not supported; choose one of: {', '.join(ANALYSIS_LEVELS)}"
        )


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


def check_dataset_description() -> None:
    """Raise :class:`MissingInputError` (66) when the input lacks ``dataset_description.json``.

    Checked before validation, because skipping validation cannot help: nothing can be read
    without it.
    """
    bids_dir = Path(config.execution.bids_dir)
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise MissingInputError(
            f"{description} is missing: every BIDS dataset has a dataset_description.json at its "
            f"top level, and {bids_dir} has none (is it the dataset's root folder?). Create one, "
            'e.g. {"Name": "My study", "BIDSVersion": "1.10.0"}; --skip-bids-validation does not '
            "replace it."
        )


def validate_input() -> None:
    """Run the BIDS validator on the input; raise :class:`ValidationError` (16) if it fails."""
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
        log.warning("The BIDS validator is not installed; the input dataset %s is NOT validated. %s",
                    config.execution.bids_dir, report or "")
        return
    if not ok:
        raise ValidationError(
            f"the input dataset {config.execution.bids_dir} failed BIDS validation "
            f"(use --skip-bids-validation to proceed anyway):\n{report or '(no report)'}"
        )
    log.info("The input dataset passed BIDS validation.")


def relative_label(dwi_file) -> str:
    """A run's file relative to the dataset root, as the summary shows it."""
    try:
        return Path(dwi_file).relative_to(config.execution.bids_dir).as_posix()
    except ValueError:
        return str(dwi_file)


def collect_runs(statuses: list | None = None) -> dict:
    """Index the input and select the DWI runs of every selected subject.

    Returns ``{subject_label: [DWIRun, ...]}`` with only subjects that have runs. Runs that
    cannot be used (no gradients, empty file) are appended to ``statuses`` when it is given.
    """
    from bids_denoise.utils.bids import collect_dwi_runs, collect_participants, init_layout

    execution = config.execution
    log = config.loggers.cli
    layout = init_layout(execution.bids_dir, database_dir=execution.bids_database_dir)
    execution.layout = layout
    subjects = list(collect_participants(layout, participant_label=execution.participant_label) or [])

    runs_by_subject = {}
    problems = [] if statuses is not None else None
    for subject in subjects:
        runs = list(collect_dwi_runs(layout, subject, sessions=execution.session_label,
                                     bids_filters=execution.bids_filters, problems=problems) or [])
        if runs:
            runs_by_subject[subject] = runs
        else:
            log.warning("No DWI run was selected for sub-%s; it is skipped.", subject)

    for dwi_file, error, skipped in problems or []:
        statuses.append(RunStatus(relative_label(dwi_file), state=SKIPPED if skipped else FAILED,
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


def _writable_folder(folder: Path, what: str) -> bool:
    """Create ``folder`` if needed and prove it is writable; return whether it was created."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".bids_denoise_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CannotCreateError(
            f"cannot write to the {what} {folder}: {err.strerror or err}. Choose a folder you can write "
            "to" + (" with -w/--work-dir" if what == "work folder" else "") + "."
        ) from err
    return created


def check_output_dir() -> bool:
    """Create the output folder and prove it is writable (73 if not); whether it was created."""
    return _writable_folder(Path(config.execution.output_dir), "output folder")


def check_work_dir() -> bool:
    """Create the work folder and prove it is writable (73 if not); whether it was created."""
    return _writable_folder(Path(config.execution.work_dir), "work folder")


def remove_if_untouched(folder: Path) -> None:
    """Remove a folder this run created when nothing was written into it (but a lock file)."""
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    if all(entry.name == _LOCK_FILE and entry.is_file() and entry.stat().st_size == 0 for entry in entries):
        shutil.rmtree(folder, ignore_errors=True)
