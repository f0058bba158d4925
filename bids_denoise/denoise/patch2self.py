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
from contextlib import contextmanager
from dataclasses import dataclass
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
#: Bytes of float64 patch features built at once per voxel block. On the CPU, blocks that stay
#: in cache made radius 0 nearly twice as fast as 32 MB blocks (64x64x40x66, 2 cores) and left
#: radius 1, where the products dominate, unchanged.
BLOCK_BYTES = {"cpu": 8 * 2**20, "cuda": 512 * 2**20}
CLOSED_FORM_MODELS = ("ols", "ridge")
_TORCH_SOURCE_DTYPES = {np.dtype(t) for t in ("float32", "float64", "int16", "int32", "int64", "uint8", "int8")}


# --------------------------------------------------------------------------------- arguments
def estimate_memory_gb(shape, *, patch_radius=0, group_size=None, device="cpu") -> float:
    """Estimate the peak host memory (GB) of one call on float32 data of ``shape``.

    Counts the input and the float32 output, the float64 Gram matrix with its inverse and
    factor, the weights and the voxel-block buffers, plus a fixed 0.2 GB of working space.
    ``group_size`` is the largest group (defaults to all volumes).
    """
    *spatial, n_volumes = shape
    n_group = group_size or n_volumes
    radius = normalize_patch_radius(patch_radius)
    features = n_group * int(np.prod([2 * r + 1 for r in radius]))
    data_bytes = 4 * int(np.prod(spatial)) * n_volumes
    solver_bytes = 8 * (3 * features**2 + features * n_group)
    block_bytes = 6 * BLOCK_BYTES["cpu" if str(device) == "cpu" else "cuda"]
    return (2 * data_bytes + solver_bytes + block_bytes + 0.2e9) / 1e9



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
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}") from err
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
    """Yield (x0, x1, y0, y1) blocks whose float64 features fit the block budget.

    Blocks run along x, the slowest axis of a C-ordered (x, y, z, N) array, so a block of
    whole yz-planes is one contiguous piece of memory. At radius 0 the engine's shape is
    ``(voxels, 1, 1)`` (see :class:`_Layout`) and a block is a run of voxels.
    """
    nx, ny, nz = shape
    voxels = max(1, BLOCK_BYTES[device.type] // (max(1, n_features) * 8))
    by = min(ny, max(1, voxels // nz))
    bx = min(nx, max(1, voxels // (ny * nz))) if by == ny else 1
    for x0 in range(0, nx, bx):
        for y0 in range(0, ny, by):
            yield x0, min(x0 + bx, nx), y0, min(y0 + by, ny)


@dataclass
class _Plan:
    """Volumes whose patch features are built together, and the groups solved from them.

    At radius 0 one plan covers the whole series and every group is solved from a diagonal
    block of one joint Gram matrix. Otherwise each group gets its own plan.
    """

    volumes: torch.Tensor  # (n,) positions in the series
    groups: list  # VolumeGroup solved in this plan
    shift: torch.Tensor  # (n,) per-volume constant subtracted before anything else
    radius: tuple[int, int, int]
    whole_series: bool = False  # volumes == arange(N)

    @property
    def size(self) -> int:
        return self.volumes.numel()

    @property
    def patch_size(self) -> int:
        return int(np.prod([2 * r + 1 for r in self.radius]))

    @property
    def centre_offset(self) -> int:
        rx, ry, rz = self.radius
        return (rx * (2 * ry + 1) + ry) * (2 * rz + 1) + rz

    def positions(self, group: VolumeGroup) -> torch.Tensor:
        """Where ``group``'s volumes sit among the plan's volumes."""
        index = torch.as_tensor(group.indices, device=self.volumes.device)
        return torch.searchsorted(self.volumes, index)

    @property
    def solved(self) -> torch.Tensor:
        """(n,) boolean: which of the plan's volumes are denoised."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=self.volumes.device)
        for group in self.groups:
            mask[self.positions(group)] = True
        return mask


@dataclass
class _Block:
    """One voxel block of a plan: its volumes and their patch features."""

    bounds: tuple[int, int, int, int]
    source: torch.Tensor  # (m, n) the plan's volumes, in the source dtype
    features: torch.Tensor  # (m, n * p + 1) float64: shifted features, then a column of ones
    plan: _Plan

    def centre(self) -> torch.Tensor:
        """(m, n) float64: the plan's volumes in the original units."""
        n, p = self.plan.size, self.plan.patch_size
        patches = self.features[:, : n * p].unflatten(1, (n, p))
        return patches[:, :, self.plan.centre_offset] + self.plan.shift


class _Workspace:
    """Float64 buffers reused across blocks: a fresh 32 MB buffer per block costs more in page
    faults than the arithmetic done in it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, *, volume_major: bool = False) -> torch.Tensor:
        """A ``(rows, columns)`` buffer; ``volume_major`` lays each column out contiguously."""
        size = int(np.prod(shape))
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = torch.empty(size, dtype=torch.float64, device=self.device)
            self.buffers[name] = buffer
        if volume_major:
            return buffer[:size].view(shape[::-1]).T
        return buffer[:size].view(shape)


def _read_block(source, plan: _Plan, bounds, workspace: _Workspace) -> _Block:
    """Build a block's features: each volume minus its shift, in float64, plus a ones column.

    The ones column makes one product give the Gram matrix with the feature sums, and the
    predictions with their intercept.
    """
    x0, x1, y0, y1 = bounds
    rx, ry, rz = plan.radius
    nx, ny, nz = source.shape[:3]
    n, p = plan.size, plan.patch_size
    xa, xb, ya, yb = max(x0 - rx, 0), min(x1 + rx, nx), max(y0 - ry, 0), min(y1 + ry, ny)
    raw = source[xa:xb, ya:yb]
    if not plan.whole_series:
        raw = raw.index_select(3, plan.volumes)
    bx, by = x1 - x0, y1 - y0
    inner = raw[x0 - xa:x0 - xa + bx, y0 - ya:y0 - ya + by].reshape(-1, n)
    features = workspace.get("features", (bx * by * nz, n * p + 1), volume_major=_volume_major(source))
    features[:, n * p] = 1.0
    if p == 1:
        _subtract(raw.reshape(-1, n), plan.shift, out=features[:, :n])
        return _Block(bounds, inner, features, plan)
    # Zero padding in the original units is -shift in shifted units.
    padded = (-plan.shift).expand(bx + 2 * rx, by + 2 * ry, nz + 2 * rz, n).clone()
    ox, oy = xa - (x0 - rx), ya - (y0 - ry)
    padded[ox:ox + (xb - xa), oy:oy + (yb - ya), rz:rz + nz] = raw.to(torch.float64) - plan.shift
    patches = features[:, : n * p].unflatten(1, (n, p))
    offsets = product(range(2 * rx + 1), range(2 * ry + 1), range(2 * rz + 1))
    for o, (dx, dy, dz) in enumerate(offsets):
        patches[:, :, o] = padded[dx:dx + bx, dy:dy + by, dz:dz + nz].reshape(-1, n)
    return _Block(bounds, inner, features, plan)


def _subtract(values: torch.Tensor, shift: torch.Tensor, *, out: torch.Tensor):
    """``out[...] = values - shift`` in ``out``'s dtype.

    On the CPU NumPy does it: PyTorch's mixed-dtype ``sub`` with ``out=`` ran 2 to 5 times
    slower here, and erratically so, on blocks of tens of thousands of rows.
    """
    if out.device.type == "cpu":
        np.subtract(values.numpy(), shift.numpy(), out=out.numpy())
    else:
        torch.sub(values, shift, out=out)


def _volume_major(tensor: torch.Tensor) -> bool:
    """True for the flattened ``(voxels, 1, 1, N)`` view of Fortran-ordered (NIfTI) data."""
    flat = tensor.shape[1] == tensor.shape[2] == 1
    return flat and tensor.stride(0) == 1 and tensor.shape[3] > 1 and tensor.stride(3) > 1


def _fit_rows(mask, bounds):
    if mask is None:
        return None
    x0, x1, y0, y1 = bounds
    return mask[x0:x1, y0:y1].reshape(-1)


# ------------------------------------------------------------------------------------ solver
def _matmul(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``left @ right``; on the CPU through NumPy's OpenBLAS.

    PyTorch's bundled MKL ran these float64 products about 3 times slower on the AMD EPYC
    build machine, and OpenBLAS turns ``rows.T @ rows`` into a symmetric rank-k update (half
    the flops) when both operands share one buffer.
    """
    if left.device.type == "cpu":
        if out is None:
            return torch.from_numpy(np.matmul(left.numpy(), right.numpy()))
        np.matmul(left.numpy(), right.numpy(), out=out.numpy())
        return out
    return torch.matmul(left, right, out=out)


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
    scale = max(float(diagonal.mean()), np.finfo(float).tiny)
    ridge = alpha if model == "ridge" else OLS_RELATIVE_JITTER * scale
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(gram + ridge * identity)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
        ridge = max(ridge * 100, OLS_RELATIVE_JITTER * scale)
        LOGGER.warning("Gram matrix not positive definite; retrying with ridge %.3g", ridge)
    raise np.linalg.LinAlgError("the centred Gram matrix could not be factorised")


def _fit_plan(source, plan: _Plan, mask, model, alpha, device):
    """Return the feature means and the ``(n*p, n)`` weights of all groups of ``plan``."""
    n, p = plan.size, plan.patch_size
    size = n * p
    augmented = torch.zeros((size + 1, size + 1), dtype=torch.float64, device=device)
    workspace = _Workspace(device)
    for bounds in _blocks(source.shape[:3], size, device):
        block = _read_block(source, plan, bounds, workspace)
        fit = _fit_rows(mask, bounds)
        rows = block.features if fit is None else block.features[fit]
        augmented += _matmul(rows.T, rows)
    count = augmented[size, size]  # the ones column: rows used, exactly
    mean = augmented[:size, size] / count
    gram = augmented[:size, :size] - count * torch.outer(mean, mean)
    weights = torch.zeros((size, n), dtype=torch.float64, device=device)
    for group in plan.groups:
        columns = plan.positions(group)
        if p == 1:
            sub = gram[columns][:, columns]
            weights[columns.unsqueeze(1), columns] = _weights_from_precision(
                _precision(sub, alpha, model), group.size, 1, 0
            )
        else:  # a plan with patches holds exactly one group
            weights = _weights_from_precision(_precision(gram, alpha, model), n, p, plan.centre_offset)
    return mean, weights


# -------------------------------------------------------------------------- output and state
@dataclass
class _Output:
    """Denoised volumes plus the running statistics needed for post-processing."""

    values: torch.Tensor  # (x, y, z, N), float32 unless float64 was asked for
    residual_ss: torch.Tensor | None  # (x, y, z) float64 sum of squared residuals, if wanted
    clip: bool
    noisy_min: torch.Tensor  # (N,) running minimum of each noisy volume
    denoised_min: torch.Tensor  # (N,) running minimum of each denoised volume
    track_minima: bool  # only shift_intensity needs the minima

    def write(self, plan: _Plan, block: _Block, denoised: torch.Tensor, solved: torch.Tensor):
        """Store one block's predictions (original units); unsolved volumes are copied."""
        x0, x1, y0, y1 = block.bounds
        everything_solved = bool(solved.all())
        if self.residual_ss is not None:
            residual = block.centre() - denoised
            if not everything_solved:
                residual = residual[:, solved]
            destination = self.residual_ss[x0:x1, y0:y1]
            destination += torch.linalg.vector_norm(residual, dim=1).square_().view(destination.shape)
        if self.track_minima:
            volumes = plan.volumes[solved]
            noisy = block.source[:, solved].amin(0).to(torch.float64)
            self.noisy_min[volumes] = torch.minimum(self.noisy_min[volumes], noisy)
            self.denoised_min[volumes] = torch.minimum(self.denoised_min[volumes], denoised[:, solved].amin(0))
        clip = self.clip
        if not everything_solved:
            if clip:
                denoised.clamp_min_(0.0)
                clip = False
            denoised[:, ~solved] = block.source[:, ~solved].to(torch.float64)
        if plan.whole_series:
            target = self.values[x0:x1, y0:y1]
            _store(target, denoised.view(target.shape), clip=clip)
        else:
            shape = (x1 - x0, y1 - y0, self.values.shape[2], plan.size)
            self.values[x0:x1, y0:y1, :, plan.volumes] = (
                denoised.clamp_min_(0.0) if clip else denoised
            ).view(shape).to(self.values.dtype)


def _store(target: torch.Tensor, values: torch.Tensor, *, clip: bool):
    """``target[...] = values`` (clipped at 0 if asked), converting to the target's dtype."""
    if clip and target.device.type == "cpu":
        # One pass that clips and converts; torch's clamp cannot write another dtype.
        np.maximum(values.numpy(), 0.0, out=target.numpy(), casting="unsafe")
    else:
        target.copy_(values.clamp_min_(0.0) if clip else values)


def _predict_plan(source, plan: _Plan, mean, weights, output: _Output, device):
    # Prediction = centre mean + (features - mean) W + shift: the constant terms ride on the
    # ones column as a last row of weights, so one product gives the prediction.
    bias = mean[plan.centre_offset::plan.patch_size] - mean @ weights + plan.shift
    weights = torch.cat([weights, bias[None]])
    solved = plan.solved
    workspace = _Workspace(device)
    for bounds in _blocks(source.shape[:3], plan.size * plan.patch_size, device):
        block = _read_block(source, plan, bounds, workspace)
        prediction = workspace.get(
            "prediction", (block.features.shape[0], plan.size), volume_major=_volume_major(source)
        )
        output.write(plan, block, _matmul(block.features, weights, out=prediction), solved)


def _make_estimator(model, alpha):
    from sklearn.base import clone
    from sklearn.linear_model import Lasso

    if model == "lasso":
        return Lasso(alpha=alpha, precompute=True)
    return clone(model)


def _denoise_per_volume(source, plan: _Plan, mask, model, alpha, output: _Output, bar):
    """Slow path for models without a closed form: one fit per volume on a copied design."""
    n, p = plan.size, plan.patch_size
    whole = (0, source.shape[0], 0, source.shape[1])
    block = _read_block(source, plan, whole, _Workspace(plan.volumes.device))
    design = block.features[:, : n * p].cpu().numpy()
    targets = block.centre().cpu().numpy()
    fit = _fit_rows(mask, whole)
    fit = slice(None) if fit is None else fit.cpu().numpy()
    prediction = np.empty_like(targets)
    for j in range(n):
        others = np.ones(n * p, dtype=bool)
        others[j * p:(j + 1) * p] = False
        x_other = design[:, others].copy()
        estimator = _make_estimator(model, alpha)
        estimator.fit(x_other[fit], targets[fit, j].copy())
        prediction[:, j] = estimator.predict(x_other)
        bar.update(1)
    solved = torch.ones(n, dtype=torch.bool, device=plan.volumes.device)
    output.write(plan, block, torch.from_numpy(prediction).to(plan.volumes.device), solved)


# -------------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class _Layout:
    """How the engine sees the spatial axes of the data.

    At radius 0 a voxel's neighbours play no part, so the spatial axes are flattened into one
    axis, a ``(voxels, 1, 1, N)`` view in the input's own memory order. NIfTI data, which
    nibabel returns Fortran-ordered, are then read in place: transposing them first cost as
    much as the whole fit (0.1 s of 0.3 s for 64x64x40x66 on 2 cores).
    """

    spatial: tuple[int, int, int]  # the data's spatial shape
    engine: tuple[int, int, int]  # the spatial shape the engine iterates over
    order: str  # memory order of the engine's arrays, "C" or "F"

    @classmethod
    def choose(cls, data: np.ndarray, radius, device: torch.device) -> "_Layout":
        spatial = tuple(data.shape[:3])
        if radius != (0, 0, 0):
            return cls(spatial, spatial, "C")
        fortran = device.type == "cpu" and data.flags.f_contiguous and not data.flags.c_contiguous
        return cls(spatial, (int(np.prod(spatial)), 1, 1), "F" if fortran else "C")

    def to_engine(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.engine + array.shape[3:], order=self.order)

    def from_engine(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.spatial + array.shape[3:], order=self.order)


def _as_source(data: np.ndarray, layout: _Layout, device: torch.device) -> torch.Tensor:
    """The data in the engine's shape, as a tensor on ``device``, sharing memory when possible.

    On the CPU the tensor is C-ordered unless it is the volume-major view of Fortran-ordered
    data. Data bound for a GPU are copied as they are and reordered there, where it is cheap.
    """
    array = data if data.dtype in _TORCH_SOURCE_DTYPES else data.astype(np.float32)
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    if device.type == "cuda":
        if array.dtype != np.float64:
            array = array.astype(np.float32, copy=False)
        tensor = torch.from_numpy(array).to(device).contiguous()
        return tensor.reshape(layout.engine + tensor.shape[3:])
    tensor = torch.from_numpy(layout.to_engine(array))
    return tensor if _volume_major(tensor) else tensor.contiguous()


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
                stacklevel=4,
            )
            copy.append(group)
        else:
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
def _torch_threads_for(device: torch.device):
    """On the CPU, run PyTorch single-threaded while OpenBLAS does the products.

    PyTorch's work here is memory-bound copying; with two thread pools on a few cores, their
    spin-waiting made 0.15 s calls take up to 5 s (2 cores, OpenBLAS and OpenMP, 2 threads each).
    """
    if device.type != "cpu":
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
        _Plan(
            volumes=torch.as_tensor(volumes, dtype=torch.long, device=device),
            groups=members,
            shift=torch.as_tensor(_shift_values(data, volumes, fit_mask), device=device),
            radius=radius,
            whole_series=len(volumes) == n_volumes,
        )
        for volumes, members in volume_sets
    ]


def _denoise(
    data, bvals, *, noise_map, patch_radius, model, alpha, b0_threshold, b0_denoising, grouping,
    shell_tolerance, fit_mask, shift_intensity, clip_negative_vals, device, progress, out_dtype,
):
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
            stacklevel=3,
        )
        shift_intensity = False
    denoise, copy = _plan_groups(
        bvals, b0_threshold=b0_threshold, b0_denoising=b0_denoising,
        grouping=grouping, shell_tolerance=shell_tolerance,
    )
    layout = _Layout.choose(data, radius, device)
    source = _as_source(data, layout, device)
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
    output = _Output(
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

    bar = tqdm(total=n_volumes, desc="Patch2Self", unit="vol", disable=not progress, leave=False)
    with bar, _torch_threads_for(device):
        bar.update(sum(g.size for g in copy))
        for plan in plans:
            bar.set_postfix_str(", ".join(f"{g.label} ({g.size} vols)" for g in plan.groups))
            if closed_form:
                mean, weights = _fit_plan(source, plan, mask, model, alpha, device)
                _predict_plan(source, plan, mean, weights, output, device)
                bar.update(sum(g.size for g in plan.groups))
            else:
                _denoise_per_volume(source, plan, mask, model, alpha, output, bar)

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
    return _denoise(
        data, bvals, noise_map=True, patch_radius=patch_radius, model=model, alpha=alpha,
        b0_threshold=b0_threshold, b0_denoising=b0_denoising, grouping=grouping,
        shell_tolerance=shell_tolerance, fit_mask=fit_mask, shift_intensity=shift_intensity,
        clip_negative_vals=clip_negative_vals, device=device, progress=progress,
        out_dtype=out_dtype,
    )


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
        ``b0_denoising`` is False, are copied through unchanged. At radius 0 it has the
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
    denoised, _ = _denoise(
        data, bvals, noise_map=False, patch_radius=patch_radius, model=model, alpha=alpha,
        b0_threshold=b0_threshold, b0_denoising=b0_denoising, grouping=grouping,
        shell_tolerance=shell_tolerance, fit_mask=fit_mask, shift_intensity=shift_intensity,
        clip_negative_vals=clip_negative_vals, device=device, progress=progress,
        out_dtype=out_dtype,
    )
    return denoised
