"""``--method auto`` in the registry (the app's default): every affordable method on every group;
of the outputs that keep the signal's contrast across directions, the one with the lowest
estimated error is kept."""

from __future__ import annotations

import logging

from bids_denoise.denoise.contrast import RETAINED_MINIMUM
from bids_denoise.denoise.methods.base import Method, Option

#: Methods tried on every group, in order (DDM2 joins with --auto-ddm2 on a GPU).
CPU_CANDIDATES = ("patch2self", "mppca")

OPTIONS = (
    Option(
        "auto_ddm2", "--auto-ddm2", kind="switch", default=False, sidecar="AutoDDM2",
        help="Also try DDM2 on every group when a CUDA GPU is used (its training takes minutes to "
        "hours per group); without a GPU it is left out with a warning.",
    ),
)


def candidates(settings, device: str = "auto") -> list[str]:
    """The methods ``auto`` tries with these settings on this device (``"cuda"``, ``"cpu"``,
    or ``"auto"``: CUDA when PyTorch sees one)."""
    names = list(CPU_CANDIDATES)
    if getattr(settings, "auto_ddm2", False):
        if _uses_cuda(device):
            names.append("ddm2")
        elif not _WARNED:
            _WARNED.append(True)
            logging.getLogger("bids_denoise.methods").warning(
                "--auto-ddm2: no CUDA GPU is used, so DDM2 is left out of the candidates")
    return names


_WARNED: list = []


def _uses_cuda(device: str) -> bool:
    if device == "cuda":
        return True
    if device == "cpu":
        return False
    from bids_denoise.denoise.device import resolve_device

    return str(resolve_device("auto")).startswith("cuda")


def _entries(settings):
    from bids_denoise.denoise.methods import get_method

    return [get_method(name) for name in candidates(settings, getattr(settings, "device", "auto"))]


def interface_inputs(settings) -> dict:
    return {
        "candidates": [entry.name for entry in _entries(settings)],
        "candidate_inputs": {entry.name: entry.interface_inputs(settings) for entry in _entries(settings)},
    }


def memory_gb(shape, settings, largest_group, device) -> float:
    """The largest candidate, plus every candidate's output and one perturbed run (float32)."""
    voxels = 1
    for size in shape[:3]:
        voxels *= int(size)
    volumes = largest_group or int(shape[3])
    largest = max(entry.memory_gb(shape, settings, largest_group, device) for entry in _entries(settings))
    return round(largest + (len(_entries(settings)) + 1) * 4 * voxels * volumes / 1e9, 2)


def parameters(settings) -> dict:
    entries = _entries(settings)
    return {
        "Candidates": [entry.label for entry in entries],
        **{f"{entry.label.replace('-', '')}Parameters": entry.sidecar_parameters(settings) for entry in entries},
    }


def sentence(settings) -> str:
    entries = _entries(settings)
    names = " and ".join(entry.label for entry in entries)
    parts = " ".join(entry.sentence(settings) for entry in entries)
    return (
        f"Every volume group was denoised with {names}. Of the outputs that kept at least "
        f"{RETAINED_MINIMUM:.0%} of the signal's variance across gradient directions (measured "
        "against the noisy variance less the noise variance), the one with the lower error was kept, "
        "the error being estimated without ground truth by Monte-Carlo SURE [@stein1981; @ramani2008] "
        f"(the choice for each group is recorded in the sidecar). {parts}"
    )


AUTO = Method(
    name="auto",
    label="Auto (the method with the lowest estimated error, per group)",
    summary="runs Patch2Self and MP-PCA (and DDM2 with --auto-ddm2 on a GPU) on every volume group and "
    "keeps, of those that keep the contrast across directions, the one with the lowest estimated "
    "error; about 4 times the time of one method",
    description="Settings of --method auto (it also uses the Patch2Self and MP-PCA settings).",
    options=OPTIONS,
    interface="bids_denoise.interfaces.auto:AutoDenoiser",
    memory_gb=memory_gb,
    sentence=sentence,
    bibtex="",
    parameters=parameters,
    min_group_volumes=2,
    borrows=("patch2self", "mppca", "ddm2"),
    inputs=interface_inputs,
)
