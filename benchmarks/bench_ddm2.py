#!/usr/bin/env python3
"""Benchmark bids_denoise's DDM2 (presets fast / paper) next to our Patch2Self, on a CUDA GPU.

    python benchmarks/bench_ddm2.py                                   # fast, every dataset
    python benchmarks/bench_ddm2.py --presets fast paper --datasets hardi_snr10
    python benchmarks/bench_ddm2.py --presets fast --stage3-steps 5000 --time-budget 540

Datasets: ``hardi_snr10``, ``hardi_snr5`` and ``clinical_snr10`` from
``shared/data/synthetic/`` (73x100x5; b0s + one shell) and ``wholebrain``: the make_phantom
whole-brain ``hardi_snr10`` (73x100x60x66) when ``benchmarks/data/wholebrain/hardi_snr10`` exists
(see benchmarks/README.md), else ``synthetic-96``, the reference recipe of
``benchmarks/common.synthetic_dwi`` at 96x96x60 with 6 b0 + 60 b=1000 and Rician sigma 40 (the
size of the cost notes in shared/reference/ddm2.md), generated deterministically on the spot.

Every shell is denoised by :func:`bids_denoise.denoise.ddm2.ddm2_denoise` exactly as the BIDS
App does (one model per shell; b0s with Patch2Self), and by our Patch2Self (radius 0, the app's
default). Outputs are scored with the official ``shared/bench/score.py`` (unchanged, as a
subprocess). Recorded per run: the time of each stage (summed over shells, and over resumed
sessions), the total, ``torch.cuda.max_memory_allocated`` (peak over the run), PSNR, SSIM, FA
MAE (all and WM) and MD relative error. Results: ``<out>/ddm2.md`` and ``<out>/ddm2.json``.

Resuming: stage checkpoints live in ``benchmarks/data/ddm2/ckpt/<dataset>/<preset>/<shell>`` and
finished runs in ``benchmarks/data/ddm2/state.json``; rerunning the same command continues where
it stopped. ``--time-budget S`` stops cleanly (right after a checkpoint) once S seconds have
passed and still writes the report of what is finished (exit status 3 = unfinished).

How to run it through the device tool (one H100, commands of at most 10 minutes, 30 minutes of
device time per session; the machine has PyTorch but neither nibabel nor ../shared):

1. Here, once, put what the machine needs into a git-ignored folder of the repository::

       mkdir -p .bench_carry/shared/bench .bench_carry/shared/data/synthetic .bench_carry/pylib
       cp ../shared/bench/score.py .bench_carry/shared/bench/
       cp -r ../shared/data/synthetic/{hardi_snr10,hardi_snr5,clinical_snr10} .bench_carry/shared/data/synthetic/
       cp -r .venv/lib/python3.11/site-packages/nibabel .bench_carry/pylib/   # pure Python
       echo /.bench_carry/ >> .git/info/exclude

   (about 10 MB; the whole-brain make_phantom set is 53 MB and does not fit the 64 MiB carry
   limit together with the rest, so on the device ``wholebrain`` is ``synthetic-96``).

2. ``run`` with ``carry=[".bench_carry"]``, ``timeout_s=600`` and the command::

       export BIDS_DENOISE_SHARED=.bench_carry/shared PYTHONPATH=.:.bench_carry/pylib;
       python3 -m pytest -q -p no:cacheprovider -m gpu tests/denoise/ddm2/test_pipeline.py &&
       python3 benchmarks/bench_ddm2.py --presets fast --datasets hardi_snr10 clinical_snr10 \\
           --stage3-steps 6000 --time-budget 480 --out $OUT

   then the same with ``--datasets hardi_snr5 wholebrain`` (each command resumes from the
   checkpoints in ``benchmarks/data/ddm2``, which stay on the machine while it is warm, i.e. for
   30 s after a call). The report comes back in ``$OUT/ddm2.md``; copy it to
   ``benchmarks/results/ddm2.md``.

3. The full ``fast`` preset (20,000 Stage-III steps, about 25 min per 96x96x60 shell) and the
   ``paper`` preset (about 2.5 h per shell) do not fit a 30-minute lease: run them on a GPU node
   (e.g. ``sbatch`` with ``python benchmarks/bench_ddm2.py --presets fast paper``) with the dev
   venv, where ../shared and nibabel are available.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import common  # noqa: E402

SHARED = Path(os.environ.get("BIDS_DENOISE_SHARED", REPO.parent / "shared"))
WORK = HERE / "data" / "ddm2"
SYNTH_SETS = ("hardi_snr10", "hardi_snr5", "clinical_snr10")
DATASETS = (*SYNTH_SETS, "wholebrain")
MAKE_PHANTOM_WHOLEBRAIN = HERE / "data" / "wholebrain" / "hardi_snr10"
SYNTH96_SHAPE = (96, 96, 60)
SYNTH96_BVALS = np.array([0.0] * 6 + [1000.0] * 60)
SYNTH96_SIGMA = 40.0
EXIT_UNFINISHED = 3


class OutOfTime(Exception):
    """Raised from the DDM2 callback right after a checkpoint once the time budget is spent."""


# ================================================================================== datasets
def dataset_dir(name: str, device) -> tuple[Path, str]:
    """The folder of a dataset (make_phantom layout) and a note on where it came from."""
    if name in SYNTH_SETS:
        folder = SHARED / "data" / "synthetic" / name
        if not (folder / "dwi.nii.gz").is_file():
            raise SystemExit(f"dataset {name} not found at {folder} (set BIDS_DENOISE_SHARED)")
        return folder, f"shared/data/synthetic/{name}"
    if name != "wholebrain":
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if (MAKE_PHANTOM_WHOLEBRAIN / "gt.nii.gz").is_file():
        return MAKE_PHANTOM_WHOLEBRAIN, "make_phantom.py hardi_snr10 --seed 1 --zslices 0 (whole brain)"
    folder = WORK / "synthetic-96"
    if not (folder / "gt.nii.gz").is_file():
        noisy, gt, mask, bvecs = common.synthetic_dwi(SYNTH96_SHAPE, SYNTH96_BVALS, sigma=SYNTH96_SIGMA, seed=0,
                                                      device=device)
        common.save_dataset(folder, noisy.cpu().numpy(), gt.cpu().numpy(), mask.cpu().numpy(), SYNTH96_BVALS,
                            bvecs, dict(recipe="common.synthetic_dwi", shape=[*SYNTH96_SHAPE, SYNTH96_BVALS.size],
                                        sigma=SYNTH96_SIGMA, seed=0))
    return folder, "synthetic-96: common.synthetic_dwi 96x96x60, 6 b0 + 60 b=1000, Rician sigma 40, seed 0"


def load(folder: Path):
    import nibabel as nib

    img = nib.load(str(folder / "dwi.nii.gz"))
    bvals = np.loadtxt(folder / "dwi.bval").ravel()
    return np.asarray(img.dataobj, dtype=np.float32), bvals, img


def save_like(img, data, path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine, img.header), str(path))
    return path


# ===================================================================================== runs
def run_ddm2(data, bvals, preset, overrides, *, device, seed, checkpoint_root: Path, deadline):
    """DDM2 on every group of the series, as the app does. Returns (denoised, record)."""
    import torch

    from bids_denoise.denoise.ddm2 import ddm2_denoise, resolve_settings
    from bids_denoise.denoise.shells import group_volumes

    settings = resolve_settings(preset, **overrides)

    def callback(stage, step):
        if deadline is not None and time.monotonic() > deadline and stage in ("stage1", "stage3") \
                and step % settings.checkpoint_every == 0:
            raise OutOfTime(f"{stage} step {step}")

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    denoised = data.copy()
    seconds = {"stage1": 0.0, "stage2": 0.0, "stage3": 0.0, "inference": 0.0, "b0_patch2self": 0.0}
    t_star = []
    for group in group_volumes(bvals):
        index = list(group.indices)
        part_started = time.perf_counter()
        result = ddm2_denoise(data[..., index], bvals[index], settings=settings, device=device, seed=seed,
                              checkpoint_dir=None if group.is_b0 else checkpoint_root / group.label,
                              progress=False, callback=callback)
        denoised[..., index] = result.denoised
        if group.is_b0:
            seconds["b0_patch2self"] += time.perf_counter() - part_started
        else:
            for stage, value in result.history["stage_seconds"].items():
                seconds[stage] += value
            t_star += [t for volume in result.history["t_star"] for t in volume]
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    record = dict(
        preset=preset, steps=settings.steps, flips=settings.flips, batch_size=settings.batch_size,
        precision=settings.precision, compile=settings.compile, overrides=overrides,
        stage_seconds={k: round(v, 2) for k, v in seconds.items()},
        total_seconds=round(sum(seconds.values()), 2), session_wall_seconds=round(time.perf_counter() - started, 2),
        peak_gpu_mib=None if peak is None else round(peak, 1),
        t_star=dict(min=int(min(t_star)), median=float(np.median(t_star)), max=int(max(t_star))) if t_star else None,
    )
    return denoised, record


def run_patch2self(data, bvals, *, device):
    import torch

    from bids_denoise.denoise.patch2self import patch2self

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    denoised = patch2self(data, bvals, device=device, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return denoised, dict(total_seconds=round(time.perf_counter() - started, 3))


def score(path, folder: Path) -> dict:
    """shared/bench/score.py (unchanged) on a denoised file, or on the noisy input (path None)."""
    report = common.official_score(path, folder, SHARED)
    if "error" in report:
        return report
    dti = report.get("dti") or {}
    return dict(psnr=report["psnr"], rmse=report["rmse"], ssim=report["ssim"], ssim_dw=report.get("ssim_dw"),
                fa_mae=dti.get("fa_mae"), fa_mae_wm=dti.get("fa_mae_wm"), md_rel_err=dti.get("md_rel_err"))


# =================================================================================== report
def _f(value, fmt="{:.2f}"):
    return "-" if value is None else fmt.format(value)


def markdown(state: dict, machine: dict, commit: str) -> str:
    lines = ["# DDM2 benchmark", ""]
    lines.append(f"- Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; commit {commit}.")
    gpu = machine.get("gpu") or "none (CPU only: DDM2 timings are not meaningful)"
    lines.append(f"- Machine: {machine.get('cpu_model')} ({machine.get('cpu_usable')} cores), GPU: {gpu}.")
    lines.append("- Scores: official shared/bench/score.py inside the brain mask (PSNR peak = 99.9th percentile of "
                 "gt; SSIM over all volumes; FA MAE over the mask and in WM (FA_gt > 0.4); MD relative error).")
    lines.append("- DDM2: one model per shell, b0s with Patch2Self, as the BIDS App; stage times are summed over "
                 "shells and over resumed sessions; peak GPU = torch.cuda.max_memory_allocated of the last session.")
    lines.append("")
    for name, dataset in state.get("datasets", {}).items():
        lines += [f"## {name}", "", f"{dataset.get('note', '')}; shape {dataset.get('shape')}.", ""]
        lines.append("| method | steps (I / III / sampling) | stage I s | stage II s | stage III s | inference s | "
                     "total s | peak GPU MiB | PSNR | SSIM | FA MAE | FA MAE WM | MD rel err |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key, run in dataset.get("runs", {}).items():
            s = run.get("score", {})
            if run.get("method") == "ddm2":
                t = run["stage_seconds"]
                steps = run["steps"]
                label = f"DDM2 {run['preset']}" + (" (unfinished)" if run.get("unfinished") else "")
                row = [label, f"{steps['stage1']} / {steps['stage3']} / {steps['sampling'] or 'full'}",
                       _f(t["stage1"], "{:.1f}"), _f(t["stage2"], "{:.1f}"), _f(t["stage3"], "{:.1f}"),
                       _f(t["inference"], "{:.1f}"), _f(run["total_seconds"], "{:.1f}"),
                       _f(run.get("peak_gpu_mib"), "{:.0f}")]
            else:
                label = {"noisy": "noisy input", "patch2self": "Patch2Self (ours, r=0)"}.get(run.get("method"), key)
                row = [label, "", "", "", "", "", _f(run.get("total_seconds"), "{:.2f}"), ""]
            row += [_f(s.get("psnr")), _f(s.get("ssim"), "{:.4f}"), _f(s.get("fa_mae"), "{:.4f}"),
                    _f(s.get("fa_mae_wm"), "{:.4f}"), _f(s.get("md_rel_err"), "{:.4f}")]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ===================================================================================== main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--presets", nargs="+", default=["fast"], choices=("fast", "paper", "smoke"))
    parser.add_argument("--stage1-steps", type=int)
    parser.add_argument("--stage3-steps", type=int)
    parser.add_argument("--sampling-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--flips", type=int, choices=(1, 2, 4))
    parser.add_argument("--precision", choices=("fp32", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-budget", type=float, help="stop cleanly after this many seconds (resumable)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where ddm2.md/.json go")
    parser.add_argument("--fresh", action="store_true", help="forget finished runs and checkpoints")
    args = parser.parse_args(argv)

    import torch

    from bids_denoise.denoise.patch2self import resolve_device

    device = resolve_device(args.device)
    if device.type != "cuda" and "smoke" not in args.presets:
        print("bench_ddm2: no CUDA device; fast/paper would take days on the CPU. Use a GPU machine "
              "(see the docstring) or --presets smoke.", file=sys.stderr)
        return 2
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    overrides = {k: v for k, v in dict(stage1_steps=args.stage1_steps, stage3_steps=args.stage3_steps,
                                       sampling_steps=args.sampling_steps, batch_size=args.batch_size,
                                       flips=args.flips, precision=args.precision).items() if v is not None}
    state_file = WORK / "state.json"
    if args.fresh and WORK.exists():
        import shutil

        shutil.rmtree(WORK)
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"datasets": {}}
    unfinished = False

    def save_state():
        WORK.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=1))

    for name in args.datasets:
        folder, note = dataset_dir(name, device)
        data, bvals, img = load(folder)
        dataset = state["datasets"].setdefault(name, {"runs": {}})
        dataset.update(note=note, shape=list(data.shape))
        runs = dataset["runs"]
        if "noisy" not in runs:
            runs["noisy"] = dict(method="noisy", score=score(None, folder))
        if "patch2self" not in runs:
            denoised, record = run_patch2self(data, bvals, device=device)
            path = save_like(img, denoised, WORK / "out" / name / "patch2self.nii.gz")
            runs["patch2self"] = dict(method="patch2self", **record, score=score(path, folder))
        save_state()
        for preset in args.presets:
            key = f"ddm2-{preset}" + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
            if key in runs and not runs[key].get("unfinished"):
                continue
            print(f"bench_ddm2: {name} {key} ...", flush=True)
            try:
                denoised, record = run_ddm2(data, bvals, preset, overrides, device=device, seed=args.seed,
                                            checkpoint_root=WORK / "ckpt" / name / key, deadline=deadline)
            except OutOfTime as stop:
                print(f"bench_ddm2: time budget spent at {stop}; rerun the same command to resume.", flush=True)
                runs[key] = dict(method="ddm2", preset=preset, unfinished=True, stopped_at=str(stop))
                save_state()
                unfinished = True
                break
            path = save_like(img, denoised, WORK / "out" / name / f"{key}.nii.gz")
            runs[key] = dict(method="ddm2", **record, score=score(path, folder))
            save_state()
        if unfinished:
            break

    args.out.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info()
    commit = common.git_commit()
    finished = {name: {**ds, "runs": {k: r for k, r in ds["runs"].items() if not r.get("unfinished")}}
                for name, ds in state["datasets"].items()}
    (args.out / "ddm2.json").write_text(json.dumps(dict(machine=machine, commit=commit,
                                                        torch=torch.__version__, datasets=state["datasets"]),
                                                   indent=1))
    (args.out / "ddm2.md").write_text(markdown({"datasets": finished}, machine, commit))
    print(f"bench_ddm2: report written to {args.out / 'ddm2.md'}")
    return EXIT_UNFINISHED if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
