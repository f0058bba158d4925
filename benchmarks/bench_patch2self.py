#!/usr/bin/env python3
"""Benchmark bids_denoise's Patch2Self against DIPY 1.12.1 (speed, memory, quality).

    .venv/bin/python benchmarks/bench_patch2self.py               # full run (make bench)
    .venv/bin/python benchmarks/bench_patch2self.py --quick       # fast check, ~1 min
    .venv/bin/python benchmarks/bench_patch2self.py --datasets synthetic-64 --no-dipy
    .venv/bin/python benchmarks/bench_patch2self.py --gpu-size    # adds the 145x174x145x288 CUDA set

Every dataset is benchmarked in ONE fresh worker process (this script with ``--_worker``): it
imports everything, loads the data once, then runs ours on CPU (torch threads = --threads), ours
on CUDA when available, DIPY v1 (radius 0) and DIPY v3 (its default) on the same array. Per run
it records the wall time of the call (best of the repeats), the peak RSS during the call (kernel
high-water mark reset via /proc/self/clear_refs; a sampling thread if that does not work), the
increase over the RSS just before the call, and on CUDA ``torch.cuda.max_memory_allocated``.
Outputs of runs on datasets with a ground truth are written to benchmarks/data/out/ and scored
afterwards with the official ``shared/bench/score.py`` (run unchanged, as a subprocess), two at a
time, so scoring never overlaps a timed call.

Results: ``<out>/patch2self.md`` (tables) and ``<out>/patch2self.json`` (raw numbers).
See benchmarks/README.md for what every number means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

REPO = HERE.parent
DATA = HERE / "data"
SHARED = Path(os.environ.get("BIDS_DENOISE_SHARED", REPO.parent / "shared"))
ENGINE = REPO / "bids_denoise" / "denoise" / "patch2self"

SYNTH_SETS = ["hardi_snr10", "hardi_snr5", "multishell_snr10", "multishell_b0at5_snr10", "clinical_snr10"]
WHOLEBRAIN = "wholebrain_hardi_snr10"
DEFAULT_DATASETS = ["synthetic-64", *SYNTH_SETS, WHOLEBRAIN]
GPU_SET = "gpu-size"

SYN64_SHAPE = (64, 64, 40)
SYN64_BVALS = [0.0] * 6 + [1000.0] * 60
SYN64_SIGMA, SYN64_SEED = 40.0, 0
SYN64_RECIPE = "common.synthetic_dwi v1"
GPU_SHAPE = (145, 174, 145)
GPU_SCHEME = dict(n_b0=18, shells_counts=[(1000, 135), (2000, 135)], every=16)
CROP_Z = (15, 25)  # 64x64x10x66 crop of synthetic-64 for the DIPY v1 radius-1 comparison

#: DIPY numbers measured on this 2-core machine (shared/reference/patch2self.md §2); used for
#: run-time estimates and cited (labelled as reference) where a run is not repeated here.
REF = {
    "dipy_v1_r0_s": 7.3, "dipy_v3_s": 9.6, "ref_voxels": 64 * 64 * 40, "ref_volumes": 66,
    "dipy_v1_r1_full": "did not finish in 480 s (killed; >= 4.5 GB RSS)",
    "dipy_v1_r1_crop_s": 104.0, "dipy_v1_r1_crop_rss": "1.25 GB",
}

LABELS = {
    "ours-cpu-r0": "ours, CPU, r=0",
    "ours-cpu-r0-all": "ours, CPU, r=0, grouping='all'",
    "ours-cpu-r1": "ours, CPU, r=1",
    "ours-cpu-r1-radial": "ours, CPU, r=1, radial pooling (Patch2Self's default)",
    "ours-cuda-r0": "ours, CUDA, r=0",
    "ours-cuda-r1": "ours, CUDA, r=1",
    "dipy-v1-r0": "DIPY 1.12.1 v1, r=0 (float input)",
    "dipy-v1-r0-int16": "DIPY 1.12.1 v1, r=0, int16 input",
    "dipy-v3": "DIPY 1.12.1 v3 (default)",
    "neg-FF": "ours r=0, shift=F, clip=F",
    "neg-FT": "ours r=0, shift=F, clip=T",
    "neg-TF": "ours r=0, shift=T, clip=F",
    "crop-ours-cpu-r1": "ours, CPU, r=1 (64x64x10 crop)",
    "crop-dipy-v1-r1": "DIPY 1.12.1 v1, r=1 (64x64x10 crop)",
}


# ====================================================================================== plan
def dataset_dir(name):
    if name == "synthetic-64":
        return DATA / "synthetic-64"
    if name in SYNTH_SETS:
        return SHARED / "data" / "synthetic" / name
    if name == WHOLEBRAIN:
        return DATA / "wholebrain" / "hardi_snr10"
    return None


def wholebrain_command():
    return [sys.executable, str(SHARED / "bench" / "make_phantom.py"), str(DATA / "wholebrain"),
            "hardi_snr10", "--seed", "1", "--zslices", "0"]


def prepare(name, log):
    """Make sure the dataset exists (generate and cache it in benchmarks/data/ if needed)."""
    d = dataset_dir(name)
    if name == "synthetic-64":
        p = d / "params.json"
        if p.is_file() and json.loads(p.read_text()).get("recipe") == SYN64_RECIPE and (d / "gt.nii.gz").is_file():
            return
        log(f"generating {name} in {d} ...")
        noisy, gt, mask, bvecs = common.synthetic_dwi(SYN64_SHAPE, SYN64_BVALS, sigma=SYN64_SIGMA,
                                                      seed=SYN64_SEED)
        common.save_dataset(d, noisy.numpy(), gt.numpy(), mask.numpy(), SYN64_BVALS, bvecs, dict(
            recipe=SYN64_RECIPE, shape=[*SYN64_SHAPE, len(SYN64_BVALS)], sigma=SYN64_SIGMA, seed=SYN64_SEED,
            description="reference recipe (shared/reference/patch2self.md §2): smooth S0 in an ellipsoid, "
                        "rotating fibre, tensor ADC, random unit gradients, Rician sigma 40; 6 b0 then "
                        "60 b=1000; mask = the ellipsoid 'brain'"))
    elif name == WHOLEBRAIN:
        if (d / "gt.nii.gz").is_file():
            return
        cmd = wholebrain_command()
        log("generating the whole-brain phantom (~2 min): " + " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=REPO)
    elif d is not None and not (d / "dwi.nii.gz").is_file():
        raise SystemExit(f"dataset {name} not found at {d} (set BIDS_DENOISE_SHARED?)")


def dipy_estimate_s(kind, shape):
    """Rough DIPY run time from the reference timing, scaled by voxels x volumes^2."""
    v = shape[0] * shape[1] * shape[2]
    scale = v / REF["ref_voxels"] * (shape[3] / REF["ref_volumes"]) ** 2
    return (REF["dipy_v1_r0_s"] if kind == "v1" else REF["dipy_v3_s"]) * scale


def build_runs(name, args, shape, has_gt):
    """The list of runs for one dataset (executed in this order by the worker)."""
    ours_rep, dipy_rep = args.repeats, args.dipy_repeats
    runs, skipped = [], []

    def ours(rid, device="cpu", radius=0, grouping=None, shift=None, clip=None, repeats=ours_rep, crop=None,
             study="main", pooling=None):
        runs.append(dict(id=rid, impl="ours", device=device, radius=radius, grouping=grouping, shift=shift,
                         clip=clip, repeats=repeats, crop=crop, study=study, score=has_gt and crop is None,
                         pooling=pooling))

    def dipy(rid, version, radius=0, int16=False, crop=None, study="main"):
        if args.no_dipy:
            return
        if crop is None:
            est = dipy_estimate_s("v1" if version == 1 else "v3", shape) * (4 if int16 else 1)
            if est > args.dipy_max_s:
                skipped.append(dict(id=rid, reason=f"estimated {est:.0f} s > --dipy-max-s {args.dipy_max_s:g} s"))
                return
        runs.append(dict(id=rid, impl="dipy", version=version, radius=radius, int16=int16, repeats=dipy_rep,
                         crop=crop, study=study, score=has_gt and crop is None))

    if name == GPU_SET:
        ours("ours-cuda-r0", device="cuda", radius=0)
        ours("ours-cuda-r1", device="cuda", radius=1, repeats=max(1, min(ours_rep, 2)))
        return runs, skipped
    ours("ours-cpu-r0")
    if args.cuda:
        ours("ours-cuda-r0", device="cuda")
    if not args.quick:
        if name == "synthetic-64" or name in SYNTH_SETS:
            ours("ours-cpu-r1", radius=1, repeats=ours_rep if name == "synthetic-64" else 1, study="radius")
            ours("ours-cpu-r1-radial", radius=1, pooling="radial", repeats=ours_rep if name == "synthetic-64" else 1,
                 study="radius")
            if args.cuda:
                ours("ours-cuda-r1", device="cuda", radius=1, study="radius")
        if name in SYNTH_SETS:
            ours("ours-cpu-r0-all", grouping="all", study="grouping")
    dipy("dipy-v1-r0", 1)
    dipy("dipy-v3", 3)
    if not args.quick and has_gt:
        dipy("dipy-v1-r0-int16", 1, int16=True, study="dipy-int16")
    if args.negatives and has_gt:
        for rid, shift, clip in (("neg-FF", False, False), ("neg-FT", False, True), ("neg-TF", True, False)):
            ours(rid, shift=shift, clip=clip, repeats=1, study="negatives")
    if args.dipy_r1 and name == "synthetic-64":
        ours("crop-ours-cpu-r1", radius=1, crop=CROP_Z, study="crop-r1")
        dipy("crop-dipy-v1-r1", 1, radius=1, crop=CROP_Z, study="crop-r1")
    return runs, skipped


# ==================================================================================== worker
def worker(spec_path):
    """Runs inside the per-dataset process: load once, run every method, write result JSON."""
    import inspect

    spec = json.loads(Path(spec_path).read_text())
    import numpy as np
    import nibabel as nib
    import torch

    torch.set_num_threads(spec["threads"])
    from bids_denoise.denoise.patch2self import patch2self

    need_dipy = any(r["impl"] == "dipy" for r in spec["runs"])
    if need_dipy:
        from dipy.denoise.patch2self import patch2self as dipy_patch2self
    import sklearn  # noqa: F401  (DIPY imports it lazily; count it in the import baseline)

    say = lambda msg: print(f"  [{spec['dataset']}] {msg}", flush=True)  # noqa: E731
    res = dict(dataset=spec["dataset"], runs=[], threads=spec["threads"],
               torch_threads=torch.get_num_threads())
    sig = inspect.signature(patch2self).parameters
    res["ours_defaults"] = {k: sig[k].default for k in ("shift_intensity", "clip_negative_vals", "grouping")}
    common.release_memory()
    res["rss_after_imports_mib"] = common.rss_mib()
    res["peak_method"] = common.PeakRSS().method

    mask = gt = None
    if spec["dataset"] == GPU_SET:
        bvals = common.interleaved_scheme(**GPU_SCHEME)
        t0 = time.perf_counter()
        gen_device = spec.get("gen_device", "cuda")  # "cpu" only to test this path without a GPU
        noisy, _, mask_t, _ = common.synthetic_dwi(tuple(spec.get("shape", GPU_SHAPE)), bvals, sigma=40.0, seed=1,
                                                   device=gen_device, truth=False)
        if gen_device == "cuda":
            torch.cuda.synchronize()
        data = noisy.cpu().numpy()
        del noisy, mask_t
        if gen_device == "cuda":
            torch.cuda.empty_cache()
        res["generate_s"] = time.perf_counter() - t0
        affine = np.eye(4)
    else:
        d = Path(spec["path"])
        img = nib.load(str(d / "dwi.nii.gz"))
        data = np.asarray(img.dataobj)
        affine = img.affine
        bvals = np.loadtxt(d / "dwi.bval").ravel()
        if (d / "mask.nii.gz").is_file():
            mask = np.asarray(nib.load(str(d / "mask.nii.gz")).dataobj) > 0
    res.update(shape=list(data.shape), dtype=str(data.dtype), data_mib=data.nbytes / common.MIB,
               bvals=sorted({int(round(b)) for b in bvals}), n_b0=int((bvals <= 50).sum()))
    common.release_memory()
    res["rss_after_load_mib"] = common.rss_mib()
    say(f"{tuple(data.shape)} {data.dtype}, {data.nbytes / common.MIB:.1f} MiB; "
        f"RSS after imports {res['rss_after_imports_mib']:.0f} MiB, after load {res['rss_after_load_mib']:.0f} MiB")

    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    crops, waited_total = {}, 0.0
    for run in spec["runs"]:
        x = data
        if run.get("crop"):
            z0, z1 = run["crop"]
            x = np.ascontiguousarray(data[:, :, z0:z1])
            crops[run["id"]] = None
        if run.get("int16"):
            if np.abs(x).max() > 32767:
                res["runs"].append(dict(run, error="data exceed the int16 range"))
                continue
            x = np.rint(x).astype(np.int16)
        if run["impl"] == "ours":
            kw = dict(patch_radius=run["radius"], model="ols", device=run["device"], progress=False)
            for key, name in (("grouping", "grouping"), ("shift", "shift_intensity"), ("clip", "clip_negative_vals"),
                              ("pooling", "patch_pooling")):
                if run.get(key) is not None:
                    kw[name] = run[key]
            fn = lambda x=x, kw=kw: patch2self(x, bvals, **kw)  # noqa: E731
        else:
            kw = dict(model="ols", version=run["version"])
            if run["version"] == 1:
                kw["patch_radius"] = (run["radius"],) * 3
            if run.get("int16"):
                kw["out_dtype"] = np.float32

            def fn(x=x, kw=kw):
                if kw["version"] == 3:
                    np.random.seed(12345)  # v3 sketches with the global RNG: make every repeat the same
                return dipy_patch2self(x, bvals, **kw)
        cuda = run.get("device") == "cuda"
        rec = dict(run)
        times, peaks, incs, befores, gpu, foreign = [], [], [], [], [], []
        out = None
        timed = run.get("study") in ("main", "radius")
        wait = spec.get("quiet_wait", 0) if timed else 0
        contaminated = lambda i: foreign[i] > max(0.05, 0.1 * times[i] * spec["threads"])  # noqa: E731
        waits = []
        try:
            attempt, extra = 0, 0
            while attempt < run["repeats"] + extra:
                attempt += 1
                out = None
                if wait > 0 and waited_total < 8 * wait:  # at most 8 x --quiet-wait per dataset
                    waits.append(common.wait_for_quiet(wait, window_s=0.3))
                    waited_total += waits[-1][0]
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                with common.PeakRSS() as m:
                    busy0, own0 = common.cpu_times()
                    t0 = time.perf_counter()
                    out = fn()
                    if cuda:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                    busy1, own1 = common.cpu_times()
                foreign.append(max(0.0, (busy1 - busy0) - (own1 - own0)))
                peaks.append(m.peak)
                incs.append(m.increase)
                befores.append(m.before)
                if cuda:
                    gpu.append(torch.cuda.max_memory_allocated() / common.MIB)
                # Best repeat disturbed by other processes: try again (up to --retries times, short runs only).
                if (attempt == run["repeats"] + extra and timed and extra < spec.get("retries", 0)
                        and contaminated(times.index(min(times))) and min(times) < 60):
                    extra += 1
        except Exception as exc:  # record and go on with the other runs
            rec["error"] = f"{type(exc).__name__}: {exc}"
            res["runs"].append(rec)
            say(f"{run['id']}: FAILED {rec['error']}")
            continue
        if waits:
            rec.update(quiet_wait_s=round(sum(w for w, _ in waits), 1), quiet_reached=all(q for _, q in waits))
        rec["retries"] = extra
        rec.update(times_s=times, best_s=min(times), peak_rss_mib=max(peaks), rss_increase_mib=max(incs),
                   rss_increase_per_repeat_mib=incs, rss_before_mib=befores[0], out_dtype=str(out.dtype),
                   other_cpu_s=foreign, other_cpu_s_best=foreign[times.index(min(times))])
        if gpu:
            rec["cuda_max_allocated_mib"] = max(gpu)
        neg = out < 0
        rec["negatives"] = dict(count=int(neg.sum()), fraction=float(neg.mean()), min=float(out.min()))
        if mask is not None and not run.get("crop"):
            nm = neg[mask]
            rec["negatives"].update(count_in_mask=int(nm.sum()), fraction_in_mask=float(nm.mean()))
        if run.get("score"):
            path = out_dir / f"{run['id']}.nii"
            nib.save(nib.Nifti1Image(out.astype(np.float32, copy=False), affine), str(path))
            rec["output"] = str(path)
        if run.get("crop"):
            crops[run["id"]] = out
        res["runs"].append(rec)
        say(f"{run['id']}: best {min(times):.3f} s of {len(times)}; peak RSS {max(peaks):.0f} MiB "
            f"(+{max(incs):.0f})" + (f"; GPU {max(gpu):.0f} MiB" if gpu else ""))
        del out, x, fn

    # RMSE of the crop runs (not scored by score.py) against the truth, loaded only now so that it
    # never sits in memory during a measurement.
    if crops and spec.get("path") and (Path(spec["path"]) / "gt.nii.gz").is_file():
        gt = np.asarray(nib.load(str(Path(spec["path"]) / "gt.nii.gz")).dataobj)
        for rec in res["runs"]:
            if rec["id"] in crops and crops[rec["id"]] is not None:
                z0, z1 = rec["crop"]
                m = mask[:, :, z0:z1]
                rec["rmse_brain_crop"] = float(np.sqrt(((crops[rec["id"]] - gt[:, :, z0:z1]) ** 2)[m].mean()))
                rec["rmse_brain_crop_noisy"] = float(np.sqrt(((data[:, :, z0:z1] - gt[:, :, z0:z1]) ** 2)[m].mean()))
    Path(spec["result"]).write_text(json.dumps(res, indent=1))


# ================================================================================== scoring
def score(path, ddir):
    cmd = [sys.executable, str(SHARED / "bench" / "score.py")]
    cmd += ["--noisy", str(ddir)] if path is None else [str(path), str(ddir)]
    p = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    if p.returncode != 0:
        return dict(error=(p.stderr or p.stdout).strip()[-500:])
    r = json.loads(p.stdout)
    dti = r.get("dti") or {}
    return dict(psnr=r["psnr"], rmse=r["rmse"], ssim=r["ssim"], ssim_b0=r["ssim_b0"], ssim_dw=r["ssim_dw"],
                shells={k: round(v["psnr"], 3) for k, v in r["shells"].items()},
                fa_mae=dti.get("fa_mae"), fa_mae_wm=dti.get("fa_mae_wm"), fa_bias=dti.get("fa_bias"),
                md_rel_err=dti.get("md_rel_err"), md_rel_bias=dti.get("md_rel_bias"),
                median_ratio_to_gt=r.get("median_ratio_to_gt"), warning=r.get("warning"))


# ================================================================================== analysis
def find(ds, rid):
    for r in ds.get("runs", []):
        if r["id"] == rid and "error" not in r:
            return r
    return None


def analyse(report):
    """Speed-ups, memory rule, targets and the negative-value policy, from the raw numbers."""
    targets, policy = [], {}
    for name, ds in report["datasets"].items():
        v3 = find(ds, "dipy-v3")
        for r in ds.get("runs", []):
            if v3 and "best_s" in r and not r.get("crop"):
                r["speedup_vs_dipy_v3"] = v3["best_s"] / r["best_s"]
        negs = [r for r in (find(ds, k) for k in ("neg-FF", "neg-FT", "neg-TF")) if r and "score" in r
                and "psnr" in r["score"]]
        if negs:
            rows = [dict(setting=f"shift={'T' if r['shift'] else 'F'}/clip={'T' if r['clip'] else 'F'}",
                         shift=r["shift"], clip=r["clip"], negatives=r["negatives"]["count"],
                         negative_fraction=r["negatives"]["fraction"], **{k: r["score"].get(k) for k in
                         ("psnr", "ssim", "fa_mae", "fa_mae_wm", "md_rel_err")}) for r in negs]
            ok = [x for x in rows if x["negatives"] == 0]
            win, tie = None, []
            if ok:
                top = max(x["psnr"] for x in ok)
                tie = [x for x in ok if abs(x["psnr"] - top) < 1e-6]
                # Equal scores: prefer the setting that cannot output negatives by construction.
                win = min(tie, key=lambda x: (not x["clip"], not x["shift"]))
            best_any = max(rows, key=lambda x: (x["psnr"], x["ssim"]))
            policy[name] = dict(rows=rows, winner=win["setting"] if win else None,
                                tied=[x["setting"] for x in tie] if len(tie) > 1 else [],
                                best_psnr_any=best_any["setting"])
    if policy:
        settings = [r["setting"] for r in next(iter(policy.values()))["rows"]]
        never = [st for st in settings if all(any(r["setting"] == st and r["negatives"] == 0 for r in p["rows"])
                                              for p in policy.values())]
        wins = {st: sum(p["winner"] == st or st in p["tied"] for p in policy.values()) for st in never}
        mean_psnr = {st: sum(r["psnr"] for p in policy.values() for r in p["rows"] if r["setting"] == st)
                     / len(policy) for st in settings}
        clip_of = {r["setting"]: (r["clip"], r["shift"]) for r in next(iter(policy.values()))["rows"]}
        overall = max(never, key=lambda st: (wins[st], round(mean_psnr[st], 6), *clip_of[st])) if never else None
        report["negative_policy_overall"] = dict(never_negative=never, wins=wins, mean_psnr=mean_psnr,
                                                 winner=overall)

    syn = report["datasets"].get("synthetic-64", {})
    ours0, v3, r1 = find(syn, "ours-cpu-r0"), find(syn, "dipy-v3"), find(syn, "ours-cpu-r1")
    if ours0 and v3:
        s = v3["best_s"] / ours0["best_s"]
        targets.append(dict(target="synthetic-64, 2 cores, r=0: >= 10x faster than DIPY v3", value=f"{s:.1f}x "
                            f"({ours0['best_s']:.3f} s vs {v3['best_s']:.2f} s)", status="PASS" if s >= 10 else "FAIL"))
    else:
        targets.append(dict(target="synthetic-64, 2 cores, r=0: >= 10x faster than DIPY v3", value="-",
                            status="NOT RUN"))
    targets.append(dict(target="synthetic-64, 2 cores, r=1: < 20 s",
                        value=f"{r1['best_s']:.2f} s" if r1 else "-",
                        status=("PASS" if r1["best_s"] < 20 else "FAIL") if r1 else "NOT RUN"))
    for run, label in ((r1, "r=1"), (find(syn, "ours-cpu-r1-radial"), "r=1 radial (the default)")):
        if run and v3:  # issue 11: radius 1 at radius-0 cost
            ratio = run["best_s"] / v3["best_s"]
            targets.append(dict(target=f"synthetic-64, 2 cores, {label}: <= 2x the time of DIPY v3 (r=0), same run",
                                value=f"{ratio:.2f}x ({run['best_s']:.2f} s vs {v3['best_s']:.2f} s)",
                                status="PASS" if ratio <= 2 else "FAIL"))
    if ours0:
        bound = 3 * syn["data_mib"] + 300
        inc = ours0["rss_increase_mib"]
        absd = ours0["peak_rss_mib"] - syn["rss_after_imports_mib"]
        report["memory_rule"] = dict(bound_mib=bound, data_mib=syn["data_mib"], increase_mib=inc,
                                     peak_minus_imports_mib=absd, peak_mib=ours0["peak_rss_mib"],
                                     rss_after_imports_mib=syn["rss_after_imports_mib"])
        targets.append(dict(target=f"memory, r=0 synthetic-64: peak increase during the call < 3x data + 300 MiB "
                                   f"= {bound:.0f} MiB", value=f"{inc:.0f} MiB",
                            status="PASS" if inc < bound else "FAIL"))
        targets.append(dict(target=f"memory, r=0 synthetic-64: absolute peak - RSS after imports < {bound:.0f} MiB",
                            value=f"{absd:.0f} MiB", status="PASS" if absd < bound else "FAIL"))
    gpu = report["datasets"].get(GPU_SET, {})
    for rid, limit in (("ours-cuda-r0", 5), ("ours-cuda-r1", 60)):
        r = find(gpu, rid)
        t = f"GPU, 145x174x145x288, r={rid[-1]}: < {limit} s"
        if r:
            targets.append(dict(target=t, value=f"{r['best_s']:.2f} s", status="PASS" if r["best_s"] < limit else "FAIL"))
        else:
            targets.append(dict(target=t, value="-", status="NOT RUN (" + (gpu.get("skipped_reason") or
                                "--gpu-size not given") + ")"))
    report["targets"], report["negative_policy"] = targets, policy


# ================================================================================== markdown
def f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def markdown(report):
    m, L = report["machine"], []
    add = L.append
    add("# Patch2Self benchmark: bids_denoise vs DIPY 1.12.1\n")
    add(f"- Date: {report['date']}")
    add(f"- Commit: `{report['commit']}` (engine `bids_denoise/denoise/patch2self/` sha256 "
        f"`{report['engine_sha256']}`)")
    add(f"- Command: `{report['command']}`")
    add(f"- Machine: {m['cpu_model']}, {m['cpu_usable']} usable cores ({m['cpu_count']} logical), "
        f"{m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none (CUDA not available)'}; {m['os']}")
    v = report["versions"]
    add("- Versions: " + ", ".join(f"{k} {v[k]}" for k in ("numpy", "scipy", "nibabel", "torch", "sklearn", "dipy"))
        + f", Python {m['python']}; BLAS: {'; '.join(v.get('blas', []))}")
    add(f"- Threads: torch {report['threads']}, OMP/OpenBLAS/MKL {report['threads']}. "
        f"Peak memory: {report.get('peak_method', '?')}.")
    add(f"- Repeats: best of {report['args']['repeats']} for ours (1 for study rows), "
        f"{report['args']['dipy_repeats']} for DIPY. DIPY v3 is seeded (np.random.seed(12345)) before each call.")
    add(f"- Wall time: {report['wall_s']:.0f} s for the whole benchmark.")
    if report.get("merged_into"):
        mi = report["merged_into"]
        add(f"- Merged (`--merge`) into the results of `{mi.get('command')}` ({mi.get('date')}, commit "
            f"`{mi.get('commit')}`); datasets measured by another command say so in their section.")
    add("")

    add("## Targets\n")
    add("| target | measured | status |\n|---|---|---|")
    for t in report["targets"]:
        add(f"| {t['target']} | {t['value']} | **{t['status']}** |")
    mr = report.get("memory_rule")
    if mr:
        add(f"\nMemory rule (ours, CPU, r=0, synthetic-64, input already loaded): data {mr['data_mib']:.1f} MiB "
            f"float32, bound 3 x data + 300 = {mr['bound_mib']:.0f} MiB. Increase during the call: "
            f"{mr['increase_mib']:.0f} MiB. Absolute peak {mr['peak_mib']:.0f} MiB minus the RSS after imports "
            f"{mr['rss_after_imports_mib']:.0f} MiB = {mr['peak_minus_imports_mib']:.0f} MiB (includes the loaded "
            "input).")
    add("\nReference numbers (shared/reference/patch2self.md §2, same machine, NOT re-measured here): DIPY 1.12.1 "
        f"v1 r=1 on the full 64x64x40x66 array {REF['dipy_v1_r1_full']}; on a 64x64x10x66 crop "
        f"{REF['dipy_v1_r1_crop_s']:.0f} s, {REF['dipy_v1_r1_crop_rss']} " + (
            "(the crop was also measured in this run: see the crop rows of the synthetic-64 table)."
            if find(report["datasets"].get("synthetic-64", {}), "crop-dipy-v1-r1") else
            "(use `--dipy-r1` to measure the crop here)."))

    if report["negative_policy"]:
        add("\n## Negative-value policy (ours, r=0, engine-default grouping)\n")
        add("Rule: the default is the setting with the best score (PSNR; SSIM breaks ties) among the settings "
            "that output no negative value.\n")
        add("| dataset | setting | negatives (fraction) | PSNR dB | SSIM | FA MAE | FA MAE WM | MD rel err |")
        add("|---|---|---|---|---|---|---|---|")
        for name, p in report["negative_policy"].items():
            for r in p["rows"]:
                win = " **(wins)**" if r["setting"] == p["winner"] else ""
                add(f"| {name} | {r['setting']}{win} | {r['negatives']} ({r['negative_fraction']:.2e}) | "
                    f"{f(r['psnr'])} | {f(r['ssim'], '{:.4f}')} | {f(r['fa_mae'], '{:.4f}')} | "
                    f"{f(r['fa_mae_wm'], '{:.4f}')} | {f(r['md_rel_err'], '{:.4f}')} |")
        add("")
        for name, p in report["negative_policy"].items():
            tie = f"; tie between {' and '.join(p['tied'])} (identical scores), the one that cannot output " \
                  "negatives by construction is listed" if p["tied"] else ""
            add(f"- {name}: winner **{p['winner']}**{tie} (best PSNR with negatives allowed: {p['best_psnr_any']})")
        o = report.get("negative_policy_overall") or {}
        d = report.get("ours_defaults") or {}
        add(f"\nOverall: settings with no negative output on every dataset: {', '.join(o.get('never_negative', [])) or 'none'}; "
            f"datasets won (ties counted for each): {', '.join(f'{k}: {v}' for k, v in o.get('wins', {}).items())}; "
            f"mean PSNR: {', '.join(f'{k}: {v:.2f}' for k, v in o.get('mean_psnr', {}).items())}. "
            f"**Winner: {o.get('winner')}.** Engine default at this commit: "
            f"shift={'T' if d.get('shift_intensity') else 'F'}/clip={'T' if d.get('clip_negative_vals') else 'F'}.")

    for name, ds in report["datasets"].items():
        add(f"\n## {name}\n")
        if ds.get("skipped_reason"):
            add(f"Skipped: {ds['skipped_reason']}")
            continue
        if ds.get("error"):
            add(f"**Worker failed:** {ds['error']}")
        if "shape" not in ds:
            continue
        meas = ds.get("measured") or {}
        if meas and (meas.get("commit"), meas.get("engine_sha256"), meas.get("command")) != (
                report["commit"], report["engine_sha256"], report["command"]):
            add(f"Measured separately: {meas.get('date')}, commit `{meas.get('commit')}`, engine sha256 "
                f"`{meas.get('engine_sha256')}`, command `{meas.get('command')}`.\n")
        add(f"Shape {tuple(ds['shape'])} {ds['dtype']} ({ds['data_mib']:.1f} MiB), b-values {ds['bvals']}, "
            f"{ds['n_b0']} b0. {ds.get('note', '') + ' ' if ds.get('note') else ''}RSS after imports {ds['rss_after_imports_mib']:.0f} MiB, after "
            f"loading {ds['rss_after_load_mib']:.0f} MiB.\n")
        for s in ds.get("skipped", []):
            add(f"- Skipped {s['id']}: {s['reason']}")
        gpu_col = any("cuda_max_allocated_mib" in r for r in ds["runs"])
        scored = any("score" in r for r in ds["runs"]) or "noisy" in ds
        head = "| run | time s (best) | all times s | vs DIPY v3 | peak RSS MiB | +RSS MiB |"
        head += " GPU max alloc MiB |" if gpu_col else ""
        head += " PSNR dB | RMSE | SSIM (b0/DW) | FA MAE (WM) | MD rel err | negatives |" if scored else " negatives |"
        add(head)
        add("|" + "---|" * (head.count("|") - 1))
        if scored and "noisy" in ds:
            s = ds["noisy"]
            add("| noisy input | - | - | - | - | - |" + (" - |" if gpu_col else "") +
                f" {f(s.get('psnr'))} | {f(s.get('rmse'))} | {f(s.get('ssim'), '{:.4f}')} "
                f"({f(s.get('ssim_b0'), '{:.3f}')}/{f(s.get('ssim_dw'), '{:.3f}')}) | "
                f"{f(s.get('fa_mae'), '{:.4f}')} ({f(s.get('fa_mae_wm'), '{:.4f}')}) | {f(s.get('md_rel_err'), '{:.4f}')} | - |")
        for r in ds["runs"]:
            lab = LABELS.get(r["id"], r["id"])
            if "error" in r:
                add(f"| {lab} | FAILED: {r['error']} |")
                continue
            row = (f"| {lab} | {r['best_s']:.3f} | {', '.join(f'{t:.2f}' for t in r['times_s'])} | "
                   f"{f(r.get('speedup_vs_dipy_v3'), '{:.1f}x')} | {r['peak_rss_mib']:.0f} | {r['rss_increase_mib']:.0f} |")
            if gpu_col:
                row += f" {f(r.get('cuda_max_allocated_mib'), '{:.0f}')} |"
            neg = r["negatives"]
            negs = f"{neg['count']} ({neg['fraction']:.1e})"
            if scored:
                s = r.get("score", {})
                if "rmse_brain_crop" in r:
                    row += f" - | {r['rmse_brain_crop']:.2f} (crop; noisy {r['rmse_brain_crop_noisy']:.2f}) | - | - | - | {negs} |"
                elif s.get("error"):
                    row += f" score.py failed: {s['error'][:80]} | | | | | {negs} |"
                else:
                    row += (f" {f(s.get('psnr'))} | {f(s.get('rmse'))} | {f(s.get('ssim'), '{:.4f}')} "
                            f"({f(s.get('ssim_b0'), '{:.3f}')}/{f(s.get('ssim_dw'), '{:.3f}')}) | "
                            f"{f(s.get('fa_mae'), '{:.4f}')} ({f(s.get('fa_mae_wm'), '{:.4f}')}) | "
                            f"{f(s.get('md_rel_err'), '{:.4f}')} | {negs} |")
            else:
                row += f" {negs} |"
            add(row)
    busy = [(name, r) for name, ds in report["datasets"].items() for r in ds.get("runs", [])
            if "best_s" in r and r.get("other_cpu_s_best", 0) > max(0.05, 0.1 * r["best_s"] * report["threads"])]
    add("\n## Notes\n")
    if busy:
        add("- **Timing contamination:** other processes used more than 10 % of the cores (and > 0.05 CPU-s) during: " + ", ".join(
            f"{n}/{r['id']} ({r['other_cpu_s_best']:.1f} CPU-s in {r['best_s']:.2f} s)" for n, r in busy) + ".")
    else:
        add("- Other processes used less than 10 % of the cores (or < 0.05 CPU-s) during every best-of timing "
            "(measured from /proc/stat minus this process's CPU time).")
    add("- Times are wall-clock seconds of the call only (data already in memory; CUDA times include the "
        "host-to-device copy of the input and the copy of the result back, and are synchronised).")
    add("- peak RSS = kernel high-water mark of the process during the call (reset just before it); +RSS = peak "
        "minus the RSS just before the call. DIPY v3's RSS includes the page cache of its memory-mapped temp files.")
    add("- Scores: official shared/bench/score.py, unchanged, inside the brain mask; PSNR peak = 99.9th "
        "percentile of gt. For synthetic-64 the RMSE column is the RMSE in the ellipsoid 'brain' against the "
        "noise-free truth. FA MAE (WM) = mean |FA - FA_gt| over the mask (and over FA_gt > 0.4).")
    add("- DIPY 1.12.1 v1 on float input carries the per-volume offset bug (reference §1.3: scikit-learn centres "
        "the design in place). The 'int16 input' row rounds the input to int16 first, which takes DIPY's correct "
        "path (output requested as float32); it is the correct-OLS reference. DIPY v3 has the trailing-volume "
        "bug when N mod 5 != 0 (§1.4; N=66 corrupts volume 65) and is randomised (seeded here).")
    add("- negatives = count (fraction) of output values < 0 over the whole 4D array.")
    if report.get("wholebrain_command"):
        add(f"- Whole-brain phantom: `{report['wholebrain_command']}` (cached in benchmarks/data/wholebrain/).")
    add(f"- synthetic-64: {SYN64_RECIPE} (benchmarks/common.py), seed {SYN64_SEED}, sigma {SYN64_SIGMA:g}, "
        "6 b0 then 60 b=1000, cached in benchmarks/data/synthetic-64/.")
    return "\n".join(L) + "\n"


# ===================================================================================== main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="only synthetic-64 and hardi_snr10, radius 0, no study rows (fast check)")
    ap.add_argument("--datasets", nargs="+", metavar="NAME",
                    help=f"subset of: {', '.join(DEFAULT_DATASETS + [GPU_SET])}")
    ap.add_argument("--no-dipy", action="store_true", help="skip all DIPY runs")
    ap.add_argument("--gpu-size", action="store_true", help="add the 145x174x145x288 CUDA-only set")
    ap.add_argument("--negatives", dest="negatives", action="store_true", default=None,
                    help="negative-value policy study (default: on, off with --quick)")
    ap.add_argument("--no-negatives", dest="negatives", action="store_false")
    ap.add_argument("--dipy-r1", action="store_true",
                    help="also DIPY v1 and ours at radius 1 on a 64x64x10x66 crop of synthetic-64 (~2 min)")
    ap.add_argument("--repeats", type=int, default=3, help="best-of repeats for ours (default 3)")
    ap.add_argument("--dipy-repeats", type=int, default=1, help="best-of repeats for DIPY (default 1)")
    ap.add_argument("--dipy-max-s", type=float, default=300.0,
                    help="skip a DIPY run whose estimated time exceeds this (default 300 s)")
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument("--quiet-wait", type=float, default=15.0,
                    help="before each main timed run, wait up to this many seconds for other processes to "
                         "use < 0.25 cores (default 15; 0 = never wait)")
    ap.add_argument("--retries", type=int, default=2,
                    help="extra repeats of a main run (< 60 s) whose best timing was disturbed by other "
                         "processes (default 2)")
    ap.add_argument("--out", help="output folder for patch2self.md/.json "
                                  "(default benchmarks/results; benchmarks/data/quick with --quick)")
    ap.add_argument("--merge", action="store_true",
                    help="update only the datasets run now inside an existing <out>/patch2self.json (each "
                         "dataset keeps its own commit/date/command), then re-write the report")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the denoised NIfTIs in benchmarks/data/out")
    ap.add_argument("--render", metavar="JSON", help="only re-write the .md next to an existing patch2self.json")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker(args._worker)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        analyse(report)
        Path(args.render).write_text(json.dumps(report, indent=1, default=str) + "\n")
        Path(args.render).with_suffix(".md").write_text(markdown(report))
        return 0

    started = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.negatives is None:
        args.negatives = not args.quick
    import torch

    args.cuda = torch.cuda.is_available()
    names = args.datasets or (["synthetic-64", "hardi_snr10"] if args.quick else list(DEFAULT_DATASETS))
    if args.gpu_size and GPU_SET not in names:
        names.append(GPU_SET)
    bad = [n for n in names if n not in DEFAULT_DATASETS + [GPU_SET]]
    if bad:
        raise SystemExit(f"unknown dataset(s) {bad}; choose from {DEFAULT_DATASETS + [GPU_SET]}")
    out = Path(args.out) if args.out else (DATA / "quick" if args.quick else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    exe = os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(REPO)) else sys.executable
    report = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  commit=common.git_commit(REPO), engine_sha256=common.file_digest(ENGINE),
                  command=" ".join([exe, os.path.relpath(__file__, Path.cwd())] + [shlex.quote(a) for a in
                                                                               (argv or sys.argv[1:])]),
                  machine=common.machine_info(), versions=common.package_versions(), threads=args.threads,
                  args={k: v for k, v in vars(args).items() if not k.startswith("_")}, datasets={})
    if WHOLEBRAIN in names:
        report["wholebrain_command"] = ("cd " + str(REPO) + " && " +
                                        " ".join(os.path.relpath(c, REPO) if c.startswith("/") else c
                                                 for c in wholebrain_command()))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONPATH=os.pathsep.join(
                   [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    logs = DATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in names:
        ds = report["datasets"].setdefault(name, {})
        if name == GPU_SET and not args.cuda:
            ds["skipped_reason"] = "CUDA is not available on this machine (torch.cuda.is_available() is False)"
            log(f"== {name}: SKIPPED - {ds['skipped_reason']}")
            continue
        log(f"== {name}")
        try:
            prepare(name, log)
        except Exception as exc:
            ds["error"] = f"preparing the data failed: {exc}"
            log("   " + ds["error"])
            continue
        ddir = dataset_dir(name)
        has_gt = ddir is not None and (ddir / "gt.nii.gz").is_file()
        if ddir is not None:
            import nibabel as nib

            shape = nib.load(str(ddir / "dwi.nii.gz")).shape
        else:
            shape = GPU_SHAPE + (len(common.interleaved_scheme(**GPU_SCHEME)),)
        runs, skipped = build_runs(name, args, shape, has_gt)
        for s in skipped:
            log(f"   skipping {s['id']}: {s['reason']}")
        work = DATA / "out" / name
        spec = dict(dataset=name, path=str(ddir) if ddir else None, runs=runs, threads=args.threads,
                    quiet_wait=args.quiet_wait, retries=args.retries,
                    out_dir=str(work), result=str(work / "result.json"))
        work.mkdir(parents=True, exist_ok=True)
        (work / "spec.json").write_text(json.dumps(spec, indent=1))
        t0 = time.perf_counter()
        with open(logs / f"{name}.log", "w") as lf:
            p = subprocess.run([sys.executable, __file__, "--_worker", str(work / "spec.json")], env=env,
                               stderr=lf, cwd=REPO)
        if p.returncode != 0 or not (work / "result.json").is_file():
            tail = (logs / f"{name}.log").read_text()[-1500:]
            ds["error"] = f"worker exited with {p.returncode}; log tail: {tail}"
            log(f"   worker FAILED (see {logs / (name + '.log')})")
            continue
        ds.update(json.loads((work / "result.json").read_text()))
        (work / "result.json").unlink()
        ds["skipped"] = skipped
        ds["worker_wall_s"] = time.perf_counter() - t0
        ds["measured"] = dict(date=report["date"], commit=report["commit"], engine_sha256=report["engine_sha256"],
                              command=report["command"])
        report.setdefault("peak_method", ds.get("peak_method"))
        report.setdefault("ours_defaults", ds.get("ours_defaults"))
        if has_gt:
            jobs = [(None, "noisy")] + [(r["output"], r["id"]) for r in ds["runs"] if r.get("output")]
            log(f"   scoring {len(jobs)} outputs with score.py ...")
            with ThreadPoolExecutor(2) as pool:
                scores = list(pool.map(lambda j: score(j[0], ddir), jobs))
            for (path, rid), s in zip(jobs, scores):
                if rid == "noisy":
                    ds["noisy"] = s
                else:
                    next(r for r in ds["runs"] if r["id"] == rid)["score"] = s
                    if not args.keep_outputs:
                        Path(path).unlink(missing_ok=True)
        if name == "synthetic-64":
            ds["note"] = f"Recipe {SYN64_RECIPE}, sigma {SYN64_SIGMA:g}, seed {SYN64_SEED}."
        if name == WHOLEBRAIN:
            ds["note"] = "make_phantom.py hardi_snr10, seed 1, --zslices 0 (whole brain)."

    report["wall_s"] = time.perf_counter() - started
    previous = out / "patch2self.json"
    if args.merge and previous.is_file():
        old = json.loads(previous.read_text())
        for ods in old.get("datasets", {}).values():
            ods.setdefault("measured", dict(date=old.get("date"), commit=old.get("commit"),
                                            engine_sha256=old.get("engine_sha256"), command=old.get("command")))
        merged = dict(old.get("datasets", {}))
        merged.update(report["datasets"])
        report["datasets"] = merged
        report["merged_into"] = dict(date=old.get("date"), commit=old.get("commit"), command=old.get("command"))
        for key in ("wholebrain_command", "peak_method", "ours_defaults"):
            report.setdefault(key, old.get(key))
    analyse(report)
    (out / "patch2self.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "patch2self.md").write_text(markdown(report))
    log(f"\nwrote {out / 'patch2self.md'} and {out / 'patch2self.json'} ({report['wall_s']:.0f} s)")
    for t in report["targets"]:
        log(f"  {t['status']:<8} {t['target']}: {t['value']}")
    for name, p in report["negative_policy"].items():
        log(f"  negatives policy {name}: winner {p['winner']}" + (f" (tie: {p['tied']})" if p["tied"] else ""))
    if report.get("negative_policy_overall"):
        log(f"  negatives policy overall: {report['negative_policy_overall']['winner']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
