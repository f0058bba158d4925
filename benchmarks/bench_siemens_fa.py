#!/usr/bin/env python3
"""Issue 11's siemens_trio check: mean FA of the high-FA voxels (FA > 0.4 in the average of the
two repeats) after our settings, against that average.

    .venv/bin/python benchmarks/bench_siemens_fa.py
"""
import sys, time, warnings, json
import numpy as np, nibabel as nb
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
warnings.simplefilter('ignore')
import torch; torch.set_num_threads(2)
from pathlib import Path
import quality_real as qr
from quality_methods import run_ours, our_settings
shared = Path(__file__).resolve().parents[2] / 'shared' / 'data'; name = qr.SIEMENS; folder = shared / name
raw = np.asanyarray(nb.load(str(folder / 'dwi.nii.gz')).dataobj).astype(np.float32)
bvals = np.loadtxt(folder / 'dwi.bval', ndmin=1); bvecs = np.loadtxt(folder / 'dwi.bvec', ndmin=2)
score = qr._scorer(shared)
mask = qr.brain_mask(raw, bvals); inside = raw[mask]
floor = 1e-3 * float(np.percentile(inside, 99.9))
ref = qr.fa_map(score, qr.two_repeat_average(raw)[mask], bvals[:21], bvecs[:, :21], floor)
high = ref > qr.HIGH_FA
rows = {"two-repeat average (reference)": float(ref[high].mean())}
fa = qr.fa_map(score, inside, bvals, bvecs, floor); rows["raw"] = float(fa[high].mean())
settings = our_settings(); sigma_cache = {}
for s in ("p2s-r0-voxel-shell-ols", "p2s-r1-radial-shell-ols", "p2s-r1-radial-all-ols+rician", "mppca-shell-veraart-overlap"):
    t = time.perf_counter(); out = run_ours(raw, bvals, settings[s], sigma_cache); t = time.perf_counter() - t
    fa = qr.fa_map(score, out[mask], bvals, bvecs, floor)
    rows[f"{s} ({t:.0f} s)"] = float(fa[high].mean())
    print(s, rows[f"{s} ({t:.0f} s)"], flush=True)
print(json.dumps(rows, indent=1)); print("high-FA voxels", int(high.sum()))
