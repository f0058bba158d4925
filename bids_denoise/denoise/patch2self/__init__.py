"""Patch2Self (Fadnavis et al., NeurIPS 2020): exact, block-wise, on the CPU or a GPU.

Modules
-------
``engine``     the public functions, argument checks and the group plan
``voxelwise``  radius 0 from one joint Gram over voxel blocks; the per-volume estimator path
``lagged``     radius > 0 from lagged cross-products of whole volumes
``linalg``     products, the precision matrix and the leave-one-volume-out weights
``output``     the denoised array and the statistics post-processing needs
"""

from bids_denoise.denoise.device import resolve_device
from bids_denoise.denoise.patch2self.engine import (
    CLIP_NEGATIVE_VALS,
    CLOSED_FORM_MODELS,
    MAX_PATCH_RADIUS,
    MIN_RECOMMENDED_VOLUMES,
    PATCH_POOLINGS,
    estimate_memory_gb,
    normalize_patch_radius,
    patch2self,
    patch2self_with_noise,
)

__all__ = [
    "CLIP_NEGATIVE_VALS",
    "CLOSED_FORM_MODELS",
    "MAX_PATCH_RADIUS",
    "MIN_RECOMMENDED_VOLUMES",
    "PATCH_POOLINGS",
    "estimate_memory_gb",
    "normalize_patch_radius",
    "patch2self",
    "patch2self_with_noise",
    "resolve_device",
]
