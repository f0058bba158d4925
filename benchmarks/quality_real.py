"""Quality on real scanner data, which has no ground truth (used by bench_quality.py).

Per set and method:

* **FA in high-FA voxels**: a log-linear DTI fit (``shared/bench/score.py``'s ``dti_fa_md``, on
  b <= 1200) inside a median_otsu mask of the mean b0; the mean FA over the voxels whose FA in
  the raw data is above 0.4 (for siemens_trio: in the average of its two repeats, which is also
  reported as the reference);
* **residual level**: per volume, the standard deviation in the mask of ``raw - denoised``
  over a robust noise estimate of the raw volume (``reports.stats.estimate_sigma``); the median
  over the b0s and over the diffusion-weighted volumes. Noise that is correlated between
  neighbouring voxels (interpolated reconstructions) makes the estimate low, so compare the b0
  ratio with the DW ratio of the same run rather than with 1;
* **residual-signal correlation**: the median over volumes of ``|corr(residual, denoised)|``
  in the mask, with the white-noise band ``2 / sqrt(voxels)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIEMENS = "siemens_trio_dti_b1000_20dirx2"
HIGH_FA = 0.4
B0_MAX = 50.0


def _scorer(shared_data: Path):
    sys.path.insert(0, str(shared_data.parent / "bench"))
    import score

    return score


def brain_mask(data, bvals) -> np.ndarray:
    from dipy.segment.mask import median_otsu

    mean_b0 = data[..., bvals <= B0_MAX].astype(np.float64).mean(axis=3)
    radius = 4 if min(mean_b0.shape[:2]) >= 20 else 1
    _, mask = median_otsu(mean_b0, median_radius=radius, numpass=2 if radius == 1 else 4)
    return mask if mask.sum() >= 20 else np.ones(mean_b0.shape, bool)


def fa_map(score, signal, bvals, bvecs, floor):
    fa, _ = score.dti_fa_md(np.asarray(signal, np.float64), bvals, bvecs, floor)
    return fa


def residual_levels(raw, denoised, bvals, mask) -> dict:
    from bids_denoise.reports.stats import estimate_sigma, pearson

    levels = {"b0": [], "dw": []}
    correlations = []
    for volume in range(raw.shape[3]):
        before = np.asarray(raw[..., volume], np.float64)
        after = np.asarray(denoised[..., volume], np.float64)
        residual = (before - after)[mask]
        if not residual.any():
            continue
        sigma = estimate_sigma(before, mask)
        key = "b0" if bvals[volume] <= B0_MAX else "dw"
        if np.isfinite(sigma) and sigma > 0:
            levels[key].append(float(residual.std() / sigma))
        if key == "dw":
            correlations.append(abs(pearson(residual, after[mask])))
    median = (lambda values: float(np.median(values)) if values else None)
    return dict(b0_ratio=median(levels["b0"]), dw_ratio=median(levels["dw"]),
                dw_corr=median([c for c in correlations if np.isfinite(c)]))


def two_repeat_average(data):
    """siemens_trio: volumes 0-20 and 21-41 are the same b0 + 20 directions, acquired twice."""
    return 0.5 * (data[..., :21].astype(np.float64) + data[..., 21:].astype(np.float64))


class SiemensFA:
    """siemens_trio's FA check: the raw series, and the mean FA of any output over the voxels
    with FA > HIGH_FA in the average of the two repeats (the reference)."""

    def __init__(self, shared_data: Path):
        import nibabel as nb

        folder = Path(shared_data) / SIEMENS
        self.folder = folder
        self.raw = np.asanyarray(nb.load(str(folder / "dwi.nii.gz")).dataobj).astype(np.float32)
        self.bvals = np.loadtxt(folder / "dwi.bval", ndmin=1)
        self.bvecs = np.loadtxt(folder / "dwi.bvec", ndmin=2)
        self._score = _scorer(Path(shared_data))
        self._mask = brain_mask(self.raw, self.bvals)
        self._floor = 1e-3 * float(np.percentile(self.raw[self._mask], 99.9))
        reference = self._fa(two_repeat_average(self.raw), self.bvals[:21], self.bvecs[:, :21])
        self.high = reference > HIGH_FA
        self.reference = float(reference[self.high].mean())

    def _fa(self, values, bvals, bvecs):
        return fa_map(self._score, np.asarray(values)[self._mask], bvals, bvecs, self._floor)

    def mean_fa(self, values) -> float:
        """Mean FA of ``values`` (the whole series) over the reference's high-FA voxels."""
        return float(self._fa(values, self.bvals, self.bvecs)[self.high].mean())


def real_results(names, settings, cache, log, anchors, denoise_all, shared_data: Path) -> dict:
    import nibabel as nb

    score = _scorer(shared_data)
    results = {}
    for name in names:
        folder = shared_data / name
        img = nb.load(str(folder / "dwi.nii.gz"))
        raw = np.asanyarray(img.dataobj)
        bvals = np.loadtxt(folder / "dwi.bval", ndmin=1)
        bvecs = np.loadtxt(folder / "dwi.bvec", ndmin=2)
        log(f"real {name} {raw.shape}")
        estimates = {}
        outputs = denoise_all(f"real-{name}", folder, settings, cache, log, anchors, estimates)
        mask = brain_mask(raw, bvals)
        inside = raw[mask]
        floor = 1e-3 * float(np.percentile(inside, 99.9))
        entry = dict(shape=list(raw.shape), mask_voxels=int(mask.sum()),
                     chance_correlation=2.0 / np.sqrt(mask.sum()), methods={}, estimates=estimates)
        reference_fa = fa_map(score, inside, bvals, bvecs, floor)
        reference_name = "raw"
        if name == SIEMENS:
            average = two_repeat_average(raw)[mask]
            reference_fa = fa_map(score, average, bvals[:21], bvecs[:, :21], floor)
            reference_name = "average of the two repeats"
        high = None if reference_fa is None else reference_fa > HIGH_FA
        if high is not None:
            entry.update(high_fa_voxels=int(high.sum()), high_fa_reference=reference_name,
                         reference_fa=float(reference_fa[high].mean()))
        rows = {"raw": (None, raw)}
        for method, (path, seconds) in outputs.items():
            if path is None:
                entry["methods"][method] = dict(error=seconds)
                continue
            rows[method] = (seconds, np.asanyarray(nb.load(str(path)).dataobj))
        for method, (seconds, values) in rows.items():
            row = dict(seconds=None if seconds is None else round(seconds, 3))
            if high is not None and high.any():
                fa = fa_map(score, values[mask], bvals, bvecs, floor)
                row["fa_high"] = float(fa[high].mean())
                if name == SIEMENS:
                    row["fa_mae_vs_reference"] = float(np.abs(fa[high] - reference_fa[high]).mean())
            if method != "raw":
                row.update(residual_levels(raw, values, bvals, mask))
            entry["methods"][method] = row
        results[name] = entry
    return results


def qc_results(names, methods, cache_root: Path, shared_data: Path, log) -> dict:
    """The app's QC flags (``bids_denoise.reports.qc.assess``) for the outputs cached by the
    runs above: ours (``<cache>/real-<set>/ours/<setting>.nii.gz``) and the anchors, checked on
    the app's default volume groups with the app's noise map."""
    import nibabel as nb

    from bids_denoise.denoise.shells import group_volumes
    from bids_denoise.reports.qc import assess
    from quality_methods import noise_sigma

    results = {}
    for name in names:
        folder = shared_data / name
        raw = np.asanyarray(nb.load(str(folder / "dwi.nii.gz")).dataobj).astype(np.float32)
        bvals = np.loadtxt(folder / "dwi.bval", ndmin=1)
        bvecs = np.loadtxt(folder / "dwi.bvec", ndmin=2)
        sigma, region, source = noise_sigma(raw, bvals)
        groups = [(g.label, g.indices) for g in group_volumes(bvals) if g.size >= 2]
        entry = dict(noise_source=source, groups=[label for label, _ in groups], methods={})
        for method in methods:
            path = cache_root / f"real-{name}" / "ours" / f"{method}.nii.gz"
            if not path.is_file():
                path = cache_root / f"real-{name}" / f"{method}.nii.gz"
            if not path.is_file():
                continue
            denoised = np.asanyarray(nb.load(str(path)).dataobj).astype(np.float32)
            quality = assess(raw, denoised, bvals, bvecs, sigma, region, groups,
                             rician_corrected=method.endswith("+rician"))
            ratios = [row["ResidualRatio"] for row in quality["Groups"] if row["ResidualRatio"] is not None]
            correlations = [row["ResidualCorrelation"] for row in quality["Groups"]
                            if row["ResidualCorrelation"] is not None]
            entry["methods"][method] = dict(
                flags=[flag["Check"] + (f"({flag['Group']})" if flag["Group"] else "") for flag in quality["Flags"]],
                fa_change=(quality["FA"] or {}).get("Change"),
                max_ratio=max(ratios, default=None), max_correlation=max(correlations, default=None),
            )
        log(f"  QC {name}: " + ", ".join(f"{m} {len(v['flags'])}" for m, v in entry["methods"].items()))
        results[name] = entry
    return results
