"""Settings of one bids_denoise run, shared by the CLI, the workflows and the interfaces.

The settings live in module-level *sections*: classes whose class attributes are the
settings. They are never instantiated; import the module and read the attributes::

    from bids_denoise import config

    config.workflow.b0_threshold       # 50.0
    config.nipype.get_plugin()         # {"plugin": "MultiProc", "plugin_args": {...}}

Sections
--------
``environment``
    Facts about the running process (versions, CPUs, container). Written to the TOML file for
    provenance, but never overwritten by :func:`load`.
``execution``
    Inputs, outputs, selection, logging and bookkeeping of the run.
``nipype``
    How the Nipype graph is executed (plugin, processes, threads, memory).
``workflow``
    The denoising method and its parameters.
``loggers``
    The Python loggers of the app (not serialised).

The command line (:mod:`bids_denoise.cli.parser`) fills these sections; :func:`to_filename`
writes them as TOML and :func:`load` reads such a file back, so a run can be reproduced or
inspected. Serialised fields round-trip exactly: paths come back as :class:`~pathlib.Path`,
the patch radius as a tuple, and BIDS filters (whose JSON ``null`` TOML cannot hold) as the
same dictionary.
"""

from __future__ import annotations

import copy
import json
import logging
import getpass
import os
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from uuid import uuid4

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from bids_denoise.__about__ import __version__
from bids_denoise.denoise.methods import (
    DEFAULT_GROUPING,
    DEFAULT_METHOD,
    DEFAULT_RICIAN_CORRECTION,
    METHODS,
    all_options,
)
from bids_denoise.denoise.shells import B0_THRESHOLD, GROUPINGS, SHELL_TOLERANCE

#: Environment variables that our Docker/Apptainer images set: the image's name and tag, and
#: its kind (default docker).
CONTAINER_ENV = "BIDS_DENOISE_CONTAINER_IMAGE"
CONTAINER_TYPE_ENV = "BIDS_DENOISE_CONTAINER_TYPE"
#: Log level used when ``-v`` is not given (between INFO and WARNING, as in fMRIPrep).
IMPORTANT = 25
DEVICES = ("auto", "cpu", "cuda")
RICIAN_CORRECTIONS = ("none", "mean", "moments")
#: Nipype plugins that take ``n_procs``/``memory_gb`` in their ``plugin_args``.
MULTIPROC_PLUGINS = ("MultiProc", "LegacyMultiProc")
#: Start method of MultiProc workers (see :meth:`nipype.get_plugin`).
MULTIPROC_CONTEXT = "spawn"
#: Default cap of threads per process (``--omp-nthreads``).
MAX_DEFAULT_OMP = 8

logging.addLevelName(IMPORTANT, "IMPORTANT")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def detect_container() -> dict | None:
    """``{"Type": ..., "Image": ...}`` when running in a container, else ``None``.

    Our images set :data:`CONTAINER_ENV`; any other Apptainer or Singularity container is
    recognised by the variables those runtimes set.
    """
    image = os.environ.get(CONTAINER_ENV, "").strip()
    if image:
        return {"Type": os.environ.get(CONTAINER_TYPE_ENV, "").strip() or "docker", "Image": image}
    for variable, kind in (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity")):
        image = os.environ.get(variable, "").strip()
        if image:
            return {"Type": kind, "Image": image}
    return None


def new_run_uuid() -> str:
    """A new run identifier: ``YYYYmmdd-HHMMSS_<8 hex digits>``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid4().hex[:8]}"


def log_level_from_verbosity(verbosity: int) -> int:
    """Log level for ``-v`` given ``verbosity`` times: 25, 20 (-v), 15 (-vv), 10 (-vvv)."""
    return max(IMPORTANT - 5 * int(verbosity), logging.DEBUG)


class _Config:
    """Base of the sections; holds settings as class attributes."""

    #: Attributes that are never written to or read from TOML.
    _nonserial: tuple[str, ...] = ()
    #: Attributes that hold paths (stored as ``Path``, written as ``str``).
    _paths: tuple[str, ...] = ()
    #: Snapshot of the defaults, taken when the class is created (see :func:`reset`).
    _defaults: dict = {}

    def __init__(self):
        raise RuntimeError(f"Configuration section {type(self).__name__} cannot be instantiated")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._defaults = {name: copy.deepcopy(getattr(cls, name)) for name in cls._fields()}
        for name in cls._nonserial:
            cls._defaults[name] = copy.deepcopy(getattr(cls, name, None))

    @classmethod
    def _fields(cls) -> list[str]:
        """Names of the serialised settings, in definition order."""
        names = []
        for name, value in vars(cls).items():
            if name.startswith("_") or name in cls._nonserial:
                continue
            if isinstance(value, (classmethod, staticmethod, property)) or callable(value):
                continue
            names.append(name)
        return names

    @classmethod
    def load(cls, settings: dict, init: bool = True) -> None:
        """Set attributes from ``settings``; unknown keys raise ``KeyError``."""
        fields = set(cls._fields()) | set(cls._nonserial)
        for name, value in settings.items():
            if name not in fields:
                raise KeyError(f"Unknown setting {cls.__name__}.{name}")
            if name in cls._paths and value is not None:
                value = Path(value)
            setattr(cls, name, cls._coerce(name, value))
        if init:
            cls.init()

    @classmethod
    def _coerce(cls, name, value):
        """Convert a value read from TOML/CLI to its Python type (override per section)."""
        return value

    @classmethod
    def init(cls) -> None:
        """Apply the settings (no-op unless a section overrides it)."""

    @classmethod
    def get(cls) -> dict:
        """The serialised settings of this section, as Python values."""
        return {name: copy.deepcopy(getattr(cls, name)) for name in cls._fields()}

    @classmethod
    def _reset(cls) -> None:
        for name, value in cls._defaults.items():
            setattr(cls, name, copy.deepcopy(value))


# ------------------------------------------------------------------------------ environment
class environment(_Config):
    """Read-only facts about the process (recorded for provenance, never loaded back)."""

    version = __version__
    """The bids_denoise version."""
    cpu_count = os.cpu_count()
    """CPUs visible to the process."""
    in_container = detect_container() is not None
    """Whether this runs inside a container (ours, or any Apptainer/Singularity one)."""
    container_image = (detect_container() or {}).get("Image")
    """Name and tag (or path) of the image, when in a container."""
    python_version = ".".join(str(v) for v in sys.version_info[:3])
    """Version of the Python interpreter."""
    torch_version = _package_version("torch")
    """Installed PyTorch version."""
    nipype_version = _package_version("nipype")
    """Installed Nipype version."""

    @classmethod
    def _reset(cls) -> None:
        super()._reset()
        cls.cpu_count = os.cpu_count()
        cls.container_image = (detect_container() or {}).get("Image")
        cls.in_container = cls.container_image is not None


# -------------------------------------------------------------------------------- execution
class execution(_Config):
    """Inputs, outputs, selection and bookkeeping."""

    bids_dir = None
    """Root of the input BIDS dataset."""
    output_dir = None
    """Root of the output derivatives dataset."""
    work_dir = Path("work").absolute()
    """Nipype working directory (intermediate results, crash files, configs)."""
    analysis_level = "participant"
    """BIDS Apps analysis level: ``participant`` or ``group``."""
    participant_label = None
    """Subjects to process (labels without ``sub-``); ``None`` means all."""
    session_label = None
    """Sessions to process (labels without ``ses-``); ``None`` means all."""
    bids_filters = None
    """Per-query pybids filters from ``--bids-filter-file`` (JSON null kept as ``None``)."""
    bids_filter_file = None
    """The JSON file the filters were read from."""
    bids_database_dir = None
    """Folder of a pybids SQLite index to reuse; ``None`` indexes the dataset afresh."""
    skip_bids_validation = False
    """Do not run the BIDS validator on the input."""
    boilerplate_only = False
    """Write the methods boilerplate and stop."""
    write_graph = False
    """Write an SVG of the workflow graph to the work directory."""
    stop_on_first_crash = False
    """Stop the whole workflow when one node fails."""
    log_dir = Path("work").absolute() / "logs"
    """Where Nipype writes crash files: ``<work_dir>/logs`` unless set explicitly."""
    run_uuid = new_run_uuid()
    """Unique identifier of this run: a timestamp and a short random hex string."""
    cmdline = []
    """The command line of the run, as a list of strings."""
    verbosity = 0
    """How many times ``-v`` was given."""
    log_level = IMPORTANT
    """Python log level derived from ``verbosity``."""

    layout = None
    """The ``BIDSLayout`` of the input (set by the CLI; not serialised)."""

    _nonserial = ("layout",)
    _paths = ("bids_dir", "output_dir", "work_dir", "bids_filter_file", "bids_database_dir", "log_dir")

    @classmethod
    def load(cls, settings: dict, init: bool = True) -> None:
        settings = dict(settings)
        # Crash files follow the work directory unless a log folder is given explicitly.
        if "work_dir" in settings and "log_dir" not in settings and settings["work_dir"] is not None:
            settings["log_dir"] = Path(settings["work_dir"]) / "logs"
        if "verbosity" in settings and "log_level" not in settings:
            settings["log_level"] = log_level_from_verbosity(settings["verbosity"])
        super().load(settings, init=init)

    @classmethod
    def _coerce(cls, name, value):
        if name == "bids_filters" and isinstance(value, str):
            return json.loads(value)
        if name in ("participant_label", "session_label", "cmdline") and value is not None:
            return [str(v) for v in value]
        if name in ("verbosity", "log_level"):
            return int(value)
        return value


# ----------------------------------------------------------------------------------- nipype
class nipype(_Config):
    """How the Nipype graph is executed."""

    plugin = "MultiProc"
    """Nipype execution plugin."""
    plugin_args = {"n_procs": os.cpu_count() or 1, "raise_insufficient": False}
    """Arguments of the plugin; for MultiProc they are kept in sync with ``nprocs``/``mem_gb``."""
    nprocs = os.cpu_count() or 1
    """Processes Nipype may run at once."""
    omp_nthreads = min(os.cpu_count() or 1, MAX_DEFAULT_OMP)
    """Threads one process may use (OpenMP, BLAS and PyTorch); never more than ``nprocs``."""
    mem_gb = None
    """Memory (GB) the scheduler may hand out; ``None`` lets Nipype use what is free."""
    use_plugin = None
    """YAML file with ``plugin`` and ``plugin_args`` that was used to set the plugin."""
    crashfile_format = "txt"
    """Format of Nipype crash files."""

    _paths = ("use_plugin",)

    @classmethod
    def _coerce(cls, name, value):
        if name in ("nprocs", "omp_nthreads"):
            return int(value)
        if name == "mem_gb" and value is not None:
            return float(value)
        if name == "plugin_args":
            return dict(value or {})
        return value

    @classmethod
    def get_plugin(cls) -> dict:
        """Keyword arguments for ``Workflow.run``: ``{"plugin": ..., "plugin_args": {...}}``."""
        args = copy.deepcopy(cls.plugin_args or {})
        if cls.plugin in MULTIPROC_PLUGINS:
            args["n_procs"] = int(cls.nprocs)
            args.setdefault("raise_insufficient", False)
            if cls.mem_gb:
                args["memory_gb"] = float(cls.mem_gb)
        if cls.plugin == "MultiProc":
            # A forked worker inherits the parent's OpenMP/PyTorch thread pool and can deadlock
            # in its first parallel region (seen when torch had already run in the parent, as
            # under pytest or in a host pipeline). Spawned workers start clean; a fork server
            # would too, but its socket path fails under a long TMPDIR ("AF_UNIX path too long").
            args.setdefault("mp_context", MULTIPROC_CONTEXT)
        return {"plugin": cls.plugin, "plugin_args": args}

    @classmethod
    def init(cls) -> None:
        """Push the execution settings into Nipype's global configuration."""
        from nipype import config as ncfg
        from nipype import logging as nlogging

        os.environ.setdefault("NIPYPE_NO_ET", "1")
        # Nipype's SLURM and SGE plugins read LOGNAME, which batch and container
        # environments often leave unset.
        if "LOGNAME" not in os.environ:
            try:
                os.environ["LOGNAME"] = getpass.getuser()
            except (KeyError, OSError):  # docker run -u UID: a uid without a passwd entry
                os.environ["LOGNAME"] = str(os.getuid())
        crashdump_dir = Path(execution.log_dir or Path(execution.work_dir) / "logs")
        ncfg.update_config(
            {
                "execution": {
                    "crashdump_dir": str(crashdump_dir),
                    "crashfile_format": cls.crashfile_format,
                    "stop_on_first_crash": execution.stop_on_first_crash,
                    "hash_method": "content",
                    "remove_unnecessary_outputs": False,
                    "get_linked_libs": False,
                    "check_version": False,
                },
                "monitoring": {"enabled": False},
            }
        )
        nlogging.update_logging(ncfg)
        loggers.init()


# --------------------------------------------------------------------------------- workflow
class workflow(_Config):
    """The denoising method and its parameters.

    Besides the settings below, every option of every method in
    :mod:`bids_denoise.denoise.methods` is an attribute (``patch_radius``, ``ddm2_preset``, ...),
    with the registry's default, checks and documentation.
    """

    method = DEFAULT_METHOD
    """Denoiser, one of :data:`bids_denoise.denoise.methods.METHODS`."""
    b0_threshold = float(B0_THRESHOLD)
    """Volumes with b <= this (s/mm²) are b0s."""
    shell_tolerance = float(SHELL_TOLERANCE)
    """b-values closer than this (s/mm²) belong to one shell."""
    shell_grouping = DEFAULT_GROUPING
    """``shell``: denoise each shell separately; ``all``: pool all diffusion-weighted volumes."""
    b0_denoising = True
    """Denoise the b0 volumes (as their own group)."""
    rician_correction = DEFAULT_RICIAN_CORRECTION
    """Remove the Rician noise floor after denoising: ``none``, ``mean`` or ``moments``
    (:mod:`bids_denoise.denoise.rician`), with the run's noise map (:mod:`bids_denoise.denoise.noise`)."""
    error_estimate = True
    """Estimate each volume group's error without ground truth (one more denoising run,
    :mod:`bids_denoise.denoise.error`)."""
    device = "auto"
    """PyTorch device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    _choices = {"method": tuple(METHODS), "shell_grouping": GROUPINGS, "device": DEVICES,
                "rician_correction": RICIAN_CORRECTIONS}

    @classmethod
    def _coerce(cls, name, value):
        if name in cls._choices and value not in cls._choices[name]:
            raise ValueError(f"workflow.{name} must be one of {', '.join(cls._choices[name])}; got {value!r}")
        if name in ("b0_threshold", "shell_tolerance"):
            value = float(value)
            if value < 0:
                raise ValueError(f"workflow.{name} must be >= 0; got {value}")
        if name in ("b0_denoising", "error_estimate"):
            return bool(value)
        option = all_options().get(name)
        if option is not None:
            return option.coerce(value)
        return value


for _option in all_options().values():
    setattr(workflow, _option.name, copy.deepcopy(_option.default))
workflow._defaults = {name: copy.deepcopy(getattr(workflow, name)) for name in workflow._fields()}


# ---------------------------------------------------------------------------------- loggers
class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr``."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; ignore
        pass


class loggers:
    """Loggers of the app (not serialised)."""

    default = logging.getLogger("bids_denoise")
    """Parent of every ``bids_denoise.*`` module logger."""
    cli = logging.getLogger("bids_denoise.cli")
    """Messages of the command line."""
    workflow = logging.getLogger("nipype.workflow")
    """Nipype's workflow engine."""
    interface = logging.getLogger("nipype.interface")
    """Nipype's interfaces."""
    utils = logging.getLogger("nipype.utils")
    """Nipype's utilities."""

    _fmt = "%(asctime)s | %(name)-20s | %(levelname)-9s | %(message)s"
    _datefmt = "%y%m%d-%H:%M:%S"

    def __init__(self):
        raise RuntimeError("loggers cannot be instantiated")

    @classmethod
    def init(cls) -> None:
        """Set the levels of all loggers from ``execution.log_level`` (``-v``)."""
        level = int(execution.log_level)
        if not any(isinstance(h, _StderrHandler) for h in cls.default.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter(cls._fmt, datefmt=cls._datefmt))
            cls.default.addHandler(handler)
        cls.default.setLevel(level)
        cls.cli.setLevel(level)
        for logger in (cls.workflow, cls.interface, cls.utils):
            logger.setLevel(level)


# ------------------------------------------------------------------------------- functions
_SECTIONS = {
    "environment": environment,
    "execution": execution,
    "nipype": nipype,
    "workflow": workflow,
}
#: Sections that :func:`from_dict`/:func:`load` never overwrite.
_READ_ONLY = ("environment",)


def _split_flat(settings: dict) -> dict:
    nested: dict = {}
    for key, value in settings.items():
        if "." in key and key.split(".", 1)[0] in _SECTIONS:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            if not isinstance(value, dict):
                raise KeyError(f"Unknown configuration section or key {key!r}")
            nested.setdefault(key, {}).update(value)
    return nested


def from_dict(settings: dict, init: bool = True) -> None:
    """Set settings from a nested ``{section: {name: value}}`` or flat ``{"section.name": value}``.

    The ``environment`` section is ignored: it describes the running process.
    """
    nested = _split_flat(settings)
    unknown = set(nested) - set(_SECTIONS)
    if unknown:
        raise KeyError(f"Unknown configuration section(s): {', '.join(sorted(unknown))}")
    for name in ("execution", "nipype", "workflow"):  # execution first: nipype.init reads it
        if name in nested:
            _SECTIONS[name].load(nested[name], init=False)
    if init:
        for name in ("execution", "workflow"):
            if name in nested:
                _SECTIONS[name].init()


def get(flat: bool = False) -> dict:
    """All serialised settings as Python values, nested by section or flat (``section.name``)."""
    settings = {name: section.get() for name, section in _SECTIONS.items()}
    if not flat:
        return settings
    return {f"{section}.{name}": value for section, values in settings.items() for name, value in values.items()}


def _to_toml_value(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_toml_value(v) for v in value]
    if isinstance(value, list):
        return [_to_toml_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_toml_value(v) for k, v in value.items() if v is not None}
    return value


def _filters_to_json(filters) -> str:
    def _default(obj):  # pybids Query enums, should a loader have produced them
        name = getattr(obj, "name", None)
        if name == "NONE":
            return None
        if name == "ANY":
            return "*"
        raise TypeError(f"Cannot serialise {obj!r} in BIDS filters")

    return json.dumps(filters, sort_keys=True, default=_default)


def dumps() -> str:
    """The settings as a TOML document (``None`` values are left out)."""
    import tomli_w

    document = {}
    for section_name, values in get().items():
        table = {}
        for name, value in values.items():
            if value is None:
                continue
            if section_name == "execution" and name == "bids_filters":
                table[name] = _filters_to_json(value)  # JSON null has no TOML form
                continue
            table[name] = _to_toml_value(value)
        document[section_name] = table
    return tomli_w.dumps(document)


def to_filename(filename) -> Path:
    """Write :func:`dumps` to ``filename`` (parents are created); return the path."""
    filename = Path(filename)
    filename.parent.mkdir(parents=True, exist_ok=True)
    filename.write_text(dumps())
    return filename


def load(filename, init: bool = True) -> None:
    """Read settings from a TOML file written by :func:`to_filename`."""
    with open(filename, "rb") as handle:
        settings = tomllib.load(handle)
    for section in _READ_ONLY:
        settings.pop(section, None)
    # dumps() leaves None out, so an optional setting missing from a section that is present
    # was None when the file was written.
    for name, values in settings.items():
        section = _SECTIONS.get(name)
        if section is None or not isinstance(values, dict):
            continue
        for field in section._fields():
            if field not in values and section._defaults.get(field) is None:
                values[field] = None
    from_dict(settings, init=init)


def reset() -> None:
    """Restore every section to its defaults and draw a new ``run_uuid`` (used by tests)."""
    for section in _SECTIONS.values():
        section._reset()
    execution.run_uuid = new_run_uuid()
