"""DDM2 presets, the resolved settings of a run, and the runtime cost model.

Presets
-------
=========================  ===================  ===================  ====================
setting                    ``paper``            ``fast``             ``smoke``
=========================  ===================  ===================  ====================
Stage I steps              10,000               3,000                30
Stage III steps            100,000              20,000               40
training batch (slices)    32                   32                   4
sampling steps             0 = full chain       25 (strided, DDIM)   6 (strided)
                           (t* steps from t*)
flips averaged             4                    1                    2
inference batch (slices)   64                   256                  16
precision                  fp32                 bf16 autocast        fp32
torch.compile              no                   yes (CUDA only)      no
eta (sampling noise)       1 (ancestral)        0 (deterministic)    0
U-Net width / levels       32 / 1,2,4,8,8       32 / 1,2,4,8,8       8 / 1,2,2
res blocks / attention     2 / level 3 + mid    2 / level 3 + mid    1 / level 2 + mid
learning rate (Adam)       1e-4                 1e-4                 2e-3
checkpoint every (steps)   1,000                1,000                10
=========================  ===================  ===================  ====================

``paper`` follows the reference configuration for Stanford HARDI (``hardi_150``): n = 2
neighbour volumes, 10k Stage-I steps (the Sherbrooke config used 100k), 100k Stage-III steps,
batch 32, Adam 1e-4 (Stage I: cosine annealing to 1e-6 over 100,000 steps, the reference's
effectively constant schedule), 4-flip averaging and the full ancestral chain from
each slice's ``t*``. ``fast`` is the practical GPU setting of the cost notes (about 30 minutes for
a 96x96x60x64 group on an H100; its step counts are not validated against ``paper``). ``smoke``
is a tiny network for CPU tests only: it checks the plumbing, not the denoising.

Every count can be overridden (:func:`resolve_settings`, the ``--ddm2-*`` options).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from bids_denoise.denoise.ddm2.schedule import BETA_END, BETA_START, N_TIMESTEPS, RAMP_FRACTION
from bids_denoise.denoise.ddm2.unet import NetworkSettings, forward_flops

from bids_denoise.denoise.methods.ddm2 import FLIP_COUNTS, PRECISIONS, PRESETS  # noqa: E402 - one source
#: Overridable counts (keyword -> settings field), as exposed on the command line.
COUNT_OVERRIDES = (
    "stage1_steps", "stage3_steps", "sampling_steps", "batch_size", "flips", "inference_batch_size",
)


@dataclass(frozen=True)
class DDM2Settings:
    """Every setting of one DDM2 run (a preset plus overrides).

    Attributes
    ----------
    preset : {"paper", "fast", "smoke"}
    network : NetworkSettings
        Size of both U-Nets.
    n_neighbours : int
        Input volumes of the Stage-I network (paper: 2).
    stage1_steps, stage3_steps : int
        Optimiser steps of Stage I and Stage III.
    batch_size : int
        Training batch (slices).
    learning_rate : float
        Adam learning rate of both stages.
    stage1_min_learning_rate, stage1_lr_period : float, int
        Stage I anneals its learning rate along a cosine to ``stage1_min_learning_rate`` over
        ``stage1_lr_period`` steps. The reference sets the period to its Stage-III step count
        (100,000), so with 10,000 Stage-I steps the rate only falls to about 0.98e-4; the period is
        a fixed number here, so that changing the Stage-III steps does not invalidate Stage I.
    sampling_steps : int
        0: the full chain (``t*`` reverse steps per slice). ``k > 0``: at most ``k`` strided
        steps from ``t*`` to 0.
    eta : float
        Sampling noise: 1 adds the DDPM posterior noise (ancestral sampling; with
        ``sampling_steps = 0`` this is exactly the paper's sampler), 0 is deterministic (DDIM).
    flips : {1, 2, 4}
        Flip variants averaged at every reverse step (paper: 4).
    inference_batch_size : int
        Slices denoised together, each at its own noise level.
    precision : {"fp32", "bf16"}
        ``bf16``: bfloat16 autocast (CUDA; also accepted on CPU, where it is slow).
    compile : bool
        ``torch.compile`` the networks for Stage III and inference (CUDA only; falls back to
        eager mode if compilation fails).
    checkpoint_every : int
        Stage I/III save a resumable checkpoint every this many steps (and at least every
        :attr:`checkpoint_seconds`).
    checkpoint_seconds : float
    augment : bool
        Random joint flips of inputs and targets during training (reference: yes).
    n_timesteps, beta_start, beta_end, ramp_fraction
        The reverse warm-up schedule.
    """

    preset: str = "paper"
    network: NetworkSettings = field(default_factory=NetworkSettings)
    n_neighbours: int = 2
    stage1_steps: int = 10_000
    stage3_steps: int = 100_000
    batch_size: int = 32
    learning_rate: float = 1e-4
    stage1_min_learning_rate: float = 1e-6
    stage1_lr_period: int = 100_000
    sampling_steps: int = 0
    eta: float = 1.0
    flips: int = 4
    inference_batch_size: int = 64
    precision: str = "fp32"
    compile: bool = False
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 600.0
    augment: bool = True
    n_timesteps: int = N_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    ramp_fraction: float = RAMP_FRACTION

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name in ("stage1_steps", "stage3_steps", "batch_size", "inference_batch_size",
                     "checkpoint_every", "n_neighbours", "stage1_lr_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.sampling_steps, bool) or not isinstance(self.sampling_steps, int) \
                or self.sampling_steps < 0:
            raise ValueError(f"sampling_steps must be an integer >= 0 (0 = full chain), got {self.sampling_steps!r}")
        if self.flips not in FLIP_COUNTS:
            raise ValueError(f"flips must be one of {FLIP_COUNTS}, got {self.flips!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not self.learning_rate > 0 or not self.stage1_min_learning_rate >= 0:
            raise ValueError("learning rates must be positive")

    def as_dict(self) -> dict:
        """JSON-friendly dictionary (the network as a nested dictionary)."""
        values = dataclasses.asdict(self)
        values["network"]["channel_mults"] = list(self.network.channel_mults)
        values["network"]["attention_levels"] = list(self.network.attention_levels)
        return values

    @property
    def steps(self) -> dict:
        """The step counts, as recorded in the history file."""
        return {"stage1": self.stage1_steps, "stage3": self.stage3_steps, "sampling": self.sampling_steps}


_PRESET_VALUES = {
    "paper": dict(),
    "fast": dict(
        stage1_steps=3000, stage3_steps=20_000, sampling_steps=25, eta=0.0, flips=1,
        inference_batch_size=256, precision="bf16", compile=True,
    ),
    "smoke": dict(
        network=NetworkSettings(width=8, channel_mults=(1, 2, 2), res_blocks=1, attention_levels=(2,),
                                norm_groups=4),
        stage1_steps=30, stage3_steps=40, batch_size=4, learning_rate=2e-3, sampling_steps=6, eta=0.0,
        flips=2, inference_batch_size=16, checkpoint_every=10,
    ),
}


def preset_settings(preset: str) -> DDM2Settings:
    """The settings of a preset, without overrides."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return DDM2Settings(preset=preset, **_PRESET_VALUES[preset])


def resolve_settings(preset: str = "paper", **overrides) -> DDM2Settings:
    """A preset with overrides; ``None`` values keep the preset's value.

    Any :class:`DDM2Settings` field can be overridden (e.g. ``stage1_steps=500``,
    ``precision="bf16"``, ``network=NetworkSettings(width=16)``).
    """
    base = preset_settings(preset)
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(DDM2Settings)}
    if unknown:
        raise ValueError(f"unknown DDM2 setting(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, **changes)


# -------------------------------------------------------------------------------- cost model
#: Sustained throughput (FLOP/s) by device and work kind: "train" (forward + backward, batch of
#: slices) and "infer" (batched forwards). CUDA figures were measured on an H100 with a
#: re-expression of this architecture (shared/reference/ddm2.md section 5.2); CPU figures are for
#: 2 cores of an AMD EPYC and scale with the number of threads.
THROUGHPUT = {
    ("cuda", "fp32"): {"train": 20e12, "infer": 50e12},
    ("cuda", "bf16"): {"train": 25e12, "infer": 140e12},
    ("cpu", "fp32"): {"train": 12e9, "infer": 20e9},
    ("cpu", "bf16"): {"train": 6e9, "infer": 10e9},
}
#: Threads behind the CPU figures of :data:`THROUGHPUT`.
CPU_REFERENCE_THREADS = 2
#: Mean ``t*`` assumed for the full chain (realistic dMRI noise gives 10 to 450).
ASSUMED_MEAN_T_STAR = 300
#: Seconds of ``torch.compile`` per network and shape, when compiling.
COMPILE_SECONDS = 120.0
#: Fixed seconds per training step and per batched network call (Python and kernel-launch
#: overhead, which dominates small networks and slices).
CALL_OVERHEAD = {"cpu": {"train": 0.03, "infer": 0.01}, "cuda": {"train": 0.005, "infer": 0.002}}


@dataclass(frozen=True)
class RuntimeEstimate:
    """Estimated seconds of each stage of one group (see :func:`estimate_runtime`)."""

    stage1: float
    stage2: float
    stage3: float
    inference: float
    overhead: float

    @property
    def total(self) -> float:
        return self.stage1 + self.stage2 + self.stage3 + self.inference + self.overhead


def estimate_runtime(shape, preset: str = "paper", *, device: str = "cpu", n_threads: int | None = None,
                     mean_t_star: float = ASSUMED_MEAN_T_STAR, **overrides) -> RuntimeEstimate:
    """Estimate the time of one DDM2 run on one group of ``shape = (x, y, z, N)``.

    FLOPs are counted exactly for the network and slice size
    (:func:`~bids_denoise.denoise.ddm2.unet.forward_flops`); backward passes count twice a
    forward. They are divided by the sustained throughput of :data:`THROUGHPUT` for the device
    and precision, and a fixed
    :data:`CALL_OVERHEAD` is added per training step and per batched network call. Stage III
    reuses the Stage-I estimates computed in Stage II, so it costs one forward and one backward
    per slice. The CUDA figures assume an H100; older GPUs are several times slower.

    Parameters
    ----------
    shape : tuple of int
        ``(x, y, z, N)`` of the diffusion-weighted group (``N`` volumes).
    preset : str
    device : {"cpu", "cuda"}
    n_threads : int, optional
        CPU threads (default: the reference 2).
    mean_t_star : float
        Mean matched step, for the full chain.
    **overrides
        As for :func:`resolve_settings`.
    """
    settings = resolve_settings(preset, **overrides)
    nx, ny, nz, n_volumes = (int(s) for s in shape)
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    rate = dict(THROUGHPUT[(device_type, settings.precision)])
    if device_type == "cpu":
        factor = max(1, n_threads or CPU_REFERENCE_THREADS) / CPU_REFERENCE_THREADS
        rate = {k: v * factor for k, v in rate.items()}
    stage1_flops = forward_flops(settings.network, nx, ny, in_channels=settings.n_neighbours, level_input=False)
    stage3_flops = forward_flops(settings.network, nx, ny, in_channels=1, level_input=True)
    n_slices = nz * n_volumes
    if settings.sampling_steps > 0:
        chain = min(float(settings.sampling_steps), mean_t_star)
    else:
        chain = mean_t_star
    compile_seconds = 2 * COMPILE_SECONDS if settings.compile and device_type == "cuda" else 0.0
    overhead = CALL_OVERHEAD[device_type]
    batches = math.ceil(n_slices / settings.inference_batch_size)
    return RuntimeEstimate(
        stage1=settings.stage1_steps * (settings.batch_size * 3 * stage1_flops / rate["train"] + overhead["train"]),
        stage2=n_slices * stage1_flops / rate["infer"] + batches * overhead["infer"],
        stage3=settings.stage3_steps * (settings.batch_size * 3 * stage3_flops / rate["train"] + overhead["train"]),
        inference=(n_slices * chain * settings.flips * stage3_flops / rate["infer"]
                   + batches * chain * overhead["infer"]),
        overhead=compile_seconds,
    )


def estimate_runtime_seconds(shape, preset: str = "paper", *, device: str = "cpu",
                             n_threads: int | None = None, **overrides) -> float:
    """Total estimated seconds of :func:`estimate_runtime` (one group)."""
    return estimate_runtime(shape, preset, device=device, n_threads=n_threads, **overrides).total


def estimate_series_seconds(shape, bvals, preset: str = "paper", *, device: str = "cpu",
                            n_threads: int | None = None, b0_threshold: float | None = None,
                            shell_tolerance: float | None = None, grouping: str = "shell",
                            **overrides) -> float:
    """Estimated seconds of DDM2 on a whole series: the sum over its diffusion-weighted groups
    (one model each; b0s cost nothing in comparison). Same grouping rules as the workflow."""
    from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE, group_volumes

    groups = group_volumes(
        bvals, b0_threshold=B0_THRESHOLD if b0_threshold is None else b0_threshold, grouping=grouping,
        shell_tolerance=SHELL_TOLERANCE if shell_tolerance is None else shell_tolerance,
    )
    return sum(
        estimate_runtime_seconds((*shape[:3], group.size), preset, device=device, n_threads=n_threads, **overrides)
        for group in groups if not group.is_b0 and group.size >= 2
    )


def estimate_memory_gb(shape) -> float:
    """Host memory (GB) of one DDM2 group of ``shape = (x, y, z, N)``: about ten float32 copies
    of the group (input, normalised volumes, estimates, output, float64 residuals) plus 1.5 GB
    for PyTorch and the CUDA context."""
    voxels = 1
    for size in shape:
        voxels *= int(size)
    return round(10 * 4 * voxels / 1e9 + 1.5, 2)


def sidecar_parameters(settings: DDM2Settings, *, seed: int = 0) -> dict:
    """The settings of a run as BIDS-style sidecar keys (``DenoisingParameters``)."""
    net = settings.network
    return {
        "Preset": settings.preset,
        "NeighbourVolumes": settings.n_neighbours,
        "Stage1Steps": settings.stage1_steps,
        "Stage3Steps": settings.stage3_steps,
        "BatchSize": settings.batch_size,
        "LearningRate": settings.learning_rate,
        "SamplingSteps": settings.sampling_steps,
        "SamplingChain": "full" if settings.sampling_steps == 0 else "strided",
        "SamplingEta": settings.eta,
        "Flips": settings.flips,
        "InferenceBatchSize": settings.inference_batch_size,
        "Precision": settings.precision,
        "TorchCompile": settings.compile,
        "Seed": int(seed),
        "Network": {
            "Width": net.width,
            "ChannelMultipliers": list(net.channel_mults),
            "ResBlocks": net.res_blocks,
            "AttentionLevels": list(net.attention_levels),
            "NormGroups": net.norm_groups,
        },
        "NoiseSchedule": {
            "Type": "reverse warm-up",
            "Timesteps": settings.n_timesteps,
            "BetaStart": settings.beta_start,
            "BetaEnd": settings.beta_end,
            "RampFraction": settings.ramp_fraction,
        },
    }


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``, ``"5.2 days"``."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
