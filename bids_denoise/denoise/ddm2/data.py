"""Normalisation, slice layout, input-volume choice and the per-batch transforms of DDM2 (no I/O).

Layout: the engine keeps a group as a ``(N, Z, X, Y)`` tensor of ``N`` volumes by ``Z``
slices of size ``X x Y``; every sample is one in-plane slice ``(v, z)``.

Normalisation: each volume is divided by a high percentile of its values (99.9th by default)
and mapped from ``[0, 1]`` to ``[-1, 1]``. The reference divides by the maximum; one bright voxel
(an artefact, a vessel, a spike) then shrinks the whole volume and the noise level matched to
it, whereas a percentile is set by hundreds of voxels. Nothing is masked; the background takes
part in every loss and in the noise matching. :func:`denormalise` inverts the mapping exactly
(up to float32 rounding); values above the percentile simply map above 1.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from bids_denoise.denoise.methods.ddm2 import NEIGHBOUR_ORDERS  # noqa: F401 - one source

LOGGER = logging.getLogger(__name__)
#: Default percentile of :func:`volume_scales` (100 is the reference's maximum).
SCALE_PERCENTILE = 99.9


# ----------------------------------------------------------------------------- normalisation
def volume_scales(data: np.ndarray, *, percentile: float = SCALE_PERCENTILE) -> np.ndarray:
    """Per-volume divisor of a ``(x, y, z, N)`` array (float64, ``(N,)``).

    Parameters
    ----------
    data : ndarray, shape (x, y, z, N)
    percentile : float, optional
        Percentile of each volume's values used as its scale; 100 is the maximum (the
        reference). Default 99.9.

    Notes
    -----
    A volume whose percentile is not positive (mostly zeros, or negative) falls back to its
    largest absolute value, then to 1 if it is all zeros, so the mapping is always invertible.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    flat = np.asarray(data).reshape(-1, data.shape[-1])
    if percentile >= 100:
        scales = flat.max(0).astype(np.float64)
    else:
        scales = np.percentile(flat, percentile, axis=0).astype(np.float64)
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
def neighbour_indices(n_volumes: int, n_neighbours: int, *, bvecs=None) -> np.ndarray:
    """The ``n`` input volumes of each target volume.

    Parameters
    ----------
    n_volumes, n_neighbours : int
    bvecs : array-like, shape (3, n_volumes) or (n_volumes, 3), optional
        Gradient directions of the volumes. With them, each volume gets its ``n`` nearest
        directions by ``|g . g'|`` (antipodal directions are the same measurement), nearest
        first; ties go to the volume nearer in acquisition order. Without them, the paper's
        choice: ``v - n//2, ..., v - 1, v + 1, ..., v + n - n//2`` in acquisition order
        (indices modulo ``n_volumes``), with ``n = 2`` that is ``v - 1`` and ``v + 1``.

    Returns
    -------
    ndarray of int64, shape (n_volumes, n_neighbours)

    Raises
    ------
    ValueError
        If ``n_neighbours`` is not in ``1 .. n_volumes - 1``: a volume must never be its own
        input, or the Stage-I network could copy its target (J-invariance).
    """
    if not 1 <= n_neighbours <= n_volumes - 1:
        raise ValueError(
            f"{n_neighbours} neighbour volumes need at least {n_neighbours + 1} volumes, got {n_volumes}"
        )
    if bvecs is not None:
        return direction_neighbours(bvecs, n_neighbours)
    before = n_neighbours // 2
    offsets = [o for o in range(-before, n_neighbours - before + 1) if o != 0]
    return (np.arange(n_volumes)[:, None] + np.asarray(offsets)[None, :]) % n_volumes


def unit_directions(bvecs, n_volumes: int | None = None) -> np.ndarray:
    """``bvecs`` as a ``(N, 3)`` float64 array of unit vectors (zero vectors stay zero).

    Accepts the FSL layout ``(3, N)`` or ``(N, 3)``; a 3 x 3 array is read as FSL's.
    """
    g = np.asarray(bvecs, dtype=np.float64)
    if g.ndim != 2 or 3 not in g.shape:
        raise ValueError(f"b-vectors must have shape (3, N) or (N, 3), got {g.shape}")
    if g.shape[0] == 3:
        g = g.T
    if n_volumes is not None and g.shape[0] != n_volumes:
        raise ValueError(f"{g.shape[0]} b-vectors were given for {n_volumes} volumes")
    if not np.isfinite(g).all():
        raise ValueError("b-vectors contain NaN or Inf values")
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    return np.divide(g, norms, out=np.zeros_like(g), where=norms > 1e-8)


def direction_similarity(bvecs) -> np.ndarray:
    """``|g_i . g_j|`` of every pair of unit directions, ``(N, N)`` float64."""
    g = unit_directions(bvecs)
    return np.abs(g @ g.T)


def direction_neighbours(bvecs, n_neighbours: int) -> np.ndarray:
    """Each volume's ``n`` nearest gradient directions (antipodally symmetric), nearest first.

    The volume itself is excluded even when another volume repeats its direction exactly
    (a repeat is the best input there is, and it is a different measurement).
    """
    similarity = direction_similarity(bvecs)
    n = similarity.shape[0]
    if not 1 <= n_neighbours <= n - 1:
        raise ValueError(f"{n_neighbours} neighbour volumes need at least {n_neighbours + 1} volumes, got {n}")
    index = np.arange(n)
    distance = np.abs(index[:, None] - index[None, :])
    distance = np.minimum(distance, n - distance)  # acquisition distance, wrapping
    # sort by similarity (descending), then acquisition distance; rounding keeps exact repeats tied
    keys = (distance, -np.round(similarity, 9))
    order = np.lexsort(keys, axis=1)
    order = np.array([row[row != v] for v, row in enumerate(order)])
    return order[:, :n_neighbours].astype(np.int64)


def direction_features(bvecs, table: np.ndarray) -> np.ndarray:
    """The gradient geometry of each volume and its Stage-I inputs, ``(N, 6 (n + 1))`` float32.

    For the target and then each input in ``table`` order: the 6 distinct entries of ``g g^T``
    (``xx, yy, zz, sqrt2 xy, sqrt2 xz, sqrt2 yz``), which are the same for ``g`` and ``-g``
    and whose dot product between two directions is ``(g . g')^2``.
    """
    g = unit_directions(bvecs)
    root2 = np.sqrt(2.0)
    outer = np.stack([g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2, root2 * g[:, 0] * g[:, 1],
                      root2 * g[:, 0] * g[:, 2], root2 * g[:, 1] * g[:, 2]], axis=1)
    index = np.concatenate([np.arange(g.shape[0])[:, None], np.asarray(table)], axis=1)
    return outer[index].reshape(g.shape[0], -1).astype(np.float32)


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
