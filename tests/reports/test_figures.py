"""Reportlet figures and DDM2 history plots: valid files, deterministic bytes, odd shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from bids_denoise.reports import ddm2, figures
from bids_denoise.reports.stats import brain_mask, mean_b0, residual_statistics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def _assert_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert b"<dc:date>" not in path.read_bytes()  # no timestamp: reruns give identical files


@pytest.fixture(scope="module")
def run_data():
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 20), np.linspace(-1, 1, 6), indexing="ij")
    anatomy = np.where(x**2 + y**2 < 0.8, 500.0, 10.0)
    bvals = np.array([0, 1000, 1000, 2000, 0, 1000, 2000, 2000], float)
    clean = anatomy[..., None] * np.exp(-bvals / 2000)
    raw = clean + rng.normal(0, 15, clean.shape)
    groups = [{"Label": "b0", "BValue": 0, "Count": 2, "Volumes": [0, 4]},
              {"Label": "b1000", "BValue": 1000, "Count": 3, "Volumes": [1, 2, 5]},
              {"Label": "b2000", "BValue": 2000, "Count": 3, "Volumes": [3, 6, 7]}]
    mask = brain_mask(mean_b0(raw, bvals))
    stats = residual_statistics(raw, clean, groups, mask, anatomy=mean_b0(clean, bvals), bvals=bvals)
    return raw, clean, mask, stats


def test_choose_slices_stays_inside_the_mask():
    mask = np.zeros((10, 12, 2), bool)
    mask[2:8, 3:9, :] = True
    assert all(2 <= i <= 7 for i in figures.choose_slices(mask, 0))
    assert figures.choose_slices(mask, 2) == [0, 1]
    assert figures.choose_slices(mask, 1, 1) == [5]
    assert figures.choose_slices(np.zeros((4, 4, 4), bool), 0, 1) == [1]


@pytest.mark.parametrize("shape, zooms", [((24, 20, 6), (2, 2, 2)), ((40, 40, 2), (2, 2, 2)),
                                          ((6, 10, 10), (2.5, 2.5, 2.5)), ((30, 30, 5), (1.5, 1.5, 4.0))])
def test_mosaic_for_any_field_of_view(tmp_path, shape, zooms):
    rng = np.random.default_rng(1)
    before = rng.uniform(100, 200, shape)
    after = before * 0.9
    out = figures.plot_mosaic(before, after, np.ones(shape, bool), zooms, tmp_path / "mosaic.png", title="t")
    _assert_png(out)
    from PIL import Image

    width, height = Image.open(out).size
    assert 600 < width < 1500 and height < 2000


def test_mosaic_with_zero_residual(tmp_path, run_data):
    raw, _, mask, _ = run_data
    _assert_png(figures.plot_mosaic(raw[..., 0], raw[..., 0], mask, (2, 2, 2), tmp_path / "copied.png"))


def test_every_run_plot_is_written(tmp_path, run_data):
    raw, clean, mask, stats = run_data
    _assert_png(figures.plot_brainmask(mean_b0(raw, [0] * 8), mask, (2, 2, 2), tmp_path / "mask.png",
                                       noise=np.std(raw - clean, axis=3)))
    _assert_png(figures.plot_brainmask(mean_b0(raw, [0] * 8), mask, (2, 2, 2), tmp_path / "mask2.png"))
    for function in (figures.plot_residual_histograms, figures.plot_residual_std,
                     figures.plot_residual_correlation, figures.plot_sigma_snr):
        _assert_svg(function(stats, tmp_path / f"{function.__name__}.svg", title="run"))
    _assert_svg(figures.plot_placeholder(tmp_path / "none.svg", "nothing to show"))


def test_plots_without_denoised_groups(tmp_path, run_data):
    raw, _, mask, _ = run_data
    groups = [{"Label": "b0", "BValue": 0, "Count": 8, "Volumes": list(range(8))}]
    stats = residual_statistics(raw, raw, groups, mask)
    for function in (figures.plot_residual_histograms, figures.plot_residual_std,
                     figures.plot_residual_correlation, figures.plot_sigma_snr):
        _assert_svg(function(stats, tmp_path / f"{function.__name__}.svg"))


def test_figures_are_byte_identical_between_runs(tmp_path, run_data):
    raw, clean, mask, stats = run_data
    for name in ("a", "b"):
        figures.plot_residual_correlation(stats, tmp_path / f"{name}.svg")
        figures.plot_mosaic(raw[..., 1], clean[..., 1], mask, (2, 2, 2), tmp_path / f"{name}.png")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_plotting_works_without_a_writable_home(tmp_path):
    code = (
        "import numpy as np, sys; from bids_denoise.reports import figures; "
        f"figures.plot_placeholder({str(tmp_path / 'x.svg')!r}, 'ok'); "
        "import os; print(os.environ.get('MPLCONFIGDIR'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = "/nonexistent/home"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "bids_denoise-mpl-" in result.stdout
    assert "is not a writable directory" not in result.stderr
    assert (tmp_path / "x.svg").is_file()


# ------------------------------------------------------------------------------- DDM2 history
def _history(n_volumes=5, n_slices=4, seed=0, **changes):
    rng = np.random.default_rng(seed)
    history = {
        "stage1_loss": (np.exp(-np.linspace(0, 3, 60)) + 0.01 * rng.random(60)).tolist(),
        "stage3_loss": (0.5 * np.exp(-np.linspace(0, 2, 80)) + 0.01 * rng.random(80)).tolist(),
        "t_star": rng.integers(40, 400, size=(n_volumes, n_slices)).tolist(),
        "stage_seconds": {"stage1": 12.5, "stage2": 0.4, "stage3": 30.1, "inference": 3.2},
        "preset": "smoke",
        "steps": {"stage1": 30, "stage3": 40, "sampling": 6},
        "neighbour_order": "direction",
        "stage3_t_max": 380,
    }
    history.update(changes)
    return history


@pytest.fixture
def history_file(tmp_path):
    path = tmp_path / "ddm2_history.json"
    path.write_text(json.dumps(_history()))
    return path


def test_load_and_summarise_a_history(history_file):
    history = ddm2.load_history(history_file)
    assert set(history) == set(ddm2.HISTORY_KEYS)
    assert len(history["t_star"]) == 5 and all(isinstance(t, int) for t in history["t_star"][0])
    summary = ddm2.summarise_history(history)
    assert summary["Preset"] == "smoke" and summary["Steps"]["stage3"] == 40
    assert 40 <= summary["TStarMin"] <= summary["TStarMedian"] <= summary["TStarMax"] < 400
    assert summary["Stage1FinalLoss"] == pytest.approx(history["stage1_loss"][-1])
    assert summary["NeighbourOrder"] == "direction" and summary["Stage3MaxStep"] == 380
    json.dumps(summary, allow_nan=False)


def test_history_keys_match_the_ddm2_interface():
    from bids_denoise.interfaces import ddm2 as ddm2_interface

    assert tuple(ddm2_interface.HISTORY_KEYS) == ddm2.HISTORY_KEYS


def test_ddm2_plots(tmp_path, history_file):
    histories = [("b0", ddm2.load_history(history_file)), ("b1000", _history(n_volumes=30, seed=1))]
    _assert_svg(ddm2.plot_loss_curves(histories, tmp_path / "loss.svg", title="run"))
    _assert_svg(ddm2.plot_tstar(histories, tmp_path / "tstar.svg", title="run"))


def test_malformed_histories_are_tolerated(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"stage1_loss": [1, "x", None, 0.5], "t_star": [[1, 2], 7, "z"], "steps": 3}))
    history = ddm2.load_history(path)
    assert history["stage1_loss"] == [1.0, 0.5] and history["stage3_loss"] == []
    assert history["t_star"] == [[1, 2], [7], []] and history["steps"] == {} and history["preset"] is None
    assert history["neighbour_order"] is None and history["stage3_t_max"] is None
    empty = ("g", {"stage1_loss": [], "stage3_loss": [-1.0, 0.5], "t_star": []})
    _assert_svg(ddm2.plot_loss_curves([empty], tmp_path / "loss.svg"))
    _assert_svg(ddm2.plot_tstar([empty], tmp_path / "tstar.svg"))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError):
        ddm2.load_history(path)
