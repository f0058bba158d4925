"""How long DDM2 takes: a FLOP count divided by a throughput that is measured on the device.

The FLOPs of every network call are counted exactly for the network and slice size
(:func:`~bids_denoise.denoise.ddm2.unet.forward_flops`; a backward pass counts twice a
forward). The throughput comes from :func:`calibrate`, which times a few training steps and a
batched forward of the run's own network, at the run's slice size, precision and thread count,
on the device that will run it (a few seconds). Without a calibration, the fallback table
:data:`THROUGHPUT` is used. Its CUDA rows were measured on an H100 (shared/reference/ddm2.md
section 5.2). Its CPU rows are conservative round figures for 2 threads: the review in issue
#14 measured about 75 GFLOP/s per core in fp32 for training, and the calibration of the
``cpu`` preset's network on 2 cores of an Intel Xeon with AVX-512 and AMX measured about
120 GFLOP/s for training and 105 for inference (2 threads, another job on the machine); the
paper-sized network was not timed on the CPU for this table.

A calibration measures the machine as it is at start-up. When the load stays the same, the
estimate held within 2x of the measured run (tests/denoise/ddm2/test_quality.py); when other
jobs start after it, a CPU run can take several times longer (a Stage I measured 4.4x its
estimate on a 2-core machine that became overloaded; benchmarks/results/ddm2.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

from bids_denoise.denoise.ddm2.settings import DDM2Settings, resolve_settings
from bids_denoise.denoise.ddm2.unet import forward_flops

LOGGER = logging.getLogger(__name__)

#: Sustained throughput (FLOP/s) by device and precision for "train" (forward + backward +
#: Adam, per batch) and "infer" (batched forwards), used without a calibration. CPU rows: the
#: paper-sized network on 2 threads (small networks reach less; calibrate instead).
THROUGHPUT = {
    ("cuda", "fp32"): {"train": 20e12, "infer": 50e12},
    ("cuda", "bf16"): {"train": 25e12, "infer": 140e12},
    ("cpu", "fp32"): {"train": 60e9, "infer": 120e9},
    ("cpu", "bf16"): {"train": 60e9, "infer": 180e9},
}
#: Threads behind the CPU figures of :data:`THROUGHPUT`.
CPU_REFERENCE_THREADS = 2
#: Mean ``t*`` assumed for the full chain (realistic dMRI noise gives 10 to 450).
ASSUMED_MEAN_T_STAR = 300
#: Seconds of ``torch.compile`` per network and shape, when compiling.
COMPILE_SECONDS = 120.0
#: Fixed seconds per training step and per batched network call without a calibration
#: (Python and kernel-launch overhead, which dominates small networks and slices).
CALL_OVERHEAD = {"cpu": {"train": 0.03, "infer": 0.01}, "cuda": {"train": 0.005, "infer": 0.002}}
#: Seconds a calibration aims to spend timing each of its two measurements.
CALIBRATION_SECONDS = 1.5


@dataclass(frozen=True)
class Calibration:
    """Throughput measured on one device for one network, slice size and precision.

    Attributes
    ----------
    device : str
    n_threads : int or None
        CPU threads during the measurement (``None`` on CUDA).
    train_rate, infer_rate : float
        FLOP/s of training steps (at ``train_batch`` slices) and of batched forwards.
    train_batch, infer_batch : int
    seconds : float
        Time the calibration took.
    """

    device: str
    n_threads: int | None
    train_rate: float
    infer_rate: float
    train_batch: int
    infer_batch: int
    seconds: float

    def rates(self) -> dict:
        return {"train": self.train_rate, "infer": self.infer_rate}


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

    def as_dict(self) -> dict:
        return {"stage1": self.stage1, "stage2": self.stage2, "stage3": self.stage3,
                "inference": self.inference, "overhead": self.overhead, "total": self.total}


@contextlib.contextmanager
def _threads(n_threads):
    import torch

    previous = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device_type(device) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def _table_rates(device_type, precision, n_threads) -> dict:
    rate = dict(THROUGHPUT[(device_type, precision)])
    if device_type == "cpu":
        factor = max(1, n_threads or CPU_REFERENCE_THREADS) / CPU_REFERENCE_THREADS
        rate = {k: v * factor for k, v in rate.items()}
    return rate


def _timed(function, *, device, target_seconds, max_calls=5) -> float:
    """Seconds per call of ``function`` after one warm-up call (at least 2 timed calls)."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    function()
    sync()
    calls, started = 0, time.perf_counter()
    while calls < 2 or (calls < max_calls and time.perf_counter() - started < target_seconds):
        function()
        calls += 1
    sync()
    return (time.perf_counter() - started) / calls


def calibrate(settings: DDM2Settings, height: int, width: int, *, device="cpu", n_threads: int | None = None,
              target_seconds: float = CALIBRATION_SECONDS) -> Calibration:
    """Time training steps and batched forwards of the run's network on ``device``.

    The Stage-III network of ``settings`` is built with random weights and timed on random
    ``height x width`` slices: Adam steps at the run's batch size (fewer slices when one step
    would take longer than ``target_seconds``, as for the paper network on a CPU; the rate of a
    large network does not depend on the batch) and no-grad forwards at the inference batch
    size (capped the same way), in the run's precision and, on the CPU, with ``n_threads``
    threads and the channels-last layout the engine uses there.

    Returns
    -------
    Calibration
    """
    import torch

    from bids_denoise.denoise.ddm2.stages import autocast
    from bids_denoise.denoise.ddm2.unet import UNet

    started = time.perf_counter()
    device = torch.device(device)
    device_type = _device_type(device)
    flops = forward_flops(settings.network, height, width, in_channels=1, level_input=True)
    table = _table_rates(device_type, settings.precision, n_threads)
    per_sample = 3 * flops / table["train"]
    train_batch = max(1, min(settings.batch_size, int(target_seconds / 2 / per_sample)))
    infer_batch = max(1, min(settings.inference_batch_size, int(target_seconds / 2 / (flops / table["infer"]))))
    with _threads(n_threads if device_type == "cpu" else None), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNet(1, 1, network=settings.network, level_input=True).to(device)
        if device_type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(train_batch, 1, height, width, device=device)
        level = torch.rand(train_batch, device=device)

        def train_step():
            with autocast(device, settings.precision):
                loss = torch.nn.functional.mse_loss(model(x, level).float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        train_seconds = _timed(train_step, device=device, target_seconds=target_seconds)
        xi = torch.randn(infer_batch, 1, height, width, device=device)
        level_i = torch.rand(infer_batch, device=device)

        @torch.no_grad()
        def forward():
            with autocast(device, settings.precision):
                model(xi, level_i)

        infer_seconds = _timed(forward, device=device, target_seconds=target_seconds)
    calibration = Calibration(
        device=str(device), n_threads=torch.get_num_threads() if n_threads is None and device_type == "cpu"
        else (n_threads if device_type == "cpu" else None),
        train_rate=3 * train_batch * flops / train_seconds, infer_rate=infer_batch * flops / infer_seconds,
        train_batch=train_batch, infer_batch=infer_batch, seconds=time.perf_counter() - started,
    )
    LOGGER.info("DDM2 calibration on %s: %.1f GFLOP/s training (batch %d), %.1f GFLOP/s inference (batch %d), "
                "in %.1f s.", device, calibration.train_rate / 1e9, train_batch, calibration.infer_rate / 1e9,
                infer_batch, calibration.seconds)
    return calibration


def estimate_runtime(shape, preset: str = "paper", *, device: str = "cpu", n_threads: int | None = None,
                     mean_t_star: float = ASSUMED_MEAN_T_STAR, calibration: Calibration | None = None,
                     settings: DDM2Settings | None = None, **overrides) -> RuntimeEstimate:
    """Estimate the time of one DDM2 run on one group of ``shape = (x, y, z, N)``.

    Stage I and Stage III cost ``steps x batch x 3`` forwards of their network, Stage II one
    Stage-I forward per slice, inference ``chain x flips`` Stage-III forwards per slice (the
    chain is ``sampling_steps``, or the mean ``t*`` for the full chain); Stage III reuses the
    Stage-II estimates. FLOPs are divided by the calibrated rates when ``calibration`` is
    given (it includes the per-step overhead of the measured batch), else by
    :data:`THROUGHPUT` plus :data:`CALL_OVERHEAD` per call. The CUDA table assumes an H100.

    Parameters
    ----------
    shape : tuple of int
        ``(x, y, z, N)`` of the diffusion-weighted group (``N`` volumes).
    preset : str
    device : {"cpu", "cuda"}
    n_threads : int, optional
        CPU threads for the table (default: the reference 2); ignored with a calibration.
    mean_t_star : float
        Mean matched step, for the full chain.
    calibration : Calibration, optional
        From :func:`calibrate` with the same settings and slice size.
    settings : DDM2Settings, optional
        Complete settings (replace ``preset`` and ``overrides``).
    **overrides
        As for :func:`~bids_denoise.denoise.ddm2.settings.resolve_settings`.
    """
    settings = settings or resolve_settings(preset, **overrides)
    nx, ny, nz, n_volumes = (int(s) for s in shape)
    device_type = _device_type(device)
    if calibration is not None:
        rate, overhead = calibration.rates(), {"train": 0.0, "infer": 0.0}
    else:
        rate, overhead = _table_rates(device_type, settings.precision, n_threads), CALL_OVERHEAD[device_type]
    n_inputs = settings.n_neighbours
    stage1_flops = forward_flops(settings.network, nx, ny, in_channels=n_inputs, level_input=False)
    stage3_flops = forward_flops(settings.network, nx, ny, in_channels=1, level_input=True)
    n_slices = nz * n_volumes
    chain = mean_t_star if settings.sampling_steps == 0 else min(float(settings.sampling_steps), mean_t_star)
    compile_seconds = 2 * COMPILE_SECONDS if settings.compile and device_type == "cuda" else 0.0
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
                             n_threads: int | None = None, calibration: Calibration | None = None,
                             **overrides) -> float:
    """Total estimated seconds of :func:`estimate_runtime` (one group)."""
    return estimate_runtime(shape, preset, device=device, n_threads=n_threads, calibration=calibration,
                            **overrides).total


def estimate_series_seconds(shape, bvals, preset: str = "paper", *, device: str = "cpu",
                            n_threads: int | None = None, b0_threshold: float | None = None,
                            shell_tolerance: float | None = None, grouping: str = "shell",
                            calibration: Calibration | None = None, **overrides) -> float:
    """Estimated seconds of DDM2 on a whole series: the sum over its diffusion-weighted groups
    (one model each; b0s cost nothing in comparison). Same grouping rules as the workflow."""
    from bids_denoise.denoise.shells import B0_THRESHOLD, SHELL_TOLERANCE, group_volumes

    groups = group_volumes(
        bvals, b0_threshold=B0_THRESHOLD if b0_threshold is None else b0_threshold, grouping=grouping,
        shell_tolerance=SHELL_TOLERANCE if shell_tolerance is None else shell_tolerance,
    )
    return sum(
        estimate_runtime_seconds((*shape[:3], group.size), preset, device=device, n_threads=n_threads,
                                 calibration=calibration, **overrides)
        for group in groups if not group.is_b0 and group.size >= 2
    )


def estimate_memory_gb(shape) -> float:
    """Host memory (GB) of one DDM2 group of ``shape = (x, y, z, N)``: about eleven float32
    copies of the group (input, normalised volumes, Stage-I estimates twice, output, float64
    residuals) plus 1.5 GB for PyTorch and the CUDA context."""
    voxels = 1
    for size in shape:
        voxels *= int(size)
    return round(11 * 4 * voxels / 1e9 + 1.5, 2)


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
