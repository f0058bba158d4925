"""The reportlets of one run: arrays and statistics in, SVG/PNG files out.

Images are shown in RAS orientation (pass arrays from :func:`nibabel.as_closest_canonical`):
axial and coronal views in neurological convention (the subject's right on the right), the
sagittal view with anterior on the right. Voxel sizes set the aspect ratio.

Image panels are PNG (an SVG with embedded bitmaps is larger and slower to open); line plots
are SVG. Files are byte-identical between runs on identical inputs.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bids_denoise.reports._mpl import new_figure, save

#: Views of a mosaic: (name, axis sliced, in-plane axes shown as (columns, rows)).
VIEWS = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
SLICES_PER_VIEW = 3
#: The amplified residual row spans ±RESIDUAL_SIGMAS residual standard deviations.
RESIDUAL_SIGMAS = 3.0
#: Display window of anatomical images: these percentiles of the raw intensities in the mask.
WINDOW_PERCENTILES = (0.5, 99.5)
_GROUP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")


def group_colour(position: int) -> str:
    """Colour of the ``position``-th group in every plot of a run."""
    return _GROUP_COLOURS[position % len(_GROUP_COLOURS)]


# ----------------------------------------------------------------------------------- helpers
def choose_slices(mask, axis: int, n: int = SLICES_PER_VIEW) -> list[int]:
    """Up to ``n`` distinct slice indices along ``axis`` spread over the mask's extent."""
    mask = np.asarray(mask, dtype=bool)
    size = mask.shape[axis]
    other = tuple(a for a in range(mask.ndim) if a != axis)
    present = np.flatnonzero(mask.any(axis=other)) if mask.any() else np.arange(size)
    low, high = int(present[0]), int(present[-1])
    if n <= 1:
        return [(low + high) // 2]
    positions = np.linspace(low + 0.2 * (high - low), high - 0.2 * (high - low), n)
    return sorted({int(round(p)) for p in positions})


def _slice(volume, axis: int, index: int, columns_rows) -> np.ndarray:
    """A 2D slice arranged as (rows, columns) for ``imshow(origin="lower")``."""
    plane = np.take(volume, index, axis=axis)
    remaining = [a for a in range(3) if a != axis]
    columns, rows = columns_rows
    plane = plane if remaining.index(columns) == 0 else plane.T  # make axis 0 the columns
    return np.asarray(plane, dtype=np.float64).T


def _extent(volume_shape, zooms, columns_rows):
    columns, rows = columns_rows
    return (0.0, volume_shape[columns] * float(zooms[columns]), 0.0, volume_shape[rows] * float(zooms[rows]))


def display_window(volume, mask) -> tuple[float, float]:
    """Intensity window (:data:`WINDOW_PERCENTILES` of ``volume`` inside ``mask``)."""
    values = np.asarray(volume, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.asarray(volume, dtype=np.float64).ravel()
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


# ------------------------------------------------------------------------------------ mosaics
def _upsample(plane, pixel_size, zooms_cr) -> np.ndarray:
    """Nearest-neighbour resample of a (rows, columns) slice to square screen pixels."""
    rows, columns = plane.shape
    height = max(1, int(round(rows * zooms_cr[1] / pixel_size)))
    width = max(1, int(round(columns * zooms_cr[0] / pixel_size)))
    row_index = np.minimum((np.arange(height) + 0.5) * rows / height, rows - 1).astype(int)
    column_index = np.minimum((np.arange(width) + 0.5) * columns / width, columns - 1).astype(int)
    return plane[np.ix_(row_index, column_index)]


def _rgb(plane, cmap, vmin, vmax) -> np.ndarray:
    from matplotlib import colormaps

    scaled = (np.asarray(plane, dtype=np.float64) - vmin) / (vmax - vmin)
    return colormaps[cmap](np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0))[..., :3]


def plot_mosaic(
    before,
    after,
    mask,
    zooms,
    out_file,
    *,
    title: str = "",
    residual_sd: float | None = None,
    n_slices: int = SLICES_PER_VIEW,
    width_px: int = 1100,
    max_height_px: int = 1400,
) -> Path:
    """Before / after / residual of one volume in axial, coronal and sagittal slices.

    Columns: the raw volume and the denoised volume at the **same** intensity window; the
    residual (raw − denoised) at the same window *width*, centred on 0, so that its size can be
    compared with the image; and the residual amplified to ±3 residual SDs (blue negative, red
    positive), where any anatomy left in it would stand out. Rows: ``n_slices`` slices per view.

    The panels are composed into one bitmap (one axes), which keeps drawing fast for any
    number of slices.

    Parameters
    ----------
    before, after : ndarray, 3D
        One raw volume and its denoised version (RAS orientation).
    mask : ndarray of bool, 3D
        Brain mask: sets the window and where the slices are taken.
    zooms : sequence of float
        Voxel sizes (mm) along the three axes.
    out_file : path
        ``.png`` (recommended) or ``.svg``.
    title : str, optional
    residual_sd : float, optional
        Standard deviation used to scale the amplified residual (default: that of this
        volume's residual in the mask).
    n_slices : int, optional
        Slices per view. Default 3.
    width_px : int, optional
        Approximate width of the image part in pixels. Default 1100.
    max_height_px : int, optional
        The image part is scaled down to at most this height (small, thick-slab or tall
        fields of view). Default 1400.
    """
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    residual = before - after
    mask = np.asarray(mask, dtype=bool)
    zooms = [float(z) for z in zooms[:3]]
    low, high = display_window(before, mask)
    width = high - low
    if residual_sd is None or not math.isfinite(residual_sd) or residual_sd <= 0:
        residual_sd = float(np.std(residual[mask])) if mask.any() else float(np.std(residual))
    amplified = RESIDUAL_SIGMAS * residual_sd if residual_sd > 0 else 1.0
    columns = (
        ("Before (raw)", before, ("gray", low, high)),
        ("After (denoised)", after, ("gray", low, high)),
        ("Residual, same window", residual, ("gray", -width / 2, width / 2)),
        (f"Residual, \u00b1{RESIDUAL_SIGMAS:g} SD", residual, ("RdBu_r", -amplified, amplified)),
    )

    rows = []  # (label, [(plane in columns order)], zooms of (columns, rows))
    for view, axis, columns_rows in VIEWS:
        if axis != 2 and before.shape[2] < THIN_SLAB_SLICES:
            continue  # coronal and sagittal planes of a thin slab are a few pixels high: unreadable
        for index in choose_slices(mask, axis, n_slices):
            planes = [_slice(volume, axis, index, columns_rows) for _, volume, _ in columns]
            rows.append((f"{view} {'xyz'[axis]}={index}", planes, (zooms[columns_rows[0]], zooms[columns_rows[1]])))
    cell_mm_w = max(p[0].shape[1] * z[0] for _, p, z in rows)
    gap = 6
    pixel_size = cell_mm_w * 4 / max(width_px - 3 * gap, 100)  # mm per screen pixel
    total_mm_h = sum(p[0].shape[0] * z[1] for _, p, z in rows)
    pixel_size = max(pixel_size, total_mm_h / max(max_height_px - gap * (len(rows) - 1), 100))
    cell_w = max(int(round(cell_mm_w / pixel_size)), 170)  # room for the column titles
    heights = [max(int(round(p[0].shape[0] * z[1] / pixel_size)), 1) for _, p, z in rows]
    canvas = np.ones((sum(heights) + gap * (len(rows) - 1), 4 * cell_w + 3 * gap, 3))
    label_positions = []
    top = 0
    for (label, planes, zooms_cr), height in zip(rows, heights):
        for c, plane in enumerate(planes):
            cmap, vmin, vmax = columns[c][2]
            tile = _rgb(_upsample(plane[::-1], pixel_size, zooms_cr), cmap, vmin, vmax)  # row 0 = top
            h, w = tile.shape[:2]
            left = c * (cell_w + gap) + (cell_w - w) // 2
            canvas[top:top + h, left:left + w] = tile
        label_positions.append((top + height / 2, label))
        top += height + gap

    dpi = 100
    margin_left, margin_top, margin_bottom = 1.1, 0.75, 0.95  # inches
    fig_w = canvas.shape[1] / dpi + margin_left + 0.2
    fig_h = canvas.shape[0] / dpi + margin_top + margin_bottom

    fig = new_figure(fig_w, fig_h)
    fig.set_layout_engine("none")
    ax = fig.add_axes([margin_left / fig_w, margin_bottom / fig_h, canvas.shape[1] / dpi / fig_w,
                       canvas.shape[0] / dpi / fig_h])
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    _bare(ax)
    for c, (name, _, _) in enumerate(columns):
        ax.text(c * (cell_w + gap) + cell_w / 2, -8, name, ha="center", va="bottom", fontsize=10)
    for y, label in label_positions:
        ax.text(-10, y, label, ha="right", va="center", fontsize=8)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar_h = 0.12 / fig_h
    bar_y = 0.45 / fig_h
    image_left, image_w = margin_left / fig_w, canvas.shape[1] / dpi / fig_w
    cell_frac = cell_w / canvas.shape[1] * image_w
    step_frac = (cell_w + gap) / canvas.shape[1] * image_w
    bars = (
        (0, 2, ("gray", low, high), "intensity (before and after)"),
        (2, 1, columns[2][2], "residual"),
        (3, 1, columns[3][2], f"residual (SD = {_fmt(residual_sd)})"),
    )
    for first, span, (cmap, vmin, vmax), label in bars:
        x0 = image_left + first * step_frac + 0.1 * cell_frac
        cax = fig.add_axes([x0, bar_y, (span - 1) * step_frac + 0.8 * cell_frac, bar_h])
        colourbar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, orientation="horizontal")
        colourbar.ax.tick_params(labelsize=7)
        colourbar.set_label(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.15 / fig_h, va="top")
    return save(fig, out_file, dpi=dpi)


def plot_brainmask(reference, mask, zooms, out_file, *, noise=None, title: str = "") -> Path:
    """The mean b0 with the brain mask outlined (red) and, if given, the noise map below it."""
    reference = np.asarray(reference, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n_rows = 1 if noise is None else 2
    fig = new_figure(11.0, 3.6 * n_rows + 0.6)
    grid = fig.add_gridspec(n_rows, 3)
    low, high = display_window(reference, mask)
    noise_axes, noise_image = [], None
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        noise_high = float(np.percentile(noise[mask], 99)) if mask.any() else float(np.max(noise))
        noise_high = noise_high if noise_high > 0 else 1.0
    for c, (view, axis, columns_rows) in enumerate(VIEWS):
        (index,) = choose_slices(mask, axis, 1)
        extent = _extent(reference.shape, zooms, columns_rows)
        ax = fig.add_subplot(grid[0, c])
        ax.imshow(_slice(reference, axis, index, columns_rows), origin="lower", extent=extent, cmap="gray",
                  vmin=low, vmax=high, interpolation="nearest")
        outline = _slice(mask.astype(float), axis, index, columns_rows)
        if 0 < outline.sum() < outline.size:
            ny, nx = outline.shape
            xs = np.linspace(extent[0], extent[1], nx, endpoint=False) + (extent[1] - extent[0]) / nx / 2
            ys = np.linspace(extent[2], extent[3], ny, endpoint=False) + (extent[3] - extent[2]) / ny / 2
            ax.contour(xs, ys, outline, levels=[0.5], colors="#e31a1c", linewidths=1.2)
        _bare(ax)
        ax.set_title(f"{view} ({'xyz'[axis]}={index})", fontsize=9)
        if c == 0:
            ax.set_ylabel("mean b0\n+ brain mask", fontsize=9)
        if noise is not None:
            ax = fig.add_subplot(grid[1, c])
            noise_image = ax.imshow(_slice(noise, axis, index, columns_rows), origin="lower", extent=extent,
                                    cmap="magma", vmin=0, vmax=noise_high, interpolation="nearest")
            _bare(ax)
            noise_axes.append(ax)
            if c == 0:
                ax.set_ylabel("noise map\n(residual RMS)", fontsize=9)
    if noise_image is not None:
        fig.colorbar(noise_image, ax=noise_axes, location="right", shrink=0.9, label="residual RMS")
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, out_file)


def plot_mppca_maps(sigma, ranks, labels, mask, zooms, out_file, *, title: str = "") -> Path:
    """MP-PCA's noise-sigma map and each volume group's rank map, on the axial slice of the
    mask's middle (rank maps: 4D, one volume per group, in ``labels`` order)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.float64).reshape(sigma.shape + (-1,))
    mask = np.asarray(mask, dtype=bool)
    view, axis, columns_rows = VIEWS[0]
    (index,) = choose_slices(mask, axis, 1)
    extent = _extent(sigma.shape, zooms, columns_rows)
    panels = [("noise sigma", sigma, "magma")] + [(f"rank, {label}", ranks[..., k], "viridis")
                                                  for k, label in enumerate(labels[: ranks.shape[3]])]
    fig = new_figure(3.0 * len(panels) + 0.8, 3.8)
    for k, (name, volume, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        inside = volume[mask] if mask.any() else volume.ravel()
        high = float(np.percentile(inside, 99)) if inside.size else 1.0
        image = ax.imshow(_slice(volume, axis, index, columns_rows), origin="lower", extent=extent, cmap=cmap,
                          vmin=0, vmax=high if high > 0 else 1.0, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        _bare(ax)
        ax.set_title(f"{name}\n({view}, {'xyz'[axis]}={index})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, out_file)


def plot_fa(fa_raw, fa_denoised, mask, zooms, out_file, *, high: float = 0.4, title: str = "") -> Path:
    """FA before and after denoising: axial slices of both (rows) and their histograms in the
    mask, with the mean FA of the voxels above ``high`` (3D maps, 0 outside the mask)."""
    fa_raw, fa_denoised = (np.asarray(v, dtype=np.float64) for v in (fa_raw, fa_denoised))
    mask = np.asarray(mask, dtype=bool)
    view, axis, columns_rows = VIEWS[0]
    slices = choose_slices(mask, axis, SLICES_PER_VIEW)
    extent = _extent(fa_raw.shape, zooms, columns_rows)
    columns = len(slices) + 1
    fig = new_figure(2.6 * columns + 1.2, 5.6)
    grid = fig.add_gridspec(2, columns, width_ratios=[1] * len(slices) + [1.6])
    for row, (name, volume) in enumerate((("raw", fa_raw), ("denoised", fa_denoised))):
        for k, index in enumerate(slices):
            ax = fig.add_subplot(grid[row, k])
            image = ax.imshow(_slice(volume, axis, index, columns_rows), origin="lower", extent=extent,
                              cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            _bare(ax)
            ax.set_title(f"FA {name} ({view}, {'xyz'[axis]}={index})", fontsize=8)
    fig.colorbar(image, ax=[fig.axes[-1]], shrink=0.8)
    ax = fig.add_subplot(grid[:, -1])
    bins = np.linspace(0.0, 1.0, 51)
    for name, volume, colour in (("raw", fa_raw, "#7f7f7f"), ("denoised", fa_denoised, "#1f77b4")):
        values = volume[mask]
        above = values[values > high]
        label = f"{name}: mean of FA > {high:g}: " + (f"{above.mean():.3f}" if above.size else "n/a")
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, color=colour, label=label)
    ax.axvline(high, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("FA (tensor fit on b <= 1500)")
    ax.set_ylabel("voxels in the mask")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, out_file)


# --------------------------------------------------------------------------------- line plots
def _groups(stats: Mapping) -> list[Mapping]:
    return list(stats.get("Groups") or [])


def _volume_series(stats: Mapping, key: str):
    volumes = stats["Volumes"]
    values = np.array([np.nan if v is None else v for v in volumes[key]], dtype=float)
    return np.asarray(volumes["Index"], dtype=int), values


#: Slabs of fewer axial slices get axial rows only in the mosaics.
THIN_SLAB_SLICES = 8


def plot_residual_histograms(stats: Mapping, out_file, *, title: str = "") -> Path:
    """Histogram of the residuals in the mask, one panel per denoised group, with a normal fit.

    The dashed curve is a normal distribution with the residuals' standard deviation: heavy
    tails or skew point to structure (or outliers) removed with the noise.
    """
    groups = [(i, g) for i, g in enumerate(_groups(stats)) if g.get("Histogram")]
    n = max(len(groups), 1)
    n_columns = min(n, 3)
    n_rows = math.ceil(n / n_columns)
    fig = new_figure(3.6 * n_columns + 0.4, 2.8 * n_rows + 0.5)
    if not groups:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no denoised volumes", ha="center", va="center", transform=ax.transAxes)
        _bare(ax)
    for k, (position, group) in enumerate(groups):
        ax = fig.add_subplot(n_rows, n_columns, k + 1)
        histogram = group["Histogram"]
        edges = np.asarray(histogram["Edges"], dtype=float)
        counts = np.asarray(histogram["Counts"], dtype=float)
        width = np.diff(edges)
        total = counts.sum() + histogram.get("Outside", 0)
        density = counts / max(total, 1) / width
        ax.stairs(density, edges, fill=True, alpha=0.6, color=group_colour(position), label="residuals")
        sd = group.get("ResidualStd") or 0
        if sd > 0:
            x = np.linspace(edges[0], edges[-1], 400)
            ax.plot(x, np.exp(-0.5 * (x / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k--", lw=1,
                    label=f"normal, SD {_fmt(sd)}")
        ax.set_title(f"{group['Label']} ({group.get('Count', '?')} volumes)", fontsize=9)
        ax.set_xlabel("residual (raw − denoised)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    if title:  # wrapped to the figure's width: one narrow panel cut a long title off
        fig.suptitle(textwrap.fill(title, width=max(int(fig.get_figwidth() * 11), 30)), fontsize=10)
    return save(fig, out_file)


def plot_residual_std(stats: Mapping, out_file, *, title: str = "") -> Path:
    """Residual standard deviation in the mask against the volume index, coloured by group."""
    fig = new_figure(10.0, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    index, values = _volume_series(stats, "ResidualStd")
    labels = stats["Volumes"]["Group"]
    for position, group in enumerate(_groups(stats)):
        selected = np.array([label == group["Label"] for label in labels])
        ax.plot(index[selected], values[selected], "o", ms=3.5, color=group_colour(position),
                label=f"{group['Label']} (b={group.get('BValue', '?')})")
    ax.plot(index, values, "-", color="0.75", lw=0.8, zorder=0)
    ax.set_xlabel("volume index (acquisition order)")
    ax.set_ylabel("residual SD in mask")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, frameon=False, loc="outside right upper")
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, out_file)


def plot_residual_correlation(stats: Mapping, out_file, *, title: str = "") -> Path:
    """Correlation of each volume's residual with its denoised signal and with the mean b0.

    Filled markers: residual versus the denoised signal of the same volume; open markers:
    residual versus the mean denoised b0 (anatomy). The grey band is ``±2/sqrt(n_voxels)``, the
    spread expected from white noise. Values well outside it mean anatomy leaked into the
    residual (over-smoothing) or, when negative, that noise is still in the signal.
    """
    fig = new_figure(10.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    index, signal_r = _volume_series(stats, "ResidualSignalCorrelation")
    _, anatomy_r = _volume_series(stats, "ResidualAnatomyCorrelation")
    chance = float(stats.get("CorrelationChanceLevel") or 0.0)
    if len(index):
        ax.axhspan(-chance, chance, color="0.85", zorder=0, label=f"±2/√n = ±{_fmt(chance, 2)}")
    labels = stats["Volumes"]["Group"]
    for position, group in enumerate(_groups(stats)):
        selected = np.array([label == group["Label"] for label in labels])
        colour = group_colour(position)
        ax.plot(index[selected], signal_r[selected], "o", ms=4, color=colour,
                label=f"{group['Label']}: vs. signal")
        ax.plot(index[selected], anatomy_r[selected], "o", ms=4, mfc="none", color=colour,
                label=f"{group['Label']}: vs. mean b0")
    ax.axhline(0, color="k", lw=0.6)
    finite = np.abs(np.concatenate([signal_r, anatomy_r]))
    finite = finite[np.isfinite(finite)]
    limit = max(0.2, float(finite.max()) * 1.1 if finite.size else 0.0, 2 * chance)
    ax.set_ylim(-min(limit, 1.0), min(limit, 1.0))
    ax.set_xlabel("volume index (acquisition order)")
    ax.set_ylabel("Pearson r (residual, reference)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, frameon=False, loc="outside right upper")
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, out_file)


def plot_sigma_snr(stats: Mapping, out_file, *, title: str = "") -> Path:
    """Noise sigma and SNR before and after denoising, per group (bar charts)."""
    groups = _groups(stats)
    labels = [str(g["Label"]) for g in groups]
    x = np.arange(len(groups))
    fig = new_figure(9.0, 3.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    def values(key):
        return np.array([np.nan if g.get(key) is None else g[key] for g in groups], dtype=float)

    bars = (("SigmaBefore", "sigma raw", "#9ecae1"), ("SigmaAfter", "sigma denoised", "#3182bd"),
            ("ResidualStd", "residual SD", "#fd8d3c"))
    for k, (key, name, colour) in enumerate(bars):
        left.bar(x + (k - 1) * 0.27, np.nan_to_num(values(key)), width=0.27, color=colour, label=name)
    left.set_title("noise level", fontsize=10)
    left.set_ylabel("intensity (raw units)")
    # Only the raw SNR: an SNR "after" rises when signal is removed too, so it would reward damage.
    right.bar(x, np.nan_to_num(values("SNRBefore")), width=0.5, color="#9ecae1", label="raw")
    right.set_title("raw SNR = mean signal / sigma (in mask)", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, out_file)


def plot_placeholder(out_file, message: str) -> Path:
    """A small figure that only says ``message`` (when a plot cannot be drawn)."""
    fig = new_figure(6.0, 1.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    _bare(ax)
    return save(fig, out_file)


def representative_volume(indices: Sequence[int]) -> int:
    """The volume shown for a group: the middle one in acquisition order."""
    indices = sorted(int(i) for i in indices)
    return indices[len(indices) // 2]


__all__ = [
    "choose_slices",
    "display_window",
    "group_colour",
    "plot_brainmask",
    "plot_mosaic",
    "plot_placeholder",
    "plot_residual_correlation",
    "plot_residual_histograms",
    "plot_residual_std",
    "plot_sigma_snr",
    "representative_volume",
]
