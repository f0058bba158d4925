"""The Nipype interface of ``--method auto``: every candidate method on one group, the output
with the lowest estimated error kept."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import isdefined, traits

from bids_denoise.interfaces.denoiser import DenoisedGroup, DenoiserInputSpec, DenoiserOutputSpec, GroupDenoiser


class _AutoInputSpec(DenoiserInputSpec):
    candidates = traits.List(traits.Str, mandatory=True, minlen=1, desc="methods to try, by registry name")
    candidate_inputs = traits.Dict(desc="method name -> the inputs of its interface")


class _AutoOutputSpec(DenoiserOutputSpec):
    chosen = traits.Str(desc="the method whose output was kept")


class AutoDenoiser(GroupDenoiser):
    """Denoise one group with every candidate and keep the output with the lowest estimated
    error (:mod:`bids_denoise.denoise.error`); the run's noise map and head mask are needed.

    ``error_estimate`` then holds the kept output's estimate plus ``Chosen`` and
    ``Candidates`` (each candidate's estimated RMSE). Ties go to the earlier candidate.
    """

    input_spec = _AutoInputSpec
    output_spec = _AutoOutputSpec

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        import nibabel as nb

        from bids_denoise.denoise.error import estimate_error, perturbation
        from bids_denoise.denoise.methods import get_method

        if not (isdefined(self.inputs.sigma_file) and isdefined(self.inputs.region_file)):
            raise ValueError("--method auto needs the run's noise map and head mask (sigma_file, region_file)")
        sigma = np.asanyarray(nb.load(self.inputs.sigma_file).dataobj, dtype=np.float32)
        region = np.asanyarray(nb.load(self.inputs.region_file).dataobj) > 0
        probe, epsilon = perturbation(data, sigma, region)
        perturbed_data = np.asarray(data, np.float32) + epsilon * probe
        common = dict(in_file=self.inputs.in_file, bval_file=self.inputs.bval_file, b0_threshold=self.inputs.b0_threshold,
                      b0_denoising=self.inputs.b0_denoising, device=self.inputs.device,
                      num_threads=self.inputs.num_threads, rician_correction=self.inputs.rician_correction)
        inputs = self.inputs.candidate_inputs if isdefined(self.inputs.candidate_inputs) else {}
        best, results = None, {}
        for name in self.inputs.candidates:
            candidate = get_method(name).interface_class()(**common, **inputs.get(name, {}))
            first = candidate._denoise(data, bvals, mask, device)
            perturbed = candidate._denoise_again(perturbed_data, bvals, mask, device, first)
            estimate = estimate_error(noisy=data, denoised=first.denoised, perturbed=perturbed, probe=probe,
                                      epsilon=epsilon, sigma=sigma, region=region,
                                      rician_correction=self.inputs.rician_correction)
            results[name] = estimate
            if best is None or estimate.rmse < results[best[0]].rmse:
                best = (name, first)
        name, kept = best
        self._choice = {"Chosen": get_method(name).label,
                        "Candidates": {get_method(n).label: round(e.rmse, 6) for n, e in results.items()},
                        **results[name].as_dict()}
        self._results["chosen"] = name
        return DenoisedGroup(kept.denoised, kept.noise, kept.n_denoised, kept.device)

    def _estimate_error(self, data, bvals, mask, device, result: DenoisedGroup) -> dict:
        return dict(self._choice)


__all__ = ["AutoDenoiser"]
