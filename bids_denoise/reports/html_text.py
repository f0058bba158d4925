"""The fixed text of the subject report: figure captions and the style sheet."""

from __future__ import annotations

from bids_denoise.reports import names

#: Title and caption of each reportlet kind (``{label}``: the volume group of a mosaic).
CAPTIONS = {
    "brainmask": (
        "Brain mask and noise map",
        "Top: mean of the raw b=0 volumes with the mask used for every statistic below (red outline: "
        "Otsu threshold on log intensities, in-plane opening, largest connected component, holes filled; "
        "with no background in the field of view, all voxels). Bottom: the noise map written next to the "
        "denoised series, the per-voxel root mean square of the residual over the denoised volumes. "
        "Bright anatomy in the noise map means the residual is not only noise there.",
    ),
    names.MOSAIC_PREFIX: (
        "Before, after and residual: {label}",
        "One volume of the group (the middle one in acquisition order) in axial, coronal and sagittal "
        "slices. Before and after share one intensity window; the residual (raw − denoised) is shown at "
        "the same window width, centred on zero, so its size compares with the image, and amplified to "
        "±3 SD (blue negative, red positive). The residual should look like noise everywhere: edges, "
        "ventricles or other anatomy in it mean signal was removed.",
    ),
    "fa": (
        "FA before and after",
        "Fractional anisotropy from a quick log-linear tensor fit on b <= 1500, of the raw (top) and the "
        "denoised series (bottom), and their histograms inside the mask. Noise makes FA grainy and raises "
        "it in grey matter; denoising should smooth the grain while white-matter tracts keep their FA. "
        "A denoised histogram shifted to lower FA across white matter (FA > 0.4) means diffusion contrast "
        "was removed; the QC box flags a fall of the re-noised FA of more than 10 %.",
    ),
    "residualhist": (
        "Residual histograms",
        "Distribution of the residuals inside the mask, per denoised group, with a normal distribution of "
        "the same standard deviation (dashed). Noise removal gives a symmetric, bell-shaped histogram; "
        "heavy tails or skew point to structure or outliers in the residual.",
    ),
    "residualstd": (
        "Residual standard deviation per volume",
        "Standard deviation of the residual in the mask for every volume, in acquisition order, coloured "
        "by group. Values should be similar within a group; a single high volume often has motion or "
        "signal dropout, a drift follows scanner heating.",
    ),
    "residualcorr": (
        "Residual-versus-signal correlation",
        "Pearson correlation, inside the mask, between each volume's residual and its denoised signal "
        "(filled markers) and the mean denoised b=0 image (open markers, anatomy). The grey band is the "
        "±2/√n spread of white noise. Residuals that contain anatomy give correlations well outside the "
        "band; for least-squares Patch2Self the correlation with the signal is ≈0 by construction, so "
        "read the open markers.",
    ),
    "sigma": (
        "Noise level and SNR",
        "Noise sigma of the raw and denoised volumes (median over each group's volumes; robust wavelet "
        "estimate from the finest in-plane diagonal detail, so on coarse data it also contains some "
        "texture), the residual SD, and the SNR of the raw data (mean signal in the mask / sigma).",
    ),
    "ddm2loss": (
        "DDM2 training loss",
        "Loss of the stage I noise model and of the stage III diffusion model against the logged training "
        "step, per group (thin: logged values, thick: running mean). Both should decrease and flatten.",
    ),
    "ddm2tstar": (
        "DDM2 matched states t*",
        "Stage II matches each slice to the diffusion step t* whose noise level equals its residual. Left: "
        "histogram of t* over all slices; right: median and range per volume. Outlying volumes often carry "
        "artefacts.",
    ),
}


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;line-height:1.45}
nav{position:sticky;top:0;background:#1f3b57;padding:.5em 1em;z-index:1}
nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-size:.95em}
nav a:hover{text-decoration:underline}
main{max-width:1200px;margin:0 auto;padding:1em 1.5em 4em}
h1{font-size:1.6em;margin-top:.6em}h2{border-bottom:2px solid #1f3b57;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef2f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.2em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.88em;color:#444;max-width:60em}
figcaption b{color:#222}
code,pre{font-family:Menlo,Consolas,monospace;font-size:.88em;background:#f4f4f4}
pre{padding:.6em;overflow-x:auto;white-space:pre-wrap}
.ok{color:#237a2b}.bad{color:#b3261e}.muted{color:#666}
.qc{border:2px solid #237a2b;background:#eef8ef;padding:.5em 1em;margin:1em 0}
.qc.warn{border-color:#b3261e;background:#fdecea}.qc ul{margin:.3em 0}
ol.references li{margin-bottom:.4em;font-size:.92em}
"""
