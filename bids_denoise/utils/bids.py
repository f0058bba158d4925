"""Find the diffusion runs of a BIDS dataset with pybids.

The layout is indexed with ``validate=False`` (bids-validator-deno is run separately, see
:mod:`bids_denoise.utils.validator`) and with an ignore list that skips the large non-MRI and
functional folders but never ``dwi/`` (fMRIPrep's list ignores ``dwi/``; do not copy it).
Nothing is ever written into the input dataset: the pybids index lives in memory unless a
``database_dir`` is given.

Gradient tables are looked up with the BIDS inheritance principle, so a ``dwi.bval`` at the
dataset root (as in ds114) or a run-less ``..._dwi.bval`` next to several runs is found.
pybids' ``get_nearest`` also offers files whose entities the run does *not* have (a root
``acq-dsi_dwi.bval`` for a run without ``acq-``), so every candidate is checked here against
the inheritance rule: its entities must be a subset of the run's entities.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bids_denoise.errors import (
    DataError,
    EmptySelectionError,
    MissingInputError,
    UsageError,
)
from bids_denoise.utils.derivatives import DERIVATIVE_ENTITIES, ENTITY_KEYS, parse_entities

LOGGER = logging.getLogger(__name__)

#: Top-level folders that never hold raw DWI (the first four are BIDS-reserved).
_IGNORED_TOP_LEVEL = ("code", "derivatives", "models", "sourcedata", "stimuli")
#: Datatype folders that never hold anything bids_denoise reads; skipping them keeps indexing
#: of large multimodal datasets fast. ``dwi``, ``anat`` and ``fmap`` are kept on purpose.
_IGNORED_DATATYPES = ("beh", "eeg", "emg", "func", "ieeg", "meg", "micr", "motion", "mrs",
                      "nirs", "perf", "pet")

#: The query that defines "a DWI run". ``part`` admits magnitude data only: Patch2Self and
#: DDM2 model magnitude signal, and phase/real/imag series would otherwise be denoised as such.
_DWI_QUERY = {
    "datatype": "dwi",
    "suffix": "dwi",
    "extension": [".nii", ".nii.gz"],
}
_ALLOWED_PARTS = ("mag", None)
#: Filter-file queries this app understands.
SUPPORTED_FILTER_QUERIES = ("dwi",)
#: Entities a filter file may not set: they are fixed by the app or by --participant-label.
_FORBIDDEN_FILTER_ENTITIES = {
    "subject": "select participants with --participant-label",
    "suffix": "bids_denoise only reads _dwi series",
    "datatype": "bids_denoise only reads the dwi/ datatype",
}
_CONTAINER_HINT = (
    "If bids_denoise runs in a container, check that the dataset is mounted at the path given "
    "(docker -v /host/path:/data:ro, apptainer/singularity -B /host/path:/data)."
)


# ----------------------------------------------------------------------------------------------
# Data structure
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DWIRun:
    """One diffusion series and the files that go with it.

    Attributes
    ----------
    dwi_file : pathlib.Path
        The 4D NIfTI.
    bval_file, bvec_file : pathlib.Path
        Its gradient table, found with the inheritance principle (may be shared with other runs
        or sit at the dataset root).
    entities : dict
        Long (pybids-style) keys of :data:`~bids_denoise.utils.derivatives.DERIVATIVE_ENTITIES`
        present in the file name, with the labels exactly as written (``run-01`` -> ``"01"``).
    metadata : dict
        Sidecar JSON metadata with inheritance applied; ``{}`` when there is none.
    """

    dwi_file: Path
    bval_file: Path
    bvec_file: Path
    entities: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    #: what the preflight check read (shape, b-values, groups), passed down so nothing reads the
    #: header or the b-values again; ``None`` before the check
    check: object = field(default=None, compare=False, repr=False)

    def __hash__(self) -> int:
        # The generated hash would fail on the dict fields; the NIfTI identifies the run.
        return hash(self.dwi_file)

    @property
    def name(self) -> str:
        """A unique, Nipype-safe identifier, e.g. ``"sub_01_ses_1_acq_multi_run_2"``."""
        parts = []
        for key in DERIVATIVE_ENTITIES:
            if key in self.entities:
                parts += [ENTITY_KEYS[key], re.sub(r"[^A-Za-z0-9]", "_", str(self.entities[key]))]
        return "_".join(parts)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _strip_prefix(label, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix):] if label.startswith(prefix) else label


def _as_list(values) -> list:
    if values is None:
        return []
    if isinstance(values, (str, bytes, os.PathLike)):
        return [values]
    return list(values)


def _ignore_patterns() -> list:
    # pybids matches these against "/" + the path relative to the dataset root.
    top = "|".join(_IGNORED_TOP_LEVEL)
    datatypes = "|".join(_IGNORED_DATATYPES)
    return [
        re.compile(rf"^/({top})(/|$)"),
        re.compile(rf"^/sub-[^/]+/(ses-[^/]+/)?({datatypes})(/|$)"),
        re.compile(r"/\."),  # dotfiles (pybids adds this too; kept for clarity)
    ]


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def init_layout(bids_dir, *, database_dir=None, reset_database: bool = False):
    """Index a raw BIDS dataset with pybids.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Root of the raw dataset (must contain ``dataset_description.json``).
    database_dir : str or os.PathLike, optional
        Folder for pybids' SQLite index, so a later run can reuse it. Default: keep the index
        in memory and write nothing. It must not be inside ``bids_dir``. An index made for a
        different dataset root is rebuilt, never reused.
    reset_database : bool, optional
        Rebuild the index in ``database_dir`` even if one exists (e.g. after files changed).

    Returns
    -------
    bids.BIDSLayout

    Raises
    ------
    bids_denoise.errors.MissingInputError
        If ``bids_dir`` does not exist or lacks ``dataset_description.json``.
    bids_denoise.errors.UsageError
        If ``bids_dir`` is not a directory or ``database_dir`` is inside it.
    bids_denoise.errors.DataError
        If ``dataset_description.json`` is not a valid JSON object.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    root = Path(bids_dir).expanduser().absolute()
    if not root.exists():
        raise MissingInputError(f"BIDS dataset folder {root} does not exist. {_CONTAINER_HINT}")
    if not root.is_dir():
        raise UsageError(f"The BIDS dataset path {root} is not a folder.")
    description = root / "dataset_description.json"
    if not description.is_file():
        raise MissingInputError(
            f"{description} is missing: {root} is not the root of a BIDS dataset (every BIDS "
            "dataset has a dataset_description.json at its top level)."
        )
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{description} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise DataError(f"{description} must contain a JSON object.")
    if content.get("DatasetType") == "derivative":
        LOGGER.warning("%s describes a derivative dataset; bids_denoise expects raw data.", root)

    database_path = None
    if database_dir is not None:
        database_path = Path(database_dir).expanduser().absolute()
        if database_path == root or root in database_path.parents:
            raise UsageError(
                f"The pybids database folder {database_path} is inside the input dataset "
                f"{root}; bids_denoise never writes into the input. Choose another folder "
                "(e.g. inside the work directory)."
            )
        database_path.mkdir(parents=True, exist_ok=True)
        reset_database = reset_database or _database_is_for_other_root(database_path, root)

    indexer = BIDSLayoutIndexer(validate=False, ignore=_ignore_patterns())
    layout = BIDSLayout(
        str(root),
        validate=False,
        derivatives=False,
        database_path=None if database_path is None else str(database_path),
        reset_database=reset_database,
        indexer=indexer,
    )
    LOGGER.info("Indexed %s: %d subject(s).", root, len(layout.get_subjects()))
    return layout


def _database_is_for_other_root(database_path: Path, root: Path) -> bool:
    """Whether an existing pybids index in ``database_path`` was made for another dataset."""
    from bids.layout.db import ConnectionManager

    if not ConnectionManager.exists(str(database_path)):
        return False
    try:
        indexed_root = Path(ConnectionManager(str(database_path)).layout_info.root)
    except Exception as err:  # an unreadable index is rebuilt rather than trusted
        LOGGER.warning("Rebuilding the unreadable pybids index in %s (%s).", database_path, err)
        return True
    if indexed_root.absolute() != root:
        LOGGER.warning(
            "The pybids index in %s was made for %s; rebuilding it for %s.",
            database_path, indexed_root, root,
        )
        return True
    return False


# ----------------------------------------------------------------------------------------------
# Participants
# ----------------------------------------------------------------------------------------------
def collect_participants(layout, participant_label=None) -> list[str]:
    """Subject labels (without ``sub-``) to process.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`init_layout`.
    participant_label : str or iterable of str, optional
        Requested labels, with or without ``sub-``. ``None`` or empty selects every subject.

    Returns
    -------
    list of str
        Sorted, unique labels.

    Raises
    ------
    bids_denoise.errors.EmptySelectionError
        If the dataset has no subjects, or some requested labels are not in it (the message
        names them and lists the available ones).
    """
    available = sorted(layout.get_subjects())
    if not available:
        raise EmptySelectionError(f"No subjects (sub-* folders) found in {layout.root}. "
                                  f"{_CONTAINER_HINT}")
    requested = [_strip_prefix(label, "sub-") for label in _as_list(participant_label)]
    requested = [label for label in requested if label]
    if not requested:
        return available
    missing = sorted(set(requested) - set(available))
    if missing:
        raise EmptySelectionError(
            f"Participant label(s) not found in {layout.root}: "
            f"{', '.join('sub-' + m for m in missing)}. Available: "
            f"{', '.join('sub-' + a for a in available)}. {_CONTAINER_HINT}"
        )
    return sorted(set(requested))


# ----------------------------------------------------------------------------------------------
# BIDS filter file
# ----------------------------------------------------------------------------------------------
def _known_entities() -> set[str]:
    from bids.layout.models import Config

    return set(Config.load("bids").entities)


def _check_filter_value(where: str, value) -> None:
    scalar = (str, int, bool, type(None))
    if isinstance(value, list):
        if not value or not all(isinstance(v, scalar) for v in value):
            raise UsageError(f"{where}: a list must hold labels, numbers or null, got {value!r}")
    elif not isinstance(value, scalar):
        raise UsageError(f"{where}: expected a label, a number, null, \"*\" or a list, "
                         f"got {value!r}")


def validate_bids_filters(filters, *, source="BIDS filters") -> dict:
    """Check a filter mapping such as ``{"dwi": {"session": "1", "acquisition": null}}``.

    Parameters
    ----------
    filters : dict
        Query name -> pybids entity filters. Only ``"dwi"`` is supported. Values are labels,
        numbers, ``null`` (the file must NOT have the entity), ``"*"`` (it must have it, any
        label) or lists of those.
    source : str or os.PathLike, optional
        Named in error messages (the filter file).

    Returns
    -------
    dict
        ``filters`` unchanged (plain JSON types, so it can be stored in a config file).

    Raises
    ------
    bids_denoise.errors.UsageError
        On an unknown query or entity, a fixed entity (subject, suffix, datatype) or a value
        of the wrong type.
    """
    if not isinstance(filters, dict):
        raise UsageError(f"{source}: the top level must be a JSON object like "
                         '{"dwi": {"session": "1"}}.')
    known = None
    for query, entities in filters.items():
        if query not in SUPPORTED_FILTER_QUERIES:
            raise UsageError(f"{source}: unknown query {query!r}; bids_denoise supports "
                             f"{', '.join(repr(q) for q in SUPPORTED_FILTER_QUERIES)}.")
        if not isinstance(entities, dict):
            raise UsageError(f"{source}: {query!r} must map entity names to values.")
        known = known or _known_entities()
        for entity, value in entities.items():
            if entity in _FORBIDDEN_FILTER_ENTITIES:
                raise UsageError(f"{source}: {query}.{entity} cannot be filtered "
                                 f"({_FORBIDDEN_FILTER_ENTITIES[entity]}).")
            if entity not in known:
                raise UsageError(f"{source}: {query}.{entity} is not a BIDS entity known to "
                                 "pybids (use long names such as 'session', 'acquisition', "
                                 "'direction', 'run').")
            _check_filter_value(f"{source}: {query}.{entity}", value)
    return filters


def load_bids_filters(path) -> dict:
    """Read and check a ``--bids-filter-file`` (JSON).

    Parameters
    ----------
    path : str or os.PathLike
        The filter file.

    Returns
    -------
    dict
        The checked filters, as plain JSON types (see :func:`validate_bids_filters`).

    Raises
    ------
    bids_denoise.errors.UsageError
        If the file is missing, is not valid JSON (the message names the file, line and
        column) or does not pass :func:`validate_bids_filters`.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UsageError(f"BIDS filter file {path} does not exist.") from err
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise UsageError(f"BIDS filter file {path} cannot be read as text: {err}") from err
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"BIDS filter file {path} is not valid JSON: {err.msg} "
                         f"(line {err.lineno}, column {err.colno}).") from err
    return validate_bids_filters(filters, source=path)


def _to_pybids_value(value):
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list):
        return [_to_pybids_value(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# DWI runs
# ----------------------------------------------------------------------------------------------
def _all_name_entities(path: Path) -> dict[str, str]:
    """Every ``key-value`` pair of a BIDS file name (short keys), not only the ones we keep."""
    stem = path.name.split(".")[0]
    pairs = (part.split("-", 1) for part in stem.split("_")[:-1] if "-" in part)
    return {key: value for key, value in pairs}


def _inherits_from(candidate: Path, target: Path) -> bool:
    """BIDS inheritance: a metadata file applies if its entities are a subset of the target's."""
    target_entities = _all_name_entities(target)
    return all(target_entities.get(k) == v for k, v in _all_name_entities(candidate).items())


def _nearest_gradient_file(layout, dwi_file: Path, extension: str) -> Path | None:
    candidates = layout.get_nearest(
        str(dwi_file), suffix="dwi", extension=extension, all_=True, strict=True
    ) or []
    for candidate in candidates:  # nearest folder first, best entity match first
        if _inherits_from(Path(candidate), dwi_file):
            return Path(candidate)
    return None


def collect_dwi_runs(layout, subject, *, sessions=None, bids_filters=None, problems=None) -> list[DWIRun]:
    """Every magnitude DWI run of one subject, with gradients and metadata.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`init_layout`.
    subject : str
        Subject label, with or without ``sub-``.
    sessions : str or iterable of str, optional
        Keep only these sessions (labels with or without ``ses-``). Runs without a session
        entity are kept, as the BIDS execution spec asks for entity filters.
    bids_filters : dict, optional
        As loaded by :func:`load_bids_filters`; the ``"dwi"`` entry is added to the query
        (``null`` -> the entity must be absent, ``"*"`` -> present with any label). It may
        override ``part`` (by default only ``part-mag`` or no ``part``) and ``extension``.

    Returns
    -------
    list of DWIRun
        Sorted by file path; empty if the subject (or the selected sessions) has no DWI,
        which is not an error here.

    Raises
    ------
    bids_denoise.errors.MissingInputError
        If a run has no ``.bval`` or ``.bvec`` (the message names the NIfTI).
    bids_denoise.errors.UsageError
        If ``bids_filters`` is invalid, or two runs differ only by entities bids_denoise does
        not keep in output names (they would overwrite each other's outputs).
    """
    subject = _strip_prefix(subject, "sub-")
    filters = validate_bids_filters(dict(bids_filters or {}))
    query = {**_DWI_QUERY, "part": list(_ALLOWED_PARTS)}
    query.update(filters.get("dwi", {}))
    query = {key: _to_pybids_value(value) for key, value in query.items()}
    query["subject"] = subject
    try:
        files = layout.get(return_type="object", **query)
    except ValueError as err:  # pybids rejects unknown entities this way
        raise UsageError(f"Invalid BIDS filter for the dwi query: {err}") from err

    wanted_sessions = {_strip_prefix(s, "ses-") for s in _as_list(sessions)}
    if wanted_sessions:
        present = {str(s) for s in layout.get_sessions(subject=subject)}
        unknown = sorted(wanted_sessions - present)
        if unknown:
            LOGGER.warning("sub-%s has no session(s) %s (it has: %s).", subject,
                           ", ".join(unknown), ", ".join(sorted(present)) or "none")

    runs = []
    for bids_file in sorted(files, key=lambda f: f.path):
        dwi_file = Path(bids_file.path)
        entities = parse_entities(dwi_file)
        if wanted_sessions and "session" in entities and entities["session"] not in wanted_sessions:
            continue
        if dwi_file.stat().st_size == 0:
            LOGGER.warning("Skipping %s: the file is empty (0 bytes).", dwi_file)
            if problems is not None:
                problems.append((dwi_file, DataError(f"{dwi_file}: the file is empty (0 bytes)"), True))
            continue
        bval = _nearest_gradient_file(layout, dwi_file, ".bval")
        bvec = _nearest_gradient_file(layout, dwi_file, ".bvec")
        missing = [ext for ext, found in ((".bval", bval), (".bvec", bvec)) if found is None]
        if missing:
            error = MissingInputError(
                f"No {' or '.join(missing)} file for {dwi_file}: put "
                f"{dwi_file.name.split('.')[0]}{missing[0]} next to it, or a shared one higher "
                "up (inheritance principle)."
            )
            if problems is None:
                raise error
            problems.append((dwi_file, error, False))
            continue
        metadata = dict(layout.get_metadata(str(dwi_file)) or {})
        runs.append(DWIRun(dwi_file, bval, bvec, entities, metadata))

    _check_unique_names(runs)
    if not runs:
        LOGGER.info("sub-%s: no DWI runs selected.", subject)
    else:
        LOGGER.info("sub-%s: %d DWI run(s): %s", subject, len(runs),
                    ", ".join(r.dwi_file.name for r in runs))
    return runs


def _check_unique_names(runs: Iterable[DWIRun]) -> None:
    by_name: dict[str, list[Path]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run.dwi_file)
    clashes = {name: files for name, files in by_name.items() if len(files) > 1}
    if clashes:
        listing = "; ".join(", ".join(f.name for f in files) for files in clashes.values())
        raise UsageError(
            "These DWI series differ only in entities that bids_denoise does not keep in "
            f"output names ({', '.join(DERIVATIVE_ENTITIES)}), so their outputs would "
            f"overwrite each other: {listing}. Select one with --bids-filter-file, e.g. "
            '{"dwi": {"reconstruction": "<label>"}}.'
        )


__all__ = [
    "DWIRun",
    "collect_dwi_runs",
    "collect_participants",
    "init_layout",
    "load_bids_filters",
    "validate_bids_filters",
]
