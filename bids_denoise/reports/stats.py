"""Statistics of a denoising: brain mask, noise level before/after, SNR and residual checks.

Arrays in, numbers out: no file I/O and no Nipype. Every function takes the 4D series in the
same voxel order (use :func:`nibabel.as_closest_canonical` before, so that the first two axes
are the axial plane).

What is measured, per volume ``v`` (all inside the brain mask):

* the **residual** ``raw[..., v] - denoised[..., v]``: its standard deviation, and its Pearson
  correlation with the denoised signal of the same volume and with an anatomical reference (the
  mean denoised b0). A denoiser that removes only noise leaves residuals uncorrelated with
  anatomy, so both correlations stay near 0 (within about ``±2/sqrt(n_voxels)`` for white
  noise); structure in the residual shows up as clearly non-zero values;
* the **noise level** ``sigma`` of the raw and of the denoised volume, by a robust in-plane
  wavelet estimate (:func:`estimate_sigma`), and the **SNR** ``mean signal / sigma``.

Groups (b0 group and shells) summarise their volumes with medians.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bids_denoise.denoise.masks import (  # noqa: F401  (re-exported: the reports use them)
    BACKGROUND_RATIO,
    brain_mask,
    largest_component,
    mean_b0,
    otsu_threshold,
)

#: Residual histograms span ``±HIST_HALF_WIDTH`` residual standard deviations of the group.
HIST_HALF_WIDTH = 5.0
HIST_BINS = 101
#: Fewer usable voxels than this and a noise estimate is not attempted (``nan``).
MIN_SIGMA_VOXELS = 20
#: Fraction of 2x2 blocks (weakest edges first) behind a noise estimate (see estimate_sigma).
EDGE_KEEP = 0.6
#: 1.4826 * MAD estimates the standard deviation of a normal distribution.
_MAD_TO_SD = 1.482602218505602


# ------------------------------------------------------------------------------------ noise
def estimate_sigma(volume, mask=None, min_voxels: int = MIN_SIGMA_VOXELS, keep: float = EDGE_KEEP) -> float:
    """Robust noise standard deviation of one 3D volume from its finest diagonal detail.

    The in-plane Haar diagonal detail ``(a - b - c + d) / 2`` of every 2x2 block of
    neighbouring voxels has, for white noise of standard deviation sigma, exactly that standard
    deviation, while smooth anatomy and straight horizontal or vertical edges cancel out. Its
    median absolute deviation times 1.4826, over blocks that lie inside ``mask``, is the
    estimate (Donoho and Johnstone's wavelet noise estimator, on overlapping blocks). Curved
    edges still leak into the diagonal detail, so blocks whose horizontal and vertical details
    (which, for white noise, are independent of the diagonal one) are among the strongest
    ``1 - keep`` are left out first. Fine texture still adds a little: on coarse data the value
    is an upper bound.

    Parameters
    ----------
    volume : ndarray, 3D
    mask : ndarray of bool, optional
        Voxels to use (default: all).
    min_voxels : int, optional
        Below this many usable blocks, return ``nan``.
    keep : float, optional
        Fraction of the blocks (those with the weakest edges) used. Default 0.6.

    Returns
    -------
    float
        The estimate, or ``nan`` (image smaller than 2x2 in-plane, too few blocks).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.shape[0] < 2 or volume.shape[1] < 2:
        return float("nan")
    mask = np.ones(volume.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(volume.shape)
    corners = ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(None, -1)),
               (slice(None, -1), slice(1, None)), (slice(1, None), slice(1, None)))
    usable = mask[corners[0]] & mask[corners[1]] & mask[corners[2]] & mask[corners[3]]
    a, b, c, d = (volume[corner][usable] for corner in corners)
    if a.size < min_voxels:
        return float("nan")
    diagonal = 0.5 * (a - b - c + d)
    if 0 < keep < 1:
        edges = np.hypot(0.5 * (a + b - c - d), 0.5 * (a - b + c - d))
        selected = edges <= np.quantile(edges, keep)
        if selected.sum() >= min_voxels:
            diagonal = diagonal[selected]
    return float(_MAD_TO_SD * np.median(np.abs(diagonal - np.median(diagonal))))


def pearson(a, b) -> float:
    """Pearson correlation of two 1D arrays; ``nan`` when either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0 or not math.isfinite(denom):
        return float("nan")
    return float(a @ b) / denom


def _median(values) -> float:
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(np.median(values)) if values.size else float("nan")


def _ratio(numerator: float, denominator: float) -> float:
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return float("nan")
    return numerator / denominator


def finite_or_none(value):
    """``value`` as a float, or ``None`` when it is not finite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------- residuals
def residual_statistics(
    raw,
    denoised,
    groups: Sequence[Mapping],
    mask,
    *,
    anatomy=None,
    bvals=None,
) -> dict:
    """Per-volume and per-group statistics of ``raw - denoised`` inside ``mask``.

    Parameters
    ----------
    raw, denoised : ndarray, 4D
        The input series and its denoised version (same shape).
    groups : sequence of mapping
        Volume groups as written by ``SplitShells`` (``Label``, ``BValue``, ``Count``,
        ``Volumes``); together they should cover every volume.
    mask : ndarray of bool, 3D
        Brain mask (:func:`brain_mask`).
    anatomy : ndarray, 3D, optional
        Anatomical reference the residuals are also correlated with (e.g. the mean denoised
        b0). Default: the mean of the denoised series.
    bvals : array-like, optional
        b-value of each volume, recorded per volume.

    Returns
    -------
    dict
        ``MaskVoxels``; ``Volumes``: lists indexed by volume (``Index``, ``Group``, ``BValue``,
        ``ResidualMean``, ``ResidualStd``, ``ResidualSignalCorrelation``,
        ``ResidualAnatomyCorrelation``, ``SigmaBefore``, ``SigmaAfter``, ``SignalBefore``,
        ``SignalAfter``); ``Groups``: one dict per group with the group's keys plus
        ``Denoised``, ``SigmaBefore``, ``SigmaAfter``, ``ResidualStd``, ``SNRBefore``,
        ``SNRAfter``, ``SNRGain``, ``MedianAbsCorrelation``, ``MaxAbsCorrelation`` (residual
        versus signal), ``MedianAbsAnatomyCorrelation``, ``MaxAbsAnatomyCorrelation`` (residual
        versus ``anatomy``) and a
        ``Histogram`` (``Edges``, ``Counts``) of the residuals; ``CorrelationChanceLevel``:
        ``2/sqrt(MaskVoxels)``. Non-finite numbers are ``None``.
    """
    raw = np.asarray(raw)
    denoised = np.asarray(denoised)
    if raw.shape != denoised.shape or raw.ndim != 4:
        raise ValueError(f"raw {raw.shape} and denoised {denoised.shape} must be 4D of one shape")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != raw.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not fit the series {raw.shape}")
    if not mask.any():
        mask = np.ones(mask.shape, dtype=bool)
    n_volumes = raw.shape[3]
    if anatomy is None:
        anatomy = np.mean(denoised, axis=3, dtype=np.float64)
    anatomy_in_mask = np.asarray(anatomy, dtype=np.float64)[mask]
    bvals = None if bvals is None else np.asarray(bvals, dtype=float).ravel()

    group_of = ["" for _ in range(n_volumes)]
    for group in groups:
        for v in group["Volumes"]:
            if 0 <= int(v) < n_volumes:
                group_of[int(v)] = str(group["Label"])

    keys = ("ResidualMean", "ResidualStd", "ResidualSignalCorrelation", "ResidualAnatomyCorrelation",
            "SigmaBefore", "SigmaAfter", "SignalBefore", "SignalAfter")
    per_volume = {key: [float("nan")] * n_volumes for key in keys}
    changed = [False] * n_volumes
    for v in range(n_volumes):
        before = np.asarray(raw[..., v], dtype=np.float64)
        after = np.asarray(denoised[..., v], dtype=np.float64)
        before_in, after_in = before[mask], after[mask]
        residual = before_in - after_in
        changed[v] = bool(np.any(residual != 0))
        per_volume["ResidualMean"][v] = float(residual.mean())
        per_volume["ResidualStd"][v] = float(residual.std())
        if changed[v]:
            per_volume["ResidualSignalCorrelation"][v] = pearson(residual, after_in)
            per_volume["ResidualAnatomyCorrelation"][v] = pearson(residual, anatomy_in_mask)
        per_volume["SigmaBefore"][v] = estimate_sigma(before, mask)
        per_volume["SigmaAfter"][v] = estimate_sigma(after, mask) if changed[v] else per_volume["SigmaBefore"][v]
        per_volume["SignalBefore"][v] = float(before_in.mean())
        per_volume["SignalAfter"][v] = float(after_in.mean())

    group_stats = []
    for group in groups:
        index = [int(v) for v in group["Volumes"] if 0 <= int(v) < n_volumes]
        entry = {k: group[k] for k in ("Label", "BValue", "Count", "Volumes") if k in group}
        entry["Denoised"] = any(changed[v] for v in index)
        sigma_before = _median(per_volume["SigmaBefore"][v] for v in index)
        sigma_after = _median(per_volume["SigmaAfter"][v] for v in index)
        residual_std = math.sqrt(np.mean([per_volume["ResidualStd"][v] ** 2 for v in index])) if index else float("nan")
        snr_before = _median(_ratio(per_volume["SignalBefore"][v], per_volume["SigmaBefore"][v]) for v in index)
        snr_after = _median(_ratio(per_volume["SignalAfter"][v], per_volume["SigmaAfter"][v]) for v in index)
        correlations = [abs(per_volume["ResidualSignalCorrelation"][v]) for v in index
                        if math.isfinite(per_volume["ResidualSignalCorrelation"][v])]
        anatomy_correlations = [abs(per_volume["ResidualAnatomyCorrelation"][v]) for v in index
                                if math.isfinite(per_volume["ResidualAnatomyCorrelation"][v])]
        entry.update(
            SigmaBefore=sigma_before,
            SigmaAfter=sigma_after,
            ResidualStd=residual_std,
            SNRBefore=snr_before,
            SNRAfter=snr_after,
            SNRGain=_ratio(snr_after, snr_before),
            MedianAbsCorrelation=float(np.median(correlations)) if correlations else float("nan"),
            MaxAbsCorrelation=float(np.max(correlations)) if correlations else float("nan"),
            MedianAbsAnatomyCorrelation=_median(anatomy_correlations),
            MaxAbsAnatomyCorrelation=float(np.max(anatomy_correlations)) if anatomy_correlations else float("nan"),
            Histogram=_residual_histogram(raw, denoised, mask, index, residual_std) if entry["Denoised"] else None,
        )
        group_stats.append(entry)

    volumes = {
        "Index": list(range(n_volumes)),
        "Group": group_of,
        "BValue": [float(b) for b in bvals] if bvals is not None and bvals.size == n_volumes else None,
        "Denoised": changed,
        **per_volume,
    }
    return _finite({
        "MaskVoxels": int(mask.sum()),
        "CorrelationChanceLevel": 2.0 / math.sqrt(max(int(mask.sum()), 1)),
        "Volumes": volumes,
        "Groups": group_stats,
    })


def _residual_histogram(raw, denoised, mask, index, residual_std) -> dict | None:
    if not index or not math.isfinite(residual_std) or residual_std <= 0:
        return None
    half = HIST_HALF_WIDTH * residual_std
    edges = np.linspace(-half, half, HIST_BINS + 1)
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    outside = 0
    for v in index:
        before = np.asarray(raw[..., v], dtype=np.float64)[mask]
        residual = before - np.asarray(denoised[..., v], dtype=np.float64)[mask]
        counts += np.histogram(residual, bins=edges)[0]
        outside += int(np.count_nonzero(np.abs(residual) > half))
    return {"Edges": edges.tolist(), "Counts": counts.tolist(), "Outside": outside}


def _finite(value):
    """Replace non-finite floats by ``None``, recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


__all__ = [
    "brain_mask",
    "estimate_sigma",
    "finite_or_none",
    "largest_component",
    "mean_b0",
    "otsu_threshold",
    "pearson",
    "residual_statistics",
]
