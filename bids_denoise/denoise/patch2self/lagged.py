"""Patch2Self at radius > 0, from lagged cross-products of whole volumes.

The features of voxel ``x`` are ``X_v(x + o)`` for every volume ``v`` of the group and every
offset ``o`` of the patch, with zeros outside the image. The Gram entry of features
``(v, o1)`` and ``(w, o2)`` sums ``X_v(x + o1) X_w(x + o2)`` over the fitted voxels. Written
with ``y = x + o1``, it is the cross-product of volumes ``v`` and ``w`` at lag ``o2 - o1``,
minus thin slabs at the image border where ``y - o1`` leaves the image. The Gram therefore
needs one ``n x n`` product per lag, ``(4r+1)^3`` lags of which half follow by symmetry,
instead of ``((2r+1)^3 n)^2`` dot products; the prediction is ``(2r+1)^3`` products of whole
shifted volumes with ``n x n`` weights. Both are exact.

Layout: the group's volumes sit in one zero-padded float64 array whose rows are voxels. The
image starts ``2 r_x + 1`` planes into x and every axis has ``2 r`` zero rows after it, so a
lag is a constant shift of the row index: any voxel it moves out of the image lands on a zero.

Precision: every volume is stored minus a constant near its mean, and one more channel holds
the image indicator, so the centred Gram is assembled from small numbers and the constants
are added back exactly by a linear map (no cancellation of large squared means).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, product

import numpy as np
import torch

from bids_denoise.denoise.patch2self.linalg import (
    add_matmul,
    fast_matmul,
    leave_one_out_weights,
    precision_matrix,
)

#: Bytes of padded rows whose predictions are computed at once.
PREDICTION_BLOCK_BYTES = 32 * 2**20


def patch_offsets(radius) -> np.ndarray:
    """``(p, 3)`` offsets of the patch, x slowest, matching the volume-major feature order."""
    rx, ry, rz = radius
    return np.array(list(product(range(-rx, rx + 1), range(-ry, ry + 1), range(-rz, rz + 1))))


def radial_pooling(radius) -> np.ndarray:
    """``(p, K)`` matrix that averages the patch voxels at each distance from the centre.

    Column 0 is the centre voxel alone; the others follow by increasing distance (at radius 1:
    the 6 face, 12 edge and 8 corner neighbours).
    """
    distance = (patch_offsets(radius) ** 2).sum(axis=1)
    pooling = (distance[:, None] == np.unique(distance)[None, :]).astype(np.float64)
    return pooling / pooling.sum(axis=0)


@dataclass
class PaddedGroup:
    """A group's volumes minus ``shift``, plus the image indicator, zero-padded, rows = voxels."""

    values: torch.Tensor  # (Px, Py, Pz, n + 1) float64; channel n is 1 inside the image
    shift: torch.Tensor  # (n,) subtracted from each volume inside the image
    shape: tuple[int, int, int]  # the image
    radius: tuple[int, int, int]

    @classmethod
    def build(cls, group: torch.Tensor, shift: torch.Tensor, radius) -> "PaddedGroup":
        """``group`` is ``(x, y, z, n)`` in any dtype, on the device the work runs on."""
        nx, ny, nz, n = group.shape
        rx, ry, rz = radius
        values = torch.zeros((nx + 4 * rx + 2, ny + 2 * ry, nz + 2 * rz, n + 1),
                             dtype=torch.float64, device=group.device)
        inner = values[2 * rx + 1:2 * rx + 1 + nx, :ny, :nz]
        if group.device.type == "cpu":  # one pass that converts and subtracts
            np.subtract(group.numpy(), shift.numpy(), out=inner[..., :n].numpy())
        else:
            torch.sub(group.to(torch.float64), shift, out=inner[..., :n])
        inner[..., n] = 1.0
        return cls(values, shift, (nx, ny, nz), tuple(radius))

    @property
    def channels(self) -> int:
        return self.values.shape[3]

    @property
    def flat(self) -> torch.Tensor:
        return self.values.view(-1, self.channels)

    @property
    def origin(self) -> int:
        """Padded x index of the image's first plane."""
        return 2 * self.radius[0] + 1

    @property
    def plane_rows(self) -> int:
        return self.values.shape[1] * self.values.shape[2]

    def rows_of(self, x, y, z):
        """Flat row of image voxel ``(x, y, z)`` (arrays allowed; any voxel within 2r too)."""
        return ((x + self.origin) * self.values.shape[1] + y) * self.values.shape[2] + z

    def lag_rows(self, lag) -> int:
        """How many rows a lag moves: ``rows_of(v + lag) - rows_of(v)``."""
        return int(self.rows_of(int(lag[0]) - self.origin, int(lag[1]), int(lag[2])))

    def image_rows(self, x0: int = 0, x1: int | None = None) -> tuple[int, int]:
        """The contiguous rows of image planes ``x0 .. x1`` (with their zero padding in y, z)."""
        x1 = self.shape[0] if x1 is None else x1
        return (x0 + self.origin) * self.plane_rows, (x1 + self.origin) * self.plane_rows

    def box(self, bounds, lag=(0, 0, 0)) -> torch.Tensor:
        """``(voxels, n + 1)`` values of the image box ``bounds`` moved by ``lag``."""
        (x0, x1), (y0, y1), (z0, z1) = bounds
        _, py, pz, m = self.values.shape
        start = int(self.rows_of(x0, y0, z0)) + self.lag_rows(lag)
        view = self.values.as_strided(
            (x1 - x0, y1 - y0, z1 - z0, m), (py * pz * m, pz * m, m, 1), start * m
        )
        return view.reshape(-1, m)


# ------------------------------------------------------------------------------------- Gram
def _lag_products(group: PaddedGroup, lags, mask_rows) -> dict:
    """``{lag: sum_y C(y) C(y + lag)^T}`` over the fitted voxels ``y``, as ``(n+1)^2`` blocks."""
    flat = group.flat
    table = {}
    if mask_rows is None:
        start, stop = group.image_rows()
        left = flat[start:stop]
        for lag in map(tuple, lags):
            mirror = tuple(-k for k in lag)
            if mirror in table:  # every voxel counts, so lag and -lag are transposes
                table[lag] = table[mirror].T
                continue
            shift = group.lag_rows(lag)
            table[lag] = fast_matmul(left.T, flat[start + shift:stop + shift])
        return table
    left = flat[mask_rows]
    for lag in map(tuple, lags):
        table[lag] = fast_matmul(left.T, flat[mask_rows + group.lag_rows(lag)])
    return table


def _border_slab(size: int, first: int, second: int) -> tuple[int, int]:
    """Rows ``y`` of one axis where ``y - first`` leaves the image but ``y + second - first``
    does not (``first`` and ``second`` share their sign)."""
    if first > 0:
        return max(0, first - second), first
    return size + first, min(size, size + first - second)


def _border_corrections(group: PaddedGroup, offsets, raw) -> None:
    """Subtract, for every block pair, the slabs where ``y - o1`` leaves the image.

    Per axis the slab is non-empty only where ``o1`` and ``o2`` point the same way; its
    thickness is the smaller of the two. Slabs of several axes overlap at edges and corners,
    which inclusion-exclusion takes back. Box products are shared between block pairs.
    """
    cache = {}
    full = [(0, size) for size in group.shape]
    for i1, first in enumerate(offsets):
        for i2 in range(i1, len(offsets)):
            second = offsets[i2]
            lag = tuple(int(k) for k in second - first)
            axes = [a for a in range(3) if first[a] * second[a] > 0]
            for count in range(1, len(axes) + 1):
                for subset in combinations(axes, count):
                    bounds = list(full)
                    for a in subset:
                        bounds[a] = _border_slab(group.shape[a], int(first[a]), int(second[a]))
                    key = (tuple(bounds), lag)
                    if key not in cache:
                        cache[key] = fast_matmul(group.box(bounds).T, group.box(bounds, lag))
                    sign = 1.0 if count % 2 else -1.0
                    raw[i1, :, i2, :] -= sign * cache[key]


def _mask_corrections(group: PaddedGroup, offsets, raw, mask: torch.Tensor) -> None:
    """With a fit mask ``m``, the lag products weigh ``y`` by ``m(y)``; the Gram needs
    ``m(y - o1)``. Add ``(m(y - o1) - m(y))``-weighted products over the voxels where they differ."""
    shifts = torch.as_tensor([group.lag_rows(o) for o in offsets], device=mask.device)
    sizes = group.shape
    for i1, first in enumerate(offsets):
        if not first.any():
            continue
        moved = torch.zeros_like(mask)  # moved(y) = m(y - o1)
        source = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(first, sizes))
        target = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(first, sizes))
        moved[target] = mask[source]
        weight = moved.to(torch.int8) - mask.to(torch.int8)
        where = torch.nonzero(weight, as_tuple=True)
        if not where[0].numel():
            continue
        centres = group.rows_of(*where) - int(shifts[i1])
        features = group.flat[centres[:, None] + shifts[None, i1:]]  # (voxels, p - i1, n + 1)
        left = features[:, 0] * weight[where].to(torch.float64)[:, None]
        block = fast_matmul(left.T, features.reshape(centres.numel(), -1))
        raw[i1, :, i1:, :] += block.view(group.channels, len(offsets) - i1, group.channels)


def lagged_gram(group: PaddedGroup, mask: torch.Tensor | None = None, pooling: torch.Tensor | None = None):
    """Centred Gram and means of the group's patch features, volume-major, and the voxel count.

    Returns ``(gram, mean, count)``: ``gram`` is ``(n*K, n*K)`` over the voxels of ``mask``
    (all voxels if None), ``mean`` the ``(n*K,)`` feature means in the input's units. The
    features of each volume are its ``p`` patch voxels (``K = p``) or, with a ``(p, K)``
    ``pooling`` matrix, ``K`` linear combinations of them.
    """
    offsets = patch_offsets(group.radius)
    p, m = len(offsets), group.channels
    n = m - 1
    mask_rows = None if mask is None else group.rows_of(*torch.nonzero(mask, as_tuple=True))
    lags = patch_offsets(tuple(2 * r for r in group.radius))
    table = _lag_products(group, lags, mask_rows)
    raw = torch.empty((p, m, p, m), dtype=torch.float64, device=group.values.device)
    for i1, first in enumerate(offsets):
        for i2 in range(i1, p):
            raw[i1, :, i2, :] = table[tuple(int(k) for k in offsets[i2] - first)]
    del table
    if mask is None:
        _border_corrections(group, offsets, raw)
    else:
        _mask_corrections(group, offsets, raw, mask)
    for i1 in range(p):
        for i2 in range(i1):
            raw[i1, :, i2, :] = raw[i2, :, i1, :].T
    centre = p // 2
    count = raw[centre, n, centre, n].item()  # the indicator at offset 0 over the fitted voxels
    mean = raw[centre, n] / count  # (p, m)
    # Each volume was stored as Z = X - s inside the image, so X features are Z + s * indicator:
    # centre, then map each block row to X features, written volume-major.
    shift = group.shift
    k = p if pooling is None else pooling.shape[1]
    gram = torch.zeros((n, k, n, k), dtype=torch.float64, device=raw.device)
    for i1 in range(p):
        row = raw[i1]
        row -= count * mean[i1, :, None, None] * mean
        block = row[:n, :, :n] + row[:n, :, n, None] * shift
        block += shift[:, None, None] * (row[n, :, :n] + row[n, :, n, None] * shift)
        block = block.permute(0, 2, 1)  # (v, w, o2)
        if pooling is None:
            gram[:, i1] = block
        else:  # every offset belongs to one pooled feature
            for k1 in torch.nonzero(pooling[i1]).flatten().tolist():
                gram[:, k1] += pooling[i1, k1] * (block @ pooling)
    del raw
    feature_mean = mean[:, :n] + mean[:, n, None] * shift  # (p, n)
    if pooling is not None:
        feature_mean = pooling.T @ feature_mean
    return gram.view(n * k, n * k), feature_mean.T.reshape(-1), count


# ---------------------------------------------------------------------------- fit / predict
def fit_group(group: PaddedGroup, *, model: str, alpha: float, mask=None, pooling: str = "voxel"):
    """Leave-one-volume-out weights ``(p, n + 1, n)`` per offset (indicator last) and bias ``(n,)``.

    ``pooling="voxel"`` regresses on every patch voxel; ``"radial"`` on the means over each
    distance from the centre (:func:`radial_pooling`), which the weights are then spread over.
    """
    n = group.channels - 1
    if pooling == "radial":
        matrix = torch.as_tensor(radial_pooling(group.radius), device=group.values.device)
        features, centre = matrix.shape[1], 0
    else:
        matrix = None
        features = len(patch_offsets(group.radius))
        centre = features // 2
    gram, mean, _ = lagged_gram(group, mask, matrix)
    weights = leave_one_out_weights(precision_matrix(gram, alpha, model), n, features, centre)
    del gram
    bias = mean[centre::features] - mean @ weights
    weights = weights.view(n, features, n)  # (input volume, feature, output volume)
    if matrix is None:
        per_offset = weights.permute(1, 0, 2)  # (offset, input volume, output volume)
    else:
        per_offset = torch.einsum("ok,vkj->ovj", matrix, weights)
    augmented = torch.empty((per_offset.shape[0], n + 1, n), dtype=torch.float64, device=weights.device)
    augmented[:, :n] = per_offset
    augmented[:, n] = torch.einsum("v,ovj->oj", group.shift, per_offset)
    return augmented, bias


def predict_blocks(group: PaddedGroup, weights: torch.Tensor, bias: torch.Tensor):
    """Yield ``(x0, x1, prediction)`` for blocks of image planes; prediction is
    ``((x1 - x0) * ny * nz, n)`` float64 in the input's units."""
    offsets = patch_offsets(group.radius)
    shifts = [group.lag_rows(o) for o in offsets]
    nx, ny, nz = group.shape
    n = weights.shape[2]
    planes = max(1, PREDICTION_BLOCK_BYTES // (group.plane_rows * group.channels * 8))
    flat = group.flat
    for x0 in range(0, nx, planes):
        x1 = min(nx, x0 + planes)
        start, stop = group.image_rows(x0, x1)
        prediction = bias.expand(stop - start, n).clone()
        for k, shift in enumerate(shifts):
            add_matmul(prediction, flat[start + shift:stop + shift], weights[k])
        padded = prediction.view(x1 - x0, *group.values.shape[1:3], n)
        yield x0, x1, padded[:, :ny, :nz].reshape(-1, n)
