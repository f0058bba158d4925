"""Removing the Rician noise floor from denoised magnitude images.

Magnitude MRI data are Rician: where the true signal ``nu`` is low next to the noise ``sigma``,
the magnitude is biased upwards (its mean is ``sigma * sqrt(pi / 2)`` at ``nu = 0``). Denoisers
remove the variance but keep this floor, which lowers the MD and FA of tissues with low
diffusion-weighted signal. Two corrections are offered:

* ``"mean"`` (default): a denoised value is an estimate of the *mean* magnitude, so the true
  signal is found by inverting the Rician mean, ``E[M] = sigma sqrt(pi/2) L_1/2(-nu^2 / 2
  sigma^2)`` (Koay and Basser, J Magn Reson 2006, on the moments of the Rician distribution);
  values below the mean of pure noise map to 0. For ``nu >> sigma`` it tends to
  ``sqrt(S^2 - sigma^2)``.
* ``"moments"``: the method-of-moments correction of the second moment,
  ``sqrt(max(S^2 - 2 sigma^2, 0))`` (Gudbjartsson and Patz, MRM 1995), which suits single raw
  magnitudes rather than denoised means.

Arrays in, arrays out; no Nipype and no file I/O.
"""

from __future__ import annotations

import numpy as np
from scipy import special

METHODS = ("mean", "moments")
#: The inverse is tabulated for true signal-to-noise ratios up to this; above it the mean is
#: sqrt(nu^2 + sigma^2) to better than 1e-6 relative.
_TABLE_MAX = 40.0


def rician_mean(snr):
    """``E[M] / sigma`` for a true signal ``nu = snr * sigma`` (array-like)."""
    x = np.asarray(snr, dtype=np.float64)
    y = x * x / 4.0
    # L_1/2(-x^2/2) exp(-x^2/4) written with the exponentially scaled Bessel functions i0e, i1e.
    return np.sqrt(np.pi / 2.0) * ((1.0 + 2.0 * y) * special.i0e(y) + 2.0 * y * special.i1e(y))


def rician_variance(snr):
    """``Var[M] / sigma^2`` for a true signal ``nu = snr * sigma``: ``snr^2 + 2 - (E[M] / sigma)^2``.

    It rises from ``2 - pi / 2`` (about 0.43, Rayleigh noise) at ``nu = 0`` towards 1 at high
    signal-to-noise ratios.
    """
    x = np.asarray(snr, dtype=np.float64)
    return np.clip(x * x + 2.0 - rician_mean(x) ** 2, 2.0 - np.pi / 2.0, 1.0)


_SNR = np.concatenate([np.linspace(0.0, 4.0, 4001), np.linspace(4.0, _TABLE_MAX, 3601)[1:]])
_MEAN = rician_mean(_SNR)


def correct_rician_bias(signal, sigma, *, method: str = "mean") -> np.ndarray:
    """Remove the Rician noise floor from ``signal`` (float32 out, same shape).

    Parameters
    ----------
    signal : array-like
        Denoised magnitude values, 3D or 4D.
    sigma : array-like
        The Gaussian noise standard deviation of the underlying complex data: a scalar, a 3D
        map (broadcast over the volumes of a 4D ``signal``), or ``signal``'s shape.
    method : {"mean", "moments"}, optional
        See the module documentation. Default ``"mean"``.

    Returns
    -------
    ndarray of float32
        The corrected signal; where ``sigma`` is 0 it is ``signal`` unchanged (negative values
        are set to 0 by either method).

    Raises
    ------
    ValueError
        For an unknown method, negative or non-finite ``sigma``, or shapes that do not fit.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    signal = np.asarray(signal, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim == 3 and signal.ndim == 4:
        sigma = sigma[..., None]
    try:
        sigma = np.broadcast_to(sigma, signal.shape)
    except ValueError:
        raise ValueError(f"sigma of shape {np.shape(sigma)} does not fit a signal of shape {signal.shape}") from None
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError("sigma must be finite and non-negative")
    positive = np.maximum(signal, 0.0)
    scale = np.where(sigma > 0, sigma, 1.0)
    if method == "moments":
        corrected = np.sqrt(np.maximum(positive**2 - 2.0 * sigma**2, 0.0))
    else:
        ratio = positive / scale
        corrected = scale * np.interp(ratio, _MEAN, _SNR)  # 0 below the mean of pure noise
        high = ratio > _MEAN[-1]
        corrected[high] = np.sqrt(positive[high] ** 2 - sigma[high] ** 2)
    return np.where(sigma > 0, corrected, positive).astype(np.float32)
