"""The base of every denoiser interface: read one group, run the engine, save the results.

A method's interface declares its own inputs on top of :class:`DenoiserInputSpec` and
implements only :meth:`GroupDenoiser._denoise`; the base class owns reading the group, the
device, the thread cap, the engine's warnings (logged, and their small-group notes), errors
(a ``ValueError`` of the engine becomes a :class:`~bids_denoise.errors.DataError` naming the
file), the error estimate (a second run on perturbed data, when the run's noise map and head
mask are given; :mod:`bids_denoise.denoise.error`) and saving the denoised group and its noise
map.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.denoise.device import resolve_device
from bids_denoise.denoise.shells import B0_THRESHOLD
from bids_denoise.errors import DataError
from bids_denoise.utils.images import read_group, save_like
from bids_denoise.utils.threads import limit_threads

LOGGER = logging.getLogger("nipype.interface")


@dataclass
class DenoisedGroup:
    """What an engine returns for one group."""

    denoised: np.ndarray  # same shape as the group, float32
    noise: np.ndarray  # 3D residual RMS
    n_denoised: int
    device: str
    run_time: float | None = None  # the engine's own timing, when it has one
    extra: dict = field(default_factory=dict)  # method-specific results for _save_extra


class DenoiserInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D image of one group (b0s or one shell)")
    bval_file = File(exists=True, mandatory=True, desc="b-values of in_file")
    mask_file = File(exists=True, desc="voxels the fits use (every voxel is denoised)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    b0_denoising = traits.Bool(True, usedefault=True, desc="denoise a b0 group (else copy it)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="PyTorch device")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads (BLAS and PyTorch)")
    sigma_file = File(exists=True, desc="the run's noise map (3D); with region_file, the error is estimated")
    region_file = File(exists=True, desc="the head mask the error estimate is pooled over (3D)")
    rician_correction = traits.Enum("none", "mean", "moments", usedefault=True,
                                    desc="the correction applied after merging (the estimate is of its output)")
    estimate_error = traits.Bool(True, usedefault=True, desc="estimate the error (one more run)")


class DenoiserOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised group, float32")
    noise_file = File(exists=True, desc="3D residual RMS of the denoised volumes")
    n_denoised = traits.Int(desc="volumes that were denoised (0 if copied through)")
    device = traits.Str(desc="the device that ran")
    run_time = traits.Float(desc="seconds spent in the denoiser")
    error_estimate = traits.Dict(desc="ErrorEstimate.as_dict() plus Seconds; empty when not estimated")


class GroupDenoiser(SimpleInterface):
    """Denoise one volume group with a method's engine (subclasses implement ``_denoise``)."""

    input_spec = DenoiserInputSpec
    output_spec = DenoiserOutputSpec

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        raise NotImplementedError

    def _save_extra(self, result: DenoisedGroup, img, runtime) -> None:
        """Write method-specific outputs (default: none)."""

    def _denoise_again(self, data, bvals, mask, device, first: DenoisedGroup) -> np.ndarray:
        """The denoised values of perturbed ``data`` for the error estimate (default: run the
        method again; ``first`` is the first run, e.g. to reuse a trained model)."""
        return self._denoise(data, bvals, mask, device).denoised

    def _run_interface(self, runtime):
        mask_file = self.inputs.mask_file if isdefined(self.inputs.mask_file) else None
        img, data, bvals, mask = read_group(self.inputs.in_file, self.inputs.bval_file, mask_file)
        device = resolve_device(self.inputs.device)
        started = time.perf_counter()
        with limit_threads(self.inputs.num_threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                result = self._denoise(data, bvals, mask, device)
            except ValueError as err:
                raise DataError(f"{self.inputs.in_file}: {err}") from err
        for warning in caught:
            LOGGER.warning("%s: %s", self.inputs.in_file, warning.message)
        seconds = time.perf_counter() - started if result.run_time is None else result.run_time
        self._results["error_estimate"] = self._estimate_error(data, bvals, mask, device, result)
        self._results["run_time"] = round(seconds, 3)
        self._results["device"] = str(result.device)
        self._results["n_denoised"] = int(result.n_denoised)
        self._results["out_file"] = save_like(img, result.denoised, runtime.cwd, "denoised_dwi.nii.gz")
        self._results["noise_file"] = save_like(img, result.noise, runtime.cwd, "noise_dwimap.nii.gz")
        self._save_extra(result, img, runtime)
        return runtime

    def _estimate_error(self, data, bvals, mask, device, result: DenoisedGroup) -> dict:
        """Monte-Carlo SURE of this group's output, or ``{}`` without a noise map and head mask."""
        if not (self.inputs.estimate_error and isdefined(self.inputs.sigma_file) and isdefined(self.inputs.region_file)):
            return {}
        import nibabel as nb

        from bids_denoise.denoise.error import estimate_error, perturbation

        started = time.perf_counter()
        sigma = np.asanyarray(nb.load(self.inputs.sigma_file).dataobj, dtype=np.float32)
        region = np.asanyarray(nb.load(self.inputs.region_file).dataobj) > 0
        if sigma.shape != data.shape[:3] or region.shape != data.shape[:3]:
            raise DataError(f"{self.inputs.sigma_file}: noise map {sigma.shape} or head mask {region.shape} does "
                            f"not fit the group {data.shape}")
        probe, epsilon = perturbation(data, sigma, region)
        with limit_threads(self.inputs.num_threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the first run logged them
            perturbed = self._denoise_again(np.asarray(data, np.float32) + epsilon * probe, bvals, mask, device,
                                            result)
        estimate = estimate_error(noisy=data, denoised=result.denoised, perturbed=perturbed, probe=probe,
                                  epsilon=epsilon, sigma=sigma, region=region,
                                  rician_correction=self.inputs.rician_correction)
        return {**estimate.as_dict(), "Seconds": round(time.perf_counter() - started, 3)}
