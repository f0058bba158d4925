"""Patch2Self over voxel blocks: the radius-0 engine and the per-volume estimator path.

At radius 0 every group of the series is solved from one joint Gram matrix of all volumes,
accumulated over voxel blocks with a column of ones appended, so the sums and the intercept
come out of the same products. Models without a closed form (``"lasso"``, scikit-learn
regressors) are fitted once per volume on a copied design, which also supports patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from bids_denoise.denoise.patch2self.lagged import radial_pooling
from bids_denoise.denoise.patch2self.linalg import (
    leave_one_out_weights,
    matmul,
    precision_matrix,
)
from bids_denoise.denoise.patch2self.output import Output
from bids_denoise.denoise.shells import VolumeGroup

#: Bytes of float64 patch features built at once per voxel block. On the CPU, blocks that stay
#: in cache made radius 0 nearly twice as fast as 32 MB blocks (64x64x40x66, 2 cores).
BLOCK_BYTES = {"cpu": 8 * 2**20, "cuda": 512 * 2**20}
_TORCH_SOURCE_DTYPES = {np.dtype(t) for t in ("float32", "float64", "int16", "int32", "int64", "uint8", "int8")}

def blocks(shape, n_features, device):
    """Yield (x0, x1, y0, y1) blocks whose float64 features fit the block budget.

    Blocks run along x, the slowest axis of a C-ordered (x, y, z, N) array, so a block of
    whole yz-planes is one contiguous piece of memory. At radius 0 the engine's shape is
    ``(voxels, 1, 1)`` (see :class:`Layout`) and a block is a run of voxels.
    """
    nx, ny, nz = shape
    voxels = max(1, BLOCK_BYTES[device.type] // (max(1, n_features) * 8))
    by = min(ny, max(1, voxels // nz))
    bx = min(nx, max(1, voxels // (ny * nz))) if by == ny else 1
    for x0 in range(0, nx, bx):
        for y0 in range(0, ny, by):
            yield x0, min(x0 + bx, nx), y0, min(y0 + by, ny)


@dataclass
class Plan:
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
class Block:
    """One voxel block of a plan: its volumes and their patch features."""

    bounds: tuple[int, int, int, int]
    source: torch.Tensor  # (m, n) the plan's volumes, in the source dtype
    features: torch.Tensor  # (m, n * p + 1) float64: shifted features, then a column of ones
    plan: Plan

    def centre(self) -> torch.Tensor:
        """(m, n) float64: the plan's volumes in the original units."""
        n, p = self.plan.size, self.plan.patch_size
        patches = self.features[:, : n * p].unflatten(1, (n, p))
        return patches[:, :, self.plan.centre_offset] + self.plan.shift


class Workspace:
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


def read_block(source, plan: Plan, bounds, workspace: Workspace) -> Block:
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
    features = workspace.get("features", (bx * by * nz, n * p + 1), volume_major=volume_major(source))
    features[:, n * p] = 1.0
    if p == 1:
        subtract(raw.reshape(-1, n), plan.shift, out=features[:, :n])
        return Block(bounds, inner, features, plan)
    # Zero padding in the original units is -shift in shifted units.
    padded = (-plan.shift).expand(bx + 2 * rx, by + 2 * ry, nz + 2 * rz, n).clone()
    ox, oy = xa - (x0 - rx), ya - (y0 - ry)
    padded[ox:ox + (xb - xa), oy:oy + (yb - ya), rz:rz + nz] = raw.to(torch.float64) - plan.shift
    patches = features[:, : n * p].unflatten(1, (n, p))
    offsets = product(range(2 * rx + 1), range(2 * ry + 1), range(2 * rz + 1))
    for o, (dx, dy, dz) in enumerate(offsets):
        patches[:, :, o] = padded[dx:dx + bx, dy:dy + by, dz:dz + nz].reshape(-1, n)
    return Block(bounds, inner, features, plan)


def subtract(values: torch.Tensor, shift: torch.Tensor, *, out: torch.Tensor):
    """``out[...] = values - shift`` in ``out``'s dtype.

    On the CPU NumPy does it: PyTorch's mixed-dtype ``sub`` with ``out=`` ran 2 to 5 times
    slower here, and erratically so, on blocks of tens of thousands of rows.
    """
    if out.device.type == "cpu":
        np.subtract(values.numpy(), shift.numpy(), out=out.numpy())
    else:
        torch.sub(values, shift, out=out)


def volume_major(tensor: torch.Tensor) -> bool:
    """True for the flattened ``(voxels, 1, 1, N)`` view of Fortran-ordered (NIfTI) data."""
    flat = tensor.shape[1] == tensor.shape[2] == 1
    return flat and tensor.stride(0) == 1 and tensor.shape[3] > 1 and tensor.stride(3) > 1


def fit_rows(mask, bounds):
    if mask is None:
        return None
    x0, x1, y0, y1 = bounds
    return mask[x0:x1, y0:y1].reshape(-1)



def fit_plan(source, plan: Plan, mask, model, alpha, device):
    """Radius 0: feature means and ``(n, n)`` weights of every group of ``plan``, each group
    solved from its diagonal block of one joint Gram matrix."""
    n = plan.size
    augmented = torch.zeros((n + 1, n + 1), dtype=torch.float64, device=device)
    workspace = Workspace(device)
    for bounds in blocks(source.shape[:3], n, device):
        block = read_block(source, plan, bounds, workspace)
        fit = fit_rows(mask, bounds)
        rows = block.features if fit is None else block.features[fit]
        augmented += matmul(rows.T, rows)
    count = augmented[n, n]  # the ones column: rows used, exactly
    mean = augmented[:n, n] / count
    gram = augmented[:n, :n] - count * torch.outer(mean, mean)
    weights = torch.zeros((n, n), dtype=torch.float64, device=device)
    for group in plan.groups:
        columns = plan.positions(group)
        sub = gram[columns][:, columns]
        weights[columns.unsqueeze(1), columns] = leave_one_out_weights(
            precision_matrix(sub, alpha, model), group.size, 1, 0
        )
    return mean, weights


def predict_plan(source, plan: Plan, mean, weights, output: Output, device):
    """Predict every voxel block of ``plan`` from the fitted weights into ``output``."""
    # Prediction = centre mean + (features - mean) W + shift: the constant terms ride on the
    # ones column as a last row of weights, so one product gives the prediction.
    bias = mean[plan.centre_offset::plan.patch_size] - mean @ weights + plan.shift
    weights = torch.cat([weights, bias[None]])
    solved = plan.solved
    workspace = Workspace(device)
    for bounds in blocks(source.shape[:3], plan.size * plan.patch_size, device):
        block = read_block(source, plan, bounds, workspace)
        prediction = workspace.get(
            "prediction", (block.features.shape[0], plan.size), volume_major=volume_major(source)
        )
        denoised = matmul(block.features, weights, out=prediction)
        output.write(plan.volumes, bounds, block.source, denoised, solved,
                     whole_series=plan.whole_series, noisy=block.centre)


def _make_estimator(model, alpha):
    from sklearn.base import clone
    from sklearn.linear_model import Lasso

    if model == "lasso":
        return Lasso(alpha=alpha, precompute=True)
    return clone(model)


def denoise_per_volume(source, plan: Plan, mask, model, alpha, output: Output, bar, *, pooling="voxel"):
    """Slow path for models without a closed form: one fit per volume on a copied design."""
    n, p = plan.size, plan.patch_size
    whole = (0, source.shape[0], 0, source.shape[1])
    block = read_block(source, plan, whole, Workspace(plan.volumes.device))
    design = block.features[:, : n * p].cpu().numpy()
    if pooling == "radial" and p > 1:
        pooled = radial_pooling(plan.radius)
        design = (design.reshape(-1, n, p) @ pooled).reshape(design.shape[0], -1)
        p = pooled.shape[1]
    targets = block.centre().cpu().numpy()
    fit = fit_rows(mask, whole)
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
    denoised = torch.from_numpy(prediction).to(plan.volumes.device)
    output.write(plan.volumes, whole, block.source, denoised, solved,
                 whole_series=plan.whole_series, noisy=block.centre)


# ---------------------------------------------------------------------------- data layout
@dataclass(frozen=True)
class Layout:
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
    def choose(cls, data: np.ndarray, radius, device: torch.device) -> "Layout":
        spatial = tuple(data.shape[:3])
        if radius != (0, 0, 0):
            return cls(spatial, spatial, "C")
        fortran = device.type == "cpu" and data.flags.f_contiguous and not data.flags.c_contiguous
        return cls(spatial, (int(np.prod(spatial)), 1, 1), "F" if fortran else "C")

    def to_engine(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.engine + array.shape[3:], order=self.order)

    def from_engine(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.spatial + array.shape[3:], order=self.order)


def as_source(data: np.ndarray, layout: Layout, device: torch.device) -> torch.Tensor:
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
    return tensor if volume_major(tensor) else tensor.contiguous()


