"""The DDM2 entry point: denoise one group (one shell, or the b0s) of a DWI series.

Xiang, Wang, Zhang, Chen and Zaharchuk, "DDM2: Self-Supervised Diffusion MRI Denoising with
Generative Diffusion Models", ICLR 2023.

This module and the rest of the package do no file I/O apart from the stage checkpoints,
which :mod:`bids_denoise.denoise.ddm2.checkpoints` writes into a directory given by the caller,
and have no Nipype dependency.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from bids_denoise.denoise.ddm2.checkpoints import CheckpointStore
from bids_denoise.denoise.ddm2.data import (
    denormalise,
    direction_features,
    from_slices,
    neighbour_indices,
    normalise,
    to_slices,
    unit_directions,
    volume_scales,
)
from bids_denoise.denoise.ddm2.sampling import denoise_slices
from bids_denoise.denoise.ddm2.settings import DDM2Settings, resolve_settings
from bids_denoise.denoise.ddm2.stages import (
    GroupTensors,
    run_stage1,
    run_stage2,
    run_stage3,
    stage3_max_step,
    stage3_min_step,
)
from bids_denoise.denoise.ddm2.unet import UNet, orthogonal_init
from bids_denoise.denoise.patch2self import patch2self_with_noise, resolve_device
from bids_denoise.denoise.shells import B0_THRESHOLD

LOGGER = logging.getLogger(__name__)
#: Groups smaller than this get a warning: the method needs several observations of the same
#: anatomy (the maintainer suggests at least about 5).
MIN_RECOMMENDED_VOLUMES = 5
STAGE_NAMES = ("stage1", "stage2", "stage3", "inference")


@dataclass
class DDM2Result:
    """What :func:`ddm2_denoise` returns.

    Attributes
    ----------
    denoised : ndarray of float32, shape like the input
        Every volume, in the input's units.
    noise : ndarray of float32, shape (x, y, z)
        Root mean square over the denoised volumes of ``raw - denoised`` (zeros if none).
    n_denoised : int
        Volumes denoised (DDM2 volumes plus b0s denoised with Patch2Self).
    device : str
    history : dict
        ``{"stage1_loss": [...], "stage3_loss": [...], "t_star": [[...] per volume],
        "stage_seconds": {...}, "preset": str, "steps": {...}}``; losses per step, ``t_star`` of
        every slice of every DDM2 volume (in the group's volume order), seconds per stage
        (summed over resumed sessions), and the step counts.
    settings : DDM2Settings
        The settings used (``n_neighbours`` may be lower than asked for on small groups).
    model_state : dict or None
        With ``return_model=True``: the two networks' ``state_dict`` (CPU), the settings, the
        per-volume scales and ``t*``; ``None`` if no model was trained.
    run_time : float
        Seconds of this call.
    skipped_stages : list of str
        Stages found complete in the checkpoint directory.
    stage1 : ndarray of float32 or None
        With ``return_stage1=True``: the series with every DDM2 volume replaced by its Stage-I
        estimate (in the input's units; b0s as in ``denoised``). Stage I alone is a
        J-invariant denoiser, and comparing it with the output is the paper's ablation.
    """

    denoised: np.ndarray
    noise: np.ndarray
    n_denoised: int
    device: str
    history: dict
    settings: DDM2Settings
    model_state: dict | None = None
    run_time: float = 0.0
    skipped_stages: list = field(default_factory=list)
    stage1: np.ndarray | None = None


def _check_data(data, bvals, bvecs):
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be a 4D array (x, y, z, volumes), got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"data must hold integers or floats, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ValueError(f"data contain {bad} NaN or Inf values; DDM2 needs finite input")
    if bvals is None:
        bvals = np.full(data.shape[3], np.inf)
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size != data.shape[3]:
        raise ValueError(f"{bvals.size} b-values were given for {data.shape[3]} volumes")
    if bvecs is not None:
        bvecs = unit_directions(bvecs, data.shape[3])
    return data, bvals, bvecs


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(data: np.ndarray) -> str:
    """A digest of an array's bytes, shape and dtype (identifies the data of a checkpoint)."""
    data = np.ascontiguousarray(data)
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(repr((data.shape, data.dtype.str)).encode())
    hasher.update(memoryview(data).cast("B"))
    return hasher.hexdigest()


def stage_fingerprints(digest: str, settings: DDM2Settings, seed: int, neighbours=None) -> dict:
    """One fingerprint per stage; each covers the data and every setting the stage depends on
    (``neighbours``: the Stage-I input table, which depends on the b-vectors)."""
    s = settings
    table = None if neighbours is None else np.asarray(neighbours).tolist()
    base = _digest("ddm2", digest, seed, s.network.__dict__, s.n_neighbours, table, s.scale_percentile,
                   s.direction_input,
                   [s.n_timesteps, s.beta_start, s.beta_end, s.ramp_fraction])
    stage1 = _digest(base, "stage1", s.stage1_steps, s.batch_size, s.learning_rate,
                     s.stage1_min_learning_rate, s.stage1_period, s.augment, s.precision)
    stage2 = _digest(stage1, "stage2")
    stage3 = _digest(stage2, "stage3", s.stage3_steps, s.batch_size, s.learning_rate, s.augment, s.precision,
                     s.stage3_range, s.stage3_margin, s.stage3_min_learning_rate)
    inference = _digest(stage3, "inference", s.sampling_steps, s.eta, s.flips, s.precision, s.inference_batch_size)
    return {"stage1": stage1, "stage2": stage2, "stage3": stage3, "inference": inference}


@contextlib.contextmanager
def _tf32(device: torch.device):
    """Allow TF32 tensor cores for fp32 matrix products and convolutions on CUDA."""
    if device.type != "cuda":
        yield
        return
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _new_network(in_channels, settings, *, level_input, seed, device, condition_dim=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(in_channels, 1, network=settings.network, level_input=level_input,
                     condition_dim=condition_dim)
        if level_input:
            orthogonal_init(model)
    model = model.to(device)
    if device.type == "cpu":  # oneDNN's preferred layout; a cpu-preset training step took 0.37-0.44 s
        # against 0.43-0.48 s in the default layout (73x100 slices, batch 8, 1 thread, busy machine)
        model = model.to(memory_format=torch.channels_last)
    return model


def _empty_history(settings: DDM2Settings) -> dict:
    return {
        "stage1_loss": [], "stage3_loss": [], "t_star": [],
        "stage_seconds": {name: 0.0 for name in STAGE_NAMES},
        "preset": settings.preset, "steps": settings.steps,
        "neighbour_order": None, "stage3_t_min": None, "stage3_t_max": None,
    }


@dataclass
class _GroupOutput:
    """Normalised results of one group (slices layout ``(N, Z, H, W)``)."""

    denoised: np.ndarray
    stage1: np.ndarray | None
    scales: np.ndarray
    history: dict
    model_state: dict | None
    skipped: list


def _denoise_group(data, bvecs, settings: DDM2Settings, *, device, seed, store: CheckpointStore, progress,
                   callback, return_model, return_stage1) -> _GroupOutput:
    """Run Stages I-III and inference on one group ``(x, y, z, N)``."""
    n_volumes = data.shape[3]
    scales = volume_scales(data, percentile=settings.scale_percentile)
    normalised = normalise(data, scales)
    # x0 predictions are clamped to the data's own range: [-1, 1] with the reference's maximum
    # scale, above 1 for the voxels brighter than a percentile scale
    clip = (min(-1.0, float(normalised.min())), max(1.0, float(normalised.max())))
    volumes = torch.from_numpy(to_slices(normalised)).to(device)
    table = neighbour_indices(n_volumes, settings.n_neighbours,
                              bvecs=bvecs if settings.neighbour_order == "direction" else None)
    features = None
    if settings.direction_input and bvecs is not None:
        features = torch.from_numpy(direction_features(bvecs, table)).to(device)
    group = GroupTensors(volumes, torch.from_numpy(table).to(device), features)
    fingerprints = stage_fingerprints(data_digest(data), settings, seed, table)
    schedule = settings.noise_schedule(device)
    history = _empty_history(settings)
    history["neighbour_order"] = "direction" if settings.neighbour_order == "direction" and bvecs is not None \
        else "acquisition"
    skipped = []

    inference = store.load("inference", fingerprints["inference"])
    stage2 = store.load("stage2", fingerprints["stage2"]) if inference is not None else None
    if inference is not None and inference.get("complete") and stage2 is not None and stage2.get("complete") \
            and not return_model:
        # Everything is done: read the losses and times back without rebuilding the networks.
        for stage in ("stage1", "stage3"):
            payload = store.load(stage, fingerprints[stage]) or {}
            history[f"{stage}_loss"] = list(payload.get("losses", []))
            history["stage_seconds"][stage] = round(float(payload.get("seconds", 0.0)), 3)
        history["stage_seconds"]["stage2"] = round(float(stage2.get("seconds", 0.0)), 3)
        history["stage_seconds"]["inference"] = round(float(inference.get("seconds", 0.0)), 3)
        history["t_star"] = stage2["t_star"].tolist()
        history["stage3_t_max"] = stage3_max_step(stage2["t_star"], schedule, settings)
        history["stage3_t_min"] = stage3_min_step(stage2["t_star"], schedule, settings)
        LOGGER.info("DDM2: every stage found complete in %s; nothing to run.", store.directory)
        return _GroupOutput(inference["denoised"].numpy(), stage2["x_hat"].numpy() if return_stage1 else None,
                            scales, history, None, list(STAGE_NAMES))

    stage1_net = _new_network(settings.n_neighbours, settings, level_input=False, seed=seed, device=device,
                              condition_dim=0 if features is None else features.shape[1])
    outcome = run_stage1(stage1_net, group, settings, seed=seed, device=device, store=store,
                         fingerprint=fingerprints["stage1"], progress=progress, callback=callback)
    _record(history, "stage1", outcome, skipped)
    x_hat, t_star, outcome = run_stage2(stage1_net, group, settings, schedule, store=store,
                                        fingerprint=fingerprints["stage2"])
    _record(history, "stage2", outcome, skipped)
    history["t_star"] = t_star.cpu().tolist()
    history["stage3_t_max"] = stage3_max_step(t_star, schedule, settings)
    history["stage3_t_min"] = stage3_min_step(t_star, schedule, settings)
    stage1_state = {k: v.detach().cpu() for k, v in stage1_net.state_dict().items()} if return_model else None
    del stage1_net

    stage3_net = _new_network(1, settings, level_input=True, seed=seed + 1, device=device)
    outcome = run_stage3(stage3_net, group, x_hat, t_star, settings, schedule, seed=seed, device=device,
                         store=store, fingerprint=fingerprints["stage3"], progress=progress, callback=callback)
    _record(history, "stage3", outcome, skipped)
    stage1_out = x_hat.cpu().numpy() if return_stage1 else None
    del x_hat

    if inference is not None and inference.get("complete"):
        denoised = inference["denoised"].numpy()
        history["stage_seconds"]["inference"] = round(float(inference.get("seconds", 0.0)), 3)
        skipped.append("inference")
    else:
        started = time.perf_counter()
        n, z, h, w = volumes.shape
        out = denoise_slices(stage3_net, volumes.reshape(n * z, h, w), t_star.reshape(-1), schedule,
                             sampling_steps=settings.sampling_steps, eta=settings.eta, flips=settings.flips,
                             batch_size=settings.inference_batch_size, precision=settings.precision,
                             compile=settings.compile, seed=seed, progress=progress, clip=clip)
        denoised = out.reshape(n, z, h, w).cpu()
        seconds = time.perf_counter() - started
        store.save("inference", {"fingerprint": fingerprints["inference"], "complete": True,
                                 "denoised": denoised, "seconds": seconds})
        denoised = denoised.numpy()
        history["stage_seconds"]["inference"] = round(seconds, 3)
        LOGGER.info("DDM2 inference: %d slices in %.1f s.", n * z, seconds)
        if callback is not None:
            callback("inference", n * z)

    model_state = None
    if return_model:
        model_state = {
            "stage1": stage1_state,
            "stage3": {k: v.detach().cpu() for k, v in stage3_net.state_dict().items()},
            "settings": json.dumps(settings.as_dict()),
            "scales": torch.from_numpy(scales),
            "t_star": t_star.cpu(),
            "neighbours": torch.from_numpy(table),
        }
    return _GroupOutput(denoised, stage1_out, scales, history, model_state, skipped)


def _record(history, stage, outcome, skipped):
    history["stage_seconds"][stage] = round(outcome.seconds, 3)
    if stage in ("stage1", "stage3"):
        history[f"{stage}_loss"] = outcome.losses
    if outcome.skipped:
        skipped.append(stage)
    else:
        LOGGER.info("DDM2 %s: %.1f s%s.", stage, outcome.seconds,
                    f" (resumed at step {outcome.resumed_from})" if outcome.resumed_from else "")


def ddm2_denoise(
    data,
    bvals=None,
    *,
    bvecs=None,
    preset: str = "paper",
    stage1_steps: int | None = None,
    stage3_steps: int | None = None,
    sampling_steps: int | None = None,
    batch_size: int | None = None,
    flips: int | None = None,
    inference_batch_size: int | None = None,
    precision: str | None = None,
    n_neighbours: int | None = None,
    neighbour_order: str | None = None,
    stage3_range: str | None = None,
    settings: DDM2Settings | None = None,
    b0_threshold: float = B0_THRESHOLD,
    b0_denoising: bool = True,
    fit_mask=None,
    device="auto",
    seed: int = 0,
    checkpoint_dir=None,
    progress: bool = True,
    callback=None,
    return_model: bool = False,
    return_stage1: bool = False,
) -> DDM2Result:
    """Denoise one group of a diffusion MRI series with DDM2.

    The diffusion-weighted volumes of ``data`` (``b > b0_threshold``) are denoised together as
    one group with one model: pass one shell at a time (the workflow splits shells first). b0
    volumes are copied through, or denoised with Patch2Self from each other when there are at
    least two and ``b0_denoising`` is True.

    Parameters
    ----------
    data : ndarray, shape (x, y, z, N)
        Any integer or float dtype; never modified. Slices are the ``(x, y)`` planes.
    bvals : array-like, shape (N,), optional
        b-values; ``None`` treats every volume as diffusion-weighted.
    bvecs : array-like, shape (3, N) or (N, 3), optional
        Gradient directions (FSL layout or one row per volume), for the direction-aware choice
        of the Stage-I inputs (``neighbour_order="direction"``). Without them that choice falls
        back to acquisition order, with a warning.
    preset : {"paper", "fast", "cpu", "smoke"}, optional
        Default "paper"; see :mod:`bids_denoise.denoise.ddm2.settings` for the table.
    stage1_steps, stage3_steps, sampling_steps, batch_size, flips, inference_batch_size, precision : optional
        Override the preset (``None`` keeps it). ``sampling_steps=0`` runs the full chain,
        ``sampling_steps=1`` one x0 prediction from each slice's ``t*``.
    n_neighbours, neighbour_order, stage3_range : optional
        Override the preset's Stage-I inputs (how many; ``"direction"`` or ``"acquisition"``)
        and Stage-III range (``"focused"`` or ``"full"``).
    settings : DDM2Settings, optional
        Complete settings; replaces ``preset`` and the overrides.
    b0_threshold : float, optional
        ``b <= b0_threshold`` is a b0. Default 50.
    b0_denoising : bool, optional
        Denoise two or more b0s with Patch2Self (default); otherwise copy them.
    fit_mask : ndarray of bool, shape (x, y, z), optional
        Voxels Patch2Self fits the b0 regressions on. DDM2 itself uses every voxel, background
        included, as the reference does.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
    seed : int, optional
        Seeds network initialisation, training batches and sampling noise. Default 0.
    checkpoint_dir : path, optional
        Directory for stage checkpoints (created if needed). A rerun with the same data and
        settings skips finished stages and resumes an interrupted one. ``None``: no checkpoints.
    progress : bool, optional
        tqdm bars (with the loss) for every stage.
    callback : callable, optional
        ``callback(stage, step)`` after every training step (``"stage1"``/``"stage3"``) and
        once after inference; raising from it interrupts the run (checkpoints stay).
    return_model : bool, optional
        Fill ``DDM2Result.model_state`` with the trained networks.
    return_stage1 : bool, optional
        Fill ``DDM2Result.stage1`` with the Stage-I estimates (Stage I alone as a denoiser).

    Returns
    -------
    DDM2Result

    Raises
    ------
    ValueError
        For a non-4D array, NaN or Inf values, a b-value count that differs from the number of
        volumes, or invalid settings.

    Notes
    -----
    Normalisation: each volume is divided by a high percentile of its values (the maximum with
    ``scale_percentile=100``, as the reference) and mapped to ``[-1, 1]``; the mapping is
    inverted exactly, and outputs are clamped to the group's own range of values.

    Reproducibility: on the CPU a run is deterministic for a given seed, and a resumed run
    gives the same result as an uninterrupted one. On CUDA, cuDNN convolution algorithms and
    atomic additions in backward passes are not bitwise deterministic, so repeated GPU runs
    (and GPU vs CPU) differ slightly even with the same seed; bf16 and ``torch.compile`` change
    the numerics further. ``eta > 0`` (the ``paper`` preset) samples noise, so the output is one
    draw of a stochastic sampler.
    """
    started = time.perf_counter()
    data, bvals, bvecs = _check_data(data, bvals, bvecs)
    if settings is None:
        settings = resolve_settings(
            preset, stage1_steps=stage1_steps, stage3_steps=stage3_steps, sampling_steps=sampling_steps,
            batch_size=batch_size, flips=flips, inference_batch_size=inference_batch_size, precision=precision,
            n_neighbours=n_neighbours, neighbour_order=neighbour_order, stage3_range=stage3_range,
        )
    device = resolve_device(device)
    store = CheckpointStore(checkpoint_dir)
    is_b0 = bvals <= b0_threshold
    b0_index = np.flatnonzero(is_b0)
    dwi_index = np.flatnonzero(~is_b0)

    denoised = np.array(data, dtype=np.float32, copy=True)
    residual_ss = np.zeros(data.shape[:3], dtype=np.float64)
    n_denoised = 0
    history = _empty_history(settings)
    model_state = None
    stage1 = None
    skipped = []

    if b0_index.size >= 2 and b0_denoising:
        b0_denoised, b0_noise = patch2self_with_noise(
            data[..., b0_index], np.zeros(b0_index.size), grouping="all", fit_mask=fit_mask, device=device,
            progress=False,
        )
        denoised[..., b0_index] = b0_denoised
        residual_ss += b0_noise.astype(np.float64) ** 2 * b0_index.size
        n_denoised += b0_index.size

    if dwi_index.size == 1:
        warnings.warn("DDM2: a group of 1 volume is copied through unchanged (at least 2 are needed).",
                      UserWarning, stacklevel=2)
    elif dwi_index.size >= 2:
        if dwi_index.size < MIN_RECOMMENDED_VOLUMES:
            warnings.warn(
                f"DDM2: the group has only {dwi_index.size} volumes; the method needs several "
                f"observations of the same anatomy (at least {MIN_RECOMMENDED_VOLUMES} recommended).",
                UserWarning, stacklevel=2,
            )
        if settings.n_neighbours > dwi_index.size - 1:
            warnings.warn(
                f"DDM2: {settings.n_neighbours} neighbour volumes need {settings.n_neighbours + 1} volumes; "
                f"using {dwi_index.size - 1}.", UserWarning, stacklevel=2,
            )
            settings = replace(settings, n_neighbours=dwi_index.size - 1)
        group_bvecs = None if bvecs is None else bvecs[dwi_index]
        if settings.neighbour_order == "direction" and group_bvecs is None:
            warnings.warn("DDM2: no b-vectors were given, so the Stage-I input volumes are chosen in "
                          "acquisition order instead of by gradient direction.", UserWarning, stacklevel=2)
        group = data[..., dwi_index]
        with _tf32(device):
            out = _denoise_group(
                group, group_bvecs, settings, device=device, seed=int(seed), store=store, progress=progress,
                callback=callback, return_model=return_model, return_stage1=return_stage1,
            )
        history, model_state, skipped = out.history, out.model_state, out.skipped
        dwi_denoised = denormalise(from_slices(out.denoised), out.scales)
        residual_ss += np.square(group.astype(np.float64) - dwi_denoised).sum(axis=3)
        denoised[..., dwi_index] = dwi_denoised
        n_denoised += dwi_index.size
        if return_stage1:
            stage1 = denoised.copy()
            stage1[..., dwi_index] = denormalise(from_slices(out.stage1), out.scales)

    noise = np.sqrt(residual_ss / max(n_denoised, 1)).astype(np.float32)
    run_time = time.perf_counter() - started
    LOGGER.info("DDM2 denoised %d of %d volumes in %.1f s on %s (preset %s; skipped: %s)",
                n_denoised, data.shape[3], run_time, device, settings.preset, ", ".join(skipped) or "none")
    return DDM2Result(denoised=denoised, noise=noise, n_denoised=int(n_denoised), device=str(device),
                      history=history, settings=settings, model_state=model_state, run_time=run_time,
                      skipped_stages=skipped, stage1=stage1)
