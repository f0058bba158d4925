"""Version and identity of bids_denoise."""

__version__ = "0.1.0"
__packagename__ = "bids_denoise"
__url__ = "https://github.com/bids-denoise/bids_denoise"
