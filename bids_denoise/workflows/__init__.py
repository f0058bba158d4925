"""bids_denoise.workflows."""
