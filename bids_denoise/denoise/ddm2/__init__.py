"""DDM2: self-supervised denoising of diffusion MRI with a generative diffusion model.

Xiang, Wang, Zhang, Chen and Zaharchuk, "DDM2: Self-Supervised Diffusion MRI Denoising with
Generative Diffusion Models", ICLR 2023. Our own PyTorch implementation, written from the paper
and from notes on the reference implementation (shared/reference/ddm2.md).

A pure algorithm package: no Nipype, and no file I/O except the stage checkpoints that
:mod:`~bids_denoise.denoise.ddm2.checkpoints` writes into a directory chosen by the caller.

Modules
-------
``schedule``     reverse warm-up beta schedule, Stage-II state matching, strided step pairs
``unet``         the U-Net of both stages, its FLOP count
``data``         per-volume normalisation, Stage-I input table (by direction or acquisition
                 order), flips, noise shuffle, eq. 4 calibration
``settings``     presets, :class:`DDM2Settings`
``cost``         the run-time model, calibrated by timing the network on the device
``stages``       Stage I, II and III on one in-memory group
``sampling``     batched reverse chains, each slice from its own ``t*``
``checkpoints``  atomic, fingerprinted stage checkpoints
``pipeline``     the entry point :func:`ddm2_denoise`
"""

from bids_denoise.denoise.ddm2.cost import (
    Calibration,
    calibrate,
    estimate_runtime,
    estimate_runtime_seconds,
    format_duration,
)
from bids_denoise.denoise.ddm2.pipeline import DDM2Result, ddm2_denoise
from bids_denoise.denoise.ddm2.settings import (
    PRECISIONS,
    PRESETS,
    DDM2Settings,
    preset_settings,
    resolve_settings,
)
from bids_denoise.denoise.ddm2.unet import NetworkSettings

__all__ = [
    "Calibration",
    "DDM2Result",
    "DDM2Settings",
    "NetworkSettings",
    "PRECISIONS",
    "PRESETS",
    "calibrate",
    "ddm2_denoise",
    "estimate_runtime",
    "estimate_runtime_seconds",
    "format_duration",
    "preset_settings",
    "resolve_settings",
]
