"""Names and dataset-level files of the BIDS-Derivatives dataset that bids_denoise writes.

Everything about *where* an output goes and how the output dataset describes itself lives here:

* :func:`derivative_path` turns a raw DWI file name into the name of one of its outputs;
* :func:`bids_uri` writes ``bids:raw:...`` URIs for the ``Sources`` sidecar field;
* :func:`write_derivative_description` creates or safely merges ``dataset_description.json``;
* :func:`write_bidsignore` lists the outputs that have no BIDS rule (bval/bvec next to a
  derivative DWI, the noise map, figures, logs, reports).

Participant-level jobs may run at the same time into the same output directory, so the two
dataset-level writers take an exclusive ``fcntl`` lock on ``<output_dir>/.bids_denoise.lock``
and replace files atomically. The lock file is hidden, so validators and pybids skip it, and it
is never deleted (deleting a lock file that another process is waiting on breaks the lock).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

from bids_denoise.errors import UsageError
from bids_denoise.outputs import bidsignore_lines
from bids_denoise.utils.atomic import atomic_write_json, atomic_write_text

LOGGER = logging.getLogger(__name__)

#: Entities carried from the raw file to its derivatives, in the order they appear in names
#: (the BIDS entity order: sub, ses, acq, dir, run, part; ``desc`` always comes last).
DERIVATIVE_ENTITIES = ("subject", "session", "acquisition", "direction", "run", "part")

#: Short (file name) keys of the entities above.
ENTITY_KEYS = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "direction": "dir",
    "run": "run",
    "part": "part",
}
_LONG_NAMES = {short: long for long, short in ENTITY_KEYS.items()}

#: BIDS version the derivatives declare (bids-validator-deno 3.0.2 bundles the 1.11 schema,
#: whose derivative rules for these files are unchanged since 1.10).
BIDS_VERSION = "1.10.1"
PIPELINE_NAME = "bids_denoise"
DESCRIPTION_FILE = "dataset_description.json"
LOCK_FILE = ".bids_denoise.lock"

#: Patterns written to the derivative ``.bidsignore``: those of every output that has no BIDS
#: rule (:mod:`bids_denoise.outputs`). Gitignore-style lines, checked with bids-validator-deno
#: 3.0.2 (a bare ``figures/`` does NOT match ``sub-01/figures/``).
DEFAULT_BIDSIGNORE = bidsignore_lines()

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


# ----------------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------------
def split_extension(name: str) -> tuple[str, str]:
    """Split a BIDS file name into stem and extension (everything from the first dot).

    >>> split_extension("sub-01_dwi.nii.gz")
    ('sub-01_dwi', '.nii.gz')
    """
    stem, dot, rest = name.partition(".")
    return stem, (dot + rest) if dot else ""


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """Entities of a BIDS file name, as long (pybids-style) keys and label strings.

    Only :data:`DERIVATIVE_ENTITIES` are returned; labels are kept exactly as written (so
    ``run-01`` stays ``"01"``). Parsing the name itself, rather than asking pybids, means the
    result never mixes in sidecar metadata and needs no layout.

    Parameters
    ----------
    path : str or os.PathLike
        A file path or bare file name such as ``sub-01_ses-1_run-2_dwi.nii.gz``.

    Returns
    -------
    dict
        For example ``{"subject": "01", "session": "1", "run": "2"}``.

    Examples
    --------
    >>> parse_entities("/data/sub-01/dwi/sub-01_acq-multi_dir-AP_run-01_dwi.nii.gz")
    {'subject': '01', 'acquisition': 'multi', 'direction': 'AP', 'run': '01'}
    """
    stem, _ = split_extension(Path(path).name)
    entities = {}
    for part in stem.split("_")[:-1]:  # the last part is the suffix
        key, sep, value = part.partition("-")
        if sep and key in _LONG_NAMES and value:
            entities[_LONG_NAMES[key]] = value
    return entities


def _check_label(kind: str, value: str) -> str:
    value = str(value)
    if not _LABEL.match(value):
        raise ValueError(f"{kind} must be alphanumeric (BIDS label), got {value!r}")
    return value


def derivative_path(
    source_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    desc: str | None,
    suffix: str,
    extension: str,
    entities: Mapping[str, object] | None = None,
    datatype: str = "dwi",
) -> Path:
    """Path of a derivative of ``source_file`` inside ``output_dir``.

    The name keeps the raw entities of :data:`DERIVATIVE_ENTITIES` in BIDS order, then
    ``desc-<desc>``, then the suffix and extension::

        <output_dir>/sub-X/[ses-Y/]dwi/sub-X[_ses-Y][_acq-A][_dir-D][_run-R][_part-P]_desc-<desc>_<suffix><extension>

    Parameters
    ----------
    source_file : str or os.PathLike
        The raw file (only its name is used).
    output_dir : str or os.PathLike
        Root of the derivative dataset.
    desc : str or None
        ``desc-`` label, e.g. ``"patch2self"`` or ``"noise"``; ``None`` for no ``desc-``.
    suffix : str
        For example ``"dwi"`` or ``"dwimap"``.
    extension : str
        With the leading dot, e.g. ``".nii.gz"``, ``".json"``, ``".bval"``.
    entities : mapping, optional
        Overrides, with long (``"run"``) or short (``"ses"``) keys; a value of ``None`` drops
        the entity (e.g. ``{"run": None}`` for an output that merges runs).
    datatype : str, optional
        Folder under the subject/session, ``"dwi"`` by default. ``"figures"`` follows the
        nipreps convention ``sub-X/figures/`` (no session folder).

    Returns
    -------
    pathlib.Path
        The output path (not created).

    Examples
    --------
    >>> str(derivative_path("sub-01_ses-1_acq-multi_dir-AP_run-1_dwi.nii.gz", "/out",
    ...                     desc="patch2self", suffix="dwi", extension=".nii.gz"))
    '/out/sub-01/ses-1/dwi/sub-01_ses-1_acq-multi_dir-AP_run-1_desc-patch2self_dwi.nii.gz'
    """
    values = parse_entities(source_file)
    for key, value in (entities or {}).items():
        long_key = _LONG_NAMES.get(key, key)
        if long_key not in ENTITY_KEYS:
            raise ValueError(
                f"unsupported entity {key!r}; use one of {', '.join(DERIVATIVE_ENTITIES)}"
            )
        if value is None:
            values.pop(long_key, None)
        else:
            values[long_key] = str(value)
    if "subject" not in values:
        raise ValueError(f"no sub-<label> in {Path(source_file).name!r}")
    for key, value in values.items():
        _check_label(key, value)
    _check_label("suffix", suffix)
    _check_label("datatype", datatype)
    if not extension.startswith(".") or extension == ".":
        raise ValueError(f"extension must start with a dot, got {extension!r}")

    parts = [f"{ENTITY_KEYS[key]}-{values[key]}" for key in DERIVATIVE_ENTITIES if key in values]
    if desc is not None:
        parts.append(f"desc-{_check_label('desc', desc)}")
    parts.append(suffix)

    folder = Path(output_dir) / f"sub-{values['subject']}"
    if "session" in values and datatype != "figures":
        folder = folder / f"ses-{values['session']}"
    return folder / datatype / ("_".join(parts) + extension)


def bids_uri(path: str | os.PathLike, bids_dir: str | os.PathLike, dataset: str = "raw") -> str:
    """BIDS URI of a file inside a dataset, e.g. ``bids:raw:sub-01/dwi/sub-01_dwi.nii.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        A file inside ``bids_dir``.
    bids_dir : str or os.PathLike
        The dataset root that ``dataset`` names in ``DatasetLinks``.
    dataset : str, optional
        Dataset name; ``"raw"`` by default, ``""`` for the current dataset (``bids::...``).

    Returns
    -------
    str
        The URI, with a POSIX relative path.

    Raises
    ------
    ValueError
        If ``path`` is not inside ``bids_dir``.
    """
    path, root = Path(path), Path(bids_dir)
    for candidate, base in ((path.absolute(), root.absolute()), (path.resolve(), root.resolve())):
        try:
            relative = candidate.relative_to(base)
        except ValueError:
            continue
        return f"bids:{dataset}:{relative.as_posix()}"
    raise ValueError(f"{path} is not inside the dataset {bids_dir}")


# ----------------------------------------------------------------------------------------------
# dataset_description.json
# ----------------------------------------------------------------------------------------------
@contextmanager
def _output_lock(output_dir: Path):
    """Hold an exclusive lock on ``<output_dir>/.bids_denoise.lock`` (no-op without fcntl)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows; the app targets Linux containers
        yield
        return
    with open(output_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _container_from_env() -> dict | None:
    """``GeneratedBy[].Container`` of the running image, if any (Docker, Apptainer, Singularity)."""
    from bids_denoise.utils.provenance import container

    found = container()
    return {"Type": found["Type"], "Tag": found["Image"]} if found else None


def _generated_by(container: Mapping | None, provenance=None) -> dict:
    from bids_denoise import __about__

    entry = {
        "Name": PIPELINE_NAME,
        "Version": __about__.__version__,
        "CodeURL": __about__.__url__,
    }
    container = dict(container) if container else _container_from_env()
    if container:
        entry["Container"] = container
    if provenance is None:
        from bids_denoise.utils.provenance import cli_provenance

        provenance = cli_provenance()
    if provenance:
        entry["Provenance"] = dict(provenance)
    return entry


def _dataset_link(output_dir: Path, bids_dir: Path) -> str:
    """Where ``bids:raw:`` points: relative when nested in the raw dataset, else a file URI."""
    out, raw = output_dir.absolute(), bids_dir.absolute()
    try:
        out.relative_to(raw)
    except ValueError:
        return raw.as_uri()
    # Nested (e.g. <raw>/derivatives/bids_denoise): a relative link survives moving the tree.
    return Path(os.path.relpath(raw, out)).as_posix()


def _doi_entry(doi: str) -> dict:
    bare = re.sub(r"^(doi:|https?://(dx\.)?doi\.org/)", "", doi.strip(), flags=re.IGNORECASE)
    return {"DOI": f"doi:{bare}", "URL": f"https://doi.org/{bare}"}


def _read_json_object(path: Path, what: str) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} {path} is not valid JSON ({err}); fix or remove it.") from err
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must contain a JSON object.")
    return data


def _new_description(output_dir: Path, bids_dir: Path, container, provenance=None) -> dict:
    raw = {}
    raw_file = bids_dir / DESCRIPTION_FILE
    try:
        raw = _read_json_object(raw_file, "The raw dataset's") or {}
    except UsageError as err:
        # The input was validated (or deliberately not); a broken raw description must not
        # stop the outputs from being described.
        LOGGER.warning("%s Raw dataset details are left out of the outputs.", err)

    description = {
        "Name": "bids_denoise: denoised diffusion MRI"
        + (f" of {raw['Name']}" if isinstance(raw.get("Name"), str) else ""),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [_generated_by(container, provenance)],
        "DatasetLinks": {"raw": _dataset_link(output_dir, bids_dir)},
    }
    doi = raw.get("DatasetDOI")
    if isinstance(doi, str) and doi.strip():
        description["SourceDatasets"] = [_doi_entry(doi)]
    if "License" in raw:
        description["License"] = raw["License"]
    return description


def _merge_description(existing: dict, new: dict, path: Path) -> dict:
    """Merge our description into one already in the output directory, or refuse to."""
    if existing.get("DatasetType") != "derivative":
        raise UsageError(
            f"{path} exists but does not describe a derivative dataset "
            f"(DatasetType={existing.get('DatasetType')!r}). Is the output directory a raw "
            "BIDS dataset? Choose an empty or bids_denoise output directory."
        )
    ours = new["GeneratedBy"][0]
    generated = existing.get("GeneratedBy")
    if generated is None:
        generated = []
    if not isinstance(generated, list):
        raise UsageError(f"{path}: GeneratedBy must be a list, found {type(generated).__name__}.")
    previous = [g for g in generated if isinstance(g, dict) and g.get("Name") == PIPELINE_NAME]
    for entry in previous:
        if str(entry.get("Version")) != ours["Version"]:
            raise UsageError(
                f"The output directory {path.parent} holds results of bids_denoise "
                f"{entry.get('Version')}, but this is bids_denoise {ours['Version']}. Mixing "
                "versions in one derivative dataset makes results irreproducible: write to a "
                "new output directory (or remove the old results)."
            )

    merged = dict(existing)
    merged["GeneratedBy"] = list(generated) if previous else [*generated, ours]
    for key, value in new.items():
        if key == "DatasetLinks":
            links = dict(existing.get("DatasetLinks") or {})
            for name, target in value.items():
                if name in links and links[name] != target:
                    # Same dataset seen through another mount (host vs container) is common;
                    # keep the first link and say so rather than fail.
                    LOGGER.warning(
                        "%s links %r to %s; this run reads it from %s. Keeping the existing link.",
                        path, name, links[name], target,
                    )
                links.setdefault(name, target)
            merged["DatasetLinks"] = links
        elif key != "GeneratedBy":
            merged.setdefault(key, value)
    return merged


def write_derivative_description(
    output_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    *,
    container: Mapping | None = None,
    provenance: Mapping | bool | None = None,
) -> Path:
    """Create or update ``<output_dir>/dataset_description.json``.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset (created if missing).
    bids_dir : str or os.PathLike
        The raw dataset; its ``Name``, ``DatasetDOI`` (-> ``SourceDatasets``) and ``License``
        are carried over and ``DatasetLinks["raw"]`` points at it.
    container : mapping, optional
        ``{"Type": ..., "Tag": ...}`` for ``GeneratedBy[].Container``. By default it is read
        from ``BIDS_DENOISE_CONTAINER_IMAGE`` (the tag) and ``BIDS_DENOISE_CONTAINER_TYPE``
        (default ``"docker"``), which the container image sets.
    provenance : mapping or bool, optional
        Stored as ``GeneratedBy[].Provenance`` (see :mod:`bids_denoise.utils.provenance`:
        version, git commit, container, command line, resolved configuration). By default
        (``None``) the record of the running app when its configuration came from a
        ``bids-denoise`` command line, else nothing; ``False`` records nothing. An existing
        entry of ours is kept as it is (it describes the run that created the dataset; every
        sidecar has the record of the run that wrote it).

    Returns
    -------
    pathlib.Path
        The description file.

    Raises
    ------
    bids_denoise.errors.UsageError
        If the existing file was written by another bids_denoise version, is not valid JSON,
        or does not describe a derivative dataset. The existing file is never overwritten in
        these cases.

    Notes
    -----
    An existing description is merged: other pipelines' ``GeneratedBy`` entries and any keys
    already there are kept, and our ``GeneratedBy`` entry is added only once. The
    read-merge-write runs under an exclusive lock and the file is replaced atomically, so
    parallel participant jobs never leave a half-written or invalid file.
    """
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    path = output_dir / DESCRIPTION_FILE
    new = _new_description(output_dir, bids_dir, container, None if provenance is True else provenance)
    with _output_lock(output_dir):
        existing = _read_json_object(path, "The existing output description")
        description = new if existing is None else _merge_description(existing, new, path)
        if description != existing:
            atomic_write_json(path, description, sort_keys=False)
    return path


# ----------------------------------------------------------------------------------------------
# .bidsignore
# ----------------------------------------------------------------------------------------------
def write_bidsignore(
    output_dir: str | os.PathLike, patterns: Iterable[str] = DEFAULT_BIDSIGNORE
) -> Path:
    """Add ``patterns`` to ``<output_dir>/.bidsignore``, keeping the lines already there.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset (created if missing).
    patterns : iterable of str, optional
        gitignore-style patterns; defaults to :data:`DEFAULT_BIDSIGNORE`.

    Returns
    -------
    pathlib.Path
        The ``.bidsignore`` file.
    """
    output_dir = Path(output_dir)
    path = output_dir / ".bidsignore"
    with _output_lock(output_dir):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        present = {line.strip() for line in lines}
        added = []
        for pattern in patterns:
            pattern = pattern.strip()
            if pattern and pattern not in present:
                present.add(pattern)
                added.append(pattern)
        if added or not path.exists():
            atomic_write_text(path, "".join(f"{line}\n" for line in [*lines, *added]))
    return path


__all__ = [
    "BIDS_VERSION",
    "DEFAULT_BIDSIGNORE",
    "DERIVATIVE_ENTITIES",
    "bids_uri",
    "derivative_path",
    "parse_entities",
    "split_extension",
    "write_bidsignore",
    "write_derivative_description",
]
