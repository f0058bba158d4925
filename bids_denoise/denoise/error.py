"""How far a denoised series is from the truth, estimated without the truth.

For Gaussian noise of variance ``sigma^2`` and any weakly differentiable denoiser ``f``, Stein's
unbiased risk estimate (SURE) gives the expected squared error from the data alone::

    E ||f(y) - s||^2 = E ||f(y) - y||^2 - n sigma^2 + 2 sigma^2 E[div f(y)]

and the divergence is estimated with one extra run on perturbed data (Monte-Carlo SURE,
Ramani, Blu and Unser, IEEE TIP 2008)::

    div f(y) ~ b . (f(y + eps b) - f(y)) / eps,    b ~ N(0, I).

Magnitude MR data are Rician, not Gaussian: at a true signal ``s`` the value has mean
``mu(s) > s`` and variance ``v(s) < sigma^2``. A denoiser estimates ``mu``. Treating ``y`` as
``mu + e`` with ``e`` of variance ``v``, SURE gives the error against ``mu``, and

* without a Rician correction the output's error against ``s`` adds the bias
  ``beta = mu - s``: ``E ||f - s||^2 = E[ ||f - y||^2 - sum v + 2 sum v df/dy
  + 2 sum (f - mu) beta + sum beta^2 ]``;
* with a correction ``c`` (which maps ``mu(s)`` back to ``s``), ``c(f) - s = c(f) - c(mu)``,
  so each value's term is weighted by how much ``c`` amplifies an error of the group's size
  ``e`` there, ``E[(c(f + e z) - c(f))^2] / e^2`` over ``z ~ N(0, 1)`` (``c'(f)^2`` for small
  errors; averaged because ``c`` is flat below the noise floor and steep just above it).
  Plugging ``s`` into the bias term instead under-estimates the error where the signal is low
  (by up to 21 % on the b=2000 shell of a phantom), because the plug-in is noisy there and
  the bias is convex in ``s``.

``s``, ``mu`` and ``v`` are plugged in from the (corrected) denoised values. The estimate is
pooled over a region (the head) and all volumes of a group: outside the head there is no signal
to get wrong, and the noise there says nothing about the denoiser.

The estimate subtracts ``sigma^2`` from the residual power, so it is only as good as ``sigma``
(see :mod:`bids_denoise.denoise.noise`): a 2 % error in ``sigma`` moves the estimate of a good
denoiser by about 20 %.

Arrays in, numbers out; no Nipype and no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_denoise.denoise.rician import correct_rician_bias, rician_mean, rician_variance

#: The perturbation, as a fraction of the median noise sigma in the region.
EPSILON_FRACTION = 0.05
METHOD_TEXT = ("Monte-Carlo SURE (Ramani, Blu and Unser 2008) with one perturbed run, the Rician mean, "
               "variance and bias plugged in from the denoised signal, over the head mask")


@dataclass(frozen=True)
class ErrorEstimate:
    """The estimated error of one denoised group."""

    rmse: float  # estimated root mean square error, input units
    n_values: int  # region voxels x volumes it is pooled over
    residual_rms: float  # RMS of denoised - noisy over the same values
    noise_rms: float  # RMS of the Rician standard deviation there
    divergence: float  # mean df/dy per value (0: ignores the data, 1: copies it)

    def as_dict(self) -> dict:
        return {
            "EstimatedRMSE": round(self.rmse, 6),
            "ResidualRMS": round(self.residual_rms, 6),
            "NoiseRMS": round(self.noise_rms, 6),
            "Divergence": round(self.divergence, 6),
            "Values": int(self.n_values),
        }


def perturbation(noisy, sigma, region, *, seed: int = 0):
    """The probe ``b`` and step ``eps`` of Monte-Carlo SURE for one group.

    Returns
    -------
    probe : ndarray of float32
        Standard normal values, the shape of ``noisy``.
    epsilon : float
        ``EPSILON_FRACTION`` times the median ``sigma`` in ``region`` (1.0 where that is 0).
    """
    noisy = np.asarray(noisy)
    region = np.asarray(region, dtype=bool)
    sigma = np.asarray(sigma, dtype=np.float64)
    inside = sigma[region] if region.any() else sigma.ravel()
    median = float(np.median(inside)) if inside.size else 0.0
    epsilon = EPSILON_FRACTION * median if median > 0 else 1.0
    probe = np.random.default_rng(seed).standard_normal(noisy.shape, dtype=np.float32)
    return probe, epsilon


def estimate_error(*, noisy, denoised, perturbed, probe, epsilon: float, sigma, region,
                   rician_correction: str = "none") -> ErrorEstimate:
    """Monte-Carlo SURE of one group, Rician-aware (see the module documentation).

    Parameters
    ----------
    noisy : array_like, shape (x, y, z, N)
        The group as acquired.
    denoised : array_like, shape (x, y, z, N)
        The method's output for it, *before* any Rician correction (an estimate of the mean
        magnitude).
    perturbed : array_like, shape (x, y, z, N)
        The method's output for ``noisy + epsilon * probe``, also uncorrected.
    probe : array_like, shape (x, y, z, N)
        The standard normal probe (see :func:`perturbation`).
    epsilon : float
        The probe's step.
    sigma : array_like, shape (x, y, z)
        The Gaussian noise standard deviation (:mod:`bids_denoise.denoise.noise`).
    region : array_like of bool, shape (x, y, z)
        Where to pool: the head.
    rician_correction : {"none", "mean", "moments"}, optional
        The correction the app applies to ``denoised`` afterwards: the estimate is the error of
        the corrected output. Default "none".

    Returns
    -------
    ErrorEstimate
        Its ``residual_rms`` and ``divergence`` are those of the uncorrected output.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        region = np.ones(region.shape, dtype=bool)
    shapes = {np.shape(noisy), np.shape(denoised), np.shape(perturbed), np.shape(probe)}
    if len(shapes) != 1 or np.ndim(noisy) != 4 or np.shape(noisy)[:3] != region.shape:
        raise ValueError(f"noisy {np.shape(noisy)}, denoised {np.shape(denoised)}, perturbed "
                         f"{np.shape(perturbed)} and probe {np.shape(probe)} must have one 4D shape over "
                         f"the region's {region.shape}")
    if rician_correction not in ("none", "mean", "moments"):
        raise ValueError(f"rician_correction must be none, mean or moments, got {rician_correction!r}")
    sd = np.asarray(sigma, dtype=np.float64)[region]
    scale = np.where(sd > 0, sd, 1.0)

    def volumes():  # one volume at a time bounds the memory
        for volume in range(np.shape(noisy)[3]):
            f = np.asarray(denoised[..., volume], dtype=np.float64)[region]
            signal = correct_rician_bias(f, sd, method="mean" if rician_correction == "none" else rician_correction)
            signal = signal.astype(np.float64)
            y = np.asarray(noisy[..., volume], dtype=np.float64)[region]
            variance = sd**2 * rician_variance(signal / scale)
            divergence = np.asarray(probe[..., volume], dtype=np.float64)[region] * (
                np.asarray(perturbed[..., volume], dtype=np.float64)[region] - f) / epsilon
            stein = (f - y) ** 2 - variance + 2 * variance * divergence  # estimates (f - mu)^2
            yield f, y, signal, variance, divergence, stein

    totals = np.zeros(4)  # risk, squared residual, Rician variance, divergence
    for f, y, signal, variance, divergence, stein in volumes():
        if rician_correction == "none":
            mean = np.where(sd > 0, sd * rician_mean(signal / scale), signal)
            bias = mean - signal
            risk = stein + 2 * (f - mean) * bias + bias**2
        else:
            risk = stein
        totals += (risk.sum(), ((f - y) ** 2).sum(), variance.sum(), divergence.sum())
    if rician_correction != "none":
        # The correction is steep just above the noise floor and flat below it, so its effect
        # on an error of size e is averaged over N(0, e^2) rather than taken from the slope.
        spread = np.sqrt(max(totals[0], 0.0) / max(int(region.sum()) * int(np.shape(noisy)[3]), 1))
        totals[0] = 0.0
        for f, _, _, _, _, stein in volumes():
            totals[0] += (_amplification(f, sd, spread, rician_correction) * stein).sum()
    n_values = int(region.sum()) * int(np.shape(noisy)[3])
    risk, residual, variance, divergence = totals / max(n_values, 1)
    return ErrorEstimate(
        rmse=float(np.sqrt(max(risk, 0.0))),
        n_values=n_values,
        residual_rms=float(np.sqrt(residual)),
        noise_rms=float(np.sqrt(variance)),
        divergence=float(divergence),
    )


#: Gauss-Hermite nodes and weights for E[g(z)], z ~ N(0, 1).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(6)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _amplification(f, sigma, spread, method):
    """``E[(c(f + e z) - c(f))^2] / e^2`` per value: how much the correction ``c`` scales an
    error of RMS ``e = spread`` at ``f`` (``c'(f)^2`` for small errors)."""
    if spread <= 0:
        spread = 1e-3 * float(np.median(sigma)) if np.any(sigma > 0) else 1e-3
    centre = correct_rician_bias(f, sigma, method=method).astype(np.float64)
    total = np.zeros_like(centre)
    for node, weight in zip(_NODES, _WEIGHTS):
        moved = correct_rician_bias(f + spread * node, sigma, method=method).astype(np.float64)
        total += weight * (moved - centre) ** 2
    return total / spread**2


def pooled_rmse(estimates) -> float | None:
    """The RMSE over several groups' values, from their estimates (None for none)."""
    estimates = [e for e in estimates if e is not None and e.n_values > 0]
    if not estimates:
        return None
    total = sum(e.n_values for e in estimates)
    return float(np.sqrt(sum(e.rmse**2 * e.n_values for e in estimates) / total))


__all__ = ["EPSILON_FRACTION", "ErrorEstimate", "METHOD_TEXT", "estimate_error", "perturbation", "pooled_rmse"]
