"""The radius > 0 engine's building blocks against explicitly built patch features."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bids_denoise.denoise.patch2self.lagged import (
    PaddedGroup,
    lagged_gram,
    patch_offsets,
    predict_blocks,
    radial_pooling,
)


def explicit_features(values, radius):
    """(V, n * p) zero-padded patch features, volume-major, x slowest (independent build)."""
    rx, ry, rz = radius
    nx, ny, nz, n = values.shape
    padded = np.pad(values, ((rx, rx), (ry, ry), (rz, rz), (0, 0)))
    columns = []
    for v in range(n):
        for dx, dy, dz in itertools.product(range(2 * rx + 1), range(2 * ry + 1), range(2 * rz + 1)):
            columns.append(padded[dx:dx + nx, dy:dy + ny, dz:dz + nz, v].reshape(-1))
    return np.stack(columns, axis=1)


def centred_gram(features):
    """Centre first, then multiply: the numerically careful reference."""
    mean = features.mean(axis=0)
    centred = features - mean
    return centred.T @ centred, mean


def padded_group(values, radius):
    shift = torch.as_tensor(values.reshape(-1, values.shape[3]).mean(axis=0))
    return PaddedGroup.build(torch.from_numpy(values), shift, radius)


CASES = [
    pytest.param((6, 5, 4), (1, 1, 1), id="r1"),
    pytest.param((7, 6, 5), (2, 2, 2), id="r2"),
    pytest.param((7, 6, 3), (2, 1, 0), id="r210"),
    pytest.param((5, 4, 2), (1, 1, 1), id="thin-z"),
    pytest.param((6, 5, 1), (1, 2, 0), id="one-slice"),
]


@pytest.mark.parametrize("offset", [0.0, 1e5], ids=["plain", "offset1e5"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["all-voxels", "mask"])
@pytest.mark.parametrize("shape, radius", CASES)
def test_lagged_gram_equals_the_gram_of_explicit_patches(shape, radius, with_mask, offset):
    rng = np.random.default_rng(sum(shape))
    values = offset + 100.0 + 20.0 * rng.normal(size=shape + (3,))
    mask = rng.random(shape) > 0.35 if with_mask else None
    features = explicit_features(values, radius)
    rows = slice(None) if mask is None else mask.reshape(-1)
    expected, expected_mean = centred_gram(features[rows])
    gram, mean, count = lagged_gram(padded_group(values, radius),
                                    None if mask is None else torch.from_numpy(mask))
    assert count == features[rows].shape[0]
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12, atol=1e-9 * abs(offset + 100))
    # Entries of the centred Gram are ~V * 400; the offset must not cost precision.
    np.testing.assert_allclose(gram.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("radius", [(1, 1, 1), (2, 1, 0)])
def test_pooled_gram_is_the_gram_of_pooled_features(radius):
    rng = np.random.default_rng(5)
    values = 50.0 + 10.0 * rng.normal(size=(6, 5, 4, 3))
    pooling = radial_pooling(radius)
    n, p, k = 3, len(patch_offsets(radius)), pooling.shape[1]
    pooled = (explicit_features(values, radius).reshape(-1, n, p) @ pooling).reshape(-1, n * k)
    expected, expected_mean = centred_gram(pooled)
    gram, mean, _ = lagged_gram(padded_group(values, radius), pooling=torch.from_numpy(pooling))
    np.testing.assert_allclose(gram.numpy(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12)


def test_radial_pooling_groups_the_patch_by_distance():
    pooling = radial_pooling((1, 1, 1))
    assert pooling.shape == (27, 4)
    np.testing.assert_allclose(pooling.sum(axis=0), 1.0)
    assert (pooling > 0).sum(axis=0).tolist() == [1, 6, 12, 8]  # centre, faces, edges, corners
    assert pooling[13, 0] == 1.0  # the centre of the 3x3x3 patch
    assert radial_pooling((2, 2, 2)).shape == (125, 10)


def test_prediction_is_the_product_of_explicit_patches_and_weights():
    rng = np.random.default_rng(6)
    radius = (1, 2, 1)
    values = 10.0 * rng.normal(size=(9, 7, 5, 3))
    group = padded_group(values, radius)
    p = len(patch_offsets(radius))
    weights = rng.normal(size=(3, p, 2))  # (input volume, offset, output)
    bias = rng.normal(size=2)
    augmented = torch.zeros((p, 4, 2), dtype=torch.float64)
    augmented[:, :3] = torch.from_numpy(weights.transpose(1, 0, 2))
    augmented[:, 3] = torch.einsum("v,ovj->oj", group.shift, augmented[:, :3])
    pieces = list(predict_blocks(group, augmented, torch.from_numpy(bias)))
    assert pieces[0][0] == 0 and pieces[-1][1] == 9
    predicted = np.concatenate([block.numpy() for _, _, block in pieces])
    expected = explicit_features(values, radius) @ weights.reshape(3 * p, 2) + bias
    np.testing.assert_allclose(predicted, expected, rtol=1e-12, atol=1e-9)
