#!/usr/bin/env python3
"""Denoising quality: every Patch2Self setting the app offers, next to DIPY and MRtrix.

    .venv/bin/python benchmarks/bench_quality.py                      # everything (hours: DIPY mppca)
    .venv/bin/python benchmarks/bench_quality.py --phantoms hardi_snr10 --no-real --no-timings
    .venv/bin/python benchmarks/bench_quality.py --only timings       # whole-brain run times only

Data:

* the phantoms of ``shared/data/synthetic`` and a whole-brain phantom (``make_phantom.py
  --zslices 0``), scored with ``shared/bench/score.py`` (run unchanged, as a subprocess):
  PSNR, SSIM, WM FA error, MD error and bias, and the time of the call;
* the real scanner sets of ``shared/data``, which have no ground truth: FA in high-FA voxels
  (DTI fit on b <= 1200, median_otsu mask) before and after, the residual level against a noise
  estimate per group, and the residual-signal correlation of the report. For siemens_trio the
  average of its two repeats is the reference.

Anchors, in the same run: DIPY 1.12.1 ``mppca(patch_radius=2)`` and ``patch2self(version=3)``,
and MRtrix3 ``dwidenoise`` (Debian's mrtrix3; skipped with a note when absent). Anchor outputs
are cached in ``benchmarks/data/quality/`` (``--fresh`` recomputes them); ours always run.

The default of the app is chosen by the rule printed in the results: the setting with the best
mean PSNR over the phantoms among those whose WM FA error is no worse than the noisy input's on
every phantom with at least 30 diffusion-weighted volumes.

Results: ``benchmarks/results/quality.md`` and ``quality.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import quality_real  # noqa: E402
from quality_methods import noise_sigma, our_settings, run_ours  # noqa: E402
import quality_report  # noqa: E402

REPO = HERE.parent
DATA = HERE / "data" / "quality"
SHARED = Path(os.environ.get("BIDS_DENOISE_SHARED", REPO.parent / "shared"))
PHANTOMS = ["hardi_snr10", "hardi_snr5", "multishell_snr10", "multishell_b0at5_snr10", "clinical_snr10"]
WHOLEBRAIN = "wholebrain_hardi_snr10"
REAL = sorted(p.name for p in (SHARED / "data").iterdir() if (p / "dwi.nii.gz").is_file()) \
    if (SHARED / "data").is_dir() else []
#: Our settings on the real sets: the old default, the radius-1 ones and MP-PCA.
REAL_SETTINGS = ("p2s-r0-voxel-shell-ols", "p2s-r1-voxel-all-ols", "p2s-r1-radial-all-ols",
                 "p2s-r1-radial-all-ols+rician", "p2s-r1-radial-shell-ols", "p2s-r1-radial-shell-ols+rician",
                 "p2s-r2-radial-all-ols", "mppca-shell-veraart-overlap", "mppca-shell-veraart-overlap+rician",
                 "mppca-all-veraart-overlap", "auto-shell", "auto-shell+rician", "auto-all", "auto-all+rician")
#: The rule applies to phantoms with at least this many diffusion-weighted volumes.
RULE_MIN_DW = 30
#: Our settings on the whole-brain phantom (every setting there would take hours on 2 cores).
#: It has hardi_snr10's scheme and noise, so it checks the short list and the anchors at full
#: size; the rule is applied to the 5-slice phantoms, where every setting runs.
WHOLEBRAIN_SETTINGS = ("p2s-r0-voxel-shell-ols", "p2s-r1-radial-all-ols", "p2s-r1-radial-all-ols+rician",
                       "p2s-r1-radial-shell-ols", "p2s-r1-radial-shell-ols+rician",
                       "mppca-shell-veraart-overlap", "mppca-shell-veraart-overlap+rician",
                       "auto-shell", "auto-shell+rician")
#: Anchors left out on the whole-brain phantom unless --wholebrain-anchors names them.
WHOLEBRAIN_SLOW_ANCHORS = {"dipy-mppca": "DIPY mppca takes about an hour on the whole brain on 2 cores"}


# ---------------------------------------------------------------------------------- settings
ANCHORS = ("dipy-mppca", "dipy-p2s-v3", "mrtrix-dwidenoise")


def run_anchor(name, data, bvals, nifti_path, workdir):
    """An anchor's output (float32) and the seconds of its call."""
    if name == "dipy-mppca":
        from dipy.denoise.localpca import mppca

        started = time.perf_counter()
        out = mppca(data, patch_radius=2)
        return np.asarray(out, np.float32), time.perf_counter() - started
    if name == "dipy-p2s-v3":
        from dipy.denoise.patch2self import patch2self as dipy_patch2self

        np.random.seed(12345)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            out = dipy_patch2self(data, bvals, model="ols", version=3)
        return np.asarray(out, np.float32), time.perf_counter() - started
    if name == "mrtrix-dwidenoise":
        import nibabel as nb

        target = Path(workdir) / "dwidenoise.nii"
        started = time.perf_counter()
        subprocess.run(["dwidenoise", str(nifti_path), str(target), "-force", "-quiet", "-nthreads",
                        str(os.environ.get("OMP_NUM_THREADS", "2"))], check=True)
        seconds = time.perf_counter() - started
        out = np.asarray(nb.load(str(target)).dataobj, np.float32)
        target.unlink()
        return out, seconds
    raise ValueError(name)


def anchor_available(name) -> str | None:
    """None when the anchor can run, else why not."""
    if name.startswith("dipy"):
        try:
            import dipy  # noqa: F401
        except ImportError:
            return "DIPY is not installed (pip install dipy==1.12.1)"
    if name == "mrtrix-dwidenoise" and shutil.which("dwidenoise") is None:
        return "MRtrix3 is not installed (apt-get install mrtrix3)"
    return None


# ---------------------------------------------------------------------------------- datasets
def phantom_dir(name) -> Path:
    if name == WHOLEBRAIN:
        return HERE / "data" / "wholebrain" / "hardi_snr10"
    return SHARED / "data" / "synthetic" / name


def make_wholebrain(log):
    target = phantom_dir(WHOLEBRAIN)
    if (target / "gt.nii.gz").is_file():
        return
    cmd = [sys.executable, str(SHARED / "bench" / "make_phantom.py"), str(target.parent), "hardi_snr10",
           "--seed", "1", "--zslices", "0"]
    log("making the whole-brain phantom (~2 min): " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)


def load(folder):
    import nibabel as nb

    img = nb.load(str(folder / "dwi.nii.gz"))
    return img, np.asanyarray(img.dataobj), np.loadtxt(folder / "dwi.bval", ndmin=1)


def score(path, folder) -> dict:
    """The official scorer's numbers for ``path`` (None: the noisy input)."""
    result = common.official_score(path, folder, SHARED)
    if "error" in result:
        return result
    dti = result.get("dti") or {}
    return dict(psnr=result["psnr"], ssim=result["ssim"], fa_mae_wm=dti.get("fa_mae_wm"),
                fa_mae=dti.get("fa_mae"), md_rel_err=dti.get("md_rel_err"), md_rel_bias=dti.get("md_rel_bias"),
                shells={k: v["psnr"] for k, v in result["shells"].items()})


# ------------------------------------------------------------------------------------- runs
class Cache:
    """Anchor outputs on disk, keyed by dataset and method, so slow anchors run once."""

    def __init__(self, root: Path, fresh: bool):
        self.root, self.fresh = root, fresh

    def path(self, dataset, method) -> Path:
        return self.root / dataset / f"{method}.nii.gz"

    def get(self, dataset, method):
        path, meta = self.path(dataset, method), self.path(dataset, method).with_suffix("").with_suffix(".json")
        if self.fresh or not path.is_file() or not meta.is_file():
            return None
        return path, json.loads(meta.read_text())

    def put(self, dataset, method, img, data, info) -> Path:
        import nibabel as nb

        path = self.path(dataset, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(np.asarray(data, np.float32), img.affine).to_filename(str(path))
        path.with_suffix("").with_suffix(".json").write_text(json.dumps(info))
        return path


#: Settings whose error estimate is validated (with and without the correction), besides the
#: candidates of the auto settings.
ESTIMATED = ("p2s-r0-voxel-shell-ols", "p2s-r1-radial-shell-ols", "p2s-r1-radial-all-ols",
             "mppca-shell-veraart-overlap", "mppca-all-veraart-overlap")


def denoise_all(dataset, folder, methods, cache, log, anchors, estimates=None):
    """Run every method on one dataset; returns {method: (output path, seconds)}, or
    {method: (None, error message)} for an anchor that failed on this data.

    Each setting runs once without the Rician correction; its ``+rician`` twin corrects that
    output with the run's noise map (the noise map's time is added). The settings of
    ``ESTIMATED`` and the candidates of the auto settings also run on perturbed data, for the
    app's error estimate of every group; ``estimates`` (a dict), when given, receives those
    (with the true RMSE when the dataset has a ground truth). Auto settings keep, group by
    group, the candidate with the lower estimate among those that keep the directional contrast,
    as the app does (:func:`bids_denoise.interfaces.auto.choose`).
    """
    import nibabel as nb

    from bids_denoise.denoise.contrast import directional_contrast
    from bids_denoise.denoise.error import perturbation, pooled_rmse
    from bids_denoise.denoise.rician import correct_rician_bias
    from bids_denoise.interfaces.auto import choose
    from quality_methods import base_name, group_estimates

    img, data, bvals = load(folder)
    truth = None
    if (folder / "gt.nii.gz").is_file():
        truth = np.asanyarray(nb.load(str(folder / "gt.nii.gz")).dataobj)
    every = our_settings()
    started = time.perf_counter()
    sigma, region, source = noise_sigma(data, bvals)
    sigma_seconds = time.perf_counter() - started
    log(f"  {dataset} noise map: {source}, {sigma_seconds:.1f} s")
    autos = {name: s for name, s in methods.items() if s["method"] == "auto"}
    needed = {c for s in autos.values() for c in s["candidates"]}
    needed |= {base_name(n) for n in methods if base_name(n) in ESTIMATED}
    bases = list(dict.fromkeys([base_name(n) for n in methods if n not in autos] + sorted(needed)))
    kept, outputs = {}, {}

    def save(name, out, seconds):
        path = cache.root / dataset / "ours" / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(np.asarray(out, np.float32), img.affine).to_filename(str(path))
        outputs[name] = (path, seconds)
        log(f"  {dataset} {name}: {seconds:.2f} s")

    failed = {}
    for base in bases:
        clock = time.perf_counter()
        try:
            out = run_ours(data, bvals, dict(every[base], rician="none"))
        except ValueError as exc:  # e.g. a radius larger than a 2-slice image: recorded, not fatal
            log(f"  {dataset} {base}: not run: {exc}")
            for name in (base, base + "+rician"):
                if name in methods:
                    outputs[name] = (None, f"not run: {exc}")
            failed[base] = str(exc)
            continue
        seconds = time.perf_counter() - clock
        if base in methods:
            save(base, out, seconds)
        if base + "+rician" in methods:
            clock = time.perf_counter()
            corrected = correct_rician_bias(out, sigma, method="mean")
            save(base + "+rician", corrected, seconds + sigma_seconds + time.perf_counter() - clock)
        if base in needed:
            kept[base] = (out, seconds)

    probe, epsilon = perturbation(data, sigma, region)
    found = {}
    for base in sorted(needed - set(failed)):
        clock = time.perf_counter()
        perturbed = run_ours(np.asarray(data, np.float32) + epsilon * probe, bvals, dict(every[base], rician="none"))
        extra = time.perf_counter() - clock
        for rician in ("none", "mean"):
            name = base + ("" if rician == "none" else "+rician")
            rows = group_estimates(noisy=data, bvals=bvals, grouping=every[base]["grouping"], denoised=kept[base][0],
                                   perturbed=perturbed, probe=probe, epsilon=epsilon, sigma=sigma, region=region,
                                   rician=rician, truth=truth)
            found[name] = dict(groups=rows, seconds=kept[base][1] + extra + sigma_seconds)
        log(f"  {dataset} {base}: error estimate {extra:.2f} s")

    for name, setting in autos.items():
        if any(c in failed for c in setting["candidates"]):
            outputs[name] = (None, "not run: a candidate failed")
            continue
        rician = setting["rician"]
        suffix = "" if rician == "none" else "+rician"
        out = np.asarray(data, np.float32).copy()
        rows = []
        candidates = [c + suffix for c in setting["candidates"]]
        for k, group in enumerate(found[candidates[0]]["groups"]):
            index = group["indices"]
            contrasts = {}
            for c in candidates:
                candidate_out = kept[base_name(c)][0][..., index]
                if rician != "none":
                    candidate_out = correct_rician_bias(candidate_out, sigma, method=rician)
                contrasts[c] = directional_contrast(noisy=data[..., index], denoised=candidate_out,
                                                    bvals=bvals[index], sigma=sigma, region=region)
            best, passed_over = choose(candidates, {c: _Estimate(found[c]["groups"][k]["estimate"], 0)
                                                    for c in candidates}, contrasts)
            out[..., index] = kept[base_name(best)][0][..., index]
            rows.append(dict(found[best]["groups"][k], chosen=best,
                             candidates={c: found[c]["groups"][k]["estimate"] for c in candidates},
                             contrast={c: None if v is None else round(v.ratio, 4) for c, v in contrasts.items()},
                             passed_over=passed_over))
        if rician != "none":
            out = correct_rician_bias(out, sigma, method=rician)
        found[name] = dict(groups=rows, seconds=sum(found[c]["seconds"] for c in candidates) - sigma_seconds)
        save(name, out, found[name]["seconds"])

    if estimates is not None:
        for name, entry in found.items():
            groups = entry["groups"]
            pooled = pooled_rmse([_Estimate(g["estimate"], g["values"]) for g in groups])
            true = None
            if truth is not None:
                true = float(np.sqrt(sum(g["true"] ** 2 * g["values"] for g in groups) / sum(g["values"] for g in groups)))
            estimates[name] = dict(estimate=pooled, true=true, noise=source,
                                   groups=[{k: v for k, v in g.items() if k != "indices"} for g in groups])

    for name in anchors:
        cached = cache.get(dataset, name)
        if cached is None:
            try:
                out, seconds = run_anchor(name, data, bvals, folder / "dwi.nii.gz", cache.root)
            except Exception as exc:  # noqa: BLE001 - e.g. a 5^3 patch on 2-slice data
                outputs[name] = (None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                log(f"  {dataset} {name}: {outputs[name][1]}")
                continue
            cache.put(dataset, name, img, out, dict(seconds=seconds, shape=list(data.shape)))
            cached = cache.get(dataset, name)
            log(f"  {dataset} {name}: {seconds:.1f} s")
        outputs[name] = (cached[0], cached[1]["seconds"])
    return outputs


class _Estimate:
    """The two fields of ErrorEstimate that pooled_rmse reads."""

    def __init__(self, rmse, n_values):
        self.rmse, self.n_values = rmse, n_values


def phantom_results(names, settings, cache, log, anchors, wholebrain_anchors=()) -> dict:
    results = {}
    for name in names:
        folder = phantom_dir(name)
        _, data, bvals = load(folder)
        log(f"phantom {name} {data.shape}")
        entry = dict(shape=list(data.shape), n_dw=int(np.count_nonzero(bvals > 50)),
                     noisy=score(None, folder), methods={}, estimates={})
        these, their_anchors = settings, anchors
        if name == WHOLEBRAIN:
            these = {k: v for k, v in settings.items() if k in WHOLEBRAIN_SETTINGS}
            their_anchors = [a for a in anchors if a not in WHOLEBRAIN_SLOW_ANCHORS or a in wholebrain_anchors]
            entry["not_run"] = {a: why for a, why in WHOLEBRAIN_SLOW_ANCHORS.items()
                                if a in anchors and a not in their_anchors}
            entry["subset"] = True
        for method, (path, seconds) in denoise_all(name, folder, these, cache, log, their_anchors,
                                                   entry["estimates"]).items():
            if path is None:
                entry["methods"][method] = dict(error=seconds)
                continue
            entry["methods"][method] = dict(score(path, folder), seconds=round(seconds, 3))
        results[name] = entry
    return results


def choose_default(phantoms: dict, settings) -> dict:
    """The written rule, applied to the phantom results."""
    phantoms = {name: entry for name, entry in phantoms.items() if not entry.get("subset")}
    ruled = [name for name, entry in phantoms.items() if entry["n_dw"] >= RULE_MIN_DW]
    table = {}
    for setting in settings:
        scores = [phantoms[name]["methods"].get(setting) for name in phantoms]
        if any(s is None or "error" in s for s in scores):
            continue
        keeps_fa = all(phantoms[name]["methods"][setting]["fa_mae_wm"] <= phantoms[name]["noisy"]["fa_mae_wm"]
                       for name in ruled)
        table[setting] = dict(mean_psnr=float(np.mean([s["psnr"] for s in scores])), keeps_fa=keeps_fa)
    eligible = {k: v for k, v in table.items() if v["keeps_fa"]}
    winner = max(eligible, key=lambda k: eligible[k]["mean_psnr"]) if eligible else None
    best_overall = max(table, key=lambda k: table[k]["mean_psnr"]) if table else None
    return dict(ruled_phantoms=ruled, table=table, winner=winner, best_psnr_any_fa=best_overall)


# ----------------------------------------------------------------------------------- timings
def timing_results(log, repeats=1) -> dict:
    """Ours on the whole-brain phantom and a 96x96x60x200 two-shell array, 2 threads."""
    import torch

    arrays = {}
    _, wholebrain, wb_bvals = load(phantom_dir(WHOLEBRAIN))
    arrays[f"whole-brain phantom {'x'.join(map(str, wholebrain.shape))}"] = (wholebrain, wb_bvals)
    bvals = common.interleaved_scheme(10, [(1000, 95), (2000, 95)], 20)
    noisy, _, _, _ = common.synthetic_dwi((96, 96, 60), bvals, sigma=40.0, seed=3, truth=False)
    arrays["two-shell 96x96x60x200"] = (np.asfortranarray(noisy.numpy()), bvals)
    rows = []
    for label, (data, bvals) in arrays.items():
        for radius in (0, 1, 2):
            for pooling in (("voxel",) if radius == 0 else ("voxel", "radial")):
                for grouping in ("shell", "all"):
                    kwargs = dict(patch_radius=radius, patch_pooling=pooling, grouping=grouping)
                    if radius == 2 and pooling == "voxel" and data.shape[3] > 100:
                        rows.append(dict(data=label, **kwargs, seconds=None,
                                         note="not run: 95 to 190 volumes x 125 features need a 1-4.5 GB Gram "
                                              "and its inverse (radial pooling is the practical radius 2)"))
                        continue
                    times = []
                    for _ in range(repeats):
                        common.release_memory()
                        started = time.perf_counter()
                        run_ours(data, bvals, dict(method="patch2self", model="ols", alpha=1.0, **kwargs))
                        times.append(time.perf_counter() - started)
                    rows.append(dict(data=label, **kwargs, seconds=min(times), all=times))
                    log(f"  timing {label} {kwargs}: {min(times):.2f} s")
    return dict(threads=torch.get_num_threads(), rows=rows)


# ------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", nargs="*", default=[*PHANTOMS, WHOLEBRAIN], help="phantoms to score")
    parser.add_argument("--real", nargs="*", default=REAL, help="real sets of shared/data")
    parser.add_argument("--no-real", action="store_true", help="skip the real sets")
    parser.add_argument("--no-timings", action="store_true", help="skip the whole-brain timings")
    parser.add_argument("--only", choices=["timings", "phantoms", "real", "qc"],
                        help="run one part only (qc: the QC flags of the cached real-set outputs)")
    parser.add_argument("--anchors", nargs="*", default=list(ANCHORS), help="anchors to run")
    parser.add_argument("--real-settings", nargs="*", default=None,
                        help="our settings on the real sets (default: radius 0 and 1, all poolings)")
    parser.add_argument("--wholebrain-anchors", nargs="*", default=[],
                        help=f"slow anchors to run on the whole-brain phantom too ({', '.join(WHOLEBRAIN_SLOW_ANCHORS)})")
    parser.add_argument("--fresh", action="store_true", help="recompute cached anchor outputs")
    parser.add_argument("--threads", type=int, default=2, help="threads for every method (default 2)")
    parser.add_argument("--out", default=str(HERE / "results"), help="where quality.md/.json go")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()

    def log(message):
        print(f"[{time.time() - started:7.0f} s] {message}", flush=True)

    settings = our_settings()
    skipped = {name: why for name in args.anchors if (why := anchor_available(name))}
    anchors = [name for name in args.anchors if name not in skipped]
    cache = Cache(DATA, args.fresh)
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  commit=common.git_commit(REPO), machine=common.machine_info(),
                  versions=common.package_versions(), command=" ".join(sys.argv), threads=args.threads,
                  skipped_anchors=skipped, settings=settings)
    out_dir = Path(args.out)
    previous = out_dir / "quality.json"
    if args.only and previous.is_file():  # keep the other parts of an earlier full run
        report = {**json.loads(previous.read_text()), **{k: v for k, v in report.items() if k != "settings"}}
    if args.only in (None, "phantoms"):
        if WHOLEBRAIN in args.phantoms:
            make_wholebrain(log)
        report["phantoms"] = phantom_results(args.phantoms, settings, cache, log, anchors, args.wholebrain_anchors)
        report["rule"] = choose_default(report["phantoms"], settings)
        out_dir.mkdir(parents=True, exist_ok=True)  # kept if a later part fails
        (out_dir / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.only in (None, "real") and not args.no_real:
        chosen = args.real_settings or list(REAL_SETTINGS)
        report["real"] = quality_real.real_results(args.real, {k: settings[k] for k in chosen}, cache, log,
                                                   anchors, denoise_all, SHARED / "data")
    if args.only in (None, "real", "qc") and not args.no_real:
        chosen = args.real_settings or list(REAL_SETTINGS)
        report["qc_real"] = quality_real.qc_results(args.real, [*chosen, *ANCHORS], DATA, SHARED / "data", log)
    if args.only in (None, "timings") and not args.no_timings:
        make_wholebrain(log)
        report["timings"] = timing_results(log)
    report["wall_seconds"] = round(time.time() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "quality.md").write_text(quality_report.markdown(report))
    log(f"wrote {out_dir / 'quality.md'}")
    if report.get("rule"):
        print(quality_report.rule_text(report["rule"]))


if __name__ == "__main__":
    main()
