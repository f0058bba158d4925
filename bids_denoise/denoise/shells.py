"""Group diffusion volumes into a b0 group and b-value shells.

The workflow, Patch2Self and DDM2 all share this one definition of what a shell is, so the
b0 threshold and the clustering tolerance mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Volumes with ``b <= B0_THRESHOLD`` (s/mm²) are b0s, as in DIPY and MRtrix.
B0_THRESHOLD = 50.0
#: Two b-values closer than this (s/mm²) belong to the same shell (MRtrix uses 80).
SHELL_TOLERANCE = 100.0
GROUPINGS = ("shell", "all")


@dataclass(frozen=True)
class VolumeGroup:
    """Volumes of one run that are denoised together.

    Attributes
    ----------
    label : str
        ``"b0"`` for the b0 group, ``"b<nominal>"`` for a shell (e.g. ``"b1000"``) or
        ``"dwi"`` when all diffusion-weighted shells are pooled.
    indices : tuple of int
        Positions of the volumes in the original 4D series, in acquisition order.
    bvalues : tuple of float
        The b-value of each volume, in the same order as ``indices``.
    is_b0 : bool
        Whether this is the b0 group.
    """

    label: str
    indices: tuple[int, ...]
    bvalues: tuple[float, ...]
    is_b0: bool

    @property
    def size(self) -> int:
        """Number of volumes in the group."""
        return len(self.indices)

    @property
    def nominal_bvalue(self) -> int:
        """The group's median b-value (0 for the b0 group), to the nearest 10 from b=100 up.

        Scanners jitter b-values by a few s/mm² (999, 1005), so the nominal value is rounded.
        """
        if self.is_b0:
            return 0
        median = float(np.median(self.bvalues))
        return int(round(median, -1)) if median >= 100 else int(round(median))

    def as_dict(self) -> dict:
        """A JSON-friendly summary with BIDS-style keys, as recorded in sidecars."""
        return {
            "Label": self.label,
            "BValue": self.nominal_bvalue,
            "Count": self.size,
            "Volumes": list(self.indices),
        }


def _check_bvals(bvals) -> np.ndarray:
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size == 0:
        raise ValueError("bvals is empty")
    if not np.all(np.isfinite(bvals)):
        raise ValueError("bvals contain NaN or Inf values")
    if np.any(bvals < 0):
        raise ValueError(f"bvals contain negative b-values: {sorted(set(bvals[bvals < 0]))}")
    return bvals


def cluster_bvalues(bvalues, *, tolerance: float = SHELL_TOLERANCE) -> list[np.ndarray]:
    """Cluster b-values into shells by single linkage along the b axis.

    Sorted distinct b-values start a new shell wherever the gap to the previous value exceeds
    ``tolerance``, so 995/1000/1005 form one shell while 1000 and 2000 do not.

    Parameters
    ----------
    bvalues : array-like of float
        Diffusion-weighted b-values (b0s already removed).
    tolerance : float, optional
        Largest gap (s/mm²) between neighbouring b-values of one shell. Default 100.

    Returns
    -------
    list of ndarray
        For each shell, in increasing b order, a boolean mask over ``bvalues``.
    """
    if tolerance < 0:
        raise ValueError(f"shell tolerance must be >= 0, got {tolerance}")
    bvalues = np.asarray(bvalues, dtype=float).ravel()
    if bvalues.size == 0:
        return []
    distinct = np.unique(bvalues)
    breaks = np.flatnonzero(np.diff(distinct) > tolerance) + 1
    return [
        (bvalues >= members[0]) & (bvalues <= members[-1])
        for members in np.split(distinct, breaks)
    ]


def group_volumes(
    bvals,
    *,
    b0_threshold: float = B0_THRESHOLD,
    grouping: str = "shell",
    shell_tolerance: float = SHELL_TOLERANCE,
) -> list[VolumeGroup]:
    """Split a series into its b0 group and its diffusion-weighted groups.

    Parameters
    ----------
    bvals : array-like of float
        One b-value per volume.
    b0_threshold : float, optional
        Volumes with ``b <= b0_threshold`` form the b0 group. Default 50.
    grouping : {"shell", "all"}, optional
        ``"shell"`` (default) makes one group per shell; ``"all"`` pools every
        diffusion-weighted volume into one group, as DIPY and QSIPrep do.
    shell_tolerance : float, optional
        Passed to :func:`cluster_bvalues`. Default 100.

    Returns
    -------
    list of VolumeGroup
        The b0 group first (if there are b0s), then shells by increasing b-value. Every volume
        belongs to exactly one group.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if b0_threshold < 0:
        raise ValueError(f"b0_threshold must be >= 0, got {b0_threshold}")
    bvals = _check_bvals(bvals)
    is_b0 = bvals <= b0_threshold
    groups = []
    if is_b0.any():
        idx = np.flatnonzero(is_b0)
        groups.append(VolumeGroup("b0", tuple(idx.tolist()), tuple(bvals[idx].tolist()), True))
    dwi_idx = np.flatnonzero(~is_b0)
    if dwi_idx.size == 0:
        return groups
    if grouping == "all":
        members = [np.ones(dwi_idx.size, dtype=bool)]
    else:
        members = cluster_bvalues(bvals[dwi_idx], tolerance=shell_tolerance)
    labels = {group.label for group in groups}
    for member in members:
        idx = dwi_idx[member]
        group = VolumeGroup("dwi", tuple(idx.tolist()), tuple(bvals[idx].tolist()), False)
        if grouping == "shell":
            base = label = f"b{group.nominal_bvalue}"
            copies = 1
            while label in labels:  # shells closer than the rounding still get distinct labels
                copies += 1
                label = f"{base}_{copies}"
            group = VolumeGroup(label, group.indices, group.bvalues, False)
        labels.add(group.label)
        groups.append(group)
    return groups
