"""Reading and writing the NIfTI images and b-value files of one run or volume group."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np

from bids_denoise.errors import DataError


def load_bvals(bval_file, n_volumes=None) -> np.ndarray:
    """Read an FSL-style bval file, checking its count against the image when given."""
    try:
        bvals = np.loadtxt(bval_file, ndmin=1).ravel()
    except ValueError as err:
        raise DataError(f"{bval_file}: b-values are not numeric ({err})") from err
    if n_volumes is not None and bvals.size != n_volumes:
        raise DataError(f"{bval_file}: {bvals.size} b-values for an image with {n_volumes} volumes")
    return bvals


def load_bvecs(path, n_volumes: int) -> np.ndarray:
    """The b-vectors of an FSL ``.bvec`` file as ``(3, n_volumes)`` (an ``n_volumes x 3`` file is
    transposed); :class:`DataError` when the file does not hold that many."""
    try:
        bvecs = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: not a b-vector file ({err})") from err
    if bvecs.shape == (n_volumes, 3) and n_volumes != 3:
        bvecs = bvecs.T
    if bvecs.shape != (3, n_volumes):
        raise DataError(f"{path}: expected 3 x {n_volumes} b-vectors, got {bvecs.shape[0]} x {bvecs.shape[1]}")
    return bvecs


def read_group(in_file, bval_file, mask_file=None):
    """Load one group for a denoiser: (image, data array, b-values, boolean mask or None)."""
    img = nb.load(in_file)
    data = np.asanyarray(img.dataobj)
    bvals = load_bvals(bval_file, data.shape[3] if data.ndim == 4 else None)
    mask = None
    if mask_file:
        mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
    return img, data, bvals, mask


def save_like(reference, data, cwd, name) -> str:
    """Save float32 ``data`` with the reference's affine, qform/sform codes and zooms."""
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    if data.ndim == 3:
        header.set_data_shape(data.shape)
        header.set_zooms(reference.header.get_zooms()[:3])
    img = nb.Nifti1Image(data, reference.affine, header)
    img.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    img.header.set_slope_inter(1.0, 0.0)
    out = os.path.join(cwd, name)
    img.to_filename(out)
    return out
