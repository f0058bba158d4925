"""The reportlets of one run: which figures, with which titles, from which numbers.

Arrays in, files out (into one folder): the brain mask, one before/after/residual mosaic per
volume group, the residual and noise plots and, for DDM2, its training curves, plus the
statistics behind them. The Nipype interface
(:class:`bids_denoise.interfaces.reports.DenoisingReportlets`) only loads the images.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bids_denoise.reports import figures, names
from bids_denoise.reports.stats import brain_mask, mean_b0, residual_statistics

LOGGER = logging.getLogger(__name__)


def draw_reportlets(raw, denoised, bvals, groups, out: Path, *, zooms, title: str, b0_threshold: float,
                    noise=None, history_files=(), sigma=None, ranks=None, bvecs=None) -> tuple[list, dict]:
    """Draw every reportlet of one run into ``out``.

    Parameters
    ----------
    raw, denoised : ndarray, 4D
        The raw series and its denoised version, RAS-oriented (as displayed).
    bvals : ndarray
        One b-value per volume.
    groups : list of dict
        Volume groups as SplitShells records them.
    out : pathlib.Path
        Folder the files go to, as ``<desc>.<ext>``.
    zooms : sequence of float
        Voxel size, for the aspect of the mosaics.
    title : str
        Run name shown in the figure titles.
    b0_threshold : float
        b-values up to this are b0s (the mask and the anatomy come from them).
    noise : ndarray, 3D, optional
        The noise map, shown next to the brain mask.
    history_files : sequence of str
        DDM2 training histories, one per group, in group order.
    sigma, ranks : ndarray, optional
        MP-PCA's noise-sigma map (3D) and rank maps (4D, one volume per group).
    bvecs : ndarray, shape (3, N), optional
        Gradient directions; with them, runs that allow a tensor fit (a b0 and 6 directions at
        b <= 1500) get an FA before/after figure (``fa``) and ``stats["FA"]``.

    Returns
    -------
    made : list of (desc, path)
        The reportlets, in the order the report shows them.
    stats : dict
        :func:`~bids_denoise.reports.stats.residual_statistics`, plus a DDM2 summary.
    """
    out = Path(out)
    reference = mean_b0(raw, bvals, b0_threshold)
    mask = brain_mask(reference)
    anatomy = mean_b0(denoised, bvals, b0_threshold)
    stats = residual_statistics(raw, denoised, groups, mask, anatomy=anatomy, bvals=bvals)

    made = [("brainmask", figures.plot_brainmask(reference, mask, zooms, out / "brainmask.png",
                                                 noise=noise, title=f"{title}: brain mask"))]
    taken = set()
    for group, group_stats in zip(groups, stats["Groups"]):
        desc = names.mosaic_desc(group["Label"], taken)
        taken.add(desc)
        volume = figures.representative_volume(group["Volumes"])
        state = "" if group_stats["Denoised"] else " (not denoised: copied through)"
        made.append((desc, figures.plot_mosaic(
            raw[..., volume], denoised[..., volume], mask, zooms, out / f"{desc}.png",
            title=f"{title}: {group['Label']}, volume {volume} (b = {bvals[volume]:g}){state}",
            residual_sd=group_stats.get("ResidualStd"),
        )))
    if bvecs is not None:
        made += _fa_figure(raw, denoised, bvals, bvecs, mask, zooms, out, title, b0_threshold, stats)
    made.append(("residualhist", figures.plot_residual_histograms(
        stats, out / "residualhist.svg", title=f"{title}: residuals in the brain mask")))
    made.append(("residualstd", figures.plot_residual_std(
        stats, out / "residualstd.svg", title=f"{title}: residual SD per volume")))
    made.append(("residualcorr", figures.plot_residual_correlation(
        stats, out / "residualcorr.svg", title=f"{title}: residual-versus-signal correlation")))
    made.append(("sigma", figures.plot_sigma_snr(stats, out / "sigma.svg", title=f"{title}: noise and SNR")))
    if sigma is not None and ranks is not None:
        labels = [str(group["Label"]) for group in groups]
        made.append(("mppcamaps", figures.plot_mppca_maps(sigma, ranks, labels, mask, zooms, out / "mppcamaps.png",
                                                          title=f"{title}: MP-PCA noise and signal rank")))
    if history_files:
        made += _ddm2_figures(list(history_files), groups, out, title, stats)
    return made, stats


def _fa_figure(raw, denoised, bvals, bvecs, mask, zooms, out: Path, title: str, b0_threshold: float, stats: dict):
    """FA maps of both series in the mask, drawn when the run allows a tensor fit."""
    import numpy as np

    from bids_denoise.reports.qc import HIGH_FA, dti_fa

    fa_raw = dti_fa(raw, bvals, bvecs, mask, b0_threshold=b0_threshold)
    if fa_raw is None or not mask.any():
        return []
    fa_denoised = dti_fa(denoised, bvals, bvecs, mask, b0_threshold=b0_threshold)
    maps = []
    for values in (fa_raw, fa_denoised):
        volume = np.zeros(mask.shape, np.float32)
        volume[mask] = values
        maps.append(volume)
    high = fa_raw > HIGH_FA
    stats["FA"] = {"Voxels": int(mask.sum()), "HighVoxels": int(high.sum()),
                   "MeanRaw": round(float(fa_raw.mean()), 4), "MeanDenoised": round(float(fa_denoised.mean()), 4)}
    return [("fa", figures.plot_fa(maps[0], maps[1], mask, zooms, out / "fa.png", high=HIGH_FA,
                                   title=f"{title}: FA before and after"))]


def _ddm2_figures(history_files, groups, out: Path, title: str, stats: dict):
    from bids_denoise.reports.ddm2 import load_history, plot_loss_curves, plot_tstar, summarise_history

    histories = []
    for position, path in enumerate(history_files):
        label = groups[position]["Label"] if position < len(groups) else f"group {position + 1}"
        try:
            histories.append((str(label), load_history(path)))
        except (OSError, ValueError) as exc:
            LOGGER.warning("Cannot read the DDM2 history %s (%s); it is not plotted.", path, exc)
    if not histories:
        return []
    stats["DDM2"] = [{"Label": label, **summarise_history(history)} for label, history in histories]
    return [
        ("ddm2loss", plot_loss_curves(histories, out / "ddm2loss.svg", title=f"{title}: DDM2 training loss")),
        ("ddm2tstar", plot_tstar(histories, out / "ddm2tstar.svg", title=f"{title}: DDM2 matched states")),
    ]
