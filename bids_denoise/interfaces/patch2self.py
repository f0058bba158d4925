"""Nipype interface over the pure Patch2Self engine, for one volume group."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_denoise.denoise.patch2self import (
    CLIP_NEGATIVE_VALS,
    patch2self_with_noise,
    resolve_device,
)
from bids_denoise.denoise.shells import B0_THRESHOLD, VolumeGroup, copy_reason
from bids_denoise.errors import DataError
from bids_denoise.interfaces.shells import _save_like, read_group
from bids_denoise.utils.threads import limit_threads

LOGGER = logging.getLogger("nipype.interface")


class _Patch2SelfInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D image of one group (b0s or one shell)")
    bval_file = File(exists=True, mandatory=True, desc="b-values of in_file")
    mask_file = File(exists=True, desc="voxels the regressions are fitted on (all are predicted)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    b0_denoising = traits.Bool(True, usedefault=True, desc="denoise a b0 group (else copy it)")
    patch_radius = traits.Either(
        traits.Int, traits.List(traits.Int, minlen=3, maxlen=3), default=0, usedefault=True,
        desc="patch radius, 0..3, int or one per axis",
    )
    model = traits.Enum("ols", "ridge", "lasso", usedefault=True, desc="regression model")
    alpha = traits.Float(1.0, usedefault=True, desc="regularisation of ridge and lasso")
    clip_negative_vals = traits.Bool(CLIP_NEGATIVE_VALS, usedefault=True, desc="set negatives to 0")
    shift_intensity = traits.Bool(False, usedefault=True, desc="match each volume's minimum")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="PyTorch device")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads (BLAS and PyTorch)")


class _Patch2SelfOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised group, float32")
    noise_file = File(exists=True, desc="3D residual RMS of the denoised volumes")
    n_denoised = traits.Int(desc="volumes that were denoised (0 if copied through)")
    device = traits.Str(desc="the device that ran")
    run_time = traits.Float(desc="seconds spent in the denoiser")


class Patch2Self(SimpleInterface):
    """Denoise one group (all b0s, or the volumes of one shell) with Patch2Self.

    The group already is one regression group, so the engine runs with ``grouping="all"``.
    """

    input_spec = _Patch2SelfInputSpec
    output_spec = _Patch2SelfOutputSpec

    def _run_interface(self, runtime):
        img, data, bvals, mask = read_group(self.inputs.in_file, self.inputs.bval_file, self.inputs.mask_file)
        device = resolve_device(self.inputs.device)
        started = time.perf_counter()
        with limit_threads(self.inputs.num_threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                denoised, noise = patch2self_with_noise(
                    data, bvals, patch_radius=self.inputs.patch_radius, model=self.inputs.model,
                    alpha=self.inputs.alpha, b0_threshold=self.inputs.b0_threshold,
                    b0_denoising=self.inputs.b0_denoising, grouping="all", fit_mask=mask,
                    shift_intensity=self.inputs.shift_intensity,
                    clip_negative_vals=self.inputs.clip_negative_vals, device=device, progress=False,
                )
            except ValueError as err:
                raise DataError(f"{self.inputs.in_file}: {err}") from err
        for warning in caught:
            LOGGER.warning("%s: %s", self.inputs.in_file, warning.message)
        self._results["run_time"] = round(time.perf_counter() - started, 3)
        self._results["device"] = str(device)
        is_b0 = bool(np.all(bvals <= self.inputs.b0_threshold))
        group = VolumeGroup("b0" if is_b0 else "dwi", tuple(range(data.shape[3])), tuple(bvals), is_b0)
        copied = copy_reason(group, b0_denoising=self.inputs.b0_denoising) is not None
        self._results["n_denoised"] = 0 if copied else int(data.shape[3])
        self._results["out_file"] = _save_like(img, denoised, runtime.cwd, "denoised_dwi.nii.gz")
        self._results["noise_file"] = _save_like(img, noise, runtime.cwd, "noise_dwimap.nii.gz")
        return runtime
