"""Which reportlets a run gets: the FA figure needs directions that allow a tensor fit."""

from __future__ import annotations

import numpy as np
import pytest

from bids_denoise.reports.reportlets import draw_reportlets
from tests.reports.test_qc import series  # noqa: F401  (fixture)


def _groups(bvals):
    b0 = [int(i) for i in np.flatnonzero(bvals <= 50)]
    dwi = [int(i) for i in np.flatnonzero(bvals > 50)]
    return [{"Label": "b0", "BValue": 0, "Count": len(b0), "Volumes": b0},
            {"Label": "dwi", "BValue": 1000, "Count": len(dwi), "Volumes": dwi}]


def _draw(series, tmp_path, **kwargs):  # noqa: F811
    made, stats = draw_reportlets(series["noisy"], series["clean"], series["bvals"], _groups(series["bvals"]),
                                  tmp_path, zooms=(2.0, 2.0, 2.0), title="run", b0_threshold=50.0, **kwargs)
    return dict(made), stats


def test_a_run_with_directions_gets_the_fa_figure(series, tmp_path):  # noqa: F811
    made, stats = _draw(series, tmp_path, bvecs=series["bvecs"])
    assert made["fa"].name == "fa.png" and made["fa"].read_bytes().startswith(b"\x89PNG")
    fa = stats["FA"]
    assert fa["HighVoxels"] > 0 and fa["Voxels"] >= fa["HighVoxels"]
    # noise raises the FA of isotropic tissue; the clean series has none there
    assert fa["MeanRaw"] > fa["MeanDenoised"] + 0.05
    assert list(made).index("fa") < list(made).index("residualhist")


@pytest.mark.parametrize("keep_directions", [None, 5])
def test_no_fa_figure_without_a_tensor_fit(series, tmp_path, keep_directions):  # noqa: F811
    if keep_directions is None:
        made, stats = _draw(series, tmp_path)
    else:
        keep = np.r_[0:3, 3:3 + keep_directions]
        sub = {k: (v[..., keep] if k in ("noisy", "clean") else v) for k, v in series.items()}
        sub["bvals"], sub["bvecs"] = series["bvals"][keep], series["bvecs"][:, keep]
        made, stats = _draw(sub, tmp_path, bvecs=sub["bvecs"])
    assert "fa" not in made and "FA" not in stats
