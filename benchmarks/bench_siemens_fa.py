#!/usr/bin/env python3
"""Issue 11's siemens_trio check: mean FA of the high-FA voxels (FA > 0.4 in the average of the
two repeats) after our settings, against that average.

    .venv/bin/python benchmarks/bench_siemens_fa.py

Prints the mean FA of each output and the number of voxels (benchmarks/results/siemens_fa.md).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality_real  # noqa: E402
from quality_methods import our_settings, run_ours  # noqa: E402

SETTINGS = ("p2s-r0-voxel-shell-ols", "p2s-r1-radial-shell-ols", "p2s-r1-radial-all-ols+rician",
            "mppca-shell-veraart-overlap")


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    shared = HERE.parents[1] / "shared" / "data"
    folder = shared / quality_real.SIEMENS
    raw = np.asanyarray(nb.load(str(folder / "dwi.nii.gz")).dataobj).astype(np.float32)
    bvals = np.loadtxt(folder / "dwi.bval", ndmin=1)
    bvecs = np.loadtxt(folder / "dwi.bvec", ndmin=2)
    score = quality_real._scorer(shared)
    mask = quality_real.brain_mask(raw, bvals)
    floor = 1e-3 * float(np.percentile(raw[mask], 99.9))

    def mean_fa(values, b=bvals, g=bvecs):
        return quality_real.fa_map(score, values[mask], b, g, floor)

    reference = mean_fa(quality_real.two_repeat_average(raw), bvals[:21], bvecs[:, :21])
    high = reference > quality_real.HIGH_FA
    rows = {"two-repeat average (reference)": float(reference[high].mean()),
            "raw": float(mean_fa(raw)[high].mean())}
    settings, sigma_cache = our_settings(), {}
    for name in SETTINGS:
        started = time.perf_counter()
        out = run_ours(raw, bvals, settings[name], sigma_cache)
        rows[f"{name} ({time.perf_counter() - started:.0f} s)"] = float(mean_fa(out)[high].mean())
    print(json.dumps(rows, indent=1))
    print("high-FA voxels", int(high.sum()))


if __name__ == "__main__":
    main()
