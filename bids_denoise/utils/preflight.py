"""Check one DWI run before any work starts, so a bad run fails fast with a clear message.

Every check names the offending file and says what is wrong. Errors are
:class:`~bids_denoise.errors.DataError` (exit 65) or
:class:`~bids_denoise.errors.MissingInputError` (exit 66); problems that do not stop the run
come back as warnings.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_denoise.denoise.shells import group_decisions, group_volumes
from bids_denoise.errors import DataError, MissingInputError

#: b-vectors of diffusion-weighted volumes whose norm is off by more than this are reported.
UNIT_TOLERANCE = 0.1


@dataclass
class RunCheck:
    """What a successful check learnt about a run; read once, passed down to the workflow."""

    shape: tuple
    largest_group: int
    warnings: list = field(default_factory=list)
    #: decisions about small groups (merged shells, groups copied through), one line each
    decisions: list = field(default_factory=list)
    bvals: np.ndarray | None = None
    groups: list = field(default_factory=list)


def _read_gradients(path: Path, what: str) -> np.ndarray:
    try:
        return np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: the {what} are not numeric ({err})") from err


def _load_image(dwi_file: Path):
    try:
        img = nb.load(dwi_file)
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nb.filebasedimages.ImageFileError) as err:
        raise DataError(
            f"{dwi_file}: the image cannot be read ({err}); the file may be truncated or corrupt"
        ) from err
    return img, data


def check_bvals(bval_file: Path, n_volumes: int, dwi_file: Path) -> np.ndarray:
    """Read the b-values and check their count and sign."""
    bvals = _read_gradients(bval_file, "b-values").ravel()
    if bvals.size != n_volumes:
        raise DataError(f"{bval_file}: {bvals.size} b-values, but {dwi_file.name} has {n_volumes} volumes")
    if not np.all(np.isfinite(bvals)):
        raise DataError(f"{bval_file}: the b-values contain NaN or Inf")
    if np.any(bvals < 0):
        raise DataError(f"{bval_file}: negative b-values {sorted(set(bvals[bvals < 0].tolist()))}")
    return bvals


def check_bvecs(bvec_file: Path, bvals: np.ndarray, b0_threshold: float, dwi_file: Path) -> list[str]:
    """Check the b-vector table's layout; return warnings about non-unit vectors."""
    bvecs = _read_gradients(bvec_file, "b-vectors")
    if bvecs.shape != (3, bvals.size):
        hint = " (it looks transposed: BIDS stores 3 rows)" if bvecs.shape == (bvals.size, 3) else ""
        raise DataError(
            f"{bvec_file}: expected 3 rows x {bvals.size} columns (one per volume of "
            f"{dwi_file.name}), got {bvecs.shape[0]} x {bvecs.shape[1]}{hint}"
        )
    if not np.all(np.isfinite(bvecs)):
        raise DataError(f"{bvec_file}: the b-vectors contain NaN or Inf")
    norms = np.linalg.norm(bvecs, axis=0)
    off = np.flatnonzero((bvals > b0_threshold) & (np.abs(norms - 1) > UNIT_TOLERANCE))
    if off.size:
        return [
            f"{bvec_file}: {off.size} diffusion-weighted b-vector(s) are not unit length "
            f"(volumes {off[:5].tolist()}{'...' if off.size > 5 else ''}, norms "
            f"{np.round(norms[off[:5]], 3).tolist()}); check the gradient table"
        ]
    return []


def check_run(run, *, b0_threshold: float, patch_radius=(0, 0, 0), grouping: str = "shell",
              shell_tolerance: float = 100.0, b0_denoising: bool = True, min_group_volumes: int = 3) -> RunCheck:
    """Check that ``run`` can be denoised; raise a named error if it cannot.

    Parameters
    ----------
    run : DWIRun
        The run, as discovered (``bval_file``/``bvec_file`` may be None if missing).
    b0_threshold, patch_radius, grouping, shell_tolerance, b0_denoising, min_group_volumes
        The settings the run will be processed with (the last one is the method's).

    Returns
    -------
    RunCheck
        The image shape, the largest volume group (for memory estimates), warnings and the
        decisions taken about small groups.
    """
    dwi_file = Path(run.dwi_file)
    for what, path in (("bval", run.bval_file), ("bvec", run.bvec_file)):
        if path is None or not Path(path).is_file():
            raise MissingInputError(f"{dwi_file}: no .{what} file was found for this run")
    img, data = _load_image(dwi_file)
    if data.ndim != 4:
        raise DataError(f"{dwi_file}: a DWI series must be a 4D image, this one has shape {data.shape}")
    n_volumes = data.shape[3]
    bvals = check_bvals(Path(run.bval_file), n_volumes, dwi_file)
    warnings = check_bvecs(Path(run.bvec_file), bvals, b0_threshold, dwi_file)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(f"{dwi_file}: {bad} voxel values are NaN or Inf")
    n_b0 = int(np.count_nonzero(bvals <= b0_threshold))
    n_dwi = n_volumes - n_b0
    if n_dwi == 0:
        raise DataError(
            f"{dwi_file}: all {n_volumes} volumes have b <= {b0_threshold:g}; there is no "
            "diffusion-weighted volume to denoise"
        )
    if n_b0 == 0:
        raise DataError(
            f"{dwi_file}: no volume has b <= {b0_threshold:g} (lowest b = {bvals.min():g}); if the "
            "b=0 images are stored at a higher b-value, raise --b0-threshold"
        )
    if n_dwi == 1:
        raise DataError(
            f"{dwi_file}: only one diffusion-weighted volume; self-supervised denoising needs at "
            "least two volumes per group"
        )
    for axis, (size, radius) in enumerate(zip(data.shape[:3], patch_radius)):
        if size > 1 and radius >= size:
            raise DataError(
                f"{dwi_file}: the patch radius {radius} along axis {axis} is too large for an "
                f"image of size {size}; use a smaller --patch-radius"
            )
    groups = group_volumes(bvals, b0_threshold=b0_threshold, grouping=grouping, shell_tolerance=shell_tolerance)
    decisions = [f"group {group.label}: {note}" for group in groups
                 for note in group_decisions(group, b0_denoising=b0_denoising, min_volumes=min_group_volumes)]
    return RunCheck(shape=tuple(int(s) for s in img.shape), largest_group=max(group.size for group in groups),
                    warnings=warnings, decisions=decisions, bvals=bvals, groups=groups)


@dataclass
class Preflight:
    """The outcome of :func:`preflight_runs`."""

    kept: dict  # subject -> runs that can be processed, each with its RunCheck as ``run.check``
    failed: list  # (run, BidsDenoiseError)
    too_big: list  # "<run> needs about X GB"
    conflicts: list  # earlier outputs made with other settings


def preflight_runs(runs_by_subject: dict, *, settings, output_dir, mem_gb=None, stop_on_first_crash=False,
                   relative=str) -> Preflight:
    """Check every run before any work starts.

    A run that cannot be processed is returned in ``failed`` (or its error is raised with
    ``stop_on_first_crash``). Runs that need more memory than ``mem_gb`` by their method's model,
    and earlier outputs made with other settings, are listed; the caller refuses to start.
    """
    from dataclasses import replace

    from bids_denoise.denoise.methods import denoising_parameters, get_method
    from bids_denoise.errors import BidsDenoiseError

    method = get_method(settings.method)
    parameters = denoising_parameters(settings)
    result = Preflight({}, [], [], [])
    for subject, runs in runs_by_subject.items():
        for run in runs:
            try:
                check = check_run(run, b0_threshold=settings.b0_threshold,
                                  patch_radius=getattr(settings, "patch_radius", (0, 0, 0)),
                                  grouping=settings.shell_grouping, shell_tolerance=settings.shell_tolerance,
                                  b0_denoising=settings.b0_denoising, min_group_volumes=method.min_group_volumes)
            except BidsDenoiseError as err:
                if stop_on_first_crash:
                    raise
                result.failed.append((run, err))
                continue
            need = method.memory_gb(check.shape, settings, check.largest_group, settings.device)
            if mem_gb and need > mem_gb:
                result.too_big.append(f"{relative(run.dwi_file)} needs about {need:.1f} GB")
            result.conflicts += conflicting_outputs(run, output_dir, method=method.label, parameters=parameters)
            result.kept.setdefault(subject, []).append(replace(run, check=check))
    return result


def estimate_runtime(runs_by_subject: dict, *, settings, n_threads: int):
    """The method's run-time check over the selected runs (``None`` for methods without one).

    Logs the estimate; raises :class:`~bids_denoise.errors.UsageError` when the method refuses
    to start (DDM2 on a CPU without ``--force``).
    """
    from bids_denoise.denoise.methods import get_method

    method = get_method(settings.method)
    runs = [run for runs in runs_by_subject.values() for run in runs]
    if method.check_runtime is None or not runs:
        return None
    checks = [run.check for run in runs if getattr(run, "check", None) is not None]
    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return method.check_runtime(checks, settings, device, n_threads, n_runs=len(runs))


def _differing_keys(now: dict, before: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ, nested ones dotted (``Patch2SelfParameters.Model``)."""
    differing = []
    for key, value in now.items():
        old = before.get(key) if isinstance(before, dict) else None
        if isinstance(value, dict) and isinstance(old, dict):
            differing += _differing_keys(value, old, f"{prefix}{key}.")
        elif old != value:
            differing.append(prefix + key)
    return differing


def conflicting_outputs(run, output_dir, *, method: str, parameters: dict) -> list[str]:
    """Earlier derivatives of ``run`` in ``output_dir`` made with another method or settings.

    Returns one line per conflicting sidecar naming the keys that differ; empty if there is
    no earlier output or it was made the same way (a rerun then just refreshes it).
    """
    import json

    from bids_denoise.outputs import OUTPUTS

    sidecar = OUTPUTS["dwi"].sidecar_path(run.dwi_file, output_dir)
    if not sidecar.exists():
        return []
    try:
        earlier = json.loads(sidecar.read_text())
    except ValueError:
        return [f"{sidecar} (its sidecar cannot be read)"]
    differing = _differing_keys(parameters, earlier.get("DenoisingParameters", {}))
    if earlier.get("DenoisingMethod") != method:
        differing.insert(0, "DenoisingMethod")
    return [f"{sidecar} ({', '.join(differing)} differ)"] if differing else []
