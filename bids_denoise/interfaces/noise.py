"""Nipype interfaces for the noise of a run: measure it, and remove its Rician floor."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_denoise.denoise.shells import B0_THRESHOLD
from bids_denoise.utils.images import read_group, save_like
from bids_denoise.utils.threads import limit_threads


class _EstimateNoiseInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="4D DWI series")
    bval_file = File(exists=True, mandatory=True, desc="its b-values")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    patch_radius = traits.Either(traits.Int, traits.List(traits.Int, minlen=3, maxlen=3), default=2,
                                 usedefault=True, desc="MP-PCA window radius")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="PyTorch device")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads (BLAS and PyTorch)")


class _EstimateNoiseOutputSpec(TraitedSpec):
    sigma_file = File(exists=True, desc="3D Gaussian noise standard deviation (input units)")
    region_file = File(exists=True, desc="3D head mask: where the noise level and the errors are measured")
    noise_source = traits.Str(desc='"b0 repeats" or "MP-PCA"')
    noise_level = traits.Float(desc="RMS of the noise map in the head")
    noise_note = traits.Str(desc="how the level was found, one sentence")


class EstimateNoise(SimpleInterface):
    """Map the noise of a whole series (:func:`bids_denoise.denoise.noise.measure_noise`): MP-PCA
    over all volumes, corrected for the Rician variance, at the level of the b0 repeats when
    there are enough that agree. Also writes the head mask the level is measured in."""

    input_spec = _EstimateNoiseInputSpec
    output_spec = _EstimateNoiseOutputSpec

    def _run_interface(self, runtime):
        import warnings

        from bids_denoise.denoise.masks import brain_mask, mean_b0
        from bids_denoise.denoise.noise import measure_noise
        from bids_denoise.interfaces.mppca import fitted_radius

        img, data, bvals, _ = read_group(self.inputs.in_file, self.inputs.bval_file)
        region = brain_mask(mean_b0(data, bvals, self.inputs.b0_threshold))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the shrunk window is the method's business
            radius = fitted_radius(self.inputs.patch_radius, data.shape[:3])
        with limit_threads(self.inputs.num_threads):
            level = measure_noise(data, bvals, region=region, patch_radius=radius,
                                  b0_threshold=self.inputs.b0_threshold, device=self.inputs.device)
        self._results["sigma_file"] = save_like(img, level.sigma, runtime.cwd, "sigma_dwimap.nii.gz")
        self._results["region_file"] = save_like(img, region.astype(np.float32), runtime.cwd, "head_mask.nii.gz")
        self._results["noise_source"] = level.source
        self._results["noise_level"] = round(float(level.b0_level if level.source == "b0 repeats"
                                                   else level.mppca_level), 6)
        self._results["noise_note"] = level.note
        return runtime


class _RicianCorrectionInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="denoised 4D series")
    sigma_file = File(exists=True, mandatory=True, desc="3D noise standard deviation")
    method = traits.Enum("mean", "moments", usedefault=True, desc="which correction")


class _RicianCorrectionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the series without its Rician noise floor, float32")


class RicianCorrection(SimpleInterface):
    """Remove the Rician noise floor of a denoised series (:mod:`bids_denoise.denoise.rician`)."""

    input_spec = _RicianCorrectionInputSpec
    output_spec = _RicianCorrectionOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb

        from bids_denoise.denoise.rician import correct_rician_bias

        img = nb.load(self.inputs.in_file)
        sigma = np.asanyarray(nb.load(self.inputs.sigma_file).dataobj)
        corrected = correct_rician_bias(np.asanyarray(img.dataobj), sigma, method=self.inputs.method)
        self._results["out_file"] = save_like(img, corrected, runtime.cwd, "denoised_dwi.nii.gz")
        return runtime


__all__ = ["EstimateNoise", "RicianCorrection"]
