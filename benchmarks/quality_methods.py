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
    """Every setting the app offers for Patch2Self, MP-PCA and auto, without and with the correction.

    ``auto-<grouping>`` is ``--method auto`` with Patch2Self at radius 1 (radial pooling) and
    MP-PCA at its defaults as candidates, on the same volume groups.
    """
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
    for grouping in ("shell", "all"):
        for rician in ("none", "mean"):
            name = f"auto-{grouping}" + ("" if rician == "none" else "+rician")
            settings[name] = dict(method="auto", grouping=grouping, rician=rician,
                                  candidates=(f"p2s-r1-radial-{grouping}-ols", f"mppca-{grouping}-veraart-overlap"))
    return settings


def base_name(name: str) -> str:
    """The setting without its Rician correction (the correction is applied to its output)."""
    return name.removesuffix("+rician")


def group_estimates(*, noisy, bvals, grouping, denoised, perturbed, probe, epsilon, sigma, region, rician,
                    truth=None) -> list[dict]:
    """The app's error estimate of every volume group (and the true RMSE in the head, when the
    truth is given): ``[{"label", "indices", "estimate", "true"}]``."""
    from bids_denoise.denoise.error import estimate_error
    from bids_denoise.denoise.rician import correct_rician_bias
    from bids_denoise.denoise.shells import group_volumes

    rows = []
    for group in group_volumes(bvals, grouping=grouping):
        index = list(group.indices)
        estimate = estimate_error(noisy=noisy[..., index], denoised=denoised[..., index],
                                  perturbed=perturbed[..., index], probe=probe[..., index], epsilon=epsilon,
                                  sigma=sigma, region=region, rician_correction=rician)
        true = None
        if truth is not None:
            output = denoised[..., index]
            if rician != "none":
                output = correct_rician_bias(output, sigma, method=rician)
            error = np.asarray(output, np.float64)[region] - np.asarray(truth[..., index], np.float64)[region]
            true = float(np.sqrt(np.mean(error**2)))
        rows.append(dict(label=group.label, indices=index, estimate=estimate.rmse, values=estimate.n_values,
                         true=true))
    return rows


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
