"""The noise level of a magnitude diffusion series: the sigma behind the Rician correction, the
error estimate and the QC flags.

``sigma`` is the standard deviation of the Gaussian noise in each channel of the complex data,
before the magnitude was taken. Two estimates are combined:

* **MP-PCA** gives a map, but it measures the variance of the *magnitude*, which is lower than
  ``sigma^2`` where the signal is low (``(2 - pi/2) sigma^2`` in pure noise). Its noise bulk is
  found with the Cordero-Grande 2019 estimator (MRtrix ``-estimator Exp2``), not Veraart 2016
  (DIPY, ``Exp1``): when the window holds not many more voxels than there are volumes and the
  series spans many b-values (a 5x5x5 window on 102 volumes), Veraart's bulk collapses onto its
  few smallest eigenvalues. Measured (RMS in the head, Rician-corrected): DSI ROI
  ``dipy_small101D`` 1.37 with Veraart, 4.76 with Cordero-Grande, MRtrix's noise map 4.75;
  ``mrtrix_roi_multishell`` 2.16 / 13.91 / 14.13; the phantoms, where both are right, 25.69-26.05
  / 25.86-26.16 against a true 26.76 (``benchmarks/results/quality.md``). The map is
  corrected for that with the Rician variance of the denoised signal (a fixed point, a few
  iterations). On the phantoms the corrected map is still 1-4 % low (high-b shells) or up to
  6 % high (7 volumes), because the Marchenko-Pastur fit mixes signal and noise.
* **Repeated b0 volumes** measure the noise directly: the voxelwise variance across three or
  more b0s, pooled over the region and corrected for the Rician variance at the b0 signal,
  is within 0.3 % of the truth on the phantoms. It is used for the *level* of the map (the
  MP-PCA map keeps its shape) unless it disagrees with MP-PCA by more than a factor of
  ``B0_AGREEMENT`` (motion or drift between the b0s inflate it), in which case MP-PCA is kept.

An error estimate subtracts ``sigma^2`` from the residual power, so a 2 % error in ``sigma``
moves the estimated RMSE of a good denoiser by 20 % or more: that is why the b0 level matters.

Arrays in, arrays out; no Nipype and no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_denoise.denoise.rician import correct_rician_bias, rician_variance

#: At least this many b0 volumes give a noise level from their repeats.
MIN_B0_REPEATS = 3
#: The b0 level is used when it lies within this factor of the MP-PCA level (either way).
B0_AGREEMENT = 1.25
_ITERATIONS = 5


@dataclass(frozen=True)
class NoiseLevel:
    """A noise map and where its level came from."""

    sigma: np.ndarray  # 3D float32, input units
    source: str  # "b0 repeats" or "MP-PCA"
    mppca_level: float  # RMS of the Rician-corrected MP-PCA map in the region
    b0_level: float | None  # the b0-repeat estimate, when there are enough b0s
    note: str  # one sentence for logs and sidecars


def correct_mppca_sigma(sigma, denoised, *, window=(5, 5, 5), iterations: int = _ITERATIONS) -> np.ndarray:
    """MP-PCA's magnitude noise map turned into the Gaussian ``sigma`` (float32, 3D).

    Parameters
    ----------
    sigma : array_like, shape (x, y, z)
        MP-PCA's noise standard deviation (of the magnitude values).
    denoised : array_like, shape (x, y, z, N)
        MP-PCA's denoised series, an estimate of the mean magnitude.
    window : tuple of 3 ints, optional
        The MP-PCA window: the variance deficit is averaged over it, as MP-PCA averages the
        noise it measures. Default ``(5, 5, 5)``.
    iterations : int, optional
        Fixed-point iterations (the deficit depends on ``sigma``). Default 5.
    """
    measured = np.asarray(sigma, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    window = tuple(int(min(w, n)) for w, n in zip(window, measured.shape))
    current = measured.copy()
    for _ in range(iterations):
        scale = np.where(current > 0, current, 1.0)
        signal = correct_rician_bias(denoised, current, method="mean") / scale[..., None]
        deficit = ndimage.uniform_filter(rician_variance(signal).mean(axis=-1), size=window, mode="nearest")
        current = measured / np.sqrt(deficit)
    return current.astype(np.float32)


def b0_repeat_sigma(b0s, region, *, iterations: int = _ITERATIONS) -> float | None:
    """``sigma`` from the spread of repeated b0 volumes inside ``region`` (None below 3 b0s).

    Parameters
    ----------
    b0s : array_like, shape (x, y, z, K)
        The b0 volumes.
    region : array_like of bool, shape (x, y, z)
        Where to pool (the head): there the b0 signal is well above the noise.
    """
    b0s = np.asarray(b0s, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if b0s.ndim != 4 or b0s.shape[-1] < MIN_B0_REPEATS or not region.any():
        return None
    inside = b0s[region]
    variance = inside.var(axis=-1, ddof=1).mean()
    mean = inside.mean(axis=-1)
    sigma2 = variance
    for _ in range(iterations):
        sigma = np.sqrt(sigma2)
        if sigma == 0:
            return 0.0
        signal = correct_rician_bias(mean, sigma, method="mean") / sigma
        sigma2 = variance / rician_variance(signal).mean()
    return float(np.sqrt(sigma2))


def estimate_noise_level(
    *, mppca_sigma, mppca_denoised, b0s, region, window=(5, 5, 5), agreement: float = B0_AGREEMENT
) -> NoiseLevel:
    """Combine the two estimates (see the module documentation).

    Parameters
    ----------
    mppca_sigma, mppca_denoised : array_like
        MP-PCA's noise map (3D) and denoised series (4D) over all volumes.
    b0s : array_like, shape (x, y, z, K)
        The b0 volumes (``K`` may be 0).
    region : array_like of bool, shape (x, y, z)
        The head: where the levels are compared and pooled.
    window : tuple of 3 ints, optional
        MP-PCA's window.
    agreement : float, optional
        Largest ratio between the two levels for the b0 one to be used. Default 1.25.
    """
    region = np.asarray(region, dtype=bool)
    corrected = correct_mppca_sigma(mppca_sigma, mppca_denoised, window=window)
    inside = corrected[region] if region.any() else corrected.ravel()
    mppca_level = float(np.sqrt(np.mean(inside.astype(np.float64) ** 2)))
    b0_level = b0_repeat_sigma(b0s, region)
    if b0_level is None:
        note = (f"sigma {mppca_level:.4g} from MP-PCA over all volumes, corrected for the Rician variance "
                f"(fewer than {MIN_B0_REPEATS} b0 volumes to measure it from)")
        return NoiseLevel(corrected, "MP-PCA", mppca_level, None, note)
    if mppca_level > 0 and 1 / agreement <= b0_level / mppca_level <= agreement:
        scaled = (corrected * np.float32(b0_level / mppca_level)).astype(np.float32)
        note = (f"sigma {b0_level:.4g} from the spread of {np.shape(b0s)[-1]} b0 volumes in the head "
                f"(MP-PCA: {mppca_level:.4g}); the map keeps MP-PCA's shape")
        return NoiseLevel(scaled, "b0 repeats", mppca_level, b0_level, note)
    note = (f"sigma {mppca_level:.4g} from MP-PCA: the b0 volumes vary by {b0_level:.4g}, more than a factor "
            f"{agreement:g} away (motion or signal drift between them?)")
    return NoiseLevel(corrected, "MP-PCA", mppca_level, b0_level, note)


#: MP-PCA's noise estimator for the noise map (see the module documentation).
NOISE_ESTIMATOR = "cordero-grande2019"


def measure_noise(data, bvals, *, region, patch_radius=(2, 2, 2), b0_threshold: float = 50.0,
                  estimator: str = NOISE_ESTIMATOR, device="auto") -> NoiseLevel:
    """Run MP-PCA over all volumes of ``data`` and combine it with the b0 repeats.

    Parameters
    ----------
    data : array_like, shape (x, y, z, N)
        The whole series.
    bvals : array_like, shape (N,)
        Its b-values.
    region : array_like of bool, shape (x, y, z)
        The head (see :func:`bids_denoise.denoise.masks.brain_mask`).
    patch_radius : tuple of 3 ints, optional
        MP-PCA's window radius; it must fit the image. Default ``(2, 2, 2)``.
    b0_threshold : float, optional
        Volumes with ``b <= b0_threshold`` are b0s. Default 50.
    estimator : {"cordero-grande2019", "veraart2016"}, optional
        MP-PCA's noise estimator. Default :data:`NOISE_ESTIMATOR`.
    device : str, optional
        PyTorch device for MP-PCA.
    """
    from bids_denoise.denoise.mppca import mppca

    bvals = np.asarray(bvals, dtype=float).ravel()
    radius = tuple(int(r) for r in np.broadcast_to(np.asarray(patch_radius), (3,)))
    result = mppca(data, patch_radius=radius, estimator=estimator, device=device, progress=False)
    b0s = np.asarray(data)[..., bvals <= b0_threshold]
    return estimate_noise_level(mppca_sigma=result.sigma, mppca_denoised=result.denoised, b0s=b0s, region=region,
                                window=tuple(2 * r + 1 for r in radius))


__all__ = ["B0_AGREEMENT", "MIN_B0_REPEATS", "NOISE_ESTIMATOR", "NoiseLevel", "b0_repeat_sigma", "correct_mppca_sigma",
           "estimate_noise_level", "measure_noise"]
