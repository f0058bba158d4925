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
    check = quality_real.SiemensFA(HERE.parents[1] / "shared" / "data")
    rows = {"two-repeat average (reference)": check.reference, "raw": check.mean_fa(check.raw)}
    settings, sigma_cache = our_settings(), {}
    for name in SETTINGS:
        started = time.perf_counter()
        out = run_ours(check.raw, check.bvals, settings[name], sigma_cache)
        rows[f"{name} ({time.perf_counter() - started:.0f} s)"] = check.mean_fa(out)
    print(json.dumps(rows, indent=1))
    print("high-FA voxels", int(check.high.sum()))


if __name__ == "__main__":
    main()
