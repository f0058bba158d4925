"""Split a DWI series into its b0 group and shells, and merge the groups back in order."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.denoise.shells import (
    B0_THRESHOLD,
    GROUPINGS,
    MIN_SHELL_VOLUMES,
    SHELL_TOLERANCE,
    group_volumes,
)
from bids_denoise.errors import DataError
from bids_denoise.utils.images import load_bvals, save_like


class _SplitShellsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D DWI series")
    bval_file = File(exists=True, mandatory=True, desc="FSL bval file of in_file")
    bvec_file = File(exists=True, desc="FSL bvec file of in_file (3 rows); with it, each group gets its own")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    shell_tolerance = traits.Float(SHELL_TOLERANCE, usedefault=True, desc="shell clustering gap")
    grouping = traits.Enum(*GROUPINGS, usedefault=True, desc="one group per shell, or all DWIs pooled")
    min_shell_volumes = traits.Range(low=1, value=MIN_SHELL_VOLUMES, usedefault=True,
                                     desc="smaller shells are merged with their nearest neighbour")


class _SplitShellsOutputSpec(TraitedSpec):
    group_files = traits.List(File(exists=True), desc="one 4D image per group")
    group_bval_files = traits.List(File(exists=True), desc="the b-values of each group")
    group_bvec_files = traits.List(File(exists=True), desc="the b-vectors of each group (with bvec_file)")
    group_indices = traits.List(traits.List(traits.Int), desc="volume positions of each group")
    groups = traits.List(traits.Dict, desc="label, b-value, count and volumes of each group")


class SplitShells(SimpleInterface):
    """Write the b0 group and each shell (or all DWIs pooled) as separate 4D images."""

    input_spec = _SplitShellsInputSpec
    output_spec = _SplitShellsOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        if img.ndim != 4:
            raise DataError(f"{self.inputs.in_file}: expected a 4D image, got shape {img.shape}")
        bvals = load_bvals(self.inputs.bval_file, img.shape[3])
        groups = group_volumes(
            bvals,
            b0_threshold=self.inputs.b0_threshold,
            grouping=self.inputs.grouping,
            shell_tolerance=self.inputs.shell_tolerance,
            min_shell_volumes=self.inputs.min_shell_volumes,
        )
        bvecs = None
        if isdefined(self.inputs.bvec_file):
            bvecs = np.loadtxt(self.inputs.bvec_file, ndmin=2)
            if bvecs.shape != (3, img.shape[3]):
                raise DataError(f"{self.inputs.bvec_file}: expected 3 rows x {img.shape[3]} columns, "
                                f"got {bvecs.shape[0]} x {bvecs.shape[1]}")
        data = np.asanyarray(img.dataobj)
        self._results.update(group_files=[], group_bval_files=[], group_bvec_files=[], group_indices=[],
                             groups=[])
        for group in groups:
            index = list(group.indices)
            stem = os.path.join(runtime.cwd, f"group-{group.label}")
            header = img.header.copy()
            header.set_data_dtype(data.dtype)
            nb.Nifti1Image(data[..., index], img.affine, header).to_filename(f"{stem}_dwi.nii.gz")
            np.savetxt(f"{stem}_dwi.bval", bvals[index][None], fmt="%g")
            self._results["group_files"].append(f"{stem}_dwi.nii.gz")
            self._results["group_bval_files"].append(f"{stem}_dwi.bval")
            if bvecs is not None:
                np.savetxt(f"{stem}_dwi.bvec", bvecs[:, index], fmt="%.8g")
                self._results["group_bvec_files"].append(f"{stem}_dwi.bvec")
            self._results["group_indices"].append(index)
            self._results["groups"].append(group.as_dict())
        return runtime


class _MergeShellsInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="denoised group images")
    group_indices = traits.List(traits.List(traits.Int), mandatory=True, desc="positions of each group")
    reference_file = File(exists=True, mandatory=True, desc="the original series (header and affine)")
    noise_files = InputMultiObject(File(exists=True), desc="3D residual RMS map of each group")
    noise_weights = traits.List(traits.Int, desc="denoised volumes behind each noise map")


class _MergeShellsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised series, volumes in the original order, float32")
    noise_file = File(desc="residual RMS over all denoised volumes")


class MergeShells(SimpleInterface):
    """Put denoised groups back in acquisition order, with the reference's geometry."""

    input_spec = _MergeShellsInputSpec
    output_spec = _MergeShellsOutputSpec

    def _run_interface(self, runtime):
        reference = nb.load(self.inputs.reference_file)
        positions = [i for index in self.inputs.group_indices for i in index]
        n_volumes = reference.shape[3]
        if sorted(positions) != list(range(n_volumes)):
            raise DataError(
                f"groups cover volumes {sorted(positions)}, expected each of 0..{n_volumes - 1} once"
            )
        if len(self.inputs.in_files) != len(self.inputs.group_indices):
            raise ValueError("in_files and group_indices differ in length")
        merged = np.empty(reference.shape, dtype=np.float32)
        for path, index in zip(self.inputs.in_files, self.inputs.group_indices):
            group = np.asanyarray(nb.load(path).dataobj, dtype=np.float32)
            if group.shape != reference.shape[:3] + (len(index),):
                raise DataError(f"{path}: shape {group.shape} does not fit volumes {index}")
            merged[..., index] = group
        self._results["out_file"] = save_like(reference, merged, runtime.cwd, "denoised_dwi.nii.gz")
        if isdefined(self.inputs.noise_files) and self.inputs.noise_files:
            self._results["noise_file"] = self._merge_noise(reference, runtime.cwd)
        return runtime

    def _merge_noise(self, reference, cwd):
        weights = self.inputs.noise_weights if isdefined(self.inputs.noise_weights) else []
        noise = weighted_rms(self.inputs.noise_files, weights, reference.shape[:3])
        return save_like(reference, noise, cwd, "noise_dwimap.nii.gz")


def weighted_rms(paths, weights, shape) -> np.ndarray:
    """Root of the ``weights``-weighted mean of the squared 3D maps (equal weights if they do
    not fit): the level of noise over the volumes of several groups."""
    if len(weights) != len(paths):
        weights = [1] * len(paths)
    total = np.zeros(shape, dtype=np.float64)
    for path, weight in zip(paths, weights):
        total += weight * np.asanyarray(nb.load(path).dataobj, dtype=np.float64) ** 2
    return np.sqrt(total / max(sum(weights), 1)).astype(np.float32)


class _MergeGroupMapsInputSpec(BaseInterfaceInputSpec):
    rank_files = InputMultiObject(File(exists=True), desc="3D signal-rank map of each group")
    reference_file = File(exists=True, mandatory=True, desc="the original series (header and affine)")


class _MergeGroupMapsOutputSpec(TraitedSpec):
    rank_file = File(desc="4D: the rank map of each group, in group order")


class MergeGroupMaps(SimpleInterface):
    """One 4D stack of the per-group maps of a method (MP-PCA's rank maps), in group order."""

    input_spec = _MergeGroupMapsInputSpec
    output_spec = _MergeGroupMapsOutputSpec

    def _run_interface(self, runtime):
        reference = nb.load(self.inputs.reference_file)
        if isdefined(self.inputs.rank_files) and self.inputs.rank_files:
            ranks = np.stack([np.asanyarray(nb.load(p).dataobj, dtype=np.float32) for p in self.inputs.rank_files], -1)
            self._results["rank_file"] = save_like(reference, ranks, runtime.cwd, "rank_dwimap.nii.gz")
        return runtime
