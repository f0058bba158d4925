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
        from bids_denoise.reports.qc import assess

        raw = np.asanyarray(nb.load(self.inputs.in_file).dataobj, dtype=np.float32)
        denoised = np.asanyarray(nb.load(self.inputs.denoised_file).dataobj, dtype=np.float32)
        groups = [(group["Label"], group["Volumes"])
                  for group, n_denoised in zip(self.inputs.groups, self.inputs.n_denoised)
                  if n_denoised > 0]  # a copied-through group has nothing to check
        self._results["quality_control"] = assess(
            raw, denoised, np.loadtxt(self.inputs.bval_file, ndmin=1), np.loadtxt(self.inputs.bvec_file, ndmin=2),
            np.asanyarray(nb.load(self.inputs.sigma_file).dataobj, dtype=np.float32),
            np.asanyarray(nb.load(self.inputs.region_file).dataobj) > 0, groups,
            rician_corrected=self.inputs.rician_correction != "none",
        )
        return runtime
