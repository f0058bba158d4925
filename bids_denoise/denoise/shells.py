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
#: Groups with fewer volumes are copied through, not denoised. A self-supervised prediction of
#: one volume from a single other one can only reproduce that other volume, so every real
#: difference between the two (motion, pulsation) would be removed as if it were noise: on
#: siemens_trio (2 b0s) the b0 residual was 2.4 times the diffusion-weighted residual level.
#: From 3 volumes on the phantoms' b0s gained 4 dB over copying (benchmarks/results/quality.md).
MIN_GROUP_VOLUMES = 3
#: With ``grouping="shell"``, a shell with fewer volumes is merged with its nearest neighbour
#: in b (repeatedly), so DSI-like or jittered schemes do not become many tiny groups.
MIN_SHELL_VOLUMES = 10


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
    notes : tuple of str
        Decisions taken about the group (e.g. shells merged), for logs and sidecars.
    """

    label: str
    indices: tuple[int, ...]
    bvalues: tuple[float, ...]
    is_b0: bool
    notes: tuple[str, ...] = ()  # decisions taken about this group, for logs and sidecars

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
        return _nominal(self.bvalues)

    def as_dict(self) -> dict:
        """A JSON-friendly summary with BIDS-style keys, as recorded in sidecars."""
        summary = {
            "Label": self.label,
            "BValue": self.nominal_bvalue,
            "Count": self.size,
            "Volumes": list(self.indices),
        }
        if self.notes:
            summary["Notes"] = list(self.notes)
        return summary


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


def _nominal(bvalues) -> int:
    median = float(np.median(bvalues))
    return int(round(median, -1)) if median >= 100 else int(round(median))


def merge_small_shells(members, bvalues, *, min_volumes: int = MIN_SHELL_VOLUMES):
    """Merge each shell of fewer than ``min_volumes`` volumes into its nearest neighbour in b.

    Parameters
    ----------
    members : list of ndarray of bool
        Shells in increasing b order, as masks over ``bvalues`` (:func:`cluster_bvalues`).
    bvalues : array-like of float
        The diffusion-weighted b-values the masks index.
    min_volumes : int, optional
        Smallest shell kept on its own. Default :data:`MIN_SHELL_VOLUMES`.

    Returns
    -------
    list of (ndarray of bool, tuple of str)
        The merged shells in increasing b order, each with the labels (``"b<nominal> (<n>)"``)
        of the shells it was made of (empty when it was not merged).

    Notes
    -----
    The smallest shell goes first; its neighbour is the one whose median b-value is nearer
    (the smaller one on a tie). This repeats until every shell is large enough or one is left.
    """
    bvalues = np.asarray(bvalues, dtype=float)
    shells = [(mask, (f"b{_nominal(bvalues[mask])} ({int(mask.sum())})",)) for mask in members]
    while len(shells) > 1:
        sizes = [int(mask.sum()) for mask, _ in shells]
        small = int(np.argmin(sizes))
        if sizes[small] >= min_volumes:
            break
        centre = np.median(bvalues[shells[small][0]])
        candidates = [k for k in (small - 1, small + 1) if 0 <= k < len(shells)]
        other = min(candidates, key=lambda k: (abs(np.median(bvalues[shells[k][0]]) - centre), sizes[k]))
        low, high = sorted((small, other))
        merged = (shells[low][0] | shells[high][0], shells[low][1] + shells[high][1])
        shells[low:high + 1] = [merged]
    return [(mask, parts if len(parts) > 1 else ()) for mask, parts in shells]


def copy_reason(group: VolumeGroup, *, b0_denoising: bool = True,
                min_volumes: int = MIN_GROUP_VOLUMES) -> str | None:
    """Why ``group`` is copied through instead of denoised, or None when it is denoised."""
    if group.is_b0 and not b0_denoising:
        return "copied through: b0 denoising is off"
    if group.size == 1 and min_volumes > 1:
        return "copied through: a single volume has no other volume to be predicted from"
    if group.size < min_volumes:
        return (f"copied through: {group.size} volumes, and groups of fewer than {min_volumes} are "
                "not denoised (a prediction from one other volume would remove every difference "
                "between the two as noise)")
    return None


def group_decisions(group: VolumeGroup, *, b0_denoising: bool = True,
                    min_volumes: int = MIN_GROUP_VOLUMES) -> list[str]:
    """What was decided about ``group`` beyond the user's settings: merged shells and copies
    of groups too small to denoise. These are logged, recorded in the sidecar and listed as
    warnings in the run summary. Copying the b0s because b0 denoising is off is not one."""
    reason = copy_reason(group, b0_denoising=b0_denoising, min_volumes=min_volumes)
    size_reason = reason is not None and not (group.is_b0 and not b0_denoising)
    return [*group.notes, *([reason] if size_reason else [])]


def group_volumes(
    bvals,
    *,
    b0_threshold: float = B0_THRESHOLD,
    grouping: str = "shell",
    shell_tolerance: float = SHELL_TOLERANCE,
    min_shell_volumes: int = MIN_SHELL_VOLUMES,
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
    min_shell_volumes : int, optional
        With ``grouping="shell"``, smaller shells are merged with their nearest neighbour
        (:func:`merge_small_shells`); the merged group is labelled ``b<low>to<high>`` and
        notes which shells it holds. Default :data:`MIN_SHELL_VOLUMES`; 1 keeps every shell.

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
        members = [(np.ones(dwi_idx.size, dtype=bool), ())]
    else:
        shells = cluster_bvalues(bvals[dwi_idx], tolerance=shell_tolerance)
        members = merge_small_shells(shells, bvals[dwi_idx], min_volumes=min_shell_volumes)
    labels = {group.label for group in groups}
    for member, parts in members:
        idx = dwi_idx[member]
        notes = ()
        if parts:
            notes = (f"shells {', '.join(parts)} merged into one group: a shell of fewer than "
                     f"{min_shell_volumes} volumes is denoised with its nearest neighbour",)
        group = VolumeGroup("dwi", tuple(idx.tolist()), tuple(bvals[idx].tolist()), False, notes)
        if grouping == "shell":
            nominal = f"b{group.nominal_bvalue}"
            if parts:
                nominal = f"b{_nominal(bvals[idx].min())}to{_nominal(bvals[idx].max())}"
            base = label = nominal
            copies = 1
            while label in labels:  # shells closer than the rounding still get distinct labels
                copies += 1
                label = f"{base}_{copies}"
            group = VolumeGroup(label, group.indices, group.bvalues, False, notes)
        labels.add(group.label)
        groups.append(group)
    return groups
