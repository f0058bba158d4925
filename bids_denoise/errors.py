"""Errors that map onto the exit codes of the BIDS execution spec.

Every module raises these; only ``bids_denoise.cli.run`` turns them into an exit status, so the
same condition always ends with the same code.
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_ANALYSIS_LEVEL = 17
EXIT_EMPTY_SELECTION = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_CANNOT_CREATE = 73
EXIT_IO = 74


class BidsDenoiseError(Exception):
    """Base class; ``exit_code`` is the status the CLI ends with."""

    exit_code = EXIT_FAILURE


class UsageError(BidsDenoiseError):
    """Bad command-line arguments or paths (EX_USAGE)."""

    exit_code = EXIT_USAGE


class ValidationError(BidsDenoiseError):
    """The input dataset failed BIDS validation."""

    exit_code = EXIT_VALIDATION


class AnalysisLevelError(BidsDenoiseError):
    """The analysis level is not one this app supports."""

    exit_code = EXIT_ANALYSIS_LEVEL


class EmptySelectionError(BidsDenoiseError):
    """Participant, session or BIDS filters selected nothing."""

    exit_code = EXIT_EMPTY_SELECTION


class DataError(BidsDenoiseError):
    """Input data are malformed: wrong counts, NaNs, bad gradients (EX_DATAERR)."""

    exit_code = EXIT_DATA


class MissingInputError(BidsDenoiseError):
    """A valid dataset lacks a file that is needed (EX_NOINPUT)."""

    exit_code = EXIT_NO_INPUT


class CannotCreateError(BidsDenoiseError):
    """An output cannot be created: the folder is not writable (EX_CANTCREAT)."""

    exit_code = EXIT_CANNOT_CREATE
