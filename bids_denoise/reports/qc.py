"""Quality-control numbers of a denoising, and the flags they raise.

Three checks, each with a documented threshold (see ``THRESHOLDS``):

* **Residual level** (per volume group): the RMS of ``raw - denoised`` in the head, over the RMS
  the noise alone would leave, from the run's noise map and the Rician variance at the denoised
  signal (plus the Rician bias when the output is Rician-corrected). A denoiser that removes
  only noise leaves about 1 (J-invariant methods slightly more, MP-PCA slightly less); a
  residual well above the noise holds signal.
* **Residual-signal correlation** (per group): the median over the group's volumes of
  ``|corr(residual, denoised)|`` in the head, the residual taken from the Rician mean of a
  Rician-corrected output (the removed noise floor is not anatomy). White noise stays within
  ``2 / sqrt(voxels)``; the flag needs both that band and a floor to be exceeded.
* **FA in high-FA voxels** (per run): a log-linear DTI fit on ``b <= 1500`` of the raw series
  and of the denoised one with fresh Rician noise of the measured level added back, and their
  mean FA over the head voxels of high FA. Both are noisy copies of the same signal when only
  noise was removed; a re-noised FA that falls short means that diffusion contrast was removed.

Arrays in, numbers out; no Nipype and no file I/O.
"""

from __future__ import annotations

import math

import numpy as np

from bids_denoise.denoise.rician import correct_rician_bias, rician_mean, rician_variance
from bids_denoise.reports.stats import pearson

#: Flag thresholds, by check (see the module documentation and the README's QC section).
THRESHOLDS = {
    "ResidualRatio": 1.2,  # residual RMS over the noise RMS, per group
    "ResidualCorrelation": 0.15,  # median |corr(residual, denoised)|, per group (and above 2/sqrt(n))
    "FADrop": 0.10,  # relative fall of the mean FA of voxels with raw FA > 0.4, per run
}
HIGH_FA = 0.4
DTI_MAX_B = 1500.0
MIN_DTI_DIRECTIONS = 6


def residual_ratio(raw, denoised, sigma, region, *, rician_corrected: bool) -> float:
    """RMS of ``raw - denoised`` over the RMS noise would leave alone (both in ``region``).

    Parameters
    ----------
    raw, denoised : array_like, shape (x, y, z, N)
        One volume group before and after.
    sigma : array_like, shape (x, y, z)
        The Gaussian noise standard deviation.
    region : array_like of bool, shape (x, y, z)
        The head.
    rician_corrected : bool
        Whether ``denoised`` estimates the true signal (then the Rician bias is part of the
        expected residual) or the mean magnitude.
    """
    region = _region(region)
    sd = np.asarray(sigma, dtype=np.float64)[region]
    scale = np.where(sd > 0, sd, 1.0)
    residual = expected = 0.0
    for v in range(np.shape(raw)[3]):
        y = np.asarray(raw[..., v], dtype=np.float64)[region]
        f = np.asarray(denoised[..., v], dtype=np.float64)[region]
        signal = np.maximum(f, 0.0) if rician_corrected else correct_rician_bias(f, sd).astype(np.float64)
        power = sd**2 * rician_variance(signal / scale)
        if rician_corrected:
            power = power + (sd * rician_mean(signal / scale) - signal) ** 2 * (sd > 0)
        residual += float(np.sum((y - f) ** 2))
        expected += float(np.sum(power))
    return math.sqrt(residual / expected) if expected > 0 else float("nan")


def residual_correlation(raw, denoised, region, *, sigma=None, rician_corrected: bool = False) -> float:
    """Median over volumes of ``|corr(raw - m, denoised)|`` in ``region`` (nan when nothing changed).

    ``m`` is the denoised signal, or, for a Rician-corrected output (which estimates the true
    signal, below the mean magnitude), its Rician mean at ``sigma``: the noise floor that the
    correction removed is expected in the residual and correlates with the signal by itself.
    """
    region = _region(region)
    sd = None if sigma is None else np.asarray(sigma, dtype=np.float64)[region]
    values = []
    for v in range(np.shape(raw)[3]):
        f = np.asarray(denoised[..., v], dtype=np.float64)[region]
        expected = f
        if rician_corrected and sd is not None:
            scale = np.where(sd > 0, sd, 1.0)
            expected = np.where(sd > 0, sd * rician_mean(np.maximum(f, 0.0) / scale), f)
        residual = np.asarray(raw[..., v], dtype=np.float64)[region] - expected
        if np.any(residual != 0):
            values.append(abs(pearson(residual, f)))
    values = [c for c in values if math.isfinite(c)]
    return float(np.median(values)) if values else float("nan")


def dti_fa(data, bvals, bvecs, region, *, b_max: float = DTI_MAX_B, b0_threshold: float = 50.0):
    """FA of a log-linear least-squares tensor fit on ``b <= b_max``, in ``region`` (1D), or
    ``None`` when fewer than 6 directions (or no b0) are available."""
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    bvecs = np.asarray(bvecs, dtype=np.float64)
    if bvecs.shape[0] != 3 and bvecs.shape[-1] == 3:
        bvecs = bvecs.T
    use = bvals <= b_max
    weighted = use & (bvals > b0_threshold)
    if not np.any(bvals[use] <= b0_threshold) or _directions(bvecs[:, weighted]) < MIN_DTI_DIRECTIONS:
        return None
    g = bvecs[:, use] / np.maximum(np.linalg.norm(bvecs[:, use], axis=0), 1e-12)
    b = np.where(bvals[use] <= b0_threshold, 0.0, bvals[use])
    design = np.column_stack([np.ones_like(b), *(-b * g[i] * g[j] * (1 if i == j else 2)
                                                 for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)))])
    signal = np.asarray(data, dtype=np.float64)[_region(region)][:, use]
    floor = max(1e-3 * float(np.percentile(signal, 99)), 1e-6)
    coefficients = np.linalg.lstsq(design, np.log(np.maximum(signal, floor)).T, rcond=None)[0]
    dxx, dyy, dzz, dxy, dxz, dyz = coefficients[1:]
    tensor = np.stack([np.stack([dxx, dxy, dxz], -1), np.stack([dxy, dyy, dyz], -1), np.stack([dxz, dyz, dzz], -1)], -2)
    eig = np.clip(np.linalg.eigvalsh(tensor), 0, None)
    mean = eig.mean(-1, keepdims=True)
    norm = np.sqrt((eig**2).sum(-1))
    return np.where(norm > 0, np.sqrt(1.5 * ((eig - mean) ** 2).sum(-1)) / np.where(norm > 0, norm, 1), 0.0)


def fa_change(raw, denoised, bvals, bvecs, region, *, sigma=None, rician_corrected: bool = False,
              high: float = HIGH_FA, seed: int = 0) -> dict | None:
    """Mean FA of high-FA voxels: raw, denoised, and denoised with fresh Rician noise added.

    Noise inflates FA, so the denoised FA is lower than the raw FA even for a perfect denoiser
    (7-13 % on the phantoms at SNR 10). With ``sigma``, Rician noise of that level is added back
    to the output: the re-noised series and the raw one are then two noisy copies of the same
    signal when only noise was removed, and their FA agree; where diffusion contrast was
    removed, the re-noised FA falls short. The voxels are those whose mean of the two FA is
    above ``high`` (selecting on the raw FA alone would favour it: regression to the mean).
    ``Change`` compares the two (without ``sigma``: the denoised FA, voxels by raw FA).
    ``None`` without a DTI-capable shell or high-FA voxels.
    """
    before = dti_fa(raw, bvals, bvecs, region)
    if before is None:
        return None
    after = dti_fa(denoised, bvals, bvecs, region)
    reference = after
    if sigma is not None:
        renoised = _renoise(denoised, sigma, rician_corrected=rician_corrected, seed=seed)
        reference = dti_fa(renoised, bvals, bvecs, region)
    voxels = (before + reference) / 2 > high if sigma is not None else before > high
    if not voxels.any():
        return None
    result = {"Voxels": int(voxels.sum()), "Before": float(before[voxels].mean()),
              "After": float(after[voxels].mean())}
    if sigma is not None:
        result["AfterRenoised"] = float(reference[voxels].mean())
    result["Change"] = float(reference[voxels].mean()) / result["Before"] - 1
    return result


def _renoise(denoised, sigma, *, rician_corrected: bool, seed: int) -> np.ndarray:
    """The denoised series with Rician noise of ``sigma`` added (a mean-magnitude output is first
    taken back to the signal under it)."""
    rng = np.random.default_rng(seed)
    signal = np.maximum(np.asarray(denoised, dtype=np.float64), 0.0)
    sd = np.asarray(sigma, dtype=np.float64)
    if sd.ndim == 3:
        sd = sd[..., None]
    if not rician_corrected:
        signal = correct_rician_bias(signal, np.broadcast_to(sd, signal.shape)).astype(np.float64)
    return np.hypot(signal + rng.normal(size=signal.shape) * sd, rng.normal(size=signal.shape) * sd)


def group_flags(label: str, ratio: float, correlation: float, n_voxels: int) -> list[dict]:
    """The flags of one volume group's numbers (empty when it looks like noise was removed)."""
    flags = []
    limit = THRESHOLDS["ResidualRatio"]
    if math.isfinite(ratio) and ratio > limit:
        flags.append({"Check": "ResidualRatio", "Group": label, "Value": round(ratio, 3), "Threshold": limit,
                      "Message": f"group {label}: the residual is {ratio:.2f} times the noise level (> {limit:g}): "
                                 "signal was removed"})
    band = 2 / math.sqrt(max(n_voxels, 1))
    limit = max(THRESHOLDS["ResidualCorrelation"], band)
    if math.isfinite(correlation) and correlation > limit:
        flags.append({"Check": "ResidualCorrelation", "Group": label, "Value": round(correlation, 3),
                      "Threshold": round(limit, 3),
                      "Message": f"group {label}: the residual correlates with the signal (|r| = {correlation:.2f} "
                                 f"> {limit:.2f}): anatomy is in the residual"})
    return flags


def run_flags(fa: dict | None) -> list[dict]:
    """The flags of the run's FA change."""
    limit = THRESHOLDS["FADrop"]
    if fa is None or -fa["Change"] <= limit:
        return []
    return [{"Check": "FADrop", "Group": None, "Value": round(-fa["Change"], 3), "Threshold": limit,
             "Message": f"FA of the high-FA voxels fell by {-100 * fa['Change']:.0f} % "
                        f"({fa['Before']:.3f} -> {fa['After']:.3f}; > {100 * limit:.0f} %): diffusion contrast "
                        "was removed"}]


def assess(raw, denoised, bvals, bvecs, sigma, region, groups, *, rician_corrected: bool) -> dict:
    """Every QC number and flag of one run: the sidecar's ``QualityControl``.

    Parameters
    ----------
    raw, denoised : array_like, shape (x, y, z, N)
        The series before and after (``denoised`` as written, after any Rician correction).
    bvals : array_like, shape (N,)
    bvecs : array_like, shape (3, N)
    sigma : array_like, shape (x, y, z)
        The run's noise map.
    region : array_like of bool, shape (x, y, z)
        The head mask the noise map was measured in.
    groups : sequence of (label, volume indices)
        The denoised volume groups (copied-through groups left out).
    rician_corrected : bool
        Whether ``denoised`` was Rician-corrected.
    """
    region = _region(region)
    rows, flags = [], []
    for label, index in groups:
        index = list(index)
        ratio = residual_ratio(raw[..., index], denoised[..., index], sigma, region,
                               rician_corrected=rician_corrected)
        correlation = residual_correlation(raw[..., index], denoised[..., index], region, sigma=sigma,
                                           rician_corrected=rician_corrected)
        rows.append({"Group": label, "ResidualRatio": _rounded(ratio), "ResidualCorrelation": _rounded(correlation)})
        flags += group_flags(label, ratio, correlation, int(region.sum()))
    fa = fa_change(raw, denoised, bvals, bvecs, region, sigma=sigma, rician_corrected=rician_corrected)
    flags += run_flags(fa)
    return {
        "Groups": rows,
        "FA": {k: _rounded(v) if isinstance(v, float) else v for k, v in fa.items()} if fa else None,
        "Flags": flags,
        "Thresholds": dict(THRESHOLDS),
        "Region": "head mask of the noise map (desc-sigma)",
    }


def _rounded(value: float):
    return None if not math.isfinite(value) else round(float(value), 4)


def _directions(bvecs) -> int:
    """Number of distinct gradient directions (up to sign)."""
    if bvecs.size == 0:
        return 0
    unit = bvecs / np.maximum(np.linalg.norm(bvecs, axis=0), 1e-12)
    distinct = []
    for g in unit.T:
        if not any(abs(float(g @ d)) > 0.999 for d in distinct):
            distinct.append(g)
    return len(distinct)


def _region(region) -> np.ndarray:
    region = np.asarray(region, dtype=bool)
    return region if region.any() else np.ones(region.shape, dtype=bool)


__all__ = ["HIGH_FA", "THRESHOLDS", "assess", "dti_fa", "fa_change", "group_flags", "residual_correlation",
           "residual_ratio", "run_flags"]
