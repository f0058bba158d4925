"""Normalisation, slice layout and the per-batch transforms of DDM2 (no I/O).

Layout: the engine keeps a group as a ``(N, Z, X, Y)`` tensor of ``N`` volumes by ``Z``
slices of size ``X x Y``; every sample is one in-plane slice ``(v, z)``.

Normalisation follows the reference: each volume is divided by its own 3-D maximum and mapped
from ``[0, 1]`` to ``[-1, 1]``. Nothing is masked or clipped; the background takes part in
every loss and in the noise matching. :func:`denormalise` inverts it exactly (up to float32
rounding).
"""

from __future__ import annotations

import numpy as np
import torch


# ----------------------------------------------------------------------------- normalisation
def volume_scales(data: np.ndarray) -> np.ndarray:
    """Per-volume divisor of a ``(x, y, z, N)`` array: its maximum (float64, ``(N,)``).

    A volume whose maximum is not positive (all zeros, or all negative) is scaled by its largest
    absolute value instead, or by 1 if it is all zeros, so the mapping is always invertible.
    """
    flat = np.asarray(data).reshape(-1, data.shape[-1])
    scales = flat.max(0).astype(np.float64)
    bad = ~(scales > 0)
    if bad.any():
        absolute = np.abs(flat[:, bad]).max(0).astype(np.float64)
        scales[bad] = np.where(absolute > 0, absolute, 1.0)
    return scales


def normalise(data: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``2 * data / scale - 1`` per volume, as float32 (computed in float64)."""
    return (2.0 * (np.asarray(data, dtype=np.float64) / scales) - 1.0).astype(np.float32)


def denormalise(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise`: ``(values + 1) / 2 * scale``, as float32."""
    return ((np.asarray(values, dtype=np.float64) + 1.0) * 0.5 * scales).astype(np.float32)


def to_slices(data: np.ndarray) -> np.ndarray:
    """``(x, y, z, N)`` -> contiguous ``(N, z, x, y)``."""
    return np.ascontiguousarray(np.transpose(data, (3, 2, 0, 1)))


def from_slices(slices: np.ndarray) -> np.ndarray:
    """``(N, z, x, y)`` -> contiguous ``(x, y, z, N)``."""
    return np.ascontiguousarray(np.transpose(slices, (2, 3, 1, 0)))


# -------------------------------------------------------------------------------- neighbours
def neighbour_indices(n_volumes: int, n_neighbours: int) -> np.ndarray:
    """The ``n`` input volumes of each target volume, in acquisition order, wrapping around.

    Volume ``v`` is predicted from ``v - n//2, ..., v - 1, v + 1, ..., v + n - n//2`` (indices
    modulo ``n_volumes``); with the default ``n = 2`` that is ``v - 1`` and ``v + 1``.

    Returns
    -------
    ndarray of int64, shape (n_volumes, n_neighbours)

    Raises
    ------
    ValueError
        If ``n_neighbours`` is not in ``1 .. n_volumes - 1``: a volume must never be its own
        neighbour, or the Stage-I network could copy its target (J-invariance).
    """
    if not 1 <= n_neighbours <= n_volumes - 1:
        raise ValueError(
            f"{n_neighbours} neighbour volumes need at least {n_neighbours + 1} volumes, got {n_volumes}"
        )
    before = n_neighbours // 2
    offsets = [o for o in range(-before, n_neighbours - before + 1) if o != 0]
    return (np.arange(n_volumes)[:, None] + np.asarray(offsets)[None, :]) % n_volumes


# -------------------------------------------------------------------------- batch transforms
def random_flips(tensors, flip_h: torch.Tensor, flip_w: torch.Tensor):
    """Flip every ``(B, C, H, W)`` tensor of ``tensors`` jointly: per sample, vertically where
    ``flip_h`` and horizontally where ``flip_w`` (boolean ``(B,)``)."""
    out = []
    fh = flip_h.view(-1, 1, 1, 1)
    fw = flip_w.view(-1, 1, 1, 1)
    for x in tensors:
        x = torch.where(fh, x.flip(-2), x)
        out.append(torch.where(fw, x.flip(-1), x))
    return out


def shuffle_pixels(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Permute the pixel positions of ``(B, C, H, W)`` with one permutation of ``H * W``,
    shared by the whole batch (the Stage-III noise shuffle). Each slice keeps its values."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w)[:, :, permutation].reshape(b, c, h, w)


def calibrated_noise(noisy: torch.Tensor, estimate: torch.Tensor, signal: torch.Tensor):
    """Unit-variance residual noise and the mean-calibrated clean estimate (paper eq. 4).

    With ``l1 = signal`` (``sqrt(alpha_bar[t*])`` per sample) and ``l2 = sqrt(1 - l1^2)``, the
    residual noise is ``eps = (noisy - l1 * estimate) / l2``. Its per-sample mean ``mu`` is
    removed from ``eps`` and moved into the estimate, ``estimate + mu * l2 / l1``, so that
    ``l1 * estimate' + l2 * eps' == noisy`` still holds exactly.

    Returns
    -------
    eps, estimate : torch.Tensor, shape like ``noisy``
    """
    l1 = signal.view(-1, 1, 1, 1).to(noisy.dtype)
    l2 = (1.0 - l1.square()).clamp_min(1e-12).sqrt()
    eps = (noisy - l1 * estimate) / l2
    mu = eps.mean(dim=(1, 2, 3), keepdim=True)
    return eps - mu, estimate + mu * l2 / l1


# ------------------------------------------------------------------------------------ flips
#: Flip variants averaged at inference: (flip rows, flip columns).
FLIP_VARIANTS = ((False, False), (True, False), (False, True), (True, True))


def flip_variant(x: torch.Tensor, variant) -> torch.Tensor:
    """Apply (or undo: flips are their own inverse) one of :data:`FLIP_VARIANTS`."""
    rows, cols = variant
    dims = [d for d, on in ((-2, rows), (-1, cols)) if on]
    return x.flip(dims) if dims else x
