"""``bids-denoise``: the command-line entry point.

:func:`main` runs one BIDS App invocation and returns its exit status. Every anticipated
failure is a :class:`~bids_denoise.errors.BidsDenoiseError` whose ``exit_code`` becomes the
status (see :mod:`bids_denoise.errors`); a failing Nipype workflow returns 1.

Flow
----
1. Parse the command line into :mod:`bids_denoise.config` and set up logging.
2. Check the analysis level (17) and the device (64).
3. Check the input has a ``dataset_description.json`` (66), then validate it unless
   ``--skip-bids-validation`` (16).
4. ``group``: summarise the existing outputs into ``group_summary.tsv`` and stop
   (:mod:`bids_denoise.cli.group`).
5. Prove the output and work folders writable (73); index the dataset and select the DWI runs
   (18 if labels/filters select none, 66 if the dataset has no DWI at all)
   (:mod:`bids_denoise.cli.inputs`). A folder this run created is removed again when the run
   stops before writing anything into it.
6. Check every run once, before any work: data, memory, earlier outputs
   (:func:`bids_denoise.cli.workflow.preflight`).
7. Write the resolved configuration to ``<work_dir>/<run_uuid>/config.toml``.
8. ``--boilerplate-only``: write ``<output_dir>/logs/CITATION.{md,bib,html}`` and stop.
9. The method's run-time check (DDM2 refuses a CPU run without ``--force``).
10. Build and run the workflow, write the reports and print the summary
    (:mod:`bids_denoise.cli.workflow`).
"""

from __future__ import annotations

import errno
import sys
import traceback
from pathlib import Path

from bids_denoise.cli.version import PROG
from bids_denoise.errors import EXIT_FAILURE, EXIT_IO, EXIT_OK, BidsDenoiseError


def _config():
    from bids_denoise import config

    return config


def _participant_level(config) -> int:
    from bids_denoise.cli import inputs, workflow
    from bids_denoise.utils.preflight import estimate_runtime

    execution = config.execution
    created = [Path(execution.output_dir)] if inputs.check_output_dir() else []
    try:
        if inputs.check_work_dir():
            created.append(Path(execution.work_dir))
        statuses = []
        runs_by_subject = workflow.preflight(inputs.collect_runs(statuses), statuses)
    except BidsDenoiseError:
        for folder in created:
            inputs.remove_if_untouched(folder)
        raise

    config_file = config.to_filename(Path(execution.work_dir) / execution.run_uuid / "config.toml")
    config.loggers.cli.info("Configuration written to %s", config_file)
    if execution.boilerplate_only:
        citation = workflow.write_boilerplate(runs_by_subject)
        print(f"{PROG}: methods boilerplate written to {citation}")
        return EXIT_OK
    estimate_runtime(runs_by_subject, settings=config.workflow, n_threads=config.nipype.omp_nthreads)
    return workflow.run_participant_level(runs_by_subject, statuses)


def _main(argv) -> int:
    from bids_denoise.cli import inputs
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
    config.loggers.cli.info("Running %s", " ".join(execution.cmdline))

    inputs.check_analysis_level(execution.analysis_level)
    inputs.check_device(config.workflow.device)
    inputs.check_dataset_description()
    if execution.skip_bids_validation:
        config.loggers.cli.info("BIDS validation skipped (--skip-bids-validation).")
    else:
        inputs.validate_input()

    if execution.analysis_level == "group":
        from bids_denoise.cli.group import run_group_level

        return run_group_level()
    return _participant_level(config)


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
