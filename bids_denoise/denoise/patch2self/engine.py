"""Patch2Self: self-supervised denoising of diffusion MRI by leave-one-volume-out regression.

Fadnavis, Batson and Garyfallidis, "Patch2Self: Denoising Diffusion MRI with Self-Supervised
Learning", NeurIPS 2020.

Each volume of a group is predicted from the patches of all *other* volumes of that group. The
regression for every held-out volume is obtained exactly from one centred Gram matrix of all
patch features (in float64):

* radius 0 (:mod:`.voxelwise`): with ``P = (G + alpha I)^-1`` the coefficients of volume ``j``
  are ``-P[k, j] / P[j, j]`` (the precision-matrix identity); all groups share one joint Gram
  accumulated over voxel blocks;
* radius > 0 (:mod:`.lagged`): the Gram is assembled from lagged cross-products of whole
  volumes, and the held-out volume's whole patch block is removed by a Schur complement on ``P``.

An unpenalised intercept is fitted by centring. ``model="ridge"`` adds ``alpha`` to the
centred Gram, exactly like scikit-learn's ``Ridge``. Other models (``"lasso"`` or any
scikit-learn regressor) are fitted per volume on a copied design, which is slow.

This module does no file I/O and has no Nipype dependency.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_denoise.denoise.device import resolve_device
from bids_denoise.denoise.methods.patch2self import MAX_PATCH_RADIUS, POOLINGS as PATCH_POOLINGS
from bids_denoise.denoise.patch2self.lagged import PaddedGroup, fit_group, predict_blocks
from bids_denoise.denoise.patch2self.linalg import cpu_blas
from bids_denoise.denoise.patch2self.output import Output
from bids_denoise.denoise.patch2self.voxelwise import (
    BLOCK_BYTES,
    Layout,
    Plan,
    as_source,
    denoise_per_volume,
    fit_plan,
    predict_plan,
)
from bids_denoise.denoise.shells import (
    B0_THRESHOLD,
    MIN_GROUP_VOLUMES,
    MIN_SHELL_VOLUMES,
    SHELL_TOLERANCE,
    copy_reason,
    group_volumes,
)

LOGGER = logging.getLogger(__name__)

#: Default of ``clip_negative_vals``: of the settings that never output negative values, it
#: scored best on every phantom (benchmarks/results/patch2self.md).
CLIP_NEGATIVE_VALS = True
MIN_RECOMMENDED_VOLUMES = 10
CLOSED_FORM_MODELS = ("ols", "ridge")


# --------------------------------------------------------------------------------- arguments
def estimate_memory_gb(shape, *, patch_radius=0, group_size=None, device="cpu") -> float:
    """Estimate the peak host memory (GB) of one call on float32 data of ``shape``.

    Counts the input and the float32 output, the float64 Gram matrix with its inverse and
    factor, the weights and the voxel-block buffers, plus a fixed 0.2 GB of working space. At
    radius > 0 it adds the zero-padded float64 copy of the largest group. ``group_size`` is the
    largest group (defaults to all volumes).
    """
    *spatial, n_volumes = shape
    n_group = group_size or n_volumes
    radius = normalize_patch_radius(patch_radius)
    features = n_group * int(np.prod([2 * r + 1 for r in radius]))
    data_bytes = 4 * int(np.prod(spatial)) * n_volumes
    solver_bytes = 8 * (3 * features**2 + features * n_group)
    block_bytes = 6 * BLOCK_BYTES["cpu" if str(device) == "cpu" else "cuda"]
    padded_bytes = 0
    if radius != (0, 0, 0):
        padded_bytes = 8 * int(np.prod([s + 4 * r + 2 for s, r in zip(spatial, radius)])) * (n_group + 1)
    return (2 * data_bytes + solver_bytes + block_bytes + padded_bytes + 0.2e9) / 1e9


def normalize_patch_radius(patch_radius) -> tuple[int, int, int]:
    """Return ``patch_radius`` as a 3-tuple of ints in ``[0, MAX_PATCH_RADIUS]``."""
    values = np.atleast_1d(np.asarray(patch_radius))
    if values.dtype == bool or values.ndim != 1 or values.size not in (1, 3):
        raise ValueError(f"patch_radius must be an int or a 3-tuple of ints, got {patch_radius!r}")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.floating) or np.any(values != np.round(values)):
            raise ValueError(f"patch_radius must hold integers, got {patch_radius!r}")
    radius = tuple(int(v) for v in np.broadcast_to(values, (3,)))
    if any(r < 0 or r > MAX_PATCH_RADIUS for r in radius):
        raise ValueError(f"patch_radius must be between 0 and {MAX_PATCH_RADIUS}, got {radius}")
    return radius


def _check_model(model, alpha):
    if isinstance(model, str):
        if model not in ("ols", "ridge", "lasso"):
            raise ValueError(f"model must be 'ols', 'ridge', 'lasso' or a scikit-learn regressor, got {model!r}")
        if model != "ols" and not alpha > 0:
            raise ValueError(f"alpha must be > 0 for model={model!r}, got {alpha}")
        return model
    if not (hasattr(model, "fit") and hasattr(model, "predict") and hasattr(model, "get_params")):
        raise ValueError(f"model must be a string or a scikit-learn regressor, got {type(model).__name__}")
    return model


def _check_data(data, bvals, fit_mask, radius):
    if not isinstance(data, np.ndarray):
        data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be a 4D array (x, y, z, volumes), got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"data must hold integers or floats, got dtype {data.dtype}")
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size != data.shape[3]:
        raise ValueError(f"{bvals.size} b-values were given for {data.shape[3]} volumes")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ValueError(f"data contain {bad} NaN or Inf values; Patch2Self needs finite input")
    for axis, (size, r) in enumerate(zip(data.shape[:3], radius)):
        if size > 1 and r >= size:
            raise ValueError(f"patch radius {r} along axis {axis} is too large for an image of size {size}")
    if fit_mask is not None:
        fit_mask = np.asarray(fit_mask).astype(bool)
        if fit_mask.shape != data.shape[:3]:
            raise ValueError(f"fit_mask has shape {fit_mask.shape}, expected {data.shape[:3]}")
        if not fit_mask.any():
            raise ValueError("fit_mask selects no voxel")
    return data, bvals, fit_mask


def _plan_groups(bvals, *, b0_threshold, b0_denoising, grouping, shell_tolerance, min_group_volumes,
                 min_shell_volumes):
    groups = group_volumes(bvals, b0_threshold=b0_threshold, grouping=grouping,
                           shell_tolerance=shell_tolerance, min_shell_volumes=min_shell_volumes)
    denoise, copy = [], []
    for group in groups:
        for note in group.notes:
            warnings.warn(f"Patch2Self: group {group.label}: {note}.", UserWarning, stacklevel=4)
        reason = copy_reason(group, b0_denoising=b0_denoising, min_volumes=max(2, min_group_volumes))
        if reason is not None:
            if not (group.is_b0 and not b0_denoising):  # switching b0 denoising off is no surprise
                warnings.warn(f"Patch2Self: group {group.label}: {reason}.", UserWarning, stacklevel=4)
            copy.append(group)
            continue
        if group.size < MIN_RECOMMENDED_VOLUMES:
            warnings.warn(
                f"Patch2Self: group {group.label} has only {group.size} volumes; "
                f"less than {MIN_RECOMMENDED_VOLUMES} volumes give little denoising.",
                UserWarning,
                stacklevel=4,
            )
        denoise.append(group)
    return denoise, copy


@contextmanager
def _torch_threads_for(device: torch.device, *, lagged: bool):
    """On the CPU, run PyTorch single-threaded while OpenBLAS does the products.

    PyTorch's work here is memory-bound copying; with two thread pools on a few cores, their
    spin-waiting made 0.15 s calls take up to 5 s (2 cores, OpenBLAS and OpenMP, 2 threads each).
    The lagged engine keeps PyTorch's threads where PyTorch's BLAS does its products.
    """
    if device.type != "cpu" or (lagged and cpu_blas() == "torch"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _shift_values(data, volumes, mask) -> np.ndarray:
    """A per-volume constant near each volume's mean, from a strided subsample."""
    sample = data[::4, ::4, ::4][..., list(volumes)].astype(np.float64)
    if mask is not None and mask[::4, ::4, ::4].any():
        sample = sample[mask[::4, ::4, ::4]]
    sample = sample.reshape(-1, len(volumes))
    return sample.mean(0)


def _make_plans(data, groups, radius, fit_mask, device, *, joint):
    """One joint plan for the whole series (radius 0, closed form), else one per group."""
    if not groups:
        return []
    n_volumes = data.shape[3]
    if joint:
        volume_sets = [(list(range(n_volumes)), groups)]
    else:
        volume_sets = [(list(group.indices), [group]) for group in groups]
    return [
        Plan(
            volumes=torch.as_tensor(volumes, dtype=torch.long, device=device),
            groups=members,
            shift=torch.as_tensor(_shift_values(data, volumes, fit_mask), device=device),
            radius=radius,
            whole_series=len(volumes) == n_volumes,
        )
        for volumes, members in volume_sets
    ]


def _denoise_lagged(source, plan: Plan, mask, model, alpha, pooling, output: Output):
    """Radius > 0, closed form: one group from lagged products (see :mod:`.lagged`)."""
    values = source if plan.whole_series else source.index_select(3, plan.volumes)
    padded = PaddedGroup.build(values, plan.shift, plan.radius)
    weights, bias = fit_group(padded, model=model, alpha=alpha, mask=mask, pooling=pooling)
    solved = plan.solved
    for x0, x1, prediction in predict_blocks(padded, weights, bias):
        output.write(plan.volumes, (x0, x1, 0, source.shape[1]), values[x0:x1].reshape(-1, plan.size),
                     prediction, solved, whole_series=plan.whole_series)


def _denoise(
    data, bvals, *, noise_map, patch_radius, patch_pooling, model, alpha, b0_threshold, b0_denoising,
    grouping, shell_tolerance, min_group_volumes, min_shell_volumes, fit_mask, shift_intensity,
    clip_negative_vals, device, progress, out_dtype,
):
    started = time.perf_counter()
    radius = normalize_patch_radius(patch_radius)
    if patch_pooling not in PATCH_POOLINGS:
        raise ValueError(f"patch_pooling must be one of {PATCH_POOLINGS}, got {patch_pooling!r}")
    for name, value in (("min_group_volumes", min_group_volumes), ("min_shell_volumes", min_shell_volumes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    model = _check_model(model, alpha)
    data, bvals, fit_mask = _check_data(data, bvals, fit_mask, radius)
    # A patch cannot reach beyond a singleton axis: those features would be constant zeros.
    radius = tuple(0 if size == 1 else r for size, r in zip(data.shape[:3], radius))
    device = resolve_device(device)
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.float64):
        raise ValueError(f"out_dtype must be float32 or float64, got {out_dtype}")
    torch_out_dtype = torch.float32 if out_dtype == np.float32 else torch.float64
    if shift_intensity and clip_negative_vals:
        warnings.warn(
            "Both shift_intensity and clip_negative_vals are set; only clipping is applied.",
            UserWarning,
            stacklevel=3,
        )
        shift_intensity = False
    denoise, copy = _plan_groups(
        bvals, b0_threshold=b0_threshold, b0_denoising=b0_denoising, grouping=grouping,
        shell_tolerance=shell_tolerance, min_group_volumes=min_group_volumes,
        min_shell_volumes=min_shell_volumes,
    )
    layout = Layout.choose(data, radius, device)
    source = as_source(data, layout, device)
    mask = None
    if fit_mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(layout.to_engine(fit_mask))).to(device)
    n_volumes = data.shape[3]
    if layout.order == "F":
        denoised_array = np.empty(data.shape, dtype=out_dtype, order="F")
        values = torch.from_numpy(layout.to_engine(denoised_array))
    else:
        denoised_array = None
        values = torch.empty(layout.engine + (n_volumes,), dtype=torch_out_dtype, device=device)
    output = Output(
        values=values,
        residual_ss=torch.zeros(layout.engine, dtype=torch.float64, device=device) if noise_map else None,
        clip=bool(clip_negative_vals),
        track_minima=bool(shift_intensity),
        noisy_min=torch.full((n_volumes,), np.inf, dtype=torch.float64, device=device),
        denoised_min=torch.full((n_volumes,), np.inf, dtype=torch.float64, device=device),
    )
    closed_form = isinstance(model, str) and model in CLOSED_FORM_MODELS
    plans = _make_plans(data, denoise, radius, fit_mask, device, joint=closed_form and radius == (0, 0, 0))
    covered = set().union(*(plan.volumes.tolist() for plan in plans)) if plans else set()
    for group in copy:
        index = torch.as_tensor([i for i in group.indices if i not in covered], device=device)
        if index.numel():
            output.values[..., index] = source.index_select(3, index).to(torch_out_dtype)

    lagged = closed_form and radius != (0, 0, 0)
    bar = tqdm(total=n_volumes, desc="Patch2Self", unit="vol", disable=not progress, leave=False)
    with bar, _torch_threads_for(device, lagged=lagged):
        bar.update(sum(g.size for g in copy))
        for plan in plans:
            bar.set_postfix_str(", ".join(f"{g.label} ({g.size} vols)" for g in plan.groups))
            if lagged:
                _denoise_lagged(source, plan, mask, model, alpha, patch_pooling, output)
            elif closed_form:
                mean, weights = fit_plan(source, plan, mask, model, alpha, device)
                predict_plan(source, plan, mean, weights, output, device)
            else:
                denoise_per_volume(source, plan, mask, model, alpha, output, bar, pooling=patch_pooling)
                continue
            bar.update(sum(g.size for g in plan.groups))

    denoised_volumes = torch.as_tensor([i for g in denoise for i in g.indices], dtype=torch.long, device=device)
    if shift_intensity and denoised_volumes.numel():
        offsets = torch.zeros(n_volumes, dtype=torch.float64, device=device)
        offsets[denoised_volumes] = (output.noisy_min - output.denoised_min)[denoised_volumes]
        output.values += offsets.to(torch_out_dtype)
    noise = None
    if noise_map:
        noise = torch.sqrt(output.residual_ss / max(denoised_volumes.numel(), 1)).to(torch.float32)
        noise = layout.from_engine(noise.cpu().numpy())
    LOGGER.info(
        "Patch2Self denoised %d of %d volumes in %.2f s on %s (radius %s, model %s)",
        denoised_volumes.numel(), n_volumes, time.perf_counter() - started, device, radius,
        model if isinstance(model, str) else type(model).__name__,
    )
    if denoised_array is None:
        denoised_array = layout.from_engine(output.values.cpu().numpy())
    return denoised_array, noise


def patch2self(
    data,
    bvals,
    *,
    patch_radius=0,
    patch_pooling="voxel",
    model="ols",
    alpha=1.0,
    b0_threshold=B0_THRESHOLD,
    b0_denoising=True,
    grouping="shell",
    shell_tolerance=SHELL_TOLERANCE,
    min_group_volumes=MIN_GROUP_VOLUMES,
    min_shell_volumes=MIN_SHELL_VOLUMES,
    fit_mask=None,
    shift_intensity=False,
    clip_negative_vals=CLIP_NEGATIVE_VALS,
    device="auto",
    progress=True,
    out_dtype=np.float32,
):
    """Denoise a diffusion MRI series with Patch2Self.

    Parameters
    ----------
    data : ndarray, shape (x, y, z, N)
        Any integer or float dtype. It is never modified.
    bvals : array-like, shape (N,)
        b-values in s/mm².
    patch_radius : int or 3-tuple of int, optional
        Radius of the cubic patch of every other volume used as predictors, 0 to 3 per axis.
        Borders are zero-padded. Default 0 (the value recommended for human data).
    patch_pooling : {"voxel", "radial"}, optional
        "voxel" (default) makes every patch voxel a predictor, as in the original Patch2Self.
        "radial" replaces them by their means over each distance from the centre: 4 predictors
        per volume at radius 1 instead of 27 (see :func:`.lagged.radial_pooling`).
    model : {"ols", "ridge", "lasso"} or scikit-learn regressor, optional
        "ols" (default) and "ridge" are solved exactly from one Gram matrix per group. "lasso"
        and regressor objects are fitted once per volume on a copied design of all voxels by
        all other volumes' patches, which is much slower and needs that design in memory.
    alpha : float, optional
        Regularisation of "ridge" and "lasso". Default 1.0.
    b0_threshold : float, optional
        Volumes with ``b <= b0_threshold`` form the b0 group. Default 50.
    b0_denoising : bool, optional
        Denoise the b0 group (from other b0s only). If False, b0s are copied through. Default True.
    grouping : {"shell", "all"}, optional
        "shell" (default) denoises each shell from its own volumes; "all" pools all
        diffusion-weighted volumes into one group, as DIPY and QSIPrep do.
    shell_tolerance : float, optional
        b-values within this distance (s/mm²) belong to one shell. Default 100.
    min_group_volumes : int, optional
        Groups with fewer volumes are copied through unchanged, with a warning (see
        :data:`~bids_denoise.denoise.shells.MIN_GROUP_VOLUMES`). Default 3; at least 2 are
        always needed.
    min_shell_volumes : int, optional
        With ``grouping="shell"``, shells with fewer volumes are merged with their nearest
        neighbour in b, with a warning. Default 10; 1 keeps every shell.
    fit_mask : ndarray of bool, shape (x, y, z), optional
        If given, the regressions are fitted on these voxels only; every voxel is still
        predicted.
    shift_intensity : bool, optional
        Add to each denoised volume the constant that makes its minimum equal the noisy
        volume's minimum (DIPY's intent; it biases values downwards). Default False.
    clip_negative_vals : bool, optional
        Set negative denoised values to 0. Default True: of the settings that never output
        negative values it scored best (benchmarks/results/patch2self.md). If both this and
        ``shift_intensity`` are True, only clipping is applied, with a warning.
    device : {"auto", "cpu", "cuda"}, optional
        PyTorch device. "auto" (default) picks CUDA when available. All arithmetic is float64.
    progress : bool, optional
        Show a tqdm progress bar over volumes. Default True.
    out_dtype : {numpy.float32, numpy.float64}, optional
        Output dtype. Default float32; float64 exposes the solver's full precision.

    Returns
    -------
    ndarray of ``out_dtype`` (float32), shape ``data.shape``
        The denoised series in the input's units. Groups of fewer than ``min_group_volumes``
        volumes, and b0s when ``b0_denoising`` is False, are copied through unchanged. At radius 0 it has the
        input's memory order: Fortran-ordered input (what nibabel returns) is read in place and
        gives Fortran-ordered output, which NIfTI writers store without reordering.

    Raises
    ------
    ValueError
        For a non-4D array, NaN or Inf values, a b-value count that differs from the number of
        volumes, or invalid arguments.

    Notes
    -----
    Memory: the full patch matrix is never built for "ols" and "ridge"; features are built
    block by block. At radius 0 the peak is the output plus a few voxel blocks of
    :data:`BLOCK_BYTES` (8 MB on the CPU).
    Results are deterministic for the same input on the same device.
    """
    arguments = dict(locals())  # exactly the parameters: nothing else is defined yet
    return _denoise(noise_map=False, **arguments)[0]


def patch2self_with_noise(data, bvals, **options):
    """Denoise a DWI series with Patch2Self and return the residual noise map too.

    Takes the arguments of :func:`patch2self`, with the same defaults.

    Returns
    -------
    denoised : ndarray of ``out_dtype`` (float32), shape ``data.shape``
        See :func:`patch2self`.
    noise_map : ndarray of float32, shape ``data.shape[:3]``
        Per voxel, the root mean square over the denoised volumes of the leave-one-out residual
        (noisy minus prediction, before clipping or shifting). Zero if no volume was denoised.
    """
    arguments = inspect.signature(patch2self).bind(data, bvals, **options)
    arguments.apply_defaults()
    return _denoise(noise_map=True, **arguments.arguments)
