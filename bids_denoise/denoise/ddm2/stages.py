"""DDM2 Stages I-III on one group held in memory (no file I/O; checkpoints go through a store).

* **Stage I** trains the J-invariant noise model: slice ``z`` of volume ``v`` is predicted from
  slice ``z`` of its ``n`` neighbour volumes (MSE against the noisy slice).
* **Stage II** runs the Stage-I network once over every slice and matches each slice's residual
  to a diffusion step ``t*`` (:func:`~bids_denoise.denoise.ddm2.schedule.match_states`).
* **Stage III** trains the x0-predicting denoiser on synthetic inputs
  ``gamma * x_hat + sqrt(1 - gamma^2) * shuffle(eps)``, built from the mean-calibrated Stage-I
  estimate and the slice's own, pixel-shuffled residual noise, against the *raw* noisy slice.

Randomness: every training step draws its batch (volumes, slices, flips, levels, permutation)
from its own CPU generator seeded by ``(seed, stage, step)``, so a resumed stage sees exactly
the batches it would have seen without the interruption.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bids_denoise.denoise.ddm2.checkpoints import CheckpointStore
from bids_denoise.denoise.ddm2.data import calibrated_noise, random_flips, shuffle_pixels
from bids_denoise.denoise.ddm2.schedule import NoiseSchedule, focused_max_step, match_states, matched_min_step
from bids_denoise.denoise.ddm2.settings import DDM2Settings
from bids_denoise.denoise.ddm2.unet import UNet

LOGGER = logging.getLogger(__name__)
#: Losses are copied from the device in blocks of this many steps (one sync per block).
LOSS_FETCH_EVERY = 25
_STAGE_IDS = {"stage1": 1, "stage2": 2, "stage3": 3, "inference": 4}


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The CPU generator of one training step (or one inference batch)."""
    value = (int(seed) * 1_000_003 + _STAGE_IDS[stage] * 998_244_353 + int(step) * 7919) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def progress_bar(*, total, desc, unit, initial=0, disable=False):
    """A tqdm bar; refreshed at most every 30 s when stderr is not a terminal (log files)."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=False,
                mininterval=0.5 if interactive else 30.0, dynamic_ncols=interactive)


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast for ``precision="bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _compile_errors() -> tuple:
    """The exception types that mean "torch.compile could not compile this", not "this fails"."""
    errors = []
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

        errors += [BackendCompilerFailed, TorchDynamoException]
    except ImportError:  # pragma: no cover - depends on the PyTorch build
        pass
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class MaybeCompiled:
    """Call a module through ``torch.compile`` (CUDA only); fall back to eager mode only when
    compilation itself fails, and log why.

    Compilation is lazy: it happens at the first call (and again for new shapes), so the
    fallback sits in :meth:`__call__`. Any other error (out of memory, a shape mismatch) is
    raised: hiding it behind an eager rerun would only move or duplicate it.
    """

    def __init__(self, module: torch.nn.Module, enabled: bool, device: torch.device):
        self.module = module
        self.compiled = None
        if enabled and device.type == "cuda":
            try:
                self.compiled = torch.compile(module)
            except (RuntimeError, *_compile_errors()) as err:  # e.g. no compiler backend for this build
                LOGGER.warning("torch.compile is not available (%s: %s); running eagerly.", type(err).__name__, err)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except _compile_errors() as err:  # pragma: no cover - needs a GPU toolchain
                LOGGER.warning("torch.compile failed (%s: %s); running eagerly from now on.",
                               type(err).__name__, err)
                self.compiled = None
        return self.module(*args)


@dataclass
class GroupTensors:
    """One group on the device, normalised: volumes ``(N, Z, H, W)``, the Stage-I input table
    and, optionally, the gradient geometry each Stage-I prediction is conditioned on."""

    volumes: torch.Tensor
    neighbours: torch.Tensor  # (N, n) int64
    features: torch.Tensor | None = None  # (N, D) float32

    def stage1_inputs(self, v: torch.Tensor, z: torch.Tensor):
        """Stage-I network arguments for samples ``(v, z)``: ``(condition (B, n, H, W), features)``."""
        condition = self.volumes[self.neighbours[v], z[:, None]]
        return condition, (None if self.features is None else self.features[v])

    @property
    def n_volumes(self) -> int:
        return self.volumes.shape[0]

    @property
    def n_slices(self) -> int:
        return self.volumes.shape[1]


@dataclass
class StageOutcome:
    """What a stage did: its losses (all steps so far), seconds (all sessions), skipped."""

    losses: list
    seconds: float
    skipped: bool
    resumed_from: int = 0


# ------------------------------------------------------------------------------ training loop
def _train(stage, model, loss_fn, *, steps, optimizer, scheduler, store: CheckpointStore, fingerprint,
           settings: DDM2Settings, seed, device, progress, callback, label) -> StageOutcome:
    """Run (or resume, or skip) one training stage; ``loss_fn(generator)`` returns a loss."""
    payload = store.load(stage, fingerprint)
    if payload is not None and payload.get("complete"):
        model.load_state_dict(payload["model"])
        LOGGER.info("DDM2 %s: found complete in %s; skipped.", label, store.path(stage))
        return StageOutcome(list(payload.get("losses", [])), float(payload.get("seconds", 0.0)), True)
    start, losses, previous_seconds = 0, [], 0.0
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start = int(payload["step"])
        losses = list(payload.get("losses", []))[:start]
        previous_seconds = float(payload.get("seconds", 0.0))
        LOGGER.info("DDM2 %s: resuming at step %d of %d from %s.", label, start, steps, store.path(stage))

    started = time.perf_counter()
    pending = []

    def flush():
        if pending:
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def snapshot(step, complete):
        flush()
        body = {
            "fingerprint": fingerprint, "complete": complete, "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "losses": list(losses), "seconds": previous_seconds + time.perf_counter() - started,
        }
        if not complete:
            body["optimizer"] = optimizer.state_dict()
            body["scheduler"] = scheduler.state_dict()
        store.save(stage, body)
        return body["seconds"]

    model.train()
    last_save = time.monotonic()
    with progress_bar(total=steps, initial=start, desc=f"DDM2 {label}", unit="step",
                      disable=not progress) as bar:
        for step in range(start, steps):
            generator = step_generator(seed, stage, step)
            with autocast(device, settings.precision):
                loss = loss_fn(generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            pending.append(loss.detach())
            done = step + 1
            if len(pending) >= LOSS_FETCH_EVERY or done == steps:
                flush()
                bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
            bar.update(1)
            if done < steps and store.enabled and (
                done % settings.checkpoint_every == 0
                or time.monotonic() - last_save >= settings.checkpoint_seconds
            ):
                snapshot(done, complete=False)
                last_save = time.monotonic()
            if callback is not None:
                callback(stage, done)
    seconds = snapshot(steps, complete=True)
    model.eval()
    return StageOutcome(losses, seconds, False, start)


def _draw_batch(generator, group: GroupTensors, batch_size, augment):
    v = torch.randint(group.n_volumes, (batch_size,), generator=generator)
    z = torch.randint(group.n_slices, (batch_size,), generator=generator)
    flips = torch.rand((2, batch_size), generator=generator) < 0.5
    if not augment:
        flips.zero_()
    return v, z, flips


# ------------------------------------------------------------------------------------ stage I
def run_stage1(model: UNet, group: GroupTensors, settings: DDM2Settings, *, seed, device, store,
               fingerprint, progress=True, callback=None) -> StageOutcome:
    """Train the Stage-I network in place (or load it from the store)."""
    volumes = group.volumes
    compiled = MaybeCompiled(model, False, device)  # Stage I is short; compiling rarely pays

    def loss_fn(generator):
        v, z, flips = _draw_batch(generator, group, settings.batch_size, settings.augment)
        v, z, flips = v.to(device), z.to(device), flips.to(device)
        condition, features = group.stage1_inputs(v, z)  # (B, n, H, W), (B, D) or None
        target = volumes[v, z].unsqueeze(1)
        condition, target = random_flips([condition, target], flips[0], flips[1])
        return F.mse_loss(compiled(condition, features).float(), target)

    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.stage1_period, eta_min=settings.stage1_min_learning_rate
    )
    return _train("stage1", model, loss_fn, steps=settings.stage1_steps, optimizer=optimizer,
                  scheduler=scheduler, store=store, fingerprint=fingerprint, settings=settings,
                  seed=seed, device=device, progress=progress, callback=callback, label="Stage I")


# ----------------------------------------------------------------------------------- stage II
@torch.no_grad()
def stage1_estimates(model: UNet, group: GroupTensors, *, batch_size: int) -> torch.Tensor:
    """The Stage-I estimate ``x_hat`` of every slice, ``(N, Z, H, W)`` float32 (fp32 always)."""
    model.eval()
    n, z = group.n_volumes, group.n_slices
    out = torch.empty_like(group.volumes)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(z)).to(group.volumes.device)
    for start in range(0, pairs.shape[0], batch_size):
        v, s = pairs[start:start + batch_size].unbind(1)
        out[v, s] = model(*group.stage1_inputs(v, s))[:, 0].float()
    return out


def run_stage2(model: UNet, group: GroupTensors, settings: DDM2Settings, schedule: NoiseSchedule, *,
               store, fingerprint):
    """Stage-I estimates and matched steps: ``(x_hat (N, Z, H, W), t_star (N, Z), outcome)``."""
    payload = store.load("stage2", fingerprint)
    device = group.volumes.device
    if payload is not None and payload.get("complete"):
        LOGGER.info("DDM2 Stage II: found complete in %s; skipped.", store.path("stage2"))
        return (payload["x_hat"].to(device), payload["t_star"].to(device),
                StageOutcome([], float(payload.get("seconds", 0.0)), True))
    started = time.perf_counter()
    x_hat = stage1_estimates(model, group, batch_size=settings.inference_batch_size)
    n, z, h, w = group.volumes.shape
    t_star = match_states(group.volumes.reshape(n * z, h, w), x_hat.reshape(n * z, h, w),
                          schedule.to(device)).reshape(n, z)
    seconds = time.perf_counter() - started
    store.save("stage2", {"fingerprint": fingerprint, "complete": True, "x_hat": x_hat.cpu(),
                          "t_star": t_star.cpu(), "seconds": seconds})
    return x_hat, t_star, StageOutcome([], seconds, False)


# ---------------------------------------------------------------------------------- stage III
def run_stage3(model: UNet, group: GroupTensors, x_hat: torch.Tensor, t_star: torch.Tensor,
               settings: DDM2Settings, schedule: NoiseSchedule, *, seed, device, store, fingerprint,
               progress=True, callback=None) -> StageOutcome:
    """Train the Stage-III denoiser in place (or load it from the store).

    Per sample: ``l1 = sqrt(alpha_bar[t*])``; the residual noise ``(X - l1 x_hat) / l2`` is
    mean-calibrated (eq. 4) and pixel-shuffled; a step ``t ~ U{1..t_max}`` and a continuous
    level ``gamma ~ U(sqrt(ab[t]), sqrt(ab[t-1]))`` are drawn (``t ~ U{t_min..t_max}`` for
    ``"matched"``); the network sees
    ``gamma x_hat' + sqrt(1 - gamma^2) eps'`` with ``gamma`` and is trained to output the raw
    noisy slice ``X`` (J-invariance: ``X`` itself only enters through its shuffled noise).
    ``t_max`` is ``T`` for ``stage3_range="full"`` (the paper) and
    :func:`~bids_denoise.denoise.ddm2.schedule.focused_max_step` of the largest ``t*`` for
    ``"focused"`` and ``"matched"``: the states inference never visits take no training steps.
    ``"matched"`` also starts at :func:`~bids_denoise.denoise.ddm2.schedule.matched_min_step` of
    the smallest ``t*`` (the levels a one-step sampler visits; ``t_min = 1`` otherwise).

    Unlike the reference, ``x_hat`` is the Stage-II estimate of the unflipped slice, flipped with
    the sample, instead of a fresh Stage-I forward of the flipped neighbours: the same estimate
    up to the network's flip equivariance, without a Stage-I forward per step.
    """
    volumes = group.volumes
    schedule = schedule.to(device)
    compiled = MaybeCompiled(model, settings.compile, device)
    h, w = volumes.shape[-2:]
    t_max = stage3_max_step(t_star, schedule, settings)
    t_min = min(stage3_min_step(t_star, schedule, settings), t_max)

    def loss_fn(generator):
        v, z, flips = _draw_batch(generator, group, settings.batch_size, settings.augment)
        t = torch.randint(t_min, t_max + 1, (settings.batch_size,), generator=generator)
        u = torch.rand(settings.batch_size, generator=generator, dtype=torch.float64)
        permutation = torch.randperm(h * w, generator=generator)
        v, z, flips, t, u = (x.to(device) for x in (v, z, flips, t, u))
        permutation = permutation.to(device)
        noisy = volumes[v, z].unsqueeze(1)
        estimate = x_hat[v, z].unsqueeze(1)
        noisy, estimate = random_flips([noisy, estimate], flips[0], flips[1])
        signal = schedule.signal[t_star[v, z]].to(torch.float32)
        eps, estimate = calibrated_noise(noisy, estimate, signal)
        eps = shuffle_pixels(eps, permutation)
        gamma = schedule.sample_levels(t, u)
        g = gamma.view(-1, 1, 1, 1)
        synthetic = g * estimate + (1.0 - g.square()).clamp_min(0.0).sqrt() * eps
        return F.mse_loss(compiled(synthetic, gamma).float(), noisy)

    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    if settings.stage3_min_learning_rate is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant, as the reference
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.stage3_steps, eta_min=settings.stage3_min_learning_rate)
    return _train("stage3", model, loss_fn, steps=settings.stage3_steps, optimizer=optimizer,
                  scheduler=scheduler, store=store, fingerprint=fingerprint, settings=settings,
                  seed=seed, device=device, progress=progress, callback=callback, label="Stage III")


def stage3_max_step(t_star: torch.Tensor, schedule: NoiseSchedule, settings: DDM2Settings) -> int:
    """The largest diffusion step Stage III trains on (see :func:`run_stage3`)."""
    if settings.stage3_range == "full" or t_star.numel() == 0:
        return schedule.n_timesteps
    return focused_max_step(int(t_star.max()), schedule, settings.stage3_margin)


def stage3_min_step(t_star: torch.Tensor, schedule: NoiseSchedule, settings: DDM2Settings) -> int:
    """The smallest diffusion step Stage III trains on (see :func:`run_stage3`)."""
    if settings.stage3_range != "matched" or t_star.numel() == 0:
        return 1
    return matched_min_step(int(t_star.min()), schedule, settings.stage3_margin)
