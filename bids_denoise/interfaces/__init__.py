"""bids_denoise.interfaces."""
