#!/usr/bin/env python3
"""Speed and quality check of the MP-PCA engine (bids_denoise.denoise.mppca) against DIPY.

    .venv/bin/python benchmarks/bench_mppca_engine.py                      # 4 sets, 4 variants
    .venv/bin/python benchmarks/bench_mppca_engine.py --sets hardi_snr10 --variants overlap/veraart2016
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-only --repeats 3 --threads 2
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-dipy          # + one DIPY call (slow)
    .venv/bin/python benchmarks/bench_mppca_engine.py --time-only --time-mrtrix   # + dwidenoise
    .venv/bin/python benchmarks/bench_mppca_engine.py --versus             # ours vs MRtrix vs DIPY
    .venv/bin/python benchmarks/bench_mppca_engine.py --versus --sets hardi_snr10 wholebrain --rounds 2

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

``--versus`` is the acceptance timing instead: file to file on every set (``wholebrain`` is
``benchmarks/data/wholebrain/hardi_snr10``), in one process that alternates --rounds times
between MRtrix ``dwidenoise -nthreads <threads>`` (default settings; where its default window
is not 5x5x5, i.e. 27 volumes or fewer, also ``-extent 5,5,5``, our window) and ours
(``mppca(patch_radius=2)`` with ``torch.set_num_threads(threads)``, including reading and
writing the files), then DIPY's ``mppca(patch_radius=2)`` once per 5-slice set (not on the
whole brain: about an hour). Each run records wall and CPU seconds (MRtrix's from
``getrusage`` of the children) and the load average before it, so that runs under different
loads can be told apart; ratios compare the medians of the same set. The largest
``|ours - DIPY|`` (ours clipped at 0 as DIPY clips) is given as a fraction of the data's peak;
on the whole brain against ``benchmarks/data/quality/wholebrain_hardi_snr10/dipy-mppca.nii.gz``
when it exists, and against the dense float64 engine with --dense-check. Results:
``<out>/mppca_versus.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
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
WHOLEBRAIN = REPO / "benchmarks" / "data" / "wholebrain" / "hardi_snr10"
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


def _set_folder(name: str) -> Path:
    return WHOLEBRAIN if name == "wholebrain" else SHARED / "data" / "synthetic" / name


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _versus(args) -> int:
    """Interleaved file-to-file timing of ours, MRtrix and DIPY (see the module docstring)."""
    import nibabel as nb
    import numpy as np
    import torch

    from bids_denoise.denoise import mppca as engine

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    have_mrtrix = shutil.which("dwidenoise") is not None
    # One-time costs (loading LAPACK, first allocations) outside the timings, as MRtrix's binary
    # and libraries are loaded from a warm page cache.
    engine.mppca(np.random.default_rng(0).normal(size=(8, 8, 8, 30)), device="cpu", progress=False)
    rows = []
    for name in args.sets:
        folder = _set_folder(name)
        source = folder / "dwi.nii.gz"
        shape = nb.load(source).shape
        n_volumes = shape[3]
        runs = {"ours": [], "mrtrix": [], "mrtrix 5x5x5": []}
        commands = {"mrtrix": []}
        if n_volumes <= 27:  # MRtrix's default window is 3x3x3 there
            commands["mrtrix 5x5x5"] = ["-extent", "5,5,5"]
        ours_path = args.out / f"{name}_ours.nii"
        for _ in range(args.rounds):
            for label, extra in commands.items() if have_mrtrix else ():
                command = ["dwidenoise", str(source), str(args.out / f"{name}_mrtrix.nii")]
                command += ["-nthreads", str(args.threads), "-force", "-quiet", *extra]
                load, wall, cpu = os.getloadavg()[0], time.perf_counter(), _children_cpu()
                subprocess.run(command, check=True)
                runs[label].append((time.perf_counter() - wall, _children_cpu() - cpu, load))
            load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            image = nb.load(source)
            data = np.asarray(image.dataobj, dtype=np.float32)
            result = engine.mppca(data, patch_radius=2, device="cpu", progress=False)
            nb.save(nb.Nifti1Image(result.denoised, image.affine), ours_path)
            runs["ours"].append((time.perf_counter() - wall, time.process_time() - cpu, load))
            print(json.dumps({"set": name, **{k: v[-1] for k, v in runs.items() if v}}), flush=True)
        row = {"set": name, "shape": list(shape), "threads": args.threads, "rounds": args.rounds}
        for label, values in runs.items():
            if values:
                row[label] = {
                    "wall_s": [round(v[0], 3) for v in values],
                    "cpu_s": [round(v[1], 3) for v in values],
                    "load_before": [round(v[2], 2) for v in values],
                    "median_wall_s": round(statistics.median(v[0] for v in values), 3),
                }
        if runs["mrtrix"]:
            row["ours_vs_mrtrix"] = round(row["mrtrix"]["median_wall_s"] / row["ours"]["median_wall_s"], 2)
        if runs["mrtrix 5x5x5"]:
            row["ours_vs_mrtrix_5x5x5"] = round(
                row["mrtrix 5x5x5"]["median_wall_s"] / row["ours"]["median_wall_s"], 2
            )
        ours = np.maximum(np.asarray(nb.load(ours_path).dataobj, dtype=np.float32), 0)
        peak = float(np.abs(data).max())
        reference, reference_name = None, None
        if name != "wholebrain" and not args.no_dipy:
            from dipy.denoise.localpca import mppca as dipy_mppca

            load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            reference = dipy_mppca(data, patch_radius=2)
            row["dipy"] = {
                "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
                "load_before": round(load, 2),
            }
            row["ours_vs_dipy"] = round(row["dipy"]["wall_s"] / row["ours"]["median_wall_s"], 1)
            reference_name = "DIPY mppca (this run)"
        else:
            cached = REPO / "benchmarks" / "data" / "quality" / f"{'wholebrain_' if name == 'wholebrain' else ''}"
            cached = Path(f"{cached}{'hardi_snr10' if name == 'wholebrain' else name}") / "dipy-mppca.nii.gz"
            if cached.is_file():
                reference, reference_name = np.asarray(nb.load(cached).dataobj, dtype=np.float32), f"cached {cached.name}"
            elif args.dense_check:
                dense = engine._run(
                    data, engine._check_radius(2, data.shape[:3]), None, "veraart2016", "overlap",
                    torch.device("cpu"), False, torch.float64,
                )
                reference, reference_name = np.maximum(dense.denoised, 0), "dense float64 engine"
        if reference is not None:
            row["max_abs_diff_over_peak"] = float(np.abs(ours - reference).max() / peak)
            row["reference"] = reference_name
        rows.append(row)
        print(json.dumps(row), flush=True)

    (args.out / "mppca_versus.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"Threads: {args.threads}; wall seconds, median of {args.rounds} interleaved rounds (CPU seconds "
             "in brackets), file to file.", "",
             "| set | shape | MRtrix | ours | DIPY | MRtrix / ours | DIPY / ours | max abs diff / peak |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        def timing(key):
            if key not in row:
                return "-"
            entry = row[key]
            wall = entry.get("median_wall_s", entry.get("wall_s"))
            cpu = entry["cpu_s"]
            cpu = statistics.median(cpu) if isinstance(cpu, list) else cpu
            return f"{wall:.2f} ({cpu:.2f})"

        mrtrix = timing("mrtrix") + (f"; 5x5x5: {timing('mrtrix 5x5x5')}" if "mrtrix 5x5x5" in row else "")
        ratio = str(row.get("ours_vs_mrtrix", "-"))
        if "ours_vs_mrtrix_5x5x5" in row:
            ratio += f"; 5x5x5: {row['ours_vs_mrtrix_5x5x5']}"
        diff = f"{row['max_abs_diff_over_peak']:.1e} ({row['reference']})" if "reference" in row else "-"
        lines.append(
            f"| {row['set']} | {'x'.join(map(str, row['shape']))} | {mrtrix} | {timing('ours')} | "
            f"{timing('dipy')} | {ratio} | {row.get('ours_vs_dipy', '-')} | {diff} |"
        )
    loads = [v for row in rows for key in ("ours", "mrtrix") if key in row for v in row[key]["load_before"]]
    if loads:
        lines += ["", f"1-minute load average before the runs: {min(loads):.1f} to {max(loads):.1f} on "
                      f"{os.cpu_count()} CPUs."]
    print("\n" + "\n".join(lines))
    if args.markdown:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import common

        machine = common.machine_info()
        header = [
            "# MP-PCA speed: bids_denoise against MRtrix3 dwidenoise and DIPY mppca", "",
            f"- Commit: `{common.git_commit(REPO)}`",
            f"- Command: `{' '.join(sys.argv)}`",
            f"- Machine: {machine['cpu_model']}, {machine['cpu_usable']} usable cores, {machine['ram_gib']} GiB RAM",
            "- Ours: `mppca(patch_radius=2)` (overlap, Veraart 2016), reading and writing the files included; "
            "MRtrix: `dwidenoise -nthreads <threads>` with its defaults; DIPY: `mppca(patch_radius=2)` once per "
            "5-slice set (the whole brain takes about an hour and is not run).", "",
        ]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(header + lines) + "\n")
    return 0


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
    parser.add_argument("--versus", action="store_true", help="interleaved ours / MRtrix / DIPY timing")
    parser.add_argument("--rounds", type=int, default=2, help="--versus: alternations of MRtrix and ours")
    parser.add_argument("--no-dipy", action="store_true", help="--versus: skip DIPY")
    parser.add_argument("--markdown", type=Path, help="--versus: also write the table, machine and commit here")
    parser.add_argument("--dense-check", action="store_true", help="--versus: whole brain vs the dense engine")
    args = parser.parse_args(argv)
    if args.versus:
        if args.sets == SETS:
            args.sets = [*SETS, "wholebrain"]
        return _versus(args)

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
