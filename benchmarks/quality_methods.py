"""Our methods as the app runs them, for bench_quality.py: Patch2Self and MP-PCA settings, with
or without the Rician correction.

The app splits a run into volume groups (``bids_denoise.denoise.shells.group_volumes``) and
denoises each group; Patch2Self does the same split itself, and MP-PCA is run group by group
here. The Rician correction uses the run's noise map, for every method, as the workflow's
EstimateNoise makes it (:func:`bids_denoise.denoise.noise.measure_noise` in the head mask).
"""

from __future__ import annotations

import warnings

import numpy as np


def our_settings() -> dict:
    """Every setting the app offers for Patch2Self and MP-PCA, without and with the correction."""
    settings = {}
    for radius in (0, 1, 2):
        for pooling in (("voxel",) if radius == 0 else ("voxel", "radial")):
            for grouping in ("shell", "all"):
                for model in ("ols", "ridge"):
                    for rician in ("none", "mean"):
                        name = f"p2s-r{radius}-{pooling}-{grouping}-{model}" + ("" if rician == "none" else "+rician")
                        settings[name] = dict(method="patch2self", patch_radius=radius, patch_pooling=pooling,
                                              grouping=grouping, model=model, alpha=1.0, rician=rician)
    for grouping in ("shell", "all"):
        for estimator, short in (("veraart2016", "veraart"), ("cordero-grande2019", "cordero")):
            for reconstruction in ("overlap", "center"):
                for rician in ("none", "mean"):
                    name = f"mppca-{grouping}-{short}-{reconstruction}" + ("" if rician == "none" else "+rician")
                    settings[name] = dict(method="mppca", grouping=grouping, estimator=estimator,
                                          reconstruction=reconstruction, rician=rician)
    return settings


def _mppca_groups(data, bvals, setting):
    """MP-PCA group by group: the denoised series."""
    from bids_denoise.denoise.mppca import mppca
    from bids_denoise.denoise.shells import group_volumes
    from bids_denoise.interfaces.mppca import fitted_radius

    out = np.asarray(data, np.float32).copy()
    for group in group_volumes(bvals, grouping=setting["grouping"]):
        if group.size < 2:
            continue
        index = list(group.indices)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = mppca(data[..., index], patch_radius=fitted_radius(2, data.shape[:3]),
                           estimator=setting["estimator"], reconstruction=setting["reconstruction"], progress=False)
        out[..., index] = result.denoised
    return out


def noise_sigma(data, bvals):
    """The run's noise map (the app's EstimateNoise): returns (sigma map, head mask, source)."""
    from bids_denoise.denoise.masks import brain_mask, mean_b0
    from bids_denoise.denoise.noise import measure_noise
    from bids_denoise.interfaces.mppca import fitted_radius

    region = brain_mask(mean_b0(data, bvals))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        level = measure_noise(data, bvals, region=region, patch_radius=fitted_radius(2, data.shape[:3]))
    return level.sigma, region, level.source


def run_ours(data, bvals, setting, sigma_cache=None):
    """One setting on one series; ``sigma_cache`` (a dict) keeps the run's noise map."""
    from bids_denoise.denoise.patch2self import patch2self
    from bids_denoise.denoise.rician import correct_rician_bias

    if setting["method"] == "mppca":
        out = _mppca_groups(data, bvals, setting)
    else:
        kwargs = {k: setting[k] for k in ("patch_radius", "patch_pooling", "grouping", "model", "alpha")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = patch2self(data, bvals, device="cpu", progress=False, **kwargs)
    if setting.get("rician", "none") != "none":
        if sigma_cache is None:
            sigma_cache = {}
        if "all" not in sigma_cache:
            sigma_cache["all"] = noise_sigma(data, bvals)[0]
        out = correct_rician_bias(out, sigma_cache["all"], method=setting["rician"])
    return out
