"""DDM2 inference: every slice runs the reverse chain from its own ``t*``, many slices at once.

A slice starts at ``x_{t*} = X``, the raw normalised noisy slice (not rescaled). Each reverse
step ``t -> s`` predicts ``x0`` with the Stage-III network at level ``sqrt(alpha_bar[t])``
(averaged over flip variants, then clamped to the data's range) and moves to

    x_s = sqrt(ab[s]) x0 + sqrt(1 - ab[s] - sigma^2) eps_hat + sigma z,
    eps_hat = (x_t - sqrt(ab[t]) x0) / sqrt(1 - ab[t]),
    sigma^2 = eta^2 (1 - ab[s]) / (1 - ab[t]) (1 - ab[t] / ab[s]).

With ``s = t - 1`` and ``eta = 1`` this is exactly the DDPM posterior mean plus the posterior
standard deviation (the paper's ancestral sampler); with strided ``s`` and ``eta = 0`` it is
the deterministic DDIM update. The last step (``s = 0``) returns the clamped ``x0``.

Slices are sorted by chain length and denoised in batches; every slice in a batch carries its
own ``t`` and ``s``, and a slice whose chain has ended is no longer evaluated.
"""

from __future__ import annotations

import torch

from bids_denoise.denoise.ddm2.data import FLIP_VARIANTS, flip_variant
from bids_denoise.denoise.ddm2.schedule import NoiseSchedule, timestep_pairs
from bids_denoise.denoise.ddm2.stages import MaybeCompiled, autocast, progress_bar, step_generator


def predict_x0(network, x: torch.Tensor, level: torch.Tensor, *, flips: int, device, precision,
               clip=(-1.0, 1.0)) -> torch.Tensor:
    """Clamped ``x0`` prediction of ``(B, 1, H, W)`` slices, averaged over ``flips`` variants.

    ``clip`` is the range of the data in normalised units (``[-1, 1]`` when every volume is
    divided by its maximum; above 1 for the brightest voxels with a percentile scale).
    """
    variants = FLIP_VARIANTS[:flips]
    inputs = torch.cat([flip_variant(x, variant) for variant in variants])
    levels = level.repeat(len(variants))
    with autocast(device, precision):
        outputs = network(inputs, levels)
    outputs = outputs.float().reshape(len(variants), *x.shape)
    x0 = sum(flip_variant(outputs[i], variant) for i, variant in enumerate(variants)) / len(variants)
    return x0.clamp_(float(clip[0]), float(clip[1]))


def reverse_step(x, x0, t, s, schedule: NoiseSchedule, eta: float, generator) -> torch.Tensor:
    """One update ``x_t -> x_s`` per sample (see the module docstring)."""
    ab_t = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    ab_s = schedule.alpha_bar[s].view(-1, 1, 1, 1)
    eps_hat = (x.double() - ab_t.sqrt() * x0.double()) / (1.0 - ab_t).sqrt()
    variance = (eta**2) * (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
    direction = (1.0 - ab_s - variance).clamp_min(0.0).sqrt()
    out = ab_s.sqrt() * x0.double() + direction * eps_hat
    if eta > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        out = out + variance.sqrt() * noise
    return out.to(x.dtype)


@torch.no_grad()
def denoise_slices(model, slices: torch.Tensor, t_star: torch.Tensor, schedule: NoiseSchedule, *,
                   sampling_steps: int, eta: float, flips: int, batch_size: int, precision: str = "fp32",
                   compile: bool = False, seed: int = 0, progress: bool = True, clip=(-1.0, 1.0)) -> torch.Tensor:
    """Denoise ``(S, H, W)`` normalised slices, each from its own ``t*`` (``(S,)``, >= 1).

    Parameters
    ----------
    model : UNet
        The trained Stage-III network (on the slices' device).
    slices : torch.Tensor, shape (S, H, W)
    t_star : torch.Tensor of int64, shape (S,)
    schedule : NoiseSchedule
    sampling_steps : int
        0 for the full chain, else at most this many strided steps per slice.
    eta : float
        Sampling noise (1 ancestral, 0 deterministic).
    flips : {1, 2, 4}
    batch_size : int
        Slices per batch.
    precision : {"fp32", "bf16"}
    compile : bool
        ``torch.compile`` the network (CUDA); batches then keep a fixed size, so finished slices
        are still evaluated (and discarded) instead of triggering recompilations.
    seed : int
        Seeds the sampling noise of every batch.
    progress : bool
    clip : (float, float)
        Every x0 prediction is clamped to this range (the data's range in normalised units).

    Returns
    -------
    torch.Tensor, shape (S, H, W), float32
        Denoised slices in ``clip``.
    """
    device = slices.device
    schedule = schedule.to(device)
    model.eval()
    network = MaybeCompiled(model, compile, device)
    out = torch.empty_like(slices, dtype=torch.float32)
    t_star = t_star.reshape(-1).to("cpu", torch.long)
    _, _, lengths = timestep_pairs(t_star, sampling_steps) if t_star.numel() else (None, None, t_star)
    order = torch.argsort(lengths, descending=True, stable=True)
    with progress_bar(total=int(lengths.sum()), desc="DDM2 sampling", unit="slice-step",
                      disable=not progress) as bar:
        for batch, start in enumerate(range(0, order.numel(), batch_size)):
            index = order[start:start + batch_size]
            current, following, length = timestep_pairs(t_star[index], sampling_steps)
            current, following = current.to(device), following.to(device)
            x = slices[index.to(device)].unsqueeze(1).to(torch.float32).clone()
            generator = None
            if eta > 0:
                generator = torch.Generator(device=device).manual_seed(
                    int(step_generator(seed, "inference", batch).initial_seed()))
            for j in range(int(length.max())):
                active = int((length > j).sum())  # lengths are sorted: the active slices lead
                n_eval = x.shape[0] if network.is_compiled else active
                t, s = current[:n_eval, j], following[:n_eval, j]
                level = schedule.signal[t].to(torch.float32)
                x0 = predict_x0(network, x[:n_eval], level, flips=flips, device=device, precision=precision,
                                clip=clip)
                updated = reverse_step(x[:active], x0[:active], t[:active], s[:active], schedule, eta, generator)
                x[:active] = updated
                bar.update(active)
            out[index.to(device)] = x[:, 0]
    return out
