"""bids_denoise.cli."""
