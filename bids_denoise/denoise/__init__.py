"""bids_denoise.denoise."""
