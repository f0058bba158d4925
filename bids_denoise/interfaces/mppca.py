"""The Nipype interface over the pure MP-PCA engine: denoise one volume group."""

from __future__ import annotations

import warnings

import numpy as np
from nipype.interfaces.base import File, traits

from bids_denoise.denoise.methods.mppca import ESTIMATORS, RECONSTRUCTIONS
from bids_denoise.interfaces.denoiser import (
    DenoisedGroup,
    DenoiserInputSpec,
    DenoiserOutputSpec,
    GroupDenoiser,
)
from bids_denoise.utils.images import save_like


class _MPPCAInputSpec(DenoiserInputSpec):
    patch_radius = traits.Either(
        traits.Int, traits.List(traits.Int, minlen=3, maxlen=3), default=2, usedefault=True,
        desc="window radius, int or one per axis",
    )
    estimator = traits.Enum(*ESTIMATORS, usedefault=True, desc="Marchenko-Pastur noise edge")
    reconstruction = traits.Enum(*RECONSTRUCTIONS, usedefault=True, desc="average windows, or each voxel's own")


class _MPPCAOutputSpec(DenoiserOutputSpec):
    sigma_file = File(exists=True, desc="3D noise standard deviation of the group (input units)")
    rank_file = File(exists=True, desc="3D number of signal components kept")


class MPPCA(GroupDenoiser):
    """Denoise one group (all b0s, or the volumes of one shell) with MP-PCA.

    A group of a single volume, and the b0s when ``b0_denoising`` is off, are copied through
    (their sigma and rank maps are zero). Any other group is denoised, however few its volumes:
    with N volumes each window has at most N components, so with very few volumes little
    noise can be separated from the signal.
    """

    input_spec = _MPPCAInputSpec
    output_spec = _MPPCAOutputSpec

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        from bids_denoise.denoise.mppca import mppca

        is_b0 = bool(np.all(bvals <= self.inputs.b0_threshold))
        zeros = np.zeros(data.shape[:3], np.float32)
        if data.shape[3] < 2 or (is_b0 and not self.inputs.b0_denoising):
            return DenoisedGroup(np.asarray(data, np.float32), zeros, 0, str(device),
                                 extra={"sigma": zeros, "rank": zeros})
        radius = fitted_radius(self.inputs.patch_radius, data.shape[:3])
        result = mppca(data, patch_radius=radius, mask=mask, estimator=self.inputs.estimator,
                       reconstruction=self.inputs.reconstruction, device=device, progress=False)
        residual = np.asarray(data, np.float64) - result.denoised
        noise = np.sqrt(np.mean(residual**2, axis=3)).astype(np.float32)
        return DenoisedGroup(result.denoised, noise, int(data.shape[3]), str(device),
                             extra={"sigma": result.sigma, "rank": result.rank.astype(np.float32)})

    def _save_extra(self, result: DenoisedGroup, img, runtime) -> None:
        self._results["sigma_file"] = save_like(img, result.extra["sigma"], runtime.cwd, "sigma_dwimap.nii.gz")
        self._results["rank_file"] = save_like(img, result.extra["rank"], runtime.cwd, "rank_dwimap.nii.gz")


def fitted_radius(patch_radius, shape) -> tuple[int, int, int]:
    """The window radius, shrunk on axes too thin for it (with a warning): a 2-slice series
    gets windows of one slice instead of failing."""
    radius = [int(r) for r in np.broadcast_to(np.asarray(patch_radius), (3,))]
    for axis, size in enumerate(shape):
        largest = (int(size) - 1) // 2
        if radius[axis] > largest:
            warnings.warn(f"MP-PCA: the image has {size} voxel(s) along axis {axis}; the window radius there "
                          f"is {largest} instead of {radius[axis]}", UserWarning, stacklevel=2)
            radius[axis] = largest
    return tuple(radius)


__all__ = ["MPPCA", "fitted_radius"]
