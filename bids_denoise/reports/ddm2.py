"""Plots of a DDM2 training history (the ``history_file`` JSON of the DDM2 interface).

The file, one per denoised volume group, holds::

    {
      "stage1_loss": [float, ...],            # Stage I (noise model) loss per logged step
      "stage3_loss": [float, ...],            # Stage III (diffusion model) loss per logged step
      "t_star": [[int, ...], ...],            # Stage II matched step t*, per volume, per slice
      "stage_seconds": {"stage1": s, ...},    # wall time of each stage
      "preset": "fast",                       # training preset
      "steps": {"stage1": n, "stage3": m, ...},
      "neighbour_order": "direction",         # how the Stage-I inputs were chosen
      "stage3_t_min": 325,                    # smallest diffusion step Stage III trained on
      "stage3_t_max": 380                     # largest diffusion step Stage III trained on
    }

Missing or malformed keys are tolerated: a plot shows what is there and says what is not.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bids_denoise.reports._mpl import new_figure, save
from bids_denoise.reports.figures import group_colour

HISTORY_KEYS = ("stage1_loss", "stage3_loss", "t_star", "stage_seconds", "preset", "steps", "neighbour_order",
                "stage3_t_min", "stage3_t_max")


def _numbers(values) -> list[float]:
    out = []
    for value in values if isinstance(values, (list, tuple)) else []:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out.append(number)
    return out


def _integer(value) -> int | None:
    numbers = _numbers([value])
    return int(round(numbers[0])) if numbers and math.isfinite(numbers[0]) else None


def load_history(path: str | os.PathLike) -> dict:
    """Read and normalise a DDM2 history file.

    Returns
    -------
    dict
        ``stage1_loss`` and ``stage3_loss`` (lists of float), ``t_star`` (list of lists of
        int, one per volume), ``stage_seconds`` and ``steps`` (dicts), ``preset`` and
        ``neighbour_order`` (str or ``None``), ``stage3_t_min`` and ``stage3_t_max`` (int or ``None``).

    Raises
    ------
    ValueError
        If the file is not a JSON object.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a DDM2 history must be a JSON object")
    t_star = []
    for volume in data.get("t_star") or []:
        if isinstance(volume, (list, tuple)):
            t_star.append([int(round(v)) for v in _numbers(volume)])
        else:
            t_star.append([int(round(v)) for v in _numbers([volume])])
    return {
        "stage1_loss": _numbers(data.get("stage1_loss")),
        "stage3_loss": _numbers(data.get("stage3_loss")),
        "t_star": t_star,
        "stage_seconds": {str(k): v for k, v in (data.get("stage_seconds") or {}).items()}
        if isinstance(data.get("stage_seconds"), dict) else {},
        "preset": None if data.get("preset") is None else str(data.get("preset")),
        "steps": dict(data["steps"]) if isinstance(data.get("steps"), dict) else {},
        "neighbour_order": None if data.get("neighbour_order") is None else str(data.get("neighbour_order")),
        "stage3_t_min": _integer(data.get("stage3_t_min")),
        "stage3_t_max": _integer(data.get("stage3_t_max")),
    }


def summarise_history(history: Mapping) -> dict:
    """Numbers for the report: final losses, t* range/median, preset, steps, the Stage-I input
    choice and the last step Stage III trained on.

    Stage times are left out on purpose: the statistics file must be identical when an
    interrupted run is resumed (times live in the sidecar's ``VolumeGroups[].RunTime``).
    """
    t_values = [t for volume in history.get("t_star", []) for t in volume]

    def last(values):
        values = [v for v in values if math.isfinite(v)]
        return values[-1] if values else None

    return {
        "Preset": history.get("preset"),
        "Steps": dict(history.get("steps") or {}),
        "Stage1FinalLoss": last(history.get("stage1_loss", [])),
        "Stage3FinalLoss": last(history.get("stage3_loss", [])),
        "TStarMedian": float(np.median(t_values)) if t_values else None,
        "TStarMin": int(min(t_values)) if t_values else None,
        "TStarMax": int(max(t_values)) if t_values else None,
        "NeighbourOrder": history.get("neighbour_order"),
        "Stage3MinStep": history.get("stage3_t_min"),
        "Stage3MaxStep": history.get("stage3_t_max"),
    }


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_loss_curves(histories: Sequence[tuple[str, Mapping]], out_file, *, title: str = "") -> Path:
    """Stage I and Stage III training loss against the logged step, one line per group.

    Thin lines are the logged values, thick lines a running mean over 5% of the steps; the
    y axis is logarithmic when every loss is positive.
    """
    fig = new_figure(10.0, 3.4)
    axes = {"stage1_loss": fig.add_subplot(1, 2, 1), "stage3_loss": fig.add_subplot(1, 2, 2)}
    names = {"stage1_loss": "Stage I: noise model", "stage3_loss": "Stage III: diffusion model"}
    for key, ax in axes.items():
        drawn = False
        positive = True
        for position, (label, history) in enumerate(histories):
            values = np.asarray(history.get(key) or [], dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            drawn = True
            positive &= bool(np.all(values > 0))
            steps = np.arange(1, values.size + 1)
            colour = group_colour(position)
            ax.plot(steps, values, color=colour, lw=0.6, alpha=0.35)
            ax.plot(steps, _smooth(values, max(1, values.size // 20)), color=colour, lw=1.6, label=label)
        if drawn:
            if positive:
                ax.set_yscale("log")
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(names[key], fontsize=10)
        ax.set_xlabel("logged step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, out_file)


def plot_tstar(histories: Sequence[tuple[str, Mapping]], out_file, *, title: str = "") -> Path:
    """Histogram of the matched diffusion step t* over all slices, and its spread per volume.

    Left: how often each t* was matched (one outline per group). Right: median and range of t*
    over the slices of each volume. A t* near the start of the schedule means little noise was
    matched; a jump for single volumes points to artefacts in them.
    """
    fig = new_figure(10.0, 3.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    all_values = [t for _, h in histories for volume in h.get("t_star", []) for t in volume]
    if not all_values:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no t* recorded", ha="center", va="center", transform=ax.transAxes)
    else:
        low, high = min(all_values), max(all_values)
        edges = np.arange(low - 0.5, high + 1.5, max(1, math.ceil((high - low + 1) / 60)))
        offset = 0
        for position, (label, history) in enumerate(histories):
            volumes = history.get("t_star", [])
            values = [t for volume in volumes for t in volume]
            if not values:  # e.g. a b0 group that DDM2 did not train on
                continue
            colour = group_colour(position)
            left.hist(values, bins=edges, histtype="stepfilled", alpha=0.4, color=colour, label=label)
            index = np.arange(offset, offset + len(volumes))
            medians = [np.median(v) if v else np.nan for v in volumes]
            lows = [min(v) if v else np.nan for v in volumes]
            highs = [max(v) if v else np.nan for v in volumes]
            right.vlines(index, lows, highs, color=colour, lw=1, alpha=0.6)
            right.plot(index, medians, "o", ms=3, color=colour, label=label)
            offset += len(volumes)
        left.set_xlabel("matched step t*")
        left.set_ylabel("slices")
        right.set_xlabel("volume (within its group, groups in order)")
        right.set_ylabel("t* (median, range over slices)")
        for ax in (left, right):
            ax.legend(fontsize=7, frameon=False)
    left.set_title("matched-state t* histogram", fontsize=10)
    right.set_title("t* per volume", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, out_file)


__all__ = ["HISTORY_KEYS", "load_history", "plot_loss_curves", "plot_tstar", "summarise_history"]
