"""Write files so that readers only ever see the old content or the complete new content.

Participant-level jobs run in parallel into one output directory, and a job can be killed at
any moment (time limit, out-of-memory, Ctrl-C). Every writer here therefore writes a hidden
temporary file in the *destination's own directory* (so the final ``os.replace`` is a rename on
one file system, which POSIX makes atomic) and renames it over the destination only once it is
complete and flushed. On any error the temporary file is removed and the destination is left
as it was.

Temporary names look like ``.sub-01_dwi.nii.gz.3f2a9c1e.tmp.nii.gz``: hidden (the BIDS
validator and pybids skip dotfiles) and, for NIfTI, ending in the real extension, because
nibabel chooses gzip compression from the file name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger(__name__)

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def _extension_to_keep(name: str) -> str:
    """The part of ``name`` a tool may need to see at the end of the temporary name."""
    for ext in _NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def _create_temp_file(directory: Path, name: str) -> Path:
    """Create an empty, uniquely named hidden file next to ``name`` and return its path.

    ``os.open(..., 0o666)`` lets the process umask decide the permissions, so the final file
    gets the same mode as a file created with ``open(path, "w")`` (``mkstemp`` would give 0600,
    which hides outputs from the rest of a lab group).
    """
    keep = _extension_to_keep(name)
    for _ in range(100):
        candidate = directory / f".{name}.{secrets.token_hex(4)}.tmp{keep}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; move it onto ``path`` when the block ends cleanly.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Missing parent directories are created.

    Yields
    ------
    pathlib.Path
        A hidden, already created (empty) file in the same directory as ``path``. Write it
        completely inside the ``with`` block, with any tool (nibabel, numpy, torch ...).

    Notes
    -----
    If the block raises (including ``KeyboardInterrupt``), the temporary file is deleted, the
    exception propagates and ``path`` is untouched.

    Examples
    --------
    >>> with atomic_output(out_dir / "table.tsv") as tmp:  # doctest: +SKIP
    ...     numpy.savetxt(tmp, values, delimiter="\\t")
    """
    dest = Path(path)
    if dest.name in ("", ".", ".."):
        raise ValueError(f"not a file path: {path!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_file(dest.parent, dest.name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    LOGGER.debug("wrote %s", dest)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path`` (``\\n`` line ends kept as given).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    text : str
        Complete new content.
    encoding : str, optional
        Text encoding. Default UTF-8.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as handle:
            handle.write(text)
    return Path(path)


def atomic_write_json(
    path: str | os.PathLike, obj, *, indent: int = 2, sort_keys: bool = True
) -> Path:
    """Atomically write ``obj`` as JSON (2-space indent, sorted keys, final newline).

    The object is serialised *before* the temporary file is created, so an object that JSON
    cannot encode raises ``TypeError`` without touching the file system. ``NaN`` and infinities
    are refused (``ValueError``): they are not valid JSON and break BIDS validators.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    obj : object
        JSON-serialisable object.
    indent : int, optional
        Indentation. Default 2.
    sort_keys : bool, optional
        Sort object keys (stable diffs between runs). Default True.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy the content of ``src`` to ``dst``.

    Only the bytes are copied, not the mode: inputs are often read-only (``--read-only``
    containers, archived datasets) and outputs should follow the user's umask instead.

    Parameters
    ----------
    src : str or os.PathLike
        Existing file.
    dst : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``dst``.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"cannot copy {src}: not a file")
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def atomic_save_nifti(img, path: str | os.PathLike) -> Path:
    """Atomically save a nibabel image to ``path`` (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    img : nibabel.nifti1.Nifti1Image or nibabel.nifti2.Nifti2Image
        Image to save; its header decides dtype and scaling, as with ``nibabel.save``.
    path : str or os.PathLike
        Destination; must end in ``.nii`` or ``.nii.gz`` (the temporary file keeps the same
        ending so that nibabel compresses exactly when the destination is ``.nii.gz``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import nibabel as nib  # imported here: the text writers must not pay for nibabel

    if not _extension_to_keep(Path(path).name):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz: {path}")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


__all__ = [
    "atomic_copy",
    "atomic_output",
    "atomic_save_nifti",
    "atomic_write_json",
    "atomic_write_text",
]
