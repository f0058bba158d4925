"""DDM2 normalisation, Stage-I input tables, noise shuffle, eq. 4 calibration, flips, U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_denoise.denoise.ddm2.data import (
    FLIP_VARIANTS,
    calibrated_noise,
    denormalise,
    direction_neighbours,
    flip_variant,
    from_slices,
    neighbour_indices,
    normalise,
    random_flips,
    shuffle_pixels,
    to_slices,
    unit_directions,
    volume_scales,
)
from bids_denoise.denoise.ddm2.unet import (
    NetworkSettings,
    UNet,
    count_parameters,
    counted_forward_flops,
    forward_flops,
)


@pytest.mark.parametrize("percentile", [100.0, 99.9])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint16, np.float64])
def test_normalisation_round_trips_to_float32_precision(dtype, percentile):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 3000, (9, 7, 4, 5)).astype(dtype)
    data[..., 2] = 0  # an all-zero volume stays invertible
    data[0, 0, 0, 3] = -40 if np.issubdtype(dtype, np.signedinteger) or dtype in (np.float32, np.float64) else 0
    scales = volume_scales(data, percentile=percentile)
    normalised = normalise(data, scales)
    assert normalised.dtype == np.float32
    flat = data.reshape(-1, 5).astype(np.float64)
    expected = np.percentile(flat, percentile, axis=0)
    np.testing.assert_allclose(scales[expected > 0], expected[expected > 0])
    if percentile == 100:
        assert np.allclose(normalised.reshape(-1, 5).max(0)[expected > 0], 1.0)
    assert scales[2] == 1.0
    restored = denormalise(normalised, scales)
    assert restored.dtype == np.float32
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(restored, data.astype(np.float64), rtol=0, atol=2 * eps * scales.max())


def test_a_percentile_scale_ignores_one_bright_voxel():
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 100, (20, 20, 5, 2))
    spiked = data.copy()
    spiked[3, 4, 2, 0] = 5000.0  # one spike: the maximum jumps 50-fold
    assert volume_scales(spiked, percentile=100)[0] > 40 * volume_scales(data, percentile=100)[0]
    robust, clean = volume_scales(spiked), volume_scales(data)
    assert robust[0] == pytest.approx(clean[0], rel=0.01) and robust[1] == clean[1]
    with pytest.raises(ValueError, match="percentile"):
        volume_scales(data, percentile=0)


def test_slice_layout_round_trips():
    data = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    slices = to_slices(data)
    assert slices.shape == (6, 5, 3, 4) and slices.flags.c_contiguous
    assert slices[2, 1, 0, 3] == data[0, 3, 1, 2]
    np.testing.assert_array_equal(from_slices(slices), data)


def test_neighbours_are_in_acquisition_order_and_wrap():
    table = neighbour_indices(6, 2)
    assert table.tolist() == [[5, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 0]]
    for n in (1, 2, 3, 4, 5):
        table = neighbour_indices(6, n)
        assert table.shape == (6, n)
        assert not np.any(table == np.arange(6)[:, None])  # never its own neighbour
    with pytest.raises(ValueError, match="need at least"):
        neighbour_indices(2, 2)


def test_neighbours_by_direction_are_the_nearest_antipodally():
    # volume 0 along x; volume 3 along -x (the same measurement); volume 1 10 degrees from x,
    # volume 4 30 degrees, volume 2 along y, volume 5 along z (FSL layout: 3 x N)
    angle = np.deg2rad
    bvecs = np.array([[1, 0, 0], [np.cos(angle(10)), np.sin(angle(10)), 0], [0, 1, 0], [-1, 0, 0],
                      [np.cos(angle(30)), 0, np.sin(angle(30))], [0, 0, 1]], float).T
    table = neighbour_indices(6, 3, bvecs=bvecs)
    assert table[0].tolist() == [3, 1, 4]  # antipode first, then by angle
    assert table[3].tolist() == [0, 1, 4]
    assert table[2][0] == 1 and table[5][0] == 4
    assert not np.any(table == np.arange(6)[:, None])
    # the similarity really is |g . g'|: every chosen input is at least as close as any other
    g = unit_directions(bvecs)
    similarity = np.abs(g @ g.T)
    for v in range(6):
        others = np.setdiff1d(np.arange(6), np.r_[table[v], v])
        assert similarity[v, table[v]].min() >= similarity[v, others].max() - 1e-12
    # (N, 3) input and scaled vectors give the same table
    np.testing.assert_array_equal(direction_neighbours(3 * bvecs.T, 3), table)


def test_repeated_directions_are_each_others_first_input_and_ties_follow_acquisition():
    bvecs = np.tile(np.eye(3), 2)  # x, y, z, x, y, z
    table = neighbour_indices(6, 1, bvecs=bvecs)
    assert table.ravel().tolist() == [3, 4, 5, 0, 1, 2]
    # y (volume 1) is orthogonal to x and z alike: the tie goes to the volume acquired nearest
    assert neighbour_indices(6, 2, bvecs=bvecs)[1].tolist() == [4, 0]
    with pytest.raises(ValueError, match="b-vectors"):
        unit_directions(np.ones((4, 5)))
    with pytest.raises(ValueError, match="3 b-vectors"):
        unit_directions(np.ones((3, 3)), 4)


def test_noise_shuffle_keeps_each_slice_histogram_and_uses_one_permutation():
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn((3, 1, 8, 6), generator=generator)
    permutation = torch.randperm(48, generator=generator)
    shuffled = shuffle_pixels(eps, permutation)
    assert shuffled.shape == eps.shape
    for i in range(3):
        assert torch.equal(torch.sort(shuffled[i].flatten()).values, torch.sort(eps[i].flatten()).values)
    assert not torch.equal(shuffled, eps)
    # one permutation shared by the batch: the same positions move in every slice
    ranks = eps.reshape(3, -1)[:, permutation]
    assert torch.equal(shuffled.reshape(3, -1), ranks)


def test_calibration_moves_the_noise_mean_into_the_estimate():
    generator = torch.Generator().manual_seed(0)
    noisy = torch.rand((4, 1, 8, 8), generator=generator) * 2 - 1
    estimate = noisy + 0.1 * torch.randn((4, 1, 8, 8), generator=generator) + 0.05
    signal = torch.tensor([0.999, 0.99, 0.95, 0.8])
    eps, calibrated = calibrated_noise(noisy, estimate, signal)
    assert torch.allclose(eps.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6)
    l1 = signal.view(-1, 1, 1, 1)
    l2 = (1 - l1**2).sqrt()
    assert torch.allclose(l1 * calibrated + l2 * eps, noisy, atol=1e-5)


def test_flips_are_joint_and_self_inverse():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    y = x + 100
    fx, fy = random_flips([x, y], torch.tensor([True, False]), torch.tensor([True, True]))
    assert torch.equal(fx[0], x[0].flip((-2, -1))) and torch.equal(fx[1], x[1].flip(-1))
    assert torch.equal(fy - fx, torch.full_like(x, 100.0))
    for variant in FLIP_VARIANTS:
        assert torch.equal(flip_variant(flip_variant(x, variant), variant), x)


def test_the_paper_network_has_the_reference_parameter_counts():
    # shared/reference/ddm2.md section 1.4: 24,472,161 (Stage III) and 24,325,761 (Stage I)
    assert count_parameters(UNet(1, 1, network=NetworkSettings(), level_input=True)) == 24_472_161
    assert count_parameters(UNet(2, 1, network=NetworkSettings(), level_input=False)) == 24_325_761


@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_unet_keeps_odd_sizes_and_uses_the_level(size):
    torch.manual_seed(0)
    net = NetworkSettings(width=8, channel_mults=(1, 2, 2), res_blocks=1, attention_levels=(1,), norm_groups=4)
    model = UNet(1, 1, network=net, level_input=True)
    x = torch.randn(2, 1, *size)
    out = model(x, torch.tensor([0.5, 0.9]))
    assert out.shape == (2, 1, *size)
    assert not torch.allclose(out, model(x, torch.tensor([0.99, 0.1])))
    with pytest.raises(ValueError, match="noise level"):
        model(x)


def test_flop_count_matches_the_notes():
    # shared/reference/ddm2.md section 1.4: 13.0 GFLOP at 96x96 and 81x106, 23.2 at 128x128
    paper = NetworkSettings()
    assert forward_flops(paper, 96, 96) / 1e9 == pytest.approx(13.0, abs=0.05)
    assert forward_flops(paper, 81, 106) / 1e9 == pytest.approx(13.0, abs=0.15)
    assert forward_flops(paper, 128, 128) / 1e9 == pytest.approx(23.2, abs=0.05)
    assert forward_flops(NetworkSettings(width=16), 96, 96) / 1e9 == pytest.approx(3.3, abs=0.05)


@pytest.mark.slow  # building a model on the meta device costs seconds (first use)
def test_flop_count_equals_pytorchs_flop_counter():
    small = NetworkSettings(width=8, channel_mults=(1, 2, 2), res_blocks=1, attention_levels=(2,), norm_groups=4)
    for in_channels, level_input in ((1, True), (2, False)):
        assert forward_flops(small, 13, 10, in_channels=in_channels, level_input=level_input) == \
            counted_forward_flops(small, 13, 10, in_channels=in_channels, level_input=level_input)
