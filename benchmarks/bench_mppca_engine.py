#!/usr/bin/env python3
"""Speed and quality check of the MP-PCA engine (bids_denoise.denoise.mppca) against DIPY.

    .venv/bin/python benchmarks/bench_mppca_engine.py                      # 4 sets, 4 variants
    .venv/bin/python benchmarks/bench_mppca_engine.py --sets hardi_snr10 --variants overlap/veraart2016
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-only --repeats 3 --threads 2
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-dipy          # + one DIPY call (slow)
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-only --time-mrtrix   # + dwidenoise

For every synthetic set (``<shared>/data/synthetic/<set>``) and variant (reconstruction /
estimator) it times ``mppca(data, patch_radius=2, ...)`` on the CPU (best of --repeats, torch
threads = --threads, wall and process CPU time), writes the output to --out and scores it with
the official ``shared/bench/score.py`` (PSNR, dti.fa_mae_wm), both as returned and clipped at 0
(DIPY clips its output at 0). The median of the sigma map in the brain mask is compared with
``params.json``'s sigma. DIPY's ``mppca(patch_radius=2)`` is scored from the cached output
``benchmarks/data/quality/<set>/dipy-mppca.nii.gz`` when present, else quoted from the
baselines. ``--time-dipy`` times DIPY's call once per set, ``--time-mrtrix`` MRtrix's
``dwidenoise -nthreads <threads>`` (file to file, default Exp2 estimator) when it is installed.
Results: ``<out>/mppca_engine.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIDS_DENOISE_SHARED", REPO.parent / "shared"))
SETS = ["hardi_snr10", "hardi_snr5", "clinical_snr10", "multishell_snr10"]
VARIANTS = [
    "overlap/veraart2016",
    "overlap/cordero-grande2019",
    "center/veraart2016",
    "center/cordero-grande2019",
]
#: DIPY 1.12.1 mppca(patch_radius=2) on these sets (shared/bench/BASELINES.md): PSNR, fa_mae_wm.
DIPY_REFERENCE = {
    "hardi_snr10": (43.41, 0.0440),
    "hardi_snr5": (37.76, 0.1145),
    "multishell_snr10": (41.56, 0.0406),
    "clinical_snr10": (39.13, 0.1248),
}


def score(path: Path, dataset: Path) -> dict:
    """PSNR and fa_mae_wm of ``path`` from the official scorer (run unchanged)."""
    command = [sys.executable, str(SHARED / "bench" / "score.py"), str(path), str(dataset), "--json"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {"psnr": result["psnr"], "fa_mae_wm": (result.get("dti") or {}).get("fa_mae_wm")}


def time_call(function, repeats: int):
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        output = function()
        timing = (time.perf_counter() - wall, time.process_time() - cpu)
        best = timing if best is None or timing[0] < best[0] else best
    return output, best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=SETS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, help="reconstruction/estimator pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bids_denoise_mppca_bench"))
    parser.add_argument("--time-only", action="store_true", help="skip writing and scoring")
    parser.add_argument("--time-dipy", action="store_true", help="also time DIPY's mppca once per set")
    parser.add_argument("--time-mrtrix", action="store_true", help="also time MRtrix's dwidenoise")
    args = parser.parse_args(argv)

    from bids_denoise.denoise.mppca import mppca

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets:
        folder = SHARED / "data" / "synthetic" / name
        image = nb.load(folder / "dwi.nii.gz")
        data = np.asarray(image.dataobj, dtype=np.float32)
        mask = np.asarray(nb.load(folder / "mask.nii.gz").dataobj) > 0
        true_sigma = json.loads((folder / "params.json").read_text())["sigma"]
        dipy_row = {"set": name, "variant": "DIPY mppca", "shape": list(data.shape)}
        cached = REPO / "benchmarks" / "data" / "quality" / name / "dipy-mppca.nii.gz"
        if not args.time_only:
            if cached.is_file():
                dipy_row.update(score(cached, folder), source="cached output, scored here")
            elif name in DIPY_REFERENCE:
                psnr, fa = DIPY_REFERENCE[name]
                dipy_row.update(psnr=psnr, fa_mae_wm=fa, source="BASELINES.md")
        if args.time_dipy:
            from dipy.denoise.localpca import mppca as dipy_mppca

            _, (wall, cpu) = time_call(lambda: dipy_mppca(data, patch_radius=args.radius), 1)
            dipy_row.update(seconds=round(wall, 2), cpu_seconds=round(cpu, 2))
        rows.append(dipy_row)
        if args.time_mrtrix and shutil.which("dwidenoise"):
            command = ["dwidenoise", "-nthreads", str(args.threads), "-force", "-quiet"]
            command += [str(folder / "dwi.nii.gz"), str(args.out / f"{name}_dwidenoise.nii.gz")]
            _, (wall, _) = time_call(lambda: subprocess.run(command, check=True), 1)
            rows.append({"set": name, "variant": "MRtrix dwidenoise", "seconds": round(wall, 2)})
        for variant in args.variants:
            reconstruction, estimator = variant.split("/")
            result, (wall, cpu) = time_call(
                lambda: mppca(
                    data,
                    patch_radius=args.radius,
                    estimator=estimator,
                    reconstruction=reconstruction,
                    device="cpu",
                    progress=False,
                ),
                args.repeats,
            )
            row = {
                "set": name,
                "variant": variant,
                "seconds": round(wall, 2),
                "cpu_seconds": round(cpu, 2),
                "threads": args.threads,
                "sigma_median_mask": float(np.median(result.sigma[mask])),
                "sigma_true": true_sigma,
                "rank_median_mask": float(np.median(result.rank[mask])),
            }
            row["sigma_ratio"] = row["sigma_median_mask"] / true_sigma
            if not args.time_only:
                stem = args.out / f"{name}_{reconstruction}_{estimator}"
                for suffix, values in (("", result.denoised), ("_clip0", np.maximum(result.denoised, 0))):
                    path = Path(f"{stem}{suffix}.nii.gz")
                    nb.save(nb.Nifti1Image(values, image.affine), path)
                    scores = score(path, folder)
                    row.update({f"{key}{suffix}": value for key, value in scores.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)

    (args.out / "mppca_engine.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| set | variant | PSNR dB | fa_mae_wm | PSNR clip0 | fa_mae_wm clip0 | sigma/true | s (cpu s) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        def fmt(key, digits):
            value = row.get(key)
            return "-" if value is None else f"{value:.{digits}f}"

        timing = f"{row['seconds']} ({row.get('cpu_seconds', '-')})" if "seconds" in row else "-"
        print(
            f"| {row['set']} | {row['variant']} | {fmt('psnr', 2)} | {fmt('fa_mae_wm', 4)} | "
            f"{fmt('psnr_clip0', 2)} | {fmt('fa_mae_wm_clip0', 4)} | {fmt('sigma_ratio', 3)} | {timing} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
