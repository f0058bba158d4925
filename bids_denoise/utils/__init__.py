"""bids_denoise.utils."""
