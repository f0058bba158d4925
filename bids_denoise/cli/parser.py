"""Command-line parser of ``bids-denoise``.

:func:`parse_args` parses the command line, checks the arguments that can be checked without
reading the dataset, and fills :mod:`bids_denoise.config`. Malformed arguments end the process
with exit status 64 (``EX_USAGE``) through :meth:`ArgumentParser.error`; argparse's own status
2 is reserved for the shell by the BIDS execution spec. Problems with the paths raise
:class:`~bids_denoise.errors.UsageError` (64) or :class:`~bids_denoise.errors.MissingInputError`
(66), which :func:`bids_denoise.cli.run.main` turns into the exit status.

The analysis level is a free string here; :mod:`bids_denoise.cli.run` rejects unsupported
levels with exit status 17, as the execution spec asks.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from bids_denoise import config
from bids_denoise.cli.version import PROG, version_string
from bids_denoise.denoise.methods import (
    DEFAULT_GROUPING,
    DEFAULT_METHOD,
    DEFAULT_RICIAN_CORRECTION,
    METHODS,
    Option,
    all_options,
)
from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE
from bids_denoise.errors import EXIT_USAGE, MissingInputError, UsageError

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors exit with 64 (EX_USAGE) instead of 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def exit(self, status=0, message=None):
        if status == 2:  # argparse's default usage status is reserved for the shell
            status = EXIT_USAGE
        super().exit(status, message)


# ------------------------------------------------------------------------------- converters
def _label_type(prefix: str, entity: str):
    def _convert(value: str) -> str:
        label = value[len(prefix) :] if value.startswith(prefix) else value
        if not _LABEL_RE.match(label):
            raise argparse.ArgumentTypeError(
                f"invalid {entity} label {value!r}: BIDS labels are letters and digits only "
                f"(an optional {prefix!r} prefix is removed)"
            )
        return label

    return _convert


def _float_type(minimum: float, inclusive: bool):
    def _convert(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
        if number < minimum or (not inclusive and number == minimum):
            raise argparse.ArgumentTypeError(f"{value} must be {'>=' if inclusive else '>'} {minimum:g}")
        return number

    return _convert


def _int_type(minimum: int, maximum: int | None = None):
    def _convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if maximum is not None and not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is outside {minimum}..{maximum}")
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return number

    return _convert


_positive_int = _int_type(1)


def _option_arguments(option: Option) -> dict:
    """``add_argument`` keywords of a method option from the registry."""
    arguments = dict(dest=option.name, help=option.help_text())
    if option.kind == "switch":
        return dict(arguments, action="store_false" if option.default else "store_true")
    if option.kind == "choice":
        return dict(arguments, choices=option.choices, default=option.default)
    if option.kind == "radius":
        return dict(arguments, nargs="+", metavar=option.metavar,
                    type=_int_type(int(option.minimum), int(option.maximum)), default=list(option.default))
    if option.choices:
        return dict(arguments, type=int, choices=option.choices, default=option.default)
    if option.kind == "int":
        maximum = None if option.maximum is None else int(option.maximum)
        converter = _int_type(int(option.minimum), maximum)
    else:
        converter = _float_type(option.minimum, inclusive=not option.positive)
    return dict(arguments, type=converter, default=option.default, metavar=option.metavar)


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {path}")
    return path


def _path(value: str) -> Path:
    return Path(value).expanduser().absolute()


# --------------------------------------------------------------------------------- builder
def _build_parser() -> argparse.ArgumentParser:
    """Build the ``bids-denoise`` argument parser (documentation of every option)."""
    nproc_default = os.cpu_count() or 1
    parser = _Parser(
        prog=PROG,
        description=(
            "bids_denoise: denoise diffusion MRI (DWI) series of a BIDS dataset with Patch2Self "
            "(self-supervised regression, one volume from the others) and write them as a BIDS "
            "derivatives dataset."
        ),
        epilog=(
            "Exit status: 0 success; 1 the workflow failed (crash files are in <work_dir>/logs); "
            "16 the input failed BIDS validation; 17 unsupported analysis level; 18 the labels or "
            "filters selected no DWI run; 64 bad arguments; 65 bad input data (wrong counts, NaN "
            "values, unreadable files); 66 input missing; 73 an output or work folder cannot be "
            "created or written; 74 input/output error (e.g. the disk is full)."
        ),
        allow_abbrev=False,
    )

    # BIDS Apps positional arguments
    parser.add_argument(
        "bids_dir",
        type=_path,
        help="Root folder of the input BIDS dataset (the folder with dataset_description.json). "
        "Required; it must exist and is only read.",
    )
    parser.add_argument(
        "output_dir",
        type=_path,
        help="Folder for the derivatives dataset (created if missing). Required; it must lie "
        "outside bids_dir.",
    )
    parser.add_argument(
        "analysis_level",
        help="Processing stage: 'participant' denoises each selected subject; 'group' summarises "
        "the outputs already in output_dir into group_summary.tsv. Required; other values exit "
        "with status 17.",
    )

    g_bids = parser.add_argument_group("Selecting the input")
    g_bids.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        metavar="LABEL",
        type=_label_type("sub-", "participant"),
        help="Subjects to process, separated by spaces, with or without the 'sub-' prefix "
        "(e.g. 01 sub-02). Default: every subject in the dataset.",
    )
    g_bids.add_argument(
        "--session-label",
        dest="session_label",
        nargs="+",
        metavar="LABEL",
        type=_label_type("ses-", "session"),
        help="Sessions to process, with or without the 'ses-' prefix. Default: every session "
        "(and data without sessions).",
    )
    g_bids.add_argument(
        "--bids-filter-file",
        dest="bids_filter_file",
        metavar="FILE",
        type=_existing_file,
        help="JSON file of pybids filters per query, e.g. {\"dwi\": {\"acquisition\": \"multi\", "
        "\"run\": 1}}; null selects files without that entity and \"*\" files with any value. "
        "Default: no filters.",
    )
    g_bids.add_argument(
        "--bids-database-dir",
        dest="bids_database_dir",
        metavar="PATH",
        type=_path,
        help="Folder of a pybids SQLite index to reuse (created if missing), which saves indexing "
        "large datasets again. Default: index the dataset afresh for each run.",
    )

    g_method = parser.add_argument_group("Denoising method and shells")
    g_method.add_argument(
        "--method",
        choices=tuple(METHODS),
        default=DEFAULT_METHOD,
        help="Denoising method: "
        + "; ".join(f"'{name}' ({method.summary})" for name, method in METHODS.items())
        + f". Default: {DEFAULT_METHOD}.",
    )
    g_method.add_argument(
        "--b0-threshold",
        dest="b0_threshold",
        metavar="BVAL",
        type=_float_type(0.0, inclusive=True),
        default=float(B0_THRESHOLD),
        help=f"Volumes with a b-value at or below this (s/mm², >= 0) are treated as b=0 images. "
        f"Default: {B0_THRESHOLD:g}.",
    )
    g_method.add_argument(
        "--shell-tolerance",
        dest="shell_tolerance",
        metavar="BVAL",
        type=_float_type(0.0, inclusive=True),
        default=float(SHELL_TOLERANCE),
        help=f"b-values closer than this (s/mm², >= 0) belong to the same shell, e.g. 995, 1000 "
        f"and 1005 form one shell. Default: {SHELL_TOLERANCE:g}.",
    )
    g_method.add_argument(
        "--shell-grouping",
        dest="shell_grouping",
        choices=config.GROUPINGS,
        default=None,
        help="Which volumes are denoised together: 'shell' denoises each b-value shell on its "
        "own; 'all' pools every diffusion-weighted volume, as DIPY and QSIPrep do (it kept "
        "white-matter FA better on every multi-shell phantom of the quality benchmark). The b0s "
        f"are always a group of their own. Default: {DEFAULT_GROUPING}, but shell for --method ddm2 "
        "(one model per shell).",
    )
    g_method.add_argument(
        "--rician-correction",
        dest="rician_correction",
        choices=config.RICIAN_CORRECTIONS,
        default=DEFAULT_RICIAN_CORRECTION,
        help="Remove the Rician noise floor that every denoiser leaves in low signal (it biases MD "
        "and FA), using the run's map of the noise standard deviation (MP-PCA over all volumes, "
        "corrected for the Rician variance, at the level of the b0 repeats when they agree): "
        "'mean' inverts the Rician mean, which is what a denoised value estimates; 'moments' is "
        "the method-of-moments correction sqrt(S^2 - 2 sigma^2); 'none' keeps the denoiser's "
        f"output as it is. Default: {DEFAULT_RICIAN_CORRECTION}.",
    )
    g_method.add_argument(
        "--no-error-estimate",
        dest="error_estimate",
        action="store_false",
        help="Do not estimate each volume group's error. The estimate (EstimatedRMSE in the "
        "sidecar and the report) denoises every group a second time from slightly perturbed data "
        "(Monte-Carlo SURE), so it doubles the denoising time. Default: estimated.",
    )
    g_method.add_argument(
        "--no-b0-denoising",
        dest="b0_denoising",
        action="store_false",
        help="Copy the b=0 volumes through unchanged instead of denoising them as their own "
        "group. Default: b=0 volumes are denoised.",
    )

    for method in METHODS.values():
        group = parser.add_argument_group(method.label, method.description)
        for option in method.options:
            if option.flag:
                group.add_argument(option.flag, *option.aliases, **_option_arguments(option))

    g_perf = parser.add_argument_group("Performance and execution")
    g_perf.add_argument(
        "-w",
        "--work-dir",
        dest="work_dir",
        metavar="PATH",
        type=_path,
        default="work",
        help="Nipype working directory for intermediate results, crash files (<work_dir>/logs) "
        "and the run's config.toml; reuse it to resume. It must lie outside bids_dir. "
        "Default: ./work.",
    )
    g_perf.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        "--n_cpus",
        dest="nprocs",
        metavar="N",
        type=_positive_int,
        help=f"Maximum number of processes Nipype runs at once. Default: all CPUs "
        f"(os.cpu_count(), {nproc_default} here), or n_procs from --use-plugin.",
    )
    g_perf.add_argument(
        "--omp-nthreads",
        dest="omp_nthreads",
        metavar="N",
        type=_positive_int,
        help="Maximum threads one process uses (sets OMP_NUM_THREADS, MKL_NUM_THREADS, "
        "OPENBLAS_NUM_THREADS and PyTorch's thread count); capped at --nprocs. "
        "Default: the smaller of --nprocs and 8.",
    )
    g_perf.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        metavar="GB",
        type=_float_type(0.0, inclusive=False),
        help="Upper bound of memory (GB, > 0) the scheduler hands out to running nodes. "
        "Default: no bound (Nipype uses the memory available).",
    )
    g_perf.add_argument(
        "--use-plugin",
        dest="use_plugin",
        metavar="FILE",
        type=_existing_file,
        help="YAML file with a Nipype 'plugin' name and optional 'plugin_args' (e.g. to use "
        "Linear or a cluster plugin); the file must exist. Default: MultiProc with --nprocs.",
    )
    g_perf.add_argument(
        "--device",
        choices=config.DEVICES,
        default="auto",
        help="Where PyTorch computes: 'auto' uses a CUDA GPU when one is visible and the CPU "
        "otherwise; 'cuda' fails if no GPU is visible. Default: auto.",
    )
    g_perf.add_argument(
        "--stop-on-first-crash",
        dest="stop_on_first_crash",
        action="store_true",
        help="Stop the whole run as soon as one node fails. Default: off (independent runs go on).",
    )
    g_perf.add_argument(
        "--write-graph",
        dest="write_graph",
        action="store_true",
        help="Write an SVG drawing of the workflow graph to the work directory (needs Graphviz). "
        "Default: off.",
    )

    g_other = parser.add_argument_group("Other options")
    g_other.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="Do not run the BIDS validator on the input dataset. Default: off (the input is "
        "validated and the run stops with status 16 if it fails).",
    )
    g_other.add_argument(
        "--boilerplate-only",
        "--boilerplate_only",
        dest="boilerplate_only",
        action="store_true",
        help="Only write the methods description to <output_dir>/logs/CITATION.md and exit. "
        "Default: off.",
    )
    g_other.add_argument(
        "-v",
        "--verbose",
        dest="verbose_count",
        action="count",
        default=0,
        help="Show more log messages; repeat for more (-v INFO, -vvv DEBUG). "
        "Default: only important messages, warnings and errors.",
    )
    g_other.add_argument(
        "--version",
        action="version",
        version=version_string(),
        help="Print the version ('bids-denoise vX.Y.Z') and exit.",
    )
    return parser


# ---------------------------------------------------------------------------------- helpers
def _load_bids_filters(parser: argparse.ArgumentParser, path: Path) -> dict:
    """Read a ``--bids-filter-file`` (:func:`bids_denoise.utils.bids.load_bids_filters` checks
    the JSON, the queries and the entity names); a bad file ends with exit status 64 and a
    message naming it."""
    from bids_denoise.utils.bids import load_bids_filters

    try:
        return load_bids_filters(path)
    except UsageError as exc:
        parser.error(f"--bids-filter-file: {exc}")


def _load_plugin_file(parser: argparse.ArgumentParser, path: Path) -> dict:
    """Read a ``--use-plugin`` YAML file: ``plugin`` (str) and optional ``plugin_args`` (map)."""
    import yaml

    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        parser.error(f"--use-plugin {path} is not valid YAML: {exc}")
    except OSError as exc:
        parser.error(f"cannot read --use-plugin {path}: {exc.strerror or exc}")
    if not isinstance(settings, dict) or not isinstance(settings.get("plugin"), str):
        parser.error(f"--use-plugin {path} must be a YAML mapping with a 'plugin' name (and optional 'plugin_args')")
    plugin_args = settings.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        parser.error(f"--use-plugin {path}: 'plugin_args' must be a mapping")
    return {"plugin": settings["plugin"], "plugin_args": {k: v for k, v in plugin_args.items() if v is not None}}


def _is_within(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _check_paths(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    if not bids_dir.is_dir():
        what = "is not a folder" if bids_dir.exists() else "does not exist"
        raise MissingInputError(
            f"the BIDS root folder {bids_dir} {what}. If you run bids-denoise in Docker or "
            "Singularity/Apptainer, check that the dataset is mounted into the container at this "
            f"path (e.g. docker run -v /host/data:{bids_dir}:ro, or apptainer run -B /host/data:{bids_dir})."
        )
    derivatives = bids_dir / "derivatives"
    if _is_within(output_dir, bids_dir) and not (_is_within(output_dir, derivatives)
                                                 and output_dir.resolve() != derivatives.resolve()):
        raise UsageError(
            f"the output folder {output_dir} is the input BIDS folder {bids_dir} or inside its raw "
            f"data. Outputs go outside the input dataset, or in a folder of its derivatives/ "
            f"(which pybids and the BIDS validator skip), e.g. {derivatives / 'bids_denoise'}."
        )
    if _is_within(work_dir, bids_dir):
        raise UsageError(
            f"the work folder {work_dir} is inside the input BIDS folder {bids_dir}; "
            "choose a work folder (-w/--work-dir) outside the input dataset."
        )
    if work_dir.resolve() == output_dir.resolve():
        raise UsageError(
            f"the work folder and the output folder are the same ({work_dir}); "
            "intermediate files must not be mixed with the derivatives."
        )


def _resolve_threads(opts, plugin_settings):
    """nprocs, omp_nthreads and mem_gb from the CLI, the plugin file and the machine."""
    yaml_args = plugin_settings["plugin_args"] if plugin_settings else {}
    nprocs = opts.nprocs or yaml_args.get("n_procs") or os.cpu_count() or 1
    nprocs = int(nprocs)
    mem_gb = opts.mem_gb if opts.mem_gb is not None else yaml_args.get("memory_gb")
    mem_gb = float(mem_gb) if mem_gb is not None else None
    if opts.omp_nthreads is None:
        omp_nthreads = min(nprocs, config.MAX_DEFAULT_OMP)
    elif opts.omp_nthreads > nprocs:
        config.loggers.cli.warning(
            "--omp-nthreads %d is larger than the %d processes allowed (--nprocs); using %d threads per process.",
            opts.omp_nthreads,
            nprocs,
            nprocs,
        )
        omp_nthreads = nprocs
    else:
        omp_nthreads = opts.omp_nthreads
    return nprocs, omp_nthreads, mem_gb


# ------------------------------------------------------------------------------------ entry
def parse_args(args=None) -> argparse.Namespace:
    """Parse ``args`` (default ``sys.argv[1:]``), check them and fill :mod:`bids_denoise.config`.

    Returns the parsed namespace. Usage errors exit with status 64; path problems raise
    :class:`UsageError` (64) or :class:`MissingInputError` (66).
    """
    args = list(sys.argv[1:] if args is None else args)
    parser = _build_parser()
    opts = parser.parse_args(args)

    method_options = {}
    for option in all_options().values():
        value = getattr(opts, option.name, option.default)
        if option.kind == "radius":
            if len(value) not in (1, 3):
                parser.error(f"{option.flag} takes 1 or 3 values, got {len(value)}")
            value = tuple(value * 3 if len(value) == 1 else value)
        method_options[option.name] = value

    bids_filters = _load_bids_filters(parser, opts.bids_filter_file) if opts.bids_filter_file else None
    plugin_settings = _load_plugin_file(parser, opts.use_plugin) if opts.use_plugin else None

    _check_paths(opts.bids_dir, opts.output_dir, opts.work_dir)

    nprocs, omp_nthreads, mem_gb = _resolve_threads(opts, plugin_settings)
    plugin = plugin_settings["plugin"] if plugin_settings else "MultiProc"
    plugin_args = dict(plugin_settings["plugin_args"]) if plugin_settings else {}
    if plugin in config.MULTIPROC_PLUGINS:
        plugin_args["n_procs"] = nprocs
        plugin_args.setdefault("raise_insufficient", False)
        if mem_gb is not None:
            plugin_args["memory_gb"] = mem_gb

    def _unique(labels):
        return list(dict.fromkeys(labels)) if labels else None

    config.from_dict(
        {
            "execution": {
                "bids_dir": opts.bids_dir,
                "output_dir": opts.output_dir,
                "work_dir": opts.work_dir,
                "analysis_level": opts.analysis_level,
                "participant_label": _unique(opts.participant_label),
                "session_label": _unique(opts.session_label),
                "bids_filters": bids_filters,
                "bids_filter_file": opts.bids_filter_file,
                "bids_database_dir": opts.bids_database_dir,
                "skip_bids_validation": opts.skip_bids_validation,
                "boilerplate_only": opts.boilerplate_only,
                "write_graph": opts.write_graph,
                "stop_on_first_crash": opts.stop_on_first_crash,
                "log_dir": opts.work_dir / "logs",
                "run_uuid": config.new_run_uuid(),
                "cmdline": [PROG, *args],
                "verbosity": opts.verbose_count,
                "log_level": config.log_level_from_verbosity(opts.verbose_count),
            },
            "nipype": {
                "plugin": plugin,
                "plugin_args": plugin_args,
                "nprocs": nprocs,
                "omp_nthreads": omp_nthreads,
                "mem_gb": mem_gb,
                "use_plugin": opts.use_plugin,
            },
            "workflow": {
                "method": opts.method,
                "b0_threshold": opts.b0_threshold,
                "shell_tolerance": opts.shell_tolerance,
                "shell_grouping": opts.shell_grouping or METHODS[opts.method].default_grouping,
                "b0_denoising": opts.b0_denoising,
                "rician_correction": opts.rician_correction,
                "error_estimate": opts.error_estimate,
                "device": opts.device,
                **method_options,
            },
        }
    )
    return opts
