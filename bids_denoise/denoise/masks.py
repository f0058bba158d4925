"""Masks for statistics: the head of a DWI series from its mean b0.

Arrays in, arrays out; no Nipype and no file I/O.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: The darker Otsu class counts as background only when its mean is below this fraction of
#: the brighter class's mean (see :func:`brain_mask`).
BACKGROUND_RATIO = 0.2


def otsu_threshold(values, nbins: int = 256) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu, 1979).

    Parameters
    ----------
    values : array-like
        Intensities (any shape); non-finite values are ignored.
    nbins : int, optional
        Histogram bins. Default 256.

    Returns
    -------
    float
        A value between the smallest and the largest finite value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values to threshold")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=nbins, range=(low, high))
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = np.divide(sum_low, weight_low, out=np.zeros_like(sum_low), where=weight_low > 0)
    mean_high = np.divide(sum_low[-1] - sum_low, weight_high, out=np.zeros_like(sum_low), where=weight_high > 0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def largest_component(mask) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def brain_mask(reference, *, background_ratio: float = BACKGROUND_RATIO) -> np.ndarray:
    """A rough brain mask from a mean b0 image: Otsu threshold, largest component, holes filled.

    The threshold is Otsu's on the logarithm of the positive intensities, where the background
    (noise, tens of times darker than tissue) separates from tissue far better than bright CSF
    does. Field-of-view crops often have no background at all; Otsu would then cut tissue from
    CSF. So when the darker class is not really dark (its mean is above ``background_ratio``
    times that of the brighter class) every positive voxel is kept instead. An in-plane binary
    opening (two iterations) then detaches scalp and noise from the brain before the largest
    component is kept. The result is a rough head/brain mask, good enough for statistics.

    Parameters
    ----------
    reference : ndarray, 3D
        Usually the mean of the b0 volumes (:func:`mean_b0`).
    background_ratio : float, optional
        See above. Default 0.2.

    Returns
    -------
    ndarray of bool
        The largest connected component of the voxels above the threshold, holes filled. When
        that leaves fewer than 10 voxels, every positive voxel (or every voxel).
    """
    reference = np.nan_to_num(np.asarray(reference, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    positive = reference[reference > 0]
    if positive.size == 0:
        return np.ones(reference.shape, dtype=bool)
    threshold = float(np.exp(otsu_threshold(np.log(positive))))
    dark, bright = positive[positive <= threshold], positive[positive > threshold]
    if dark.size == 0 or bright.size == 0 or dark.mean() > background_ratio * bright.mean():
        threshold = 0.0  # no background in the field of view
    mask = reference > threshold
    if threshold > 0 and reference.ndim == 3:
        # An in-plane opening cuts the thin bridges (scalp, ghosts, noise) to the brain.
        cross = np.zeros((3, 3, 3), dtype=bool)
        cross[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        opened = ndimage.binary_opening(mask, cross, iterations=2)
        if opened.sum() >= 0.5 * mask.sum():
            mask = opened
    mask = largest_component(mask)
    mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < 10:
        mask = reference > 0
        if mask.sum() < 10:
            mask = np.ones(reference.shape, dtype=bool)
    return mask


def mean_b0(data, bvals, b0_threshold: float = 50.0) -> np.ndarray:
    """Mean of the volumes with ``b <= b0_threshold`` (of all volumes when there is none)."""
    bvals = np.asarray(bvals, dtype=float).ravel()
    index = np.flatnonzero(bvals <= b0_threshold)
    if index.size == 0:
        index = np.arange(data.shape[3])
    total = np.zeros(data.shape[:3], dtype=np.float64)
    for i in index:
        total += data[..., i]
    return total / index.size


__all__ = ["BACKGROUND_RATIO", "brain_mask", "largest_component", "mean_b0", "otsu_threshold"]
