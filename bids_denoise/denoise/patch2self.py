"""Patch2Self: self-supervised denoising of diffusion MRI by leave-one-volume-out regression.

Fadnavis, Batson and Garyfallidis, "Patch2Self: Denoising Diffusion MRI with Self-Supervised
Learning", NeurIPS 2020.

Each volume of a group is predicted from the patches of all *other* volumes of that group. The
regression for every held-out volume is obtained exactly from one centred Gram matrix of all
patch features (accumulated over voxel blocks, in float64):

* radius 0: with ``P = (G + alpha I)^-1`` the coefficients of volume ``j`` are
  ``-P[k, j] / P[j, j]`` (the precision-matrix identity);
* radius > 0: the held-out volume's whole patch block ``B_j`` is removed by a Schur complement
  on ``P``, which gives the inverse of the principal submatrix without ``B_j \\ {centre}``.

An unpenalised intercept is fitted by centring. ``model="ridge"`` adds ``alpha`` to the
centred Gram, exactly like scikit-learn's ``Ridge``. Other models (``"lasso"`` or any
scikit-learn regressor) are fitted per volume on a copied design, which is slow.

This module does no file I/O and has no Nipype dependency.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_denoise.denoise.shells import (
    B0_THRESHOLD,
    SHELL_TOLERANCE,
    VolumeGroup,
    group_volumes,
)

LOGGER = logging.getLogger(__name__)

#: Default of ``clip_negative_vals``: of the settings that never output negative values, it
#: scored best on every phantom (benchmarks/results/patch2self.md).
CLIP_NEGATIVE_VALS = True
MAX_PATCH_RADIUS = 3
MIN_RECOMMENDED_VOLUMES = 10
#: "ols" is solved with this ridge, relative to the mean diagonal of the centred Gram. It keeps
#: constant features (zero-padded slabs of single-slice data) solvable and changes well-posed
#: OLS fits by far less than float64 round-off in the predictions.
OLS_RELATIVE_JITTER = 1e-10
#: Bytes of float64 patch features built at once per voxel block.
BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}
CLOSED_FORM_MODELS = ("ols", "ridge")
_TORCH_SOURCE_DTYPES = {np.dtype(t) for t in ("float32", "float64", "int16", "int32", "int64", "uint8", "int8")}


# --------------------------------------------------------------------------------- arguments
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` into a :class:`torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but PyTorch sees no CUDA device")
    return resolved


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


# ------------------------------------------------------------------------------- voxel blocks
def _blocks(shape, n_features, device):
    """Yield (y0, y1, z0, z1) blocks whose float64 patch features fit the block budget."""
    nx, ny, nz = shape
    row_bytes = max(1, n_features) * 8
    voxels = max(1, BLOCK_BYTES[device.type] // row_bytes)
    by = min(ny, max(1, voxels // nx))
    bz = min(nz, max(1, voxels // (nx * by))) if by == ny else 1
    for z0 in range(0, nz, bz):
        for y0 in range(0, ny, by):
            yield y0, min(y0 + by, ny), z0, min(z0 + bz, nz)


@dataclass
class _Features:
    """Patch features of one group for one voxel block, shifted for conditioning."""

    values: torch.Tensor  # (m, n * p), volume-major, patch-minor, in shifted units
    centre: torch.Tensor  # (m, n) the volumes themselves, in shifted units
    fit_rows: torch.Tensor | None  # (m,) boolean, rows used for fitting


@dataclass
class _GroupPlan:
    group: VolumeGroup
    index: torch.Tensor  # volume positions on the device
    shift: torch.Tensor  # (n,) per-volume constant subtracted before anything else
    radius: tuple[int, int, int]

    @property
    def patch_size(self) -> int:
        return int(np.prod([2 * r + 1 for r in self.radius]))

    @property
    def centre_offset(self) -> int:
        rx, ry, rz = self.radius
        return (rx * (2 * ry + 1) + ry) * (2 * rz + 1) + rz


def _features(source, plan: _GroupPlan, block, mask) -> _Features:
    y0, y1, z0, z1 = block
    rx, ry, rz = plan.radius
    nx, ny, nz = source.shape[:3]
    n = plan.index.numel()
    ya, yb, za, zb = max(y0 - ry, 0), min(y1 + ry, ny), max(z0 - rz, 0), min(z1 + rz, nz)
    raw = source[:, ya:yb, za:zb].index_select(3, plan.index).to(torch.float64) - plan.shift
    if plan.patch_size == 1:
        centre = raw.reshape(-1, n)
        values = centre
    else:
        # Zero padding in the original units is -shift in shifted units.
        padded = (-plan.shift).expand(nx + 2 * rx, (y1 - y0) + 2 * ry, (z1 - z0) + 2 * rz, n).clone()
        oy, oz = ya - (y0 - ry), za - (z0 - rz)
        padded[rx:rx + nx, oy:oy + (yb - ya), oz:oz + (zb - za)] = raw
        bx, by, bz = nx, y1 - y0, z1 - z0
        values = torch.empty((bx * by * bz, n, plan.patch_size), dtype=torch.float64, device=raw.device)
        offsets = product(range(2 * rx + 1), range(2 * ry + 1), range(2 * rz + 1))
        for o, (dx, dy, dz) in enumerate(offsets):
            values[:, :, o] = padded[dx:dx + bx, dy:dy + by, dz:dz + bz].reshape(-1, n)
        centre = values[:, :, plan.centre_offset]
        values = values.reshape(-1, n * plan.patch_size)
    fit_rows = None if mask is None else mask[:, y0:y1, z0:z1].reshape(-1)
    return _Features(values, centre, fit_rows)


# ------------------------------------------------------------------------------------ solver
def _weights_from_precision(precision: torch.Tensor, n: int, p: int, centre: int) -> torch.Tensor:
    """Leave-one-volume-out coefficients for every volume, as an ``(n*p, n)`` matrix.

    Column ``j`` holds the regression of volume ``j``'s centre feature on the features of all
    other volumes; the rows of volume ``j``'s own patch block are zero.
    """
    if p == 1:
        weights = -precision / torch.diagonal(precision)
        weights.fill_diagonal_(0.0)
        return weights
    weights = torch.zeros((n * p, n), dtype=precision.dtype, device=precision.device)
    for j in range(n):
        block = torch.arange(j * p, (j + 1) * p, device=precision.device)
        target = j * p + centre
        rest = block[block != target]
        # Column `target` of the inverse of G restricted to (all \ rest): a Schur complement.
        correction = torch.linalg.solve(precision[rest][:, rest], precision[rest, target])
        column = precision[:, target] - precision[:, rest] @ correction
        weights[:, j] = -column / column[target]
        weights[block, j] = 0.0
    return weights


def _precision(gram: torch.Tensor, alpha: float, model: str) -> torch.Tensor:
    diagonal = torch.diagonal(gram)
    scale = float(diagonal.mean()) if diagonal.numel() else 1.0
    ridge = alpha if model == "ridge" else OLS_RELATIVE_JITTER * max(scale, np.finfo(float).tiny)
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(gram + ridge * identity)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
        ridge = ridge * 100 if ridge > 0 else OLS_RELATIVE_JITTER * scale
        LOGGER.warning("Gram matrix not positive definite; retrying with ridge %.3g", ridge)
    raise np.linalg.LinAlgError("the centred Gram matrix could not be factorised")


# -------------------------------------------------------------------------- output and state
@dataclass
class _Output:
    """Denoised volumes plus the running statistics needed for post-processing."""

    values: torch.Tensor  # (x, y, z, N), float32 unless float64 was asked for
    residual_ss: torch.Tensor  # (x, y, z) float64, sum of squared residuals
    clip: bool
    noisy_min: dict = field(default_factory=dict)
    denoised_min: dict = field(default_factory=dict)
    denoised: list = field(default_factory=list)

    def write(self, plan: _GroupPlan, block, centre, prediction):
        """Store one block's predictions (both in shifted units) for ``plan``'s volumes."""
        y0, y1, z0, z1 = block
        nx = self.values.shape[0]
        residual = centre - prediction
        self.residual_ss[:, y0:y1, z0:z1] += (residual * residual).sum(1).reshape(nx, y1 - y0, z1 - z0)
        denoised = prediction + plan.shift
        for name, values in (("noisy_min", centre + plan.shift), ("denoised_min", denoised)):
            running = getattr(self, name)
            current = values.amin(0)
            key = plan.group.indices[0]
            running[key] = current if key not in running else torch.minimum(running[key], current)
        if self.clip:
            denoised = denoised.clamp_min(0.0)
        self.values[:, y0:y1, z0:z1, plan.index] = denoised.to(self.values.dtype).reshape(
            nx, y1 - y0, z1 - z0, -1
        )


def _fit_group_closed_form(source, plan, mask, model, alpha, device):
    n, p = plan.index.numel(), plan.patch_size
    size = n * p
    gram = torch.zeros((size, size), dtype=torch.float64, device=device)
    total = torch.zeros(size, dtype=torch.float64, device=device)
    count = 0
    for block in _blocks(source.shape[:3], size, device):
        features = _features(source, plan, block, mask)
        rows = features.values if features.fit_rows is None else features.values[features.fit_rows]
        gram.addmm_(rows.T, rows)
        total += rows.sum(0)
        count += rows.shape[0]
    mean = total / count
    gram.sub_(count * torch.outer(mean, mean))
    precision = _precision(gram, alpha, model)
    return mean, _weights_from_precision(precision, n, p, plan.centre_offset)


def _predict_group_closed_form(source, plan, mean, weights, output, device):
    n, p = plan.index.numel(), plan.patch_size
    centre_mean = mean[plan.centre_offset::p]
    for block in _blocks(source.shape[:3], n * p, device):
        features = _features(source, plan, block, None)
        prediction = torch.addmm(centre_mean, features.values - mean, weights)
        output.write(plan, block, features.centre, prediction)


def _make_estimator(model, alpha):
    from sklearn.base import clone
    from sklearn.linear_model import Lasso

    if model == "lasso":
        return Lasso(alpha=alpha, precompute=True)
    return clone(model)


def _denoise_group_per_volume(source, plan, mask, model, alpha, output, device, bar):
    """Slow path for models without a closed form: one fit per volume on a copied design."""
    n, p = plan.index.numel(), plan.patch_size
    whole = (0, source.shape[1], 0, source.shape[2])
    features = _features(source, plan, whole, mask)
    design = features.values.cpu().numpy()
    targets = features.centre.cpu().numpy()
    fit_rows = slice(None) if features.fit_rows is None else features.fit_rows.cpu().numpy()
    prediction = np.empty_like(targets)
    for j in range(n):
        others = np.ones(n * p, dtype=bool)
        others[j * p:(j + 1) * p] = False
        x_other = design[:, others].copy()
        estimator = _make_estimator(model, alpha)
        estimator.fit(x_other[fit_rows], targets[fit_rows, j].copy())
        prediction[:, j] = estimator.predict(x_other)
        bar.update(1)
    to_torch = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    output.write(plan, whole, to_torch(targets), to_torch(prediction))


# -------------------------------------------------------------------------------- public API
def _as_source(data: np.ndarray, device: torch.device) -> torch.Tensor:
    array = data if data.dtype in _TORCH_SOURCE_DTYPES else data.astype(np.float32)
    array = np.ascontiguousarray(array)
    if device.type == "cpu":
        return torch.from_numpy(array)
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    return torch.from_numpy(array).to(device)


def _plan_groups(bvals, *, b0_threshold, b0_denoising, grouping, shell_tolerance):
    groups = group_volumes(
        bvals, b0_threshold=b0_threshold, grouping=grouping, shell_tolerance=shell_tolerance
    )
    denoise, copy = [], []
    for group in groups:
        if group.is_b0 and not b0_denoising:
            copy.append(group)
        elif group.size < 2:
            warnings.warn(
                f"Patch2Self: group {group.label} has {group.size} volume; it is copied through "
                "unchanged (at least 2 volumes are needed).",
                UserWarning,
                stacklevel=3,
            )
            copy.append(group)
        else:
            if group.size < MIN_RECOMMENDED_VOLUMES:
                warnings.warn(
                    f"Patch2Self: group {group.label} has only {group.size} volumes; "
                    f"less than {MIN_RECOMMENDED_VOLUMES} volumes give little denoising.",
                    UserWarning,
                    stacklevel=3,
                )
            denoise.append(group)
    return denoise, copy


def _shift_values(data, group: VolumeGroup, mask) -> np.ndarray:
    """A per-volume constant near the volume's mean, from a strided subsample."""
    index = list(group.indices)
    sample = data[::4, ::4, ::4][..., index].astype(np.float64)
    if mask is not None:
        sample = sample[mask[::4, ::4, ::4]]
    sample = sample.reshape(-1, len(index))
    return sample.mean(0) if sample.size else np.zeros(len(index))


def patch2self_with_noise(
    data,
    bvals,
    *,
    patch_radius=0,
    model="ols",
    alpha=1.0,
    b0_threshold=B0_THRESHOLD,
    b0_denoising=True,
    grouping="shell",
    shell_tolerance=SHELL_TOLERANCE,
    fit_mask=None,
    shift_intensity=False,
    clip_negative_vals=CLIP_NEGATIVE_VALS,
    device="auto",
    progress=True,
    out_dtype=np.float32,
):
    """Denoise a DWI series with Patch2Self and return the residual noise map too.

    Takes the same arguments as :func:`patch2self`.

    Returns
    -------
    denoised : ndarray of ``out_dtype`` (float32), shape ``data.shape``
        See :func:`patch2self`.
    noise_map : ndarray of float32, shape ``data.shape[:3]``
        Per voxel, the root mean square over the denoised volumes of the leave-one-out residual
        (noisy minus prediction, before clipping or shifting). Zero if no volume was denoised.
    """
    started = time.perf_counter()
    radius = normalize_patch_radius(patch_radius)
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
            stacklevel=2,
        )
        shift_intensity = False
    denoise, copy = _plan_groups(
        bvals, b0_threshold=b0_threshold, b0_denoising=b0_denoising,
        grouping=grouping, shell_tolerance=shell_tolerance,
    )
    source = _as_source(data, device)
    mask = None if fit_mask is None else torch.from_numpy(np.ascontiguousarray(fit_mask)).to(device)
    out_values = torch.empty(data.shape, dtype=torch_out_dtype, device=device)
    output = _Output(
        values=out_values,
        residual_ss=torch.zeros(data.shape[:3], dtype=torch.float64, device=device),
        clip=bool(clip_negative_vals),
    )
    for group in copy:
        index = torch.as_tensor(group.indices, device=device)
        out_values[..., index] = source.index_select(3, index).to(torch_out_dtype)

    with tqdm(total=data.shape[3], desc="Patch2Self", unit="vol", disable=not progress, leave=False) as bar:
        bar.update(sum(g.size for g in copy))
        for group in denoise:
            bar.set_postfix_str(f"group {group.label} ({group.size} volumes)")
            plan = _GroupPlan(
                group=group,
                index=torch.as_tensor(group.indices, device=device),
                shift=torch.as_tensor(_shift_values(data, group, fit_mask), device=device),
                radius=radius,
            )
            if isinstance(model, str) and model in CLOSED_FORM_MODELS:
                mean, weights = _fit_group_closed_form(source, plan, mask, model, alpha, device)
                _predict_group_closed_form(source, plan, mean, weights, output, device)
                bar.update(group.size)
            else:
                _denoise_group_per_volume(source, plan, mask, model, alpha, output, device, bar)
            output.denoised.append(plan)

    if shift_intensity:
        offsets = torch.zeros(data.shape[3], dtype=torch.float64, device=device)
        for plan in output.denoised:
            key = plan.group.indices[0]
            offsets[plan.index] = output.noisy_min[key] - output.denoised_min[key]
        out_values += offsets.to(torch_out_dtype)
    n_denoised = sum(plan.group.size for plan in output.denoised)
    noise = torch.sqrt(output.residual_ss / max(n_denoised, 1)).to(torch.float32)
    LOGGER.info(
        "Patch2Self denoised %d of %d volumes in %.2f s on %s (radius %s, model %s)",
        n_denoised, data.shape[3], time.perf_counter() - started, device, radius,
        model if isinstance(model, str) else type(model).__name__,
    )
    return out_values.cpu().numpy(), noise.cpu().numpy()


def patch2self(
    data,
    bvals,
    *,
    patch_radius=0,
    model="ols",
    alpha=1.0,
    b0_threshold=B0_THRESHOLD,
    b0_denoising=True,
    grouping="shell",
    shell_tolerance=SHELL_TOLERANCE,
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
        The denoised series in the input's units. Groups of one volume, and b0s when
        ``b0_denoising`` is False, are copied through unchanged.

    Raises
    ------
    ValueError
        For a non-4D array, NaN or Inf values, a b-value count that differs from the number of
        volumes, or invalid arguments.

    Notes
    -----
    Memory: the full patch matrix is never built for "ols" and "ridge"; features are built
    block by block. At radius 0 the peak is the output plus a few blocks of 32 MB.
    Results are deterministic for the same input on the same device.
    """
    denoised, _ = patch2self_with_noise(
        data, bvals, patch_radius=patch_radius, model=model, alpha=alpha,
        b0_threshold=b0_threshold, b0_denoising=b0_denoising, grouping=grouping,
        shell_tolerance=shell_tolerance, fit_mask=fit_mask, shift_intensity=shift_intensity,
        clip_negative_vals=clip_negative_vals, device=device, progress=progress,
        out_dtype=out_dtype,
    )
    return denoised
