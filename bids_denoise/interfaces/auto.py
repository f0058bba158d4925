"""The Nipype interface of ``--method auto``: every candidate method on one group; of those that
keep the directional contrast, the output with the lowest estimated error is kept."""

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
    error (:mod:`bids_denoise.denoise.error`) among those that keep at least
    :data:`~bids_denoise.denoise.contrast.RETAINED_MINIMUM` of the signal's variance across
    directions (:mod:`bids_denoise.denoise.contrast`): a lower squared error bought by flattening
    the shells lowers FA. When every candidate falls short, the one that keeps the most wins;
    groups without a measurable contrast (b0s, few directions) go by the error alone. The
    run's noise map and head mask are needed.

    ``error_estimate`` then holds the kept output's estimate plus ``Chosen``, ``Candidates``
    (each candidate's estimated RMSE), ``ContrastRetained`` (each candidate's fraction, where
    measured) and ``PassedOver`` (why a candidate with a lower error was not kept). Ties go to
    the earlier candidate.
    """

    input_spec = _AutoInputSpec
    output_spec = _AutoOutputSpec

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        import nibabel as nb

        from bids_denoise.denoise.contrast import directional_contrast
        from bids_denoise.denoise.error import estimate_error, perturbation
        from bids_denoise.denoise.methods import get_method
        from bids_denoise.denoise.rician import correct_rician_bias

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
        outputs, results, contrasts = {}, {}, {}
        rician = self.inputs.rician_correction
        for name in self.inputs.candidates:
            candidate = get_method(name).interface_class()(**common, **inputs.get(name, {}))
            first = candidate._denoise(data, bvals, mask, device)
            perturbed = candidate._denoise_again(perturbed_data, bvals, mask, device, first)
            results[name] = estimate_error(noisy=data, denoised=first.denoised, perturbed=perturbed, probe=probe,
                                           epsilon=epsilon, sigma=sigma, region=region, rician_correction=rician)
            kept = first.denoised if rician == "none" else correct_rician_bias(first.denoised, sigma, method=rician)
            contrasts[name] = directional_contrast(noisy=data, denoised=kept, bvals=bvals, sigma=sigma, region=region,
                                                   b0_threshold=self.inputs.b0_threshold)
            outputs[name] = first
        name, passed_over = choose(self.inputs.candidates, results, contrasts)
        kept = outputs[name]

        def label(method_name):
            return get_method(method_name).label

        self._choice = {"Chosen": label(name),
                        "Candidates": {label(n): round(e.rmse, 6) for n, e in results.items()},
                        **results[name].as_dict()}
        measured = {label(n): round(c.ratio, 4) for n, c in contrasts.items() if c is not None}
        if measured:
            self._choice["ContrastRetained"] = measured
        if passed_over:
            self._choice["PassedOver"] = {label(n): why for n, why in passed_over.items()}
        self._results["chosen"] = name
        return DenoisedGroup(kept.denoised, kept.noise, kept.n_denoised, kept.device)

    def _estimate_error(self, data, bvals, mask, device, result: DenoisedGroup) -> dict:
        return dict(self._choice)


def choose(names, estimates, contrasts, *, minimum: float | None = None):
    """The candidate to keep, and why each one with a lower estimated error was passed over.

    Parameters
    ----------
    names : sequence of str
        Candidates in order of preference for ties.
    estimates : dict
        name -> :class:`~bids_denoise.denoise.error.ErrorEstimate`.
    contrasts : dict
        name -> :class:`~bids_denoise.denoise.contrast.ContrastRetained` or None.
    minimum : float, optional
        Default :data:`~bids_denoise.denoise.contrast.RETAINED_MINIMUM`.

    Returns
    -------
    (str, dict)
        The chosen name and ``{name: reason}``.
    """
    from bids_denoise.denoise.contrast import RETAINED_MINIMUM

    minimum = RETAINED_MINIMUM if minimum is None else minimum
    names = list(names)
    measured = {n: contrasts[n].ratio for n in names if contrasts.get(n) is not None}
    eligible = [n for n in names if n not in measured or measured[n] >= minimum]
    if not eligible:
        eligible = [max(names, key=lambda n: measured[n])]
    chosen = min(eligible, key=lambda n: (estimates[n].rmse, names.index(n)))
    passed_over = {
        n: f"kept {measured[n]:.2f} of the directional contrast (< {minimum:g})"
        for n in names if n not in eligible and estimates[n].rmse < estimates[chosen].rmse
    }
    return chosen, passed_over


__all__ = ["AutoDenoiser", "choose"]
