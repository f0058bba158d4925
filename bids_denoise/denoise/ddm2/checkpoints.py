"""The only module of the DDM2 package that touches files: stage checkpoints.

A :class:`CheckpointStore` keeps one file per stage in a directory chosen by the caller::

    <directory>/stage1.pt      Stage I network (+ optimiser state while unfinished)
    <directory>/stage2.pt      Stage-I estimates of every slice and the matched steps t*
    <directory>/stage3.pt      Stage III network (+ optimiser state while unfinished)
    <directory>/inference.pt   the denoised group (normalised units)

Every payload is a dictionary of tensors, numbers, strings and lists with at least
``"fingerprint"`` (a digest of the data and of every setting the stage depends on) and
``"complete"``. A stage is skipped when its file is complete and its fingerprint matches; an
incomplete file with a matching fingerprint resumes the stage from its ``"step"``; a file whose
fingerprint differs (other data or settings) is ignored and overwritten.

Files are written atomically (temporary file in the same directory, ``fsync``, ``os.replace``),
so an interrupted write leaves the previous checkpoint intact, and read with
``torch.load(..., weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

LOGGER = logging.getLogger(__name__)
STAGES = ("stage1", "stage2", "stage3", "inference")
FORMAT_VERSION = 1


def save_atomic(payload, path) -> Path:
    """``torch.save(payload, path)`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return path


def load(path, map_location="cpu"):
    """The payload in ``path``, or ``None`` if it is missing or unreadable (with a warning)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file must not stop the run: the stage is redone
        LOGGER.warning("DDM2 checkpoint %s cannot be read (%s); the stage starts afresh.", path, err)
        return None


class CheckpointStore:
    """Stage checkpoints in ``directory``; with ``directory=None`` nothing is saved or found."""

    def __init__(self, directory=None):
        self.directory = None if directory is None else Path(directory)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, stage: str) -> Path | None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return None if self.directory is None else self.directory / f"{stage}.pt"

    def load(self, stage: str, fingerprint: str):
        """The stage's payload if it matches ``fingerprint`` (complete or not), else ``None``."""
        if self.directory is None:
            return None
        payload = load(self.path(stage))
        if payload is None:
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            LOGGER.warning("DDM2 checkpoint %s has an unknown format; the stage starts afresh.", self.path(stage))
            return None
        if payload.get("fingerprint") != fingerprint:
            LOGGER.warning(
                "DDM2 checkpoint %s was made from other data or settings; the stage starts afresh.",
                self.path(stage),
            )
            return None
        return payload

    def save(self, stage: str, payload: dict) -> None:
        if self.directory is None:
            return
        save_atomic({**payload, "format": FORMAT_VERSION}, self.path(stage))


def export_model(path, model_state: dict) -> Path:
    """Write the trained networks and their settings (``DDM2Result.model_state``) to ``path``."""
    return save_atomic({**model_state, "format": FORMAT_VERSION}, path)
