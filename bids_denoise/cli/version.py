"""Version string printed by ``bids-denoise --version``."""

from bids_denoise.__about__ import __version__

PROG = "bids-denoise"


def version_string() -> str:
    """``bids-denoise vX.Y.Z``."""
    return f"{PROG} v{__version__}"
