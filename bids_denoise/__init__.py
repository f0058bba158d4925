"""bids_denoise: a BIDS App that denoises diffusion MRI."""

from bids_denoise.__about__ import __version__

__all__ = ["__version__"]
