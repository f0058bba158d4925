"""The DDM2 noise schedule ("reverse warm-up") and the maths that depends only on it.

Conventions (1-based diffusion steps, as in the DDM2 paper):

* ``betas[k]`` for ``k = 0 .. T-1`` is the variance added by step ``k + 1``;
* ``alpha_bar[t] = prod_{k < t} (1 - betas[k])`` for ``t = 0 .. T``, so ``alpha_bar[0] = 1``
  (the clean image) and the state ``x_t`` has signal level ``sqrt(alpha_bar[t])`` and noise
  level ``sqrt(1 - alpha_bar[t])``;
* a slice matched to step ``t*`` is denoised by ``t*`` reverse steps ``t* -> t* - 1 -> ... -> 0``.

The reverse warm-up keeps ``beta`` at its start value for the first 30 % of the steps and then
ramps it linearly to the end value over the last 70 % (``rev_warmup70``). Realistic dMRI noise
lands at ``t*`` of roughly 10 to 450, so the chains are short and sit mostly in the flat part,
where the schedule resolves low noise levels finely.
"""

from __future__ import annotations

import numpy as np
import torch

#: Number of diffusion steps.
N_TIMESTEPS = 1000
#: beta of the flat part and start of the ramp.
BETA_START = 5e-5
#: beta of the last step.
BETA_END = 1e-2
#: Fraction of the steps over which beta ramps up (at the end of the chain).
RAMP_FRACTION = 0.7


def reverse_warmup_betas(
    n_timesteps: int = N_TIMESTEPS,
    *,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
    ramp_fraction: float = RAMP_FRACTION,
) -> np.ndarray:
    """Return the ``(n_timesteps,)`` float64 betas of the reverse warm-up schedule.

    ``beta`` equals ``beta_start`` for the first ``n_timesteps - int(n_timesteps *
    ramp_fraction)`` steps, then rises linearly from ``beta_start`` to ``beta_end`` (both ends
    included) over the remaining steps. With the defaults: ``betas[0] = betas[299] = 5e-5`` and
    ``betas[999] = 1e-2``.
    """
    if n_timesteps < 2:
        raise ValueError(f"n_timesteps must be >= 2, got {n_timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    if not 0 < ramp_fraction <= 1:
        raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    n_ramp = max(1, int(n_timesteps * ramp_fraction))
    betas = np.full(n_timesteps, beta_start, dtype=np.float64)
    betas[n_timesteps - n_ramp:] = np.linspace(beta_start, beta_end, n_ramp, dtype=np.float64)
    return betas


class NoiseSchedule:
    """Precomputed levels of one schedule, as float64 tensors on one device.

    Attributes
    ----------
    n_timesteps : int
        ``T``.
    betas : torch.Tensor, shape (T,)
    alpha_bar : torch.Tensor, shape (T + 1,)
        With ``alpha_bar[0] = 1``.
    signal : torch.Tensor, shape (T + 1,)
        ``sqrt(alpha_bar)``: the continuous noise-level input of the Stage-III network.
    noise : torch.Tensor, shape (T + 1,)
        ``sqrt(1 - alpha_bar)``: the noise std of ``x_t`` in normalised units.
    """

    def __init__(self, betas=None, device="cpu"):
        betas = reverse_warmup_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        alpha_bar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
        self.n_timesteps = int(betas.size)
        self.device = torch.device(device)
        self.betas = torch.as_tensor(betas, dtype=torch.float64, device=self.device)
        self.alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64, device=self.device)
        self.signal = self.alpha_bar.sqrt()
        self.noise = (1.0 - self.alpha_bar).clamp_min(0.0).sqrt()

    def to(self, device) -> "NoiseSchedule":
        """The same schedule on ``device``."""
        return NoiseSchedule(self.betas.cpu().numpy(), device=device)

    def sample_levels(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Continuous signal levels ``gamma ~ U(sqrt(ab[t]), sqrt(ab[t-1]))`` (float32).

        ``t`` holds integer steps in ``1 .. T`` and ``u`` uniform numbers in ``[0, 1)`` of the
        same shape (WaveGrad/SR3-style continuous noise-level conditioning).
        """
        low = self.signal[t]
        high = self.signal[t - 1]
        return (low + u.to(low.dtype) * (high - low)).to(torch.float32)


def match_states(noisy: torch.Tensor, estimate: torch.Tensor, schedule: NoiseSchedule, *,
                 chunk: int = 2048) -> torch.Tensor:
    """Stage II: the diffusion step whose noise level matches each slice's residual.

    For every slice and every ``t`` in ``0 .. T`` the residual ``r_t = noisy - sqrt(ab[t]) *
    estimate`` is centred and its population std (the maximum-likelihood Gaussian fit) is
    compared with ``sqrt(1 - ab[t])``; ``t*`` minimises the absolute difference.

    Vectorised without any loop over ``t``: the variance of ``r_t`` is the quadratic
    ``var(x) - 2 a cov(x, e) + a^2 var(e)`` in ``a = sqrt(ab[t])``, so three per-slice moments
    (computed once, in float64) give the curve for all ``T + 1`` steps at once.

    Parameters
    ----------
    noisy, estimate : torch.Tensor, shape (S, ...)
        The normalised noisy slices and the Stage-I estimates, on the schedule's device.
    schedule : NoiseSchedule
    chunk : int, optional
        Slices per block of the ``(chunk, T + 1)`` distance matrix.

    Returns
    -------
    torch.Tensor of int64, shape (S,)
        ``t*`` clipped to ``1 .. T`` (a slice without noise still gets one reverse step).

    Notes
    -----
    The reference implementation searches ``t = 0, 1, 2, ...`` and stops at the first increase
    of the difference; where the difference has a single minimum (the usual case) that is the
    same step as the global minimum taken here.
    """
    if noisy.shape != estimate.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and estimate {tuple(estimate.shape)} differ")
    n = noisy.shape[0]
    x = noisy.reshape(n, -1)
    e = estimate.reshape(n, -1)
    out = torch.empty(n, dtype=torch.long, device=noisy.device)
    signal = schedule.signal.to(noisy.device)
    target = schedule.noise.to(noisy.device)
    for start in range(0, n, chunk):
        xs = x[start:start + chunk].to(torch.float64)
        es = e[start:start + chunk].to(torch.float64)
        xs = xs - xs.mean(1, keepdim=True)
        es = es - es.mean(1, keepdim=True)
        var_x = xs.square().mean(1, keepdim=True)
        var_e = es.square().mean(1, keepdim=True)
        cov = (xs * es).mean(1, keepdim=True)
        variance = var_x - 2.0 * cov * signal + var_e * signal.square()
        distance = (variance.clamp_min(0.0).sqrt() - target).abs()
        out[start:start + chunk] = distance.argmin(1)
    return out.clamp_(1, schedule.n_timesteps)


def focused_max_step(t_star_max: int, schedule: NoiseSchedule, margin: float) -> int:
    """The last diffusion step a focused Stage III trains on.

    The smallest ``t`` whose noise level ``sqrt(1 - ab[t])`` reaches ``1 + margin`` times that
    of ``t_star_max`` (the noisiest matched slice), capped at ``T``. Inference starts every
    slice at its own ``t* <= t_star_max`` and only moves towards less noise, so steps beyond
    this bound are never visited; the margin covers the spread of the continuous levels.
    """
    t_star_max = int(min(max(int(t_star_max), 1), schedule.n_timesteps))
    target = (1.0 + float(margin)) * float(schedule.noise[t_star_max])
    above = torch.nonzero(schedule.noise.cpu() >= target).flatten()
    return int(above[0]) if above.numel() else schedule.n_timesteps


def matched_min_step(t_star_min: int, schedule: NoiseSchedule, margin: float) -> int:
    """The first diffusion step a matched Stage III trains on.

    The largest ``t`` whose noise level ``sqrt(1 - ab[t])`` is at most ``1 - margin`` times that
    of ``t_star_min`` (the least noisy matched slice), at least 1. With one x0 prediction from
    ``t*`` (``sampling_steps = 1``) inference visits no level below the matched ones.
    """
    t_star_min = int(min(max(int(t_star_min), 1), schedule.n_timesteps))
    target = max(0.0, 1.0 - float(margin)) * float(schedule.noise[t_star_min])
    below = torch.nonzero(schedule.noise.cpu()[1:t_star_min + 1] <= target).flatten()
    return int(below[-1]) + 1 if below.numel() else 1


def timestep_pairs(t_star: torch.Tensor, n_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-slice reverse steps ``(t -> s)`` from each slice's ``t*`` down to 0.

    Parameters
    ----------
    t_star : torch.Tensor of int64, shape (B,)
        Start step of every slice (>= 1).
    n_steps : int
        0 for the full chain (``t*`` steps of one). Otherwise at most ``n_steps`` strided steps
        at evenly spaced (rounded) steps from ``t*`` to 0; a slice with ``t* < n_steps`` takes
        ``t*`` steps of one.

    Returns
    -------
    t, s : torch.Tensor of int64, shape (B, L)
        Current and next step of iteration ``j`` for every slice (``L`` = the longest chain).
        Padding entries are 0.
    length : torch.Tensor of int64, shape (B,)
        How many iterations each slice takes; iteration ``j`` is active where ``j < length``.
    """
    t_star = t_star.to("cpu", torch.long)
    lengths = t_star.clone() if n_steps <= 0 else torch.minimum(t_star, torch.tensor(n_steps))
    longest = int(lengths.max()) if lengths.numel() else 0
    current = torch.zeros((t_star.numel(), longest), dtype=torch.long)
    following = torch.zeros_like(current)
    for i, (start, length) in enumerate(zip(t_star.tolist(), lengths.tolist())):
        points = np.rint(np.linspace(start, 0, length + 1)).astype(np.int64)
        current[i, :length] = torch.from_numpy(points[:-1])
        following[i, :length] = torch.from_numpy(points[1:])
    return current, following, lengths
