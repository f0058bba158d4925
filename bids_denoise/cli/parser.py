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
import json
import os
import re
import sys
from pathlib import Path

from bids_denoise import config
from bids_denoise.cli.version import PROG, version_string
from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE
from bids_denoise.errors import EXIT_USAGE, MissingInputError, UsageError

#: Largest Patch2Self patch radius; equals ``bids_denoise.denoise.patch2self.MAX_PATCH_RADIUS``
#: (a test checks it). Not imported from there: that module loads PyTorch, which would make
#: ``--help`` take seconds.
MAX_PATCH_RADIUS = 3
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
_nonnegative_int = _int_type(0)
_radius_int = _int_type(0, MAX_PATCH_RADIUS)


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
            "filters selected no DWI run; 64 bad arguments; 66 input missing."
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
        choices=config.METHODS,
        default="patch2self",
        help="Denoising method: 'patch2self' (self-supervised regression of each volume on the "
        "others; CPU, minutes) or 'ddm2' (self-supervised diffusion model, one model trained per "
        "shell; needs a GPU, see the DDM2 options). Default: patch2self.",
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
        default="shell",
        help="Which volumes are denoised together: 'shell' denoises each b-value shell on its "
        "own; 'all' pools every diffusion-weighted volume, as DIPY and QSIPrep do. "
        "Default: shell.",
    )
    g_method.add_argument(
        "--no-b0-denoising",
        dest="b0_denoising",
        action="store_false",
        help="Copy the b=0 volumes through unchanged instead of denoising them as their own "
        "group. Default: b=0 volumes are denoised.",
    )

    g_p2s = parser.add_argument_group("Patch2Self")
    g_p2s.add_argument(
        "--p2s-model",
        dest="p2s_model",
        choices=config.P2S_MODELS,
        default="ols",
        help="Regression that predicts each volume from the others: ordinary least squares, "
        "ridge or lasso (lasso is much slower). Default: ols.",
    )
    g_p2s.add_argument(
        "--p2s-alpha",
        dest="p2s_alpha",
        metavar="ALPHA",
        type=_float_type(0.0, inclusive=False),
        default=1.0,
        help="Regularisation strength (> 0) of the ridge and lasso models; ignored by ols. "
        "Default: 1.0.",
    )
    g_p2s.add_argument(
        "--patch-radius",
        dest="patch_radius",
        metavar="R",
        nargs="+",
        type=_radius_int,
        default=[0],
        help=f"Patch radius in voxels, one value for all axes or three (x y z), each 0..{MAX_PATCH_RADIUS}. "
        "0 uses single voxels, which suits human data; larger patches may help small or "
        "low-SNR data (infant, animal). Default: 0.",
    )

    g_ddm2 = parser.add_argument_group(
        "DDM2",
        "Settings of --method ddm2. Each shell gets its own model: Stage I trains a network that "
        "predicts every slice from the same slice of 2 neighbouring volumes, Stage II matches each "
        "slice's noise to a diffusion step, Stage III trains the diffusion denoiser, and each slice "
        "is then denoised from its own step. b=0 volumes are denoised with Patch2Self (2 or more "
        "b0s; --no-b0-denoising copies them). Stage checkpoints are kept in "
        "<work_dir>/ddm2/<run>/<shell>, so rerunning with the same -w resumes.",
    )
    g_ddm2.add_argument(
        "--ddm2-preset",
        dest="ddm2_preset",
        choices=config.DDM2_PRESETS,
        default="fast",
        help="Step counts and network size. 'paper': the paper's counts (Stage I 10,000 steps, "
        "Stage III 100,000, batch 32, 4 flips, full reverse chain; about 2-3 GPU-hours per shell "
        "of 64 volumes of 96x96x60 on an H100). 'fast': Stage I 3,000, Stage III 20,000, batch 32, "
        "1 flip, 25 strided sampling steps, bf16 and torch.compile (about 30 min per such shell). "
        "'smoke': a tiny network and tens of steps, to test an installation on the CPU (no useful "
        "denoising). Default: fast (the practical choice; use paper to reproduce the publication).",
    )
    g_ddm2.add_argument(
        "--ddm2-stage1-steps",
        dest="ddm2_stage1_steps",
        metavar="N",
        type=_positive_int,
        help="Training steps of Stage I (the noise model). Default: the preset's (paper 10000, "
        "fast 3000, smoke 30).",
    )
    g_ddm2.add_argument(
        "--ddm2-stage3-steps",
        dest="ddm2_stage3_steps",
        metavar="N",
        type=_positive_int,
        help="Training steps of Stage III (the diffusion denoiser). Default: the preset's (paper "
        "100000, fast 20000, smoke 40).",
    )
    g_ddm2.add_argument(
        "--ddm2-sampling-steps",
        dest="ddm2_sampling_steps",
        metavar="N",
        type=_nonnegative_int,
        help="Reverse diffusion steps per slice: 0 runs the full chain from the slice's matched "
        "step t* (t* steps, typically 10-450, with sampling noise, as in the paper); N > 0 takes at "
        "most N evenly strided deterministic steps. Default: the preset's (paper 0, fast 25, smoke 6).",
    )
    g_ddm2.add_argument(
        "--ddm2-batch-size",
        dest="ddm2_batch_size",
        metavar="N",
        type=_positive_int,
        help="Training batch of Stages I and III, in slices. Default: the preset's (paper and fast "
        "32, smoke 4).",
    )
    g_ddm2.add_argument(
        "--ddm2-inference-batch-size",
        dest="ddm2_inference_batch_size",
        metavar="N",
        type=_positive_int,
        help="Slices denoised together, each at its own noise level (GPU memory grows with it). "
        "Default: the preset's (paper 64, fast 256, smoke 16).",
    )
    g_ddm2.add_argument(
        "--ddm2-flips",
        dest="ddm2_flips",
        type=int,
        choices=config.DDM2_FLIPS,
        help="Flipped copies of each slice averaged at every reverse step (1: none; 2: plus a "
        "vertical flip; 4: all four flips, as in the paper); cost grows in proportion. Default: the "
        "preset's (paper 4, fast 1, smoke 2).",
    )
    g_ddm2.add_argument(
        "--ddm2-precision",
        dest="ddm2_precision",
        choices=config.DDM2_PRECISIONS,
        help="fp32 (TF32 tensor cores on CUDA) or bf16 autocast (faster on recent GPUs, slightly "
        "different numbers). Default: the preset's (paper and smoke fp32, fast bf16).",
    )
    g_ddm2.add_argument(
        "--ddm2-save-model",
        dest="ddm2_save_model",
        action="store_true",
        help="Also write the trained networks of every shell to the derivatives "
        "(<source>_desc-ddm2_model.pt, a PyTorch file). Default: off.",
    )
    g_ddm2.add_argument(
        "--seed",
        dest="seed",
        metavar="N",
        type=_nonnegative_int,
        default=0,
        help="Random seed of the DDM2 network initialisation, training batches and sampling noise. "
        "A CPU run is reproducible; GPU runs differ slightly between runs (non-deterministic "
        "cuDNN kernels). Default: 0.",
    )
    g_ddm2.add_argument(
        "--force",
        dest="force",
        action="store_true",
        help="Run DDM2 on the CPU with a preset other than 'smoke'. Without it such a run is refused "
        "with its estimated duration (days to months on a few cores). Default: off.",
    )

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
    """Read a ``--bids-filter-file``: a JSON object of ``{query: {entity: value}}``.

    :func:`bids_denoise.utils.bids.load_bids_filters` reads and checks it (queries and entity
    names too); without that module only the JSON structure is checked here. Either way a bad
    file ends with exit status 64 and a message naming it.
    """
    try:
        from bids_denoise.utils.bids import load_bids_filters
    except ImportError:
        load_bids_filters = None
    if load_bids_filters is not None:
        try:
            return load_bids_filters(path)
        except UsageError as exc:
            parser.error(f"--bids-filter-file: {exc}")
    try:
        text = path.read_text()
    except OSError as exc:
        parser.error(f"cannot read --bids-filter-file {path}: {exc.strerror or exc}")
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(
            f"--bids-filter-file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        )
    if not isinstance(filters, dict):
        parser.error(f"--bids-filter-file {path} must hold a JSON object like {{\"dwi\": {{...}}}}")
    for query, entities in filters.items():
        if not isinstance(entities, dict):
            parser.error(
                f"--bids-filter-file {path}: the filters of {query!r} must be a JSON object of "
                f"entity: value pairs, got {type(entities).__name__}"
            )
    return filters


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
    if _is_within(output_dir, bids_dir):
        outside = bids_dir.resolve().parent / f"{bids_dir.resolve().name}-derivatives" / "bids_denoise"
        raise UsageError(
            f"the output folder {output_dir} is the input BIDS folder {bids_dir} or inside it. "
            f"Outputs may not go anywhere inside the input dataset, not even under {bids_dir}/derivatives: "
            f"the input must stay untouched and may be mounted read-only. Use a folder outside the "
            f"input dataset, e.g. {outside}."
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

    # patch radius: one value or three
    if len(opts.patch_radius) not in (1, 3):
        parser.error(f"--patch-radius takes 1 or 3 values, got {len(opts.patch_radius)}")
    patch_radius = tuple(opts.patch_radius * 3 if len(opts.patch_radius) == 1 else opts.patch_radius)

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
                "shell_grouping": opts.shell_grouping,
                "b0_denoising": opts.b0_denoising,
                "p2s_model": opts.p2s_model,
                "p2s_alpha": opts.p2s_alpha,
                "patch_radius": patch_radius,
                "device": opts.device,
                "ddm2_preset": opts.ddm2_preset,
                "ddm2_stage1_steps": opts.ddm2_stage1_steps,
                "ddm2_stage3_steps": opts.ddm2_stage3_steps,
                "ddm2_sampling_steps": opts.ddm2_sampling_steps,
                "ddm2_batch_size": opts.ddm2_batch_size,
                "ddm2_inference_batch_size": opts.ddm2_inference_batch_size,
                "ddm2_flips": opts.ddm2_flips,
                "ddm2_precision": opts.ddm2_precision,
                "ddm2_save_model": opts.ddm2_save_model,
                "seed": opts.seed,
                "force": opts.force,
            },
        }
    )
    return opts
