"""The denoising methods of the app: one registry entry each.

Everything that names a method reads its entry: the command line (flags, choices, defaults and
help), the configuration, the preflight checks (memory and time), the workflows (which
interface denoises a group, with which inputs), the sidecars (``DenoisingParameters``) and the
methods text (sentence and BibTeX). Adding a method is an engine module, an interface and an
entry here.

This package never imports PyTorch, Nipype or the engines at import time (``--help`` stays
fast); entries import them inside the functions that need them.
"""

from bids_denoise.denoise.methods.auto import AUTO
from bids_denoise.denoise.methods.base import Method, Option, join_words
from bids_denoise.denoise.methods.ddm2 import DDM2
from bids_denoise.denoise.methods.mppca import MPPCA
from bids_denoise.denoise.methods.patch2self import PATCH2SELF

#: Every method, by ``--method`` name, in the order ``--help`` lists them.
METHODS = {method.name: method for method in (PATCH2SELF, MPPCA, DDM2, AUTO)}
#: The app's defaults, chosen by the rule of benchmarks/bench_quality.py (the best mean PSNR
#: among the settings that keep white-matter FA on every phantom of 30 or more volumes):
#: ``auto`` over all diffusion-weighted volumes at once, with the Rician mean removed.
DEFAULT_METHOD = "auto"
DEFAULT_GROUPING = "all"
DEFAULT_RICIAN_CORRECTION = "mean"


def get_method(name: str) -> Method:
    """The registry entry of ``name``; :class:`ValueError` names the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def denoising_parameters(settings) -> dict:
    """The settings that decide the output, as the sidecars record them (``DenoisingParameters``):
    the volume split, then the method's own (``settings`` is e.g. ``config.workflow``)."""
    parameters = {
        "B0Threshold": float(settings.b0_threshold),
        "ShellGrouping": settings.shell_grouping,
        "ShellTolerance": float(settings.shell_tolerance),
        "B0Denoising": bool(settings.b0_denoising),
        "RicianCorrection": str(getattr(settings, "rician_correction", "none")),
        "ErrorEstimate": bool(getattr(settings, "error_estimate", True)),
    }
    parameters.update(get_method(settings.method).sidecar_parameters(settings))
    return parameters


def all_options() -> dict:
    """Every method option by name (an option shared by two methods is listed once)."""
    options = {}
    for method in METHODS.values():
        for option in method.options:
            options.setdefault(option.name, option)
    return options


__all__ = [
    "DEFAULT_GROUPING",
    "DEFAULT_METHOD",
    "DEFAULT_RICIAN_CORRECTION",
    "METHODS",
    "Method",
    "Option",
    "all_options",
    "denoising_parameters",
    "get_method",
    "join_words",
]
