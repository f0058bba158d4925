"""Matplotlib without a display, without pyplot's global state and without a writable HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Fixed salt so that SVG element ids (and thus files) are identical from one run to the next.
SVG_HASHSALT = "bids_denoise"


def _ensure_config_dir() -> None:
    """Point ``MPLCONFIGDIR`` at a fresh temporary folder when the default is not writable."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = os.environ.get("HOME") or ""
    default = Path(os.environ.get("XDG_CONFIG_HOME") or Path(home or "/nonexistent") / ".config")
    probe = default if default.exists() else default.parent
    if home and probe.exists() and os.access(probe, os.W_OK):
        return
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bids_denoise-mpl-")


def new_figure(width: float, height: float):
    """A :class:`matplotlib.figure.Figure` with an Agg canvas (no pyplot, no GUI backend)."""
    _ensure_config_dir()
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = SVG_HASHSALT
    matplotlib.rcParams["svg.fonttype"] = "path"  # no dependency on fonts of the viewer
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path, *, dpi: int = 100) -> Path:
    """Save ``fig`` (SVG or PNG from the suffix) without dates, so reruns give identical bytes."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")
    return path
