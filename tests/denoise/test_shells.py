"""Tests of b0 / shell grouping (bids_denoise.denoise.shells)."""

from __future__ import annotations

import numpy as np
import pytest

from functools import partial

from bids_denoise.denoise import shells
from bids_denoise.denoise.shells import VolumeGroup, cluster_bvalues, copy_reason, merge_small_shells

#: The clustering tests use shells of a few volumes; merging small shells is tested on its own.
group_volumes = partial(shells.group_volumes, min_shell_volumes=1)


def labels(groups):
    return [g.label for g in groups]


def indices(groups):
    return [list(g.indices) for g in groups]


def assert_partition(groups, n_volumes):
    """Every volume is in exactly one group, and each group keeps acquisition order."""
    seen = [i for g in groups for i in g.indices]
    assert sorted(seen) == list(range(n_volumes))
    for g in groups:
        assert list(g.indices) == sorted(g.indices)
        assert len(g.bvalues) == g.size


def test_nearby_bvalues_form_one_shell():
    bvals = [0, 995, 1000, 1005, 1000, 0]
    groups = group_volumes(bvals)
    assert labels(groups) == ["b0", "b1000"]
    assert indices(groups) == [[0, 5], [1, 2, 3, 4]]
    assert_partition(groups, len(bvals))


def test_distinct_bvalues_form_two_shells():
    bvals = [0, 1000, 2000, 1000, 2000, 2000]
    groups = group_volumes(bvals)
    assert labels(groups) == ["b0", "b1000", "b2000"]
    assert indices(groups) == [[0], [1, 3], [2, 4, 5]]
    assert [g.nominal_bvalue for g in groups] == [0, 1000, 2000]
    assert [g.is_b0 for g in groups] == [True, False, False]


@pytest.mark.parametrize("threshold, expected_b0", [
    (50, [0, 1, 2]),
    (49.9, [0, 1]),
    (10, [0, 1]),
    (0, [0]),
])
def test_b0_threshold_is_inclusive(threshold, expected_b0):
    bvals = [0, 5, 50, 1000, 1000]
    groups = group_volumes(bvals, b0_threshold=threshold)
    assert groups[0].is_b0 and groups[0].label == "b0"
    assert list(groups[0].indices) == expected_b0
    assert_partition(groups, len(bvals))


def test_small_nonzero_b0s_are_grouped_as_b0():
    bvals = [0.5, 1000, 5, 1000, 15, 1000]
    groups = group_volumes(bvals)
    assert labels(groups) == ["b0", "b1000"]
    assert indices(groups) == [[0, 2, 4], [1, 3, 5]]
    assert groups[0].bvalues == (0.5, 5.0, 15.0)
    assert groups[0].nominal_bvalue == 0


def test_jittered_shells():
    rng = np.random.default_rng(3)
    first = rng.uniform(990, 1010, size=15)
    second = rng.uniform(1990, 2010, size=15)
    bvals = np.r_[np.zeros(3), first, second]
    order = rng.permutation(bvals.size)
    bvals = bvals[order]
    groups = group_volumes(bvals)
    assert len(groups) == 3 and groups[0].label == "b0"
    # Labels carry the nominal b-value: the median rounded to 10 s/mm².
    assert [g.label for g in groups[1:]] == ["b1000", "b2000"]
    assert_partition(groups, bvals.size)
    for g, (lo, hi) in zip(groups, [(0, 0), (990, 1010), (1990, 2010)]):
        assert all(lo <= b <= hi for b in g.bvalues)
        assert np.all(bvals[list(g.indices)] == np.asarray(g.bvalues))
    assert groups[1].nominal_bvalue == int(round(np.median(groups[1].bvalues), -1))
    assert groups[2].nominal_bvalue == int(round(np.median(groups[2].bvalues), -1))


def test_nominal_bvalue_rounds_to_ten_but_keeps_low_b_values():
    assert [g.label for g in group_volumes([0, 929.75, 930.2, 931])] == ["b0", "b930"]
    assert [g.label for g in group_volumes([0, 5, 5, 7], b0_threshold=1)] == ["b0", "b5"]


def test_shells_that_round_alike_get_distinct_labels():
    groups = group_volumes([1000, 1000, 1004, 1004], shell_tolerance=0)
    assert [g.label for g in groups] == ["b1000", "b1000_2"]


def test_grouping_all_pools_dwis():
    bvals = [1000, 0, 2000, 3000, 0, 1000]
    groups = group_volumes(bvals, grouping="all")
    assert labels(groups) == ["b0", "dwi"]
    assert indices(groups) == [[1, 4], [0, 2, 3, 5]]
    assert groups[1].bvalues == (1000.0, 2000.0, 3000.0, 1000.0)
    assert not groups[1].is_b0
    assert_partition(groups, len(bvals))


@pytest.mark.parametrize("grouping", ["shell", "all"])
def test_every_volume_in_exactly_one_group(grouping):
    rng = np.random.default_rng(9)
    bvals = rng.choice([0, 5, 700, 1000, 1010, 2000, 3000], size=97)
    groups = group_volumes(bvals, grouping=grouping)
    assert_partition(groups, bvals.size)
    assert sum(g.size for g in groups) == bvals.size
    b0 = [g for g in groups if g.is_b0]
    assert len(b0) == 1 and groups[0] is b0[0]
    assert all(b <= 50 for b in b0[0].bvalues)
    assert all(b > 50 for g in groups[1:] for b in g.bvalues)


def test_shells_are_ordered_by_bvalue():
    bvals = [3000, 1000, 2000, 0, 3000, 1000, 2000]
    groups = group_volumes(bvals)
    assert labels(groups) == ["b0", "b1000", "b2000", "b3000"]
    nominal = [g.nominal_bvalue for g in groups]
    assert nominal == sorted(nominal)


def test_nominal_bvalue_is_rounded_median():
    g = group_volumes([998.4, 1001.2, 1003.9, 999.0])[0]
    assert g.label == f"b{g.nominal_bvalue}"
    assert g.nominal_bvalue == int(round(np.median([998.4, 1001.2, 1003.9, 999.0])))
    assert isinstance(g.nominal_bvalue, int)


def test_volume_group_properties_and_dict():
    g = VolumeGroup("b1000", (1, 4, 7), (1000.0, 1005.0, 995.0), False)
    assert g.size == 3
    assert g.nominal_bvalue == 1000
    d = g.as_dict()
    assert d == {"Label": "b1000", "BValue": 1000, "Count": 3, "Volumes": [1, 4, 7]}
    b0 = VolumeGroup("b0", (0,), (20.0,), True)
    assert b0.nominal_bvalue == 0


@pytest.mark.parametrize("bvals", [
    pytest.param([0, -1, 1000], id="negative"),
    pytest.param([0, np.nan, 1000], id="nan"),
    pytest.param([0, np.inf, 1000], id="inf"),
    pytest.param([], id="empty"),
])
def test_invalid_bvals_raise(bvals):
    with pytest.raises(ValueError, match="(?i)bval|b-val"):
        group_volumes(bvals)


def test_invalid_grouping_and_threshold_raise():
    with pytest.raises(ValueError, match="grouping"):
        group_volumes([0, 1000], grouping="shells")
    with pytest.raises(ValueError, match="b0_threshold"):
        group_volumes([0, 1000], b0_threshold=-1)


def test_tolerance_zero_splits_distinct_values():
    bvals = [0, 995, 1000, 1005, 1000]
    groups = group_volumes(bvals, shell_tolerance=0)
    assert [g.bvalues for g in groups[1:]] == [(995.0,), (1000.0, 1000.0), (1005.0,)]
    assert indices(groups) == [[0], [1], [2, 4], [3]]
    assert_partition(groups, len(bvals))


def test_tolerance_controls_merging():
    bvals = [1000, 1150, 1300]
    assert len(group_volumes(bvals, shell_tolerance=100)) == 3
    assert len(group_volumes(bvals, shell_tolerance=150)) == 1
    with pytest.raises(ValueError, match="(?i)tolerance"):
        cluster_bvalues(bvals, tolerance=-1)


def test_only_b0s_gives_only_b0_group():
    for grouping in ("shell", "all"):
        groups = group_volumes([0, 0, 10, 50], grouping=grouping)
        assert labels(groups) == ["b0"]
        assert indices(groups) == [[0, 1, 2, 3]]


def test_no_b0s_gives_no_b0_group():
    groups = group_volumes([1000, 2000, 1000])
    assert labels(groups) == ["b1000", "b2000"]
    assert not any(g.is_b0 for g in groups)


def test_cluster_bvalues_masks():
    b = np.array([2000, 1000, 1002, 2004, 3000.0])
    masks = cluster_bvalues(b)
    assert len(masks) == 3
    assert [list(np.flatnonzero(m)) for m in masks] == [[1, 2], [0, 3], [4]]
    assert all(m.dtype == bool and m.shape == b.shape for m in masks)
    assert cluster_bvalues([]) == []


# ----------------------------------------------------------------------------- small groups
def test_small_shells_are_merged_with_their_nearest_neighbour():
    # 3 b0s, then shells of 4 (b500), 20 (b1000), 3 (b2900) and 12 (b3000, jittered) volumes
    bvals = [0] * 3 + [500] * 4 + [1000] * 20 + [2900] * 3 + [2990, 3005, 3010] * 4
    groups = shells.group_volumes(bvals, shell_tolerance=50)
    assert labels(groups) == ["b0", "b500to1000", "b2900to3010"]
    assert [g.size for g in groups] == [3, 24, 15]
    assert_partition(groups, len(bvals))
    assert groups[0].notes == ()
    assert "b500 (4), b1000 (20)" in groups[1].notes[0]
    assert groups[1].as_dict()["Notes"] == list(groups[1].notes)
    assert "Notes" not in groups[0].as_dict()


def test_dsi_like_scheme_never_gives_many_tiny_groups():
    rng = np.random.default_rng(0)
    bvals = np.r_[0, np.sort(rng.uniform(300, 4000, size=101)).round(-1)]
    unmerged = group_volumes(bvals)
    merged = shells.group_volumes(bvals)
    assert min(g.size for g in unmerged[1:]) < 10  # the scheme really has tiny shells
    assert all(g.size >= 10 for g in merged[1:])
    assert len(merged) < len(unmerged)
    assert_partition(merged, bvals.size)


def test_merging_stops_when_one_shell_is_left():
    groups = shells.group_volumes([0, 1000, 1000, 2000, 2000, 3000])
    assert labels(groups) == ["b0", "b1000to3000"]


@pytest.mark.parametrize("sizes, expected", [
    ([5, 20, 5], [[0, 1, 2]]),  # each small shell joins its only neighbour...
    ([5, 20, 15], [[0, 1], [2]]),
    ([20, 3, 30], [[0, 1], [2]]),  # ...a middle one joins the nearer neighbour in b
    ([12, 12], [[0], [1]]),
])
def test_merge_small_shells_order(sizes, expected):
    bvalues = np.concatenate([np.full(n, 1000.0 * (k + 1)) for k, n in enumerate(sizes)])
    if sizes == [20, 3, 30]:
        bvalues[sizes[0]:sizes[0] + 3] = 1400.0  # nearer to b1000 than to b3000
    members = [bvalues == b for b in np.unique(bvalues)]
    merged = merge_small_shells(members, bvalues, min_volumes=10)
    which = [[k for k, m in enumerate(members) if (m & mask).any()] for mask, _ in merged]
    assert which == expected


def test_copy_reason():
    b0 = VolumeGroup("b0", (0, 5), (0.0, 0.0), True)
    shell = VolumeGroup("b1000", (1, 2, 3), (1000.0,) * 3, False)
    assert "2 volumes" in copy_reason(b0)
    assert copy_reason(b0, min_volumes=2) is None
    assert "b0 denoising is off" in copy_reason(b0, b0_denoising=False, min_volumes=2)
    assert copy_reason(shell) is None
    assert "a single volume" in copy_reason(VolumeGroup("b0", (0,), (0.0,), True))
