"""How much of the signal's variation across gradient directions a denoiser keeps, measured
without ground truth.

FA, tractography and every other diffusion model read the differences between the volumes of
a shell, not their common level. A regression that predicts each volume from the others (such
as Patch2Self) can shrink those differences towards the shell's mean while still lowering the
squared error, so an error estimate alone prefers it. On a real DTI set (siemens_trio, 40
volumes of b=1000) Patch2Self at radius 1 kept about 0.66 of the directional variance and
lowered the mean FA of white matter from 0.57 to 0.50, while MP-PCA kept 0.99 and 0.55.

Within one shell, at voxel ``x``, the variance over the volumes of the noisy data is that of
the signal plus the noise variance ``sigma(x)^2``. So::

    retained = sum_x var(denoised) / sum_x (var(noisy) - sigma^2)

over the voxels of the head where the directional variance clearly exceeds the noise: their
mean of ``var(noisy) - sigma^2`` and ``var(denoised)`` is above ``noise_multiple * sigma^2``
(selecting on both, not on the noisy data alone, avoids favouring voxels whose noise happened
to be large). A faithful denoiser gives about 1 (a little more where its own error adds
variance); 0 means flat shells.

Arrays in, numbers out; no Nipype and no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE, cluster_bvalues

#: Below this fraction of the directional variance kept, ``--method auto`` passes a candidate
#: over. Between the Patch2Self settings that kept white-matter FA on the phantoms (0.91 to
#: 0.92) and those that lowered it (0.64 to 0.79 on the phantoms and on siemens_trio).
RETAINED_MINIMUM = 0.8
#: Shells with fewer volumes have too few directions for a variance.
MIN_DIRECTIONS = 6
#: Fewer selected voxels than this give no measurement.
MIN_VOXELS = 50


@dataclass(frozen=True)
class ContrastRetained:
    """The directional contrast one denoised group kept."""

    ratio: float  # variance kept / variance of the signal, pooled over shells and voxels
    n_voxels: int  # selected voxels, summed over shells
    shells: tuple[tuple[int, int, float], ...]  # (nominal b-value, voxels, ratio) per shell

    def as_dict(self) -> dict:
        return {"Retained": round(self.ratio, 4), "Voxels": int(self.n_voxels),
                "Shells": {f"b{b}": round(r, 4) for b, _, r in self.shells}}


def directional_contrast(*, noisy, denoised, bvals, sigma, region, b0_threshold: float = B0_THRESHOLD,
                         shell_tolerance: float = SHELL_TOLERANCE, noise_multiple: float = 1.0,
                         min_directions: int = MIN_DIRECTIONS) -> ContrastRetained | None:
    """The fraction of the signal's variance across directions that ``denoised`` keeps.

    Parameters
    ----------
    noisy, denoised : array_like, shape (x, y, z, N)
        One volume group before and after denoising (after any Rician correction).
    bvals : array_like, shape (N,)
        Its b-values; b0s and shells of fewer than ``min_directions`` volumes are skipped.
    sigma : array_like, shape (x, y, z)
        The noise standard deviation.
    region : array_like of bool, shape (x, y, z)
        Where to measure (the head).
    b0_threshold, shell_tolerance : float, optional
        How volumes are told apart as b0s and shells (:mod:`bids_denoise.denoise.shells`).
    noise_multiple : float, optional
        Voxels count when their directional variance is above this many noise variances.
        Default 1.
    min_directions : int, optional
        Default :data:`MIN_DIRECTIONS`.

    Returns
    -------
    ContrastRetained or None
        None when no shell has enough directions or fewer than :data:`MIN_VOXELS` voxels
        qualify.
    """
    noisy, denoised = np.asarray(noisy), np.asarray(denoised)
    if noisy.shape != denoised.shape or noisy.ndim != 4:
        raise ValueError(f"noisy {noisy.shape} and denoised {denoised.shape} must be one 4D shape")
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    if bvals.size != noisy.shape[3]:
        raise ValueError(f"{bvals.size} b-values for {noisy.shape[3]} volumes")
    region = np.asarray(region, dtype=bool)
    noise_var = np.asarray(sigma, dtype=np.float64)[region] ** 2
    dwi = np.flatnonzero(bvals > b0_threshold)
    kept_sum = signal_sum = 0.0
    voxels, shells = 0, []
    if dwi.size == 0:
        return None
    noisy_inside, denoised_inside = noisy[region], denoised[region]
    for members in cluster_bvalues(bvals[dwi], tolerance=shell_tolerance):
        index = dwi[members]
        if index.size < min_directions:
            continue
        signal_var = noisy_inside[:, index].astype(np.float64).var(axis=1, ddof=1) - noise_var
        kept_var = denoised_inside[:, index].astype(np.float64).var(axis=1, ddof=1)
        selected = 0.5 * (signal_var + kept_var) > noise_multiple * noise_var
        count = int(selected.sum())
        if count < MIN_VOXELS:
            continue
        kept, signal = float(kept_var[selected].sum()), float(signal_var[selected].sum())
        shells.append((int(round(float(np.median(bvals[index])))), count, kept / signal))
        kept_sum, signal_sum, voxels = kept_sum + kept, signal_sum + signal, voxels + count
    if not shells or signal_sum <= 0:
        return None
    return ContrastRetained(kept_sum / signal_sum, voxels, tuple(shells))


__all__ = ["ContrastRetained", "MIN_DIRECTIONS", "RETAINED_MINIMUM", "directional_contrast"]
