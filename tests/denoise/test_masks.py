"""The head mask of a DWI series, on synthetic heads with and without background."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_denoise.denoise.masks import brain_mask, largest_component, mean_b0, otsu_threshold


def _head(shape=(40, 40, 12), background=True):
    """A smooth ellipsoid 'brain' with bright 'ventricles', in a dark background (or none)."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.2) ** 2 < 1
    image = np.where(brain, 600.0, 8.0 if background else 450.0)
    image[(np.abs(x) < 0.15) & (np.abs(y) < 0.4) & brain] = 1500.0
    return ndimage.gaussian_filter(image, 1.0), brain


def test_otsu_separates_two_populations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 5, 5000)])
    assert 15 < otsu_threshold(values) < 90
    assert otsu_threshold([3.0, 3.0]) == 3.0
    with pytest.raises(ValueError):
        otsu_threshold([np.nan])


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((10, 10, 3), bool)
    mask[1:4, 1:4] = True
    mask[6:10, 6:10] = True
    kept = largest_component(mask)
    assert kept[7, 7, 1] and not kept[2, 2, 1]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_brain_mask_with_background_finds_the_brain():
    image, brain = _head()
    image = image + np.random.default_rng(1).normal(0, 5, image.shape)
    # a detached bright blob outside the head (ghost) must not be in the mask
    image[0:3, 0:3, :] = 900
    mask = brain_mask(image)
    overlap = (mask & brain).sum() / brain.sum()
    assert overlap > 0.95
    assert (mask & ~brain).sum() < 0.4 * brain.sum()  # the blurred rim of the head
    assert not mask[1, 1, 5]


def test_brain_mask_of_a_crop_without_background_keeps_tissue_and_csf():
    image, _ = _head(background=False)
    mask = brain_mask(image)
    # Otsu alone would keep only the bright "CSF"; without background every voxel is kept
    assert mask.mean() > 0.95


def test_brain_mask_degenerate_images():
    assert brain_mask(np.zeros((4, 4, 4))).all()
    tiny = np.zeros((4, 4, 4))
    tiny[0, 0, 0] = 5
    assert brain_mask(tiny).sum() >= 1


def test_mean_b0_falls_back_to_all_volumes():
    data = np.stack([np.full((2, 2, 2), v, float) for v in (10, 20, 30)], axis=-1)
    assert np.allclose(mean_b0(data, [0, 1000, 5]), 20)
    assert np.allclose(mean_b0(data, [1000, 1000, 2000]), 20)
