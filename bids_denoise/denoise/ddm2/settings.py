"""DDM2 presets and the resolved settings of a run.

Presets
-------
=========================  ==================  ===================  ===================  =================
setting                    ``paper``           ``fast``             ``cpu``              ``smoke``
=========================  ==================  ===================  ===================  =================
Stage I input volumes      2, acquisition      4, nearest dirs      4, nearest dirs      2, nearest dirs
Stage I steps              10,000              3,000                1,200                30
Stage III steps            100,000             20,000               2,500                40
Stage III levels trained   all (t = 1..1000)   up to max t* + 10 %  up to max t* + 10 %  up to max t* + 10 %
training batch (slices)    32                  32                   8                    4
sampling steps             0 = full chain      1 (x0 from t*)       1 (x0 from t*)       1
                           (t* steps from t*)
flips averaged             4                   4                    4                    2
scale (per volume)         maximum             99.9th percentile    99.9th percentile    99.9th percentile
precision                  fp32                bf16 autocast        fp32                 fp32
torch.compile              no                  yes (CUDA only)      no                   no
eta (sampling noise)       1 (ancestral)       0                    0                    0
U-Net width / levels       32 / 1,2,4,8,8      32 / 1,2,4,8,8       16 / 1,2,2           8 / 1,2,2
res blocks / attention     2 / level 3 + mid   2 / level 3 + mid    1 / level 2 + mid    1 / level 2 + mid
learning rate (Adam)       1e-4                1e-4                 1e-3                 2e-3
checkpoint every (steps)   1,000               1,000                200                  10
=========================  ==================  ===================  ===================  =================

``paper`` follows the reference configuration for Stanford HARDI (``hardi_150``): n = 2
neighbour volumes in acquisition order, each volume divided by its maximum, 10k Stage-I steps
(the Sherbrooke config used 100k), 100k Stage-III steps over the whole schedule, batch 32,
Adam 1e-4 (Stage I: cosine annealing to 1e-6 over 100,000 steps, the reference's effectively
constant schedule), 4-flip averaging and the full ancestral chain from each slice's ``t*``.

``fast`` is the practical GPU setting (about half an hour per 96x96x60x64 shell on an H100, by
the cost model; not measured on a GPU) and ``cpu`` the CPU setting (sized by the cost model for
one 73x100x5x60 shell in under 30 minutes on 2 cores; measured times and scores in
benchmarks/results/ddm2.md). Both use the changes of issue #14: Stage-I inputs chosen by
gradient direction (the noise-free ceiling measured in the issue: 49.4 dB for the two nearest
directions against 36.4 dB for volumes v+-1), a percentile scale, Stage III trained only on the
noise levels up to the matched ones (``focused``), and one x0 prediction from ``t*`` averaged
over 4 flips instead of a chain (on the cpu preset's own Stage III on hardi_snr10: the full
ancestral chain 3.1 dB lower at 45 times the time, 10 DDIM steps with 4 flips 0.02 dB lower at 8
times). Giving the Stage-I network the gradient directions (``direction_input``) did not help
(+0.01 dB, a higher white-matter FA error), so no preset uses it. 8 input directions instead of
4 gained 1.2 dB on Stage I alone, but the complete runs differed by only 0.05 dB and 0.003 in
white-matter FA error, so the presets keep 4. ``matched`` (only 0.9 to 1.1 times the matched
levels) scored 0.12-0.23 dB higher on hardi_snr10 with the same Stage I, but its white-matter
FA error was higher (0.059 against 0.051, at 1,500 and at 2,500 steps), so the presets keep
``focused``; see benchmarks/results/ddm2.md for this and the other ablations.
``smoke`` is a tiny network for tests: it checks the plumbing, not the denoising.

Every count can be overridden (:func:`resolve_settings`, the ``--ddm2-*`` options). The run-time
model is in :mod:`bids_denoise.denoise.ddm2.cost`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bids_denoise.denoise.ddm2.data import NEIGHBOUR_ORDERS, SCALE_PERCENTILE
from bids_denoise.denoise.ddm2.schedule import (
    BETA_END,
    BETA_START,
    N_TIMESTEPS,
    RAMP_FRACTION,
    NoiseSchedule,
    reverse_warmup_betas,
)
from bids_denoise.denoise.ddm2.unet import NetworkSettings
from bids_denoise.denoise.methods.ddm2 import (  # noqa: E402 - one source
    FLIP_COUNTS,
    PRECISIONS,
    PRESETS,
    STAGE3_RANGES,
)

#: Overridable counts (keyword -> settings field), as exposed on the command line.
COUNT_OVERRIDES = (
    "stage1_steps", "stage3_steps", "sampling_steps", "batch_size", "flips", "inference_batch_size",
    "n_neighbours",
)


@dataclass(frozen=True)
class DDM2Settings:
    """Every setting of one DDM2 run (a preset plus overrides).

    Attributes
    ----------
    preset : {"paper", "fast", "cpu", "smoke"}
    network : NetworkSettings
        Size of both U-Nets.
    n_neighbours : int
        Input volumes of the Stage-I network (paper: 2).
    neighbour_order : {"direction", "acquisition"}
        ``direction``: each volume's nearest gradient directions (``|g . g'|``), which needs the
        b-vectors (without them the run falls back to acquisition order with a warning).
        ``acquisition``: the neighbours in acquisition order, as the paper.
    direction_input : bool
        Also give the Stage-I network the gradient directions of its target and inputs (an
        embedded condition vector, :func:`~bids_denoise.denoise.ddm2.data.direction_features`);
        needs the b-vectors.
    scale_percentile : float
        Each volume is divided by this percentile of its values (100: its maximum, as the
        reference).
    stage1_steps, stage3_steps : int
        Optimiser steps of Stage I and Stage III.
    stage3_range : {"matched", "focused", "full"}
        Diffusion steps Stage III trains on: ``full`` draws ``t`` from the whole schedule (the
        paper); ``focused`` only up to the step whose noise level is ``1 + stage3_margin``
        times that of the largest matched ``t*`` (inference never visits noisier states);
        ``matched`` also starts at the step whose noise level is ``1 - stage3_margin`` times that
        of the smallest ``t*`` (a one-step sampler visits only the matched levels; needs
        ``sampling_steps = 1``).
    stage3_margin : float
        Relative noise-level margin of the focused and matched ranges.
    batch_size : int
        Training batch (slices).
    learning_rate : float
        Adam learning rate of both stages.
    stage1_min_learning_rate, stage1_lr_period : float, int
        Stage I anneals its learning rate along a cosine to ``stage1_min_learning_rate`` over
        ``stage1_lr_period`` steps (0: over its own steps). The reference sets the period to its
        Stage-III step count (100,000), so with 10,000 Stage-I steps the rate only falls to about
        0.98e-4.
    stage3_min_learning_rate : float or None
        ``None``: constant Stage-III rate (the reference). A number: cosine annealing to it
        over the Stage-III steps (short CPU runs end better with a decayed rate).
    sampling_steps : int
        0: the full chain (``t*`` reverse steps per slice). ``k > 0``: at most ``k`` strided
        steps from ``t*`` to 0; ``1`` is a single x0 prediction from ``t*``.
    eta : float
        Sampling noise: 1 adds the DDPM posterior noise (ancestral sampling; with
        ``sampling_steps = 0`` this is exactly the paper's sampler), 0 is deterministic (DDIM).
    flips : {1, 2, 4}
        Flip variants averaged at every reverse step (paper: 4).
    inference_batch_size : int
        Slices denoised together, each at its own noise level.
    precision : {"fp32", "bf16"}
        ``bf16``: bfloat16 autocast (CUDA; also accepted on CPU).
    compile : bool
        ``torch.compile`` the networks for Stage III and inference (CUDA only; falls back to
        eager mode, with a logged reason, if compilation fails).
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
    neighbour_order: str = "acquisition"
    direction_input: bool = False
    scale_percentile: float = 100.0
    stage1_steps: int = 10_000
    stage3_steps: int = 100_000
    stage3_range: str = "full"
    stage3_margin: float = 0.1
    batch_size: int = 32
    learning_rate: float = 1e-4
    stage1_min_learning_rate: float = 1e-6
    stage1_lr_period: int = 100_000
    stage3_min_learning_rate: float | None = None
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
                     "checkpoint_every", "n_neighbours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("sampling_steps", "stage1_lr_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.flips not in FLIP_COUNTS:
            raise ValueError(f"flips must be one of {FLIP_COUNTS}, got {self.flips!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.neighbour_order not in NEIGHBOUR_ORDERS:
            raise ValueError(f"neighbour_order must be one of {NEIGHBOUR_ORDERS}, got {self.neighbour_order!r}")
        if self.stage3_range not in STAGE3_RANGES:
            raise ValueError(f"stage3_range must be one of {STAGE3_RANGES}, got {self.stage3_range!r}")
        if self.stage3_range == "matched" and self.sampling_steps != 1:
            raise ValueError("stage3_range 'matched' trains only the matched noise levels, which only a "
                             f"one-step sampler visits; it needs sampling_steps 1, got {self.sampling_steps} "
                             "(use stage3_range 'focused' for a reverse chain)")
        if not 0 <= self.stage3_margin <= 10:
            raise ValueError(f"stage3_margin must be in [0, 10], got {self.stage3_margin}")
        if not 0 < self.scale_percentile <= 100:
            raise ValueError(f"scale_percentile must be in (0, 100], got {self.scale_percentile}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not self.learning_rate > 0 or not self.stage1_min_learning_rate >= 0 or \
                not (self.stage3_min_learning_rate is None or self.stage3_min_learning_rate >= 0):
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

    @property
    def stage1_period(self) -> int:
        """Steps of the Stage-I cosine (``stage1_lr_period``, or the Stage-I steps when 0)."""
        return self.stage1_lr_period or self.stage1_steps

    def noise_schedule(self, device="cpu") -> NoiseSchedule:
        """The reverse warm-up schedule of these settings (on ``device``)."""
        betas = reverse_warmup_betas(self.n_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                                     ramp_fraction=self.ramp_fraction)
        return NoiseSchedule(betas, device=device)


#: The changes of issue #14, shared by fast, cpu and smoke (see the module docstring for what
#: was measured and what was not).
_MEASURED = dict(
    neighbour_order="direction", scale_percentile=SCALE_PERCENTILE, stage3_range="focused",
    sampling_steps=1, eta=0.0,
)
_PRESET_VALUES = {
    "paper": dict(),
    "fast": dict(
        _MEASURED, n_neighbours=4, stage1_steps=3000, stage3_steps=20_000, flips=4,
        inference_batch_size=256, precision="bf16", compile=True,
    ),
    "cpu": dict(
        _MEASURED, n_neighbours=4,
        network=NetworkSettings(width=16, channel_mults=(1, 2, 2), res_blocks=1, attention_levels=(2,),
                                norm_groups=8),
        stage1_steps=1200, stage3_steps=2500, batch_size=8, learning_rate=1e-3, stage1_lr_period=0,
        stage1_min_learning_rate=1e-5, stage3_min_learning_rate=1e-5, flips=4, inference_batch_size=32,
        checkpoint_every=200,
    ),
    "smoke": dict(
        _MEASURED,
        network=NetworkSettings(width=8, channel_mults=(1, 2, 2), res_blocks=1, attention_levels=(2,),
                                norm_groups=4),
        stage1_steps=30, stage3_steps=40, batch_size=4, learning_rate=2e-3, flips=2,
        inference_batch_size=16, checkpoint_every=10,
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


def sidecar_parameters(settings: DDM2Settings, *, seed: int = 0) -> dict:
    """The settings of a run as BIDS-style sidecar keys (``DenoisingParameters``)."""
    net = settings.network
    return {
        "Preset": settings.preset,
        "NeighbourVolumes": settings.n_neighbours,
        "NeighbourOrder": settings.neighbour_order,
        "DirectionInput": settings.direction_input,
        "ScalePercentile": settings.scale_percentile,
        "Stage1Steps": settings.stage1_steps,
        "Stage3Steps": settings.stage3_steps,
        "Stage3Range": settings.stage3_range,
        "Stage3Margin": settings.stage3_margin,
        "BatchSize": settings.batch_size,
        "LearningRate": settings.learning_rate,
        "SamplingSteps": settings.sampling_steps,
        "SamplingChain": {0: "full", 1: "x0 from t*"}.get(settings.sampling_steps, "strided"),
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
