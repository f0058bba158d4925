"""Nipype interface over the pure Patch2Self engine, for one volume group."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import traits

from bids_denoise.denoise.methods.patch2self import MODELS, POOLINGS
from bids_denoise.denoise.shells import VolumeGroup, copy_reason
from bids_denoise.interfaces.denoiser import DenoisedGroup, DenoiserInputSpec, GroupDenoiser


class _Patch2SelfInputSpec(DenoiserInputSpec):
    patch_radius = traits.Either(
        traits.Int, traits.List(traits.Int, minlen=3, maxlen=3), default=0, usedefault=True,
        desc="patch radius, 0..3, int or one per axis",
    )
    patch_pooling = traits.Enum(*POOLINGS, usedefault=True, desc="every patch voxel, or means by distance")
    model = traits.Enum(*MODELS, usedefault=True, desc="regression model")
    alpha = traits.Float(1.0, usedefault=True, desc="regularisation of ridge and lasso")
    clip_negative_vals = traits.Bool(True, usedefault=True, desc="set negatives to 0")
    shift_intensity = traits.Bool(False, usedefault=True, desc="match each volume's minimum")


class Patch2Self(GroupDenoiser):
    """Denoise one group (all b0s, or the volumes of one shell) with Patch2Self.

    The group already is one regression group, so the engine runs with ``grouping="all"``.
    """

    input_spec = _Patch2SelfInputSpec

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        from bids_denoise.denoise.patch2self import patch2self_with_noise

        denoised, noise = patch2self_with_noise(
            data, bvals, patch_radius=self.inputs.patch_radius, patch_pooling=self.inputs.patch_pooling,
            model=self.inputs.model, alpha=self.inputs.alpha, b0_threshold=self.inputs.b0_threshold,
            b0_denoising=self.inputs.b0_denoising, grouping="all", fit_mask=mask,
            shift_intensity=self.inputs.shift_intensity, clip_negative_vals=self.inputs.clip_negative_vals,
            device=device, progress=False,
        )
        is_b0 = bool(np.all(bvals <= self.inputs.b0_threshold))
        group = VolumeGroup("b0" if is_b0 else "dwi", tuple(range(data.shape[3])), tuple(bvals), is_b0)
        copied = copy_reason(group, b0_denoising=self.inputs.b0_denoising) is not None
        return DenoisedGroup(denoised, noise, 0 if copied else int(data.shape[3]), str(device))
