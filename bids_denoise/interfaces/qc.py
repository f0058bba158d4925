"""Quality-control numbers and flags of one denoised run (:mod:`bids_denoise.reports.qc`)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_denoise.denoise.rician import METHODS as RICIAN_METHODS


class _QualityControlInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the raw 4D series")
    denoised_file = File(exists=True, mandatory=True, desc="the denoised 4D series, as written")
    bval_file = File(exists=True, mandatory=True, desc="FSL bval file")
    bvec_file = File(exists=True, mandatory=True, desc="FSL bvec file")
    sigma_file = File(exists=True, mandatory=True, desc="the run's noise map (EstimateNoise)")
    region_file = File(exists=True, mandatory=True, desc="the head mask the noise map was measured in")
    groups = traits.List(traits.Dict, mandatory=True, desc="groups from SplitShells")
    n_denoised = traits.List(traits.Int, mandatory=True, desc="denoised volumes per group")
    rician_correction = traits.Enum("none", *RICIAN_METHODS, usedefault=True,
                                    desc="the Rician correction applied to denoised_file")


class _QualityControlOutputSpec(TraitedSpec):
    quality_control = traits.Dict(desc="QualityControl of the sidecar: Groups, FA, Flags, Thresholds")


class QualityControl(SimpleInterface):
    """Residual level and residual-signal correlation of every denoised group, FA in high-FA voxels
    before and after, and the flags they raise."""

    input_spec = _QualityControlInputSpec
    output_spec = _QualityControlOutputSpec

    def _run_interface(self, runtime):
        from bids_denoise.reports.qc import (
            THRESHOLDS, fa_change, group_flags, residual_correlation, residual_ratio, run_flags,
        )

        raw = np.asanyarray(nb.load(self.inputs.in_file).dataobj, dtype=np.float32)
        denoised = np.asanyarray(nb.load(self.inputs.denoised_file).dataobj, dtype=np.float32)
        sigma = np.asanyarray(nb.load(self.inputs.sigma_file).dataobj, dtype=np.float32)
        region = np.asanyarray(nb.load(self.inputs.region_file).dataobj) > 0
        bvals = np.loadtxt(self.inputs.bval_file, ndmin=1)
        bvecs = np.loadtxt(self.inputs.bvec_file, ndmin=2)
        corrected = self.inputs.rician_correction != "none"
        rows, flags = [], []
        for group, n_denoised in zip(self.inputs.groups, self.inputs.n_denoised):
            if n_denoised == 0:
                continue  # copied through: nothing to check
            index = list(group["Volumes"])
            ratio = residual_ratio(raw[..., index], denoised[..., index], sigma, region, rician_corrected=corrected)
            correlation = residual_correlation(raw[..., index], denoised[..., index], region, sigma=sigma,
                                               rician_corrected=corrected)
            rows.append({"Group": group["Label"], "ResidualRatio": _rounded(ratio),
                         "ResidualCorrelation": _rounded(correlation)})
            flags += group_flags(group["Label"], ratio, correlation, int(region.sum()))
        fa = fa_change(raw, denoised, bvals, bvecs, region, sigma=sigma, rician_corrected=corrected)
        flags += run_flags(fa)
        self._results["quality_control"] = {
            "Groups": rows,
            "FA": {k: _rounded(v) if isinstance(v, float) else v for k, v in fa.items()} if fa else None,
            "Flags": flags,
            "Thresholds": dict(THRESHOLDS),
            "Region": "head mask of the noise map (desc-sigma)",
        }
        return runtime


def _rounded(value: float):
    return None if not np.isfinite(value) else round(float(value), 4)
