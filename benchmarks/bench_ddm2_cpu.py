#!/usr/bin/env python3
"""DDM2 on the CPU: scored runs, ablations, sampler comparisons and the timed acceptance run.

    # one DDM2 run (any preset and overrides), scored, with Stage I alone and extra samplers
    python benchmarks/bench_ddm2_cpu.py run --dataset hardi_snr10 --preset cpu --tag cpu-focused \\
        --set stage3_range=focused --samplers "steps=0,eta=1,flips=1" "steps=10,eta=0,flips=1"
    python benchmarks/bench_ddm2_cpu.py run --dataset hardi_snr10 --preset cpu --tag cpu-acq \\
        --set neighbour_order=acquisition
    # the anchors of every dataset: noisy, DIPY mppca/patch2self, MRtrix dwidenoise, ours, the app's default
    python benchmarks/bench_ddm2_cpu.py baselines
    # the acceptance run: the cpu preset through the BIDS App's own code path, timed
    python benchmarks/bench_ddm2_cpu.py accept --dataset hardi_snr10
    # ablations on the accept run's shell: Stage III alone from its Stage I/II, Stage I alone
    python benchmarks/bench_ddm2_cpu.py ablate stage3 --checkpoint ckpt-1796316560 --range full --steps 1500
    python benchmarks/bench_ddm2_cpu.py ablate stage1 --order acquisition
    # every sampler on the Stage III of an accept checkpoint (nothing retrained)
    python benchmarks/bench_ddm2_cpu.py samplers --checkpoint ckpt-1796324457 \\
        --samplers "steps=1,eta=0,flips=4" "steps=10,eta=0,flips=1" "steps=0,eta=1,flips=1"

benchmarks/results/ddm2.md is written by hand from the records (there is no report command yet).

Every run records its wall time, the CPU time of the process (``time.process_time``), the
``os.times`` of the process and its children, ``/proc/loadavg`` before and after, the seconds
of each DDM2 stage, the run-time estimate of the calibrated cost model made just before it
(:func:`bids_denoise.denoise.ddm2.cost.calibrate`, as the app's CPU guard does), and the scores
of the official ``../shared/bench/score.py`` (unchanged, as a subprocess) for the DDM2 output
and for Stage I alone. PyTorch runs with ``--threads`` threads (default 2). Records go to
``benchmarks/data/ddm2/cpu/<dataset>/<tag>.json``; outputs and checkpoints next to them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
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
WORK = HERE / "data" / "ddm2" / "cpu"
DATASETS = ("hardi_snr10", "hardi_snr5", "clinical_snr10")


# ================================================================================= helpers
def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:  # pragma: no cover - not Linux
        return []


class Timer:
    """Wall, process CPU and ``os.times`` of a block, and the load before and after."""

    def __enter__(self):
        self.load_before = loadavg()
        self.wall0, self.cpu0, self.times0 = time.perf_counter(), time.process_time(), os.times()
        return self

    def __exit__(self, *exc):
        times1 = os.times()
        self.record = dict(
            wall_s=round(time.perf_counter() - self.wall0, 2),
            process_cpu_s=round(time.process_time() - self.cpu0, 2),
            os_times=dict(user=round(times1.user - self.times0.user, 2),
                          system=round(times1.system - self.times0.system, 2),
                          children_user=round(times1.children_user - self.times0.children_user, 2),
                          children_system=round(times1.children_system - self.times0.children_system, 2)),
            load_before=self.load_before, load_after=loadavg(),
        )
        return False


def load_dataset(name: str):
    import nibabel as nib

    folder = SHARED / "data" / "synthetic" / name
    img = nib.load(str(folder / "dwi.nii.gz"))
    bvals = np.loadtxt(folder / "dwi.bval").ravel()
    bvecs = np.loadtxt(folder / "dwi.bvec")
    return folder, np.asarray(img.dataobj, dtype=np.float32), bvals, bvecs, img


def save_like(img, data, path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), img.affine, img.header), str(path))
    return path


def score(path, folder: Path) -> dict:
    """The official scorer on a file (or on the noisy input when ``path`` is None)."""
    report = common.official_score(path, folder, SHARED)
    if "error" in report:
        return report
    dti = report.get("dti") or {}
    shells = report.get("shells") or report.get("per_shell") or {}
    return dict(psnr=report["psnr"], ssim=report["ssim"], ssim_dw=report.get("ssim_dw"),
                fa_mae=dti.get("fa_mae"), fa_mae_wm=dti.get("fa_mae_wm"), md_rel_err=dti.get("md_rel_err"),
                shells=shells)


def parse_sets(items) -> dict:
    """``key=value`` pairs (values as Python literals); ``network.width=16`` sets a network field."""
    from bids_denoise.denoise.ddm2.unet import NetworkSettings

    values, network = {}, {}
    for item in items or []:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key.startswith("network."):
            network[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    if network:
        values["network"] = network
    return values, NetworkSettings


def settings_for(preset: str, sets: dict):
    from bids_denoise.denoise.ddm2 import resolve_settings

    sets = dict(sets)
    network = sets.pop("network", None)
    base = resolve_settings(preset, **sets)
    if network:
        base = dataclasses.replace(base, network=dataclasses.replace(base.network, **network))
    return base


def parse_sampler(text: str) -> dict:
    values = dict(part.split("=") for part in text.split(",") if part)
    out = {}
    for key, value in values.items():
        key = {"steps": "sampling_steps"}.get(key, key)
        out[key] = float(value) if key == "eta" else int(value)
    return out


def sampler_label(settings) -> str:
    chain = {0: "full chain", 1: "x0 from t*"}.get(settings.sampling_steps, f"{settings.sampling_steps} strided")
    return f"{chain}, eta {settings.eta:g}, {settings.flips} flip(s)"


# ===================================================================================== run
def run(args) -> int:
    import torch

    from bids_denoise.denoise.ddm2 import ddm2_denoise
    from bids_denoise.denoise.ddm2.cost import calibrate, estimate_runtime

    torch.set_num_threads(args.threads)
    folder, data, bvals, bvecs, img = load_dataset(args.dataset)
    sets, _ = parse_sets(args.set)
    settings = settings_for(args.preset, sets)
    out_dir = WORK / args.dataset / args.tag
    checkpoint = WORK / args.dataset / "ckpt" / (args.checkpoint or args.tag)
    dwi = bvals > 50
    shape = (*data.shape[:3], int(dwi.sum()))
    with Timer() as t_cal:
        calibration = calibrate(settings, *data.shape[:2], device="cpu", n_threads=args.threads)
    estimate = estimate_runtime(shape, settings=settings, device="cpu", calibration=calibration)
    table_estimate = estimate_runtime(shape, settings=settings, device="cpu", n_threads=args.threads)
    print(f"[{args.tag}] estimate {estimate.total:.0f} s (table {table_estimate.total:.0f} s); "
          f"load {loadavg()}", flush=True)
    with Timer() as timer:
        result = ddm2_denoise(data, bvals, bvecs=None if args.no_bvecs else bvecs, settings=settings, device="cpu",
                              seed=args.seed, checkpoint_dir=checkpoint, progress=False, return_stage1=True)
    main_path = save_like(img, result.denoised, out_dir / "ddm2.nii.gz")
    stage1_path = save_like(img, result.stage1, out_dir / "stage1.nii.gz")
    t_star = np.asarray(result.history["t_star"])
    record = dict(
        dataset=args.dataset, tag=args.tag, preset=args.preset, sets={k: str(v) for k, v in sets.items()},
        settings=settings.as_dict(), seed=args.seed, threads=args.threads, checkpoint=str(checkpoint),
        skipped_stages=result.skipped_stages, stage_seconds=result.history["stage_seconds"], timing=timer.record,
        calibration=dict(dataclasses.asdict(calibration), timing=t_cal.record),
        estimate=estimate.as_dict(), table_estimate=table_estimate.as_dict(),
        t_star=dict(min=int(t_star.min()), median=float(np.median(t_star)), max=int(t_star.max())),
        stage3_t_max=result.history.get("stage3_t_max"), neighbour_order=result.history.get("neighbour_order"),
        final_losses=dict(stage1=float(np.mean(result.history["stage1_loss"][-50:])),
                          stage3=float(np.mean(result.history["stage3_loss"][-50:]))),
        sampler=sampler_label(settings), score=score(main_path, folder), stage1_score=score(stage1_path, folder),
        samplers=[],
    )
    print(f"[{args.tag}] {timer.record} DDM2 {record['score'].get('psnr'):.2f} / "
          f"{record['score'].get('fa_mae_wm'):.4f}; Stage I {record['stage1_score'].get('psnr'):.2f} / "
          f"{record['stage1_score'].get('fa_mae_wm'):.4f}", flush=True)
    save_record(record)
    for text in args.samplers or []:
        try:
            variant = dataclasses.replace(settings, **parse_sampler(text))
        except ValueError as error:  # a chain on a Stage III trained on the matched band only
            print(f"[{args.tag}] sampler {text} skipped: {error}", flush=True)
            continue
        with Timer() as t_s:
            other = ddm2_denoise(data, bvals, bvecs=None if args.no_bvecs else bvecs, settings=variant, device="cpu",
                                 seed=args.seed, checkpoint_dir=checkpoint, progress=False)
        path = save_like(img, other.denoised, out_dir / f"sampler-{text.replace(',', '_').replace('=', '')}.nii.gz")
        entry = dict(spec=text, label=sampler_label(variant), inference_s=other.history["stage_seconds"]["inference"],
                     timing=t_s.record, score=score(path, folder))
        record["samplers"].append(entry)
        print(f"[{args.tag}] sampler {entry['label']}: {entry['score'].get('psnr'):.2f} / "
              f"{entry['score'].get('fa_mae_wm'):.4f} in {entry['inference_s']:.0f} s", flush=True)
        save_record(record)
    return 0


def save_record(record: dict) -> None:
    path = WORK / record["dataset"] / f"{record['tag']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


# =============================================================================== baselines
def baselines(args) -> int:
    """The anchors next to DDM2, on the same machine and commit: the noisy input, DIPY 1.12.1
    ``mppca`` and ``patch2self``, MRtrix3 ``dwidenoise``, our MP-PCA and Patch2Self on the whole
    series, and the app's default run (the CLI with no denoising option)."""
    import torch

    torch.set_num_threads(args.threads)
    import bench_defaults
    import bench_quality

    from bids_denoise.denoise.mppca import mppca
    from bids_denoise.denoise.patch2self import patch2self

    for name in args.datasets:
        folder, data, bvals, _, img = load_dataset(name)
        record = dict(dataset=name, tag="baselines", commit=common.git_commit(), machine=common.machine_info(),
                      runs={"noisy": dict(score=score(None, folder))})
        out_dir = _fresh(WORK / name / "baselines")
        methods = {
            "patch2self_ours": lambda: patch2self(data, bvals, patch_radius=1, patch_pooling="radial",
                                                  grouping="all", progress=False),
            "mppca_ours": lambda: mppca(data, patch_radius=2, progress=False).denoised,
        }
        for anchor in bench_quality.ANCHORS:
            why = bench_quality.anchor_available(anchor)
            if why:
                record["runs"][anchor] = dict(skipped=why)
                continue
            methods[anchor] = (lambda a=anchor: bench_quality.run_anchor(a, data, bvals, folder / "dwi.nii.gz",
                                                                         out_dir)[0])
        for method, function in methods.items():
            with Timer() as timer:
                out = function()
            path = save_like(img, out, out_dir / f"{method}.nii.gz")
            record["runs"][method] = dict(timing=timer.record, score=score(path, folder))
        denoised, sidecar, seconds = bench_defaults.run_app(name, args.threads)
        record["runs"]["app_default"] = dict(timing=dict(wall_s=round(seconds, 1)), score=score(denoised, folder),
                                             groups=bench_defaults.group_choices(sidecar))
        for method, run_record in record["runs"].items():
            result = run_record.get("score") or {}
            print(f"{name} {method}: PSNR {result.get('psnr', float('nan')):.2f} WM FA error "
                  f"{result.get('fa_mae_wm', float('nan')):.4f} {run_record.get('skipped', '')}", flush=True)
        path = WORK / name / "baselines.json"
        path.write_text(json.dumps(record, indent=1))
    return 0


# ================================================================================= accept
def accept(args) -> int:
    """The cpu preset on one shell through the app's own code: the CPU guard's calibrated
    estimate, then the DDM2 interface on the shell (as the workflow's MapNode runs it)."""
    import nibabel as nib
    import torch

    from bids_denoise.denoise.ddm2.cost import calibrate, estimate_runtime
    from bids_denoise.denoise.ddm2.settings import resolve_settings
    from bids_denoise.interfaces.ddm2 import DDM2

    torch.set_num_threads(args.threads)
    folder, data, bvals, bvecs, img = load_dataset(args.dataset)
    shell = np.flatnonzero(bvals > 50)
    out_dir = WORK / args.dataset / "accept"
    out_dir.mkdir(parents=True, exist_ok=True)
    shell_file = save_like(img, data[..., shell], out_dir / "shell_dwi.nii.gz")
    np.savetxt(out_dir / "shell_dwi.bval", bvals[shell][None], fmt="%g")
    np.savetxt(out_dir / "shell_dwi.bvec", bvecs[:, shell], fmt="%.8f")
    settings = resolve_settings("cpu")
    shape = (*data.shape[:3], shell.size)
    with Timer() as t_cal:
        calibration = calibrate(settings, *data.shape[:2], device="cpu", n_threads=args.threads)
    estimate = estimate_runtime(shape, settings=settings, device="cpu", calibration=calibration)
    print(f"accept: guard estimate {estimate.total:.0f} s ({t_cal.record['wall_s']} s to calibrate); "
          f"load {loadavg()}", flush=True)
    # a fresh run, unless --checkpoint resumes one (then the stage seconds are the first run's)
    checkpoint = out_dir / (args.checkpoint or f"ckpt-{int(time.time())}")
    node = DDM2(in_file=str(shell_file), bval_file=str(out_dir / "shell_dwi.bval"),
                bvec_file=str(out_dir / "shell_dwi.bvec"), preset="cpu", device="cpu", num_threads=args.threads,
                checkpoint_dir=str(checkpoint), progress=False, save_stage1=True)
    b0 = np.flatnonzero(bvals <= 50)
    cwd = os.getcwd()
    os.chdir(out_dir)
    try:
        with Timer() as timer:  # each node in its own folder: both write denoised_dwi.nii.gz
            outputs = node.run(cwd=str(_fresh(out_dir / "shell"))).outputs
        denoised = data.copy()
        if b0.size:  # the b0 group, as the workflow's next MapNode item (Patch2Self from 2 b0s up)
            b0_file = save_like(img, data[..., b0], out_dir / "b0_dwi.nii.gz")
            np.savetxt(out_dir / "b0_dwi.bval", bvals[b0][None], fmt="%g")
            with Timer() as t_b0:
                b0_out = DDM2(in_file=str(b0_file), bval_file=str(out_dir / "b0_dwi.bval"), preset="cpu",
                              device="cpu", num_threads=args.threads, progress=False).run(
                                  cwd=str(_fresh(out_dir / "b0"))).outputs
            denoised[..., b0] = nib.load(b0_out.out_file).get_fdata(dtype=np.float32)
    finally:
        os.chdir(cwd)
    history = json.loads(Path(outputs.history_file).read_text())
    denoised[..., shell] = nib.load(outputs.out_file).get_fdata(dtype=np.float32)
    stage1 = denoised.copy()
    stage1[..., shell] = nib.load(outputs.stage1_file).get_fdata(dtype=np.float32)
    record = dict(
        dataset=args.dataset, tag="accept", preset="cpu", threads=args.threads, timing=timer.record,
        b0_timing=t_b0.record if b0.size else None,
        stage_seconds=history["stage_seconds"], estimate=estimate.as_dict(),
        calibration=dict(dataclasses.asdict(calibration), timing=t_cal.record),
        note="shell and b0 group each denoised by the DDM2 interface, as the workflow runs them",
        score=score(save_like(img, denoised, out_dir / "ddm2_series.nii.gz"), folder),
        stage1_score=score(save_like(img, stage1, out_dir / "stage1_series.nii.gz"), folder),
        noisy_score=score(None, folder),
    )
    record["resumed_from"] = args.checkpoint
    record["stage_seconds_total"] = round(sum(float(v) for v in history["stage_seconds"].values()), 1)
    save_record(record)
    gain = record["score"]["psnr"] - record["noisy_score"]["psnr"]
    print(f"accept: {timer.record}; stages {record['stage_seconds_total']} s; PSNR {record['score']['psnr']:.2f} dB "
          f"(+{gain:.2f} over noisy), WM FA error {record['score']['fa_mae_wm']:.4f}; estimate/stages "
          f"{estimate.total / record['stage_seconds_total']:.2f}", flush=True)
    return 0


# ================================================================================= ablate
def _accept_shell(args):
    """The accept run's shell (data, b-vectors, image, normalisation) and the full noisy series
    with the accept run's b0 output in place (the shell is filled in by the caller)."""
    import nibabel as nib

    from bids_denoise.denoise.ddm2.data import normalise, to_slices, volume_scales
    from bids_denoise.denoise.ddm2.settings import resolve_settings

    accept_dir = WORK / args.dataset / "accept"
    if not (accept_dir / "shell_dwi.nii.gz").is_file() or not (accept_dir / "b0" / "denoised_dwi.nii.gz").is_file():
        raise SystemExit(f"{accept_dir}: run `accept --dataset {args.dataset}` first (its shell and b0 output)")
    img = nib.load(str(accept_dir / "shell_dwi.nii.gz"))
    shell = img.get_fdata(dtype=np.float32)
    bvecs = np.loadtxt(accept_dir / "shell_dwi.bvec")
    scales = volume_scales(shell, percentile=resolve_settings("cpu").scale_percentile)
    folder, data, bvals, _, full_img = load_dataset(args.dataset)
    series = data.copy()
    series[..., bvals <= 50] = nib.load(str(accept_dir / "b0" / "denoised_dwi.nii.gz")).get_fdata(dtype=np.float32)
    volumes = to_slices(normalise(shell, scales))
    return accept_dir, folder, shell, bvecs, scales, volumes, series, bvals, full_img


def _data_clip(volumes) -> tuple[float, float]:
    """The x0 clamp of a shell's normalised slices, as the pipeline sets it."""
    return min(-1.0, float(volumes.min())), max(1.0, float(volumes.max()))


def _score_shell(estimate, series, bvals, scales, img, folder: Path, path: Path) -> dict:
    """Put a shell estimate (normalised slices) into the series, save it and score it."""
    from bids_denoise.denoise.ddm2.data import denormalise, from_slices

    series[..., bvals > 50] = denormalise(from_slices(estimate.numpy()), scales)
    return score(save_like(img, series, path), folder)


def _summary(report: dict) -> str:
    shells = report.get("shells") or {}
    dwi_psnr = next((v["psnr"] for k, v in shells.items() if k != "0"), float("nan"))
    return (f"PSNR {report['psnr']:.2f} (DWIs {dwi_psnr:.2f}) SSIM {report['ssim']:.4f} "
            f"WM FA error {report['fa_mae_wm']:.4f}")


def ablate(args) -> int:
    """One ablation on the accept run's shell, scored like the accept run (b0s from its b0 node).

    ``stage3``: Stage III alone, trained from the Stage I/II of an accept checkpoint with the
    ``cpu`` preset except ``--range`` and ``--steps``, then one x0 step from t* (4 flips).
    ``stage1``: Stage I alone with the ``cpu`` preset and ``--order`` (the Stage-I estimate is
    the output).
    """
    import torch

    from bids_denoise.denoise.ddm2.checkpoints import CheckpointStore
    from bids_denoise.denoise.ddm2.data import direction_features, neighbour_indices
    from bids_denoise.denoise.ddm2.pipeline import _new_network
    from bids_denoise.denoise.ddm2.sampling import denoise_slices
    from bids_denoise.denoise.ddm2.settings import resolve_settings
    from bids_denoise.denoise.ddm2.stages import GroupTensors, run_stage1, run_stage3, stage1_estimates

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    accept_dir, folder, shell, bvecs, scales, volumes, series, bvals, img = _accept_shell(args)
    volumes = torch.from_numpy(volumes)
    if args.what == "stage3":
        steps = args.steps or 1500
        settings = resolve_settings("cpu", stage3_range=args.range, stage3_steps=steps)
        tag = f"stage3-{args.range}-{steps}"
        stage2 = torch.load(accept_dir / args.checkpoint / "stage2.pt", weights_only=True)
        x_hat, t_star = stage2["x_hat"], stage2["t_star"]
        schedule = settings.noise_schedule()
        model = _new_network(1, settings, level_input=True, seed=args.seed + 1, device=cpu)  # as the pipeline
        group = GroupTensors(volumes, torch.zeros(1, dtype=torch.long), None)
        with Timer() as timer:
            run_stage3(model, group, x_hat, t_star, settings, schedule, seed=args.seed, device=cpu,
                       store=CheckpointStore(None), fingerprint=tag, progress=False)
        n, z, h, w = volumes.shape
        out = denoise_slices(model, volumes.reshape(n * z, h, w), t_star.reshape(-1), schedule, sampling_steps=1,
                             eta=0.0, flips=settings.flips, batch_size=settings.inference_batch_size,
                             progress=False, clip=_data_clip(volumes)).reshape(n, z, h, w)
    else:
        overrides = {} if args.neighbours is None else {"n_neighbours": args.neighbours}
        if args.steps:
            overrides["stage1_steps"] = args.steps
        settings = resolve_settings("cpu", neighbour_order=args.order, direction_input=args.direction_input,
                                    **overrides)
        tag = (f"stage1-{args.order}" + ("" if args.neighbours is None else f"-n{args.neighbours}")
               + ("-dirinput" if args.direction_input else "") + (f"-{args.steps}" if args.steps else ""))
        table = neighbour_indices(shell.shape[3], settings.n_neighbours,
                                  bvecs=bvecs if args.order == "direction" else None)
        features = torch.from_numpy(direction_features(bvecs, table)) if args.direction_input else None
        group = GroupTensors(volumes, torch.from_numpy(table), features)
        model = _new_network(settings.n_neighbours, settings, level_input=False, seed=args.seed, device=cpu,
                             condition_dim=0 if features is None else features.shape[1])
        with Timer() as timer:
            run_stage1(model, group, settings, seed=args.seed, device=cpu, store=CheckpointStore(None),
                       fingerprint=tag, progress=False)
        out = stage1_estimates(model, group, batch_size=settings.inference_batch_size)
    report = _score_shell(out, series, bvals, scales, img, folder, WORK / args.dataset / "ablate" / f"{tag}.nii.gz")
    record = dict(dataset=args.dataset, tag=f"ablate/{tag}", settings=settings.as_dict(), seed=args.seed,
                  threads=args.threads, checkpoint=getattr(args, "checkpoint", None), training=timer.record,
                  score=report)
    save_record(record)
    print(f"[{tag}] {_summary(report)}; training {timer.record['wall_s']:.0f} s", flush=True)
    return 0


# =============================================================================== samplers
def samplers(args) -> int:
    """Every sampler on one trained Stage III: an accept checkpoint's Stage II (x_hat, t*) and
    Stage III network, read as they are (nothing is retrained), then each ``--samplers`` spec on the
    accept run's shell, scored like the accept run (b0s from its b0 node)."""
    import torch

    from bids_denoise.denoise.ddm2.checkpoints import CheckpointStore
    from bids_denoise.denoise.ddm2.data import neighbour_indices
    from bids_denoise.denoise.ddm2.pipeline import _new_network, data_digest, stage_fingerprints
    from bids_denoise.denoise.ddm2.sampling import denoise_slices
    from bids_denoise.denoise.ddm2.settings import resolve_settings

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    accept_dir, folder, shell, bvecs, scales, volumes, series, bvals, img = _accept_shell(args)
    settings = resolve_settings("cpu")
    ckpt = accept_dir / args.checkpoint
    table = neighbour_indices(shell.shape[3], settings.n_neighbours, bvecs=bvecs)
    expected = stage_fingerprints(data_digest(shell), settings, args.seed, table)
    store = CheckpointStore(ckpt)
    stage2, stage3 = store.load("stage2", expected["stage2"]), store.load("stage3", expected["stage3"])
    if not (stage2 and stage2.get("complete") and stage3 and stage3.get("complete")):
        raise SystemExit(f"{ckpt}: no complete Stage II and III of the committed cpu preset on this shell")
    model = _new_network(1, settings, level_input=True, seed=args.seed + 1, device=cpu)
    model.load_state_dict(stage3["model"])
    t_star = stage2["t_star"]
    volumes = torch.from_numpy(volumes)
    n, z, h, w = volumes.shape
    clip = _data_clip(volumes)
    schedule = settings.noise_schedule()
    record = dict(dataset=args.dataset, tag="samplers", checkpoint=args.checkpoint, seed=args.seed,
                  threads=args.threads, stage3_range=settings.stage3_range, stage3_steps=settings.stage3_steps,
                  t_star=dict(min=int(t_star.min()), max=int(t_star.max())), runs=[])
    for text in args.samplers:
        spec = parse_sampler(text)
        variant = dataclasses.replace(settings, **spec)
        with Timer() as timer:
            out = denoise_slices(model, volumes.reshape(n * z, h, w), t_star.reshape(-1), schedule,
                                 sampling_steps=variant.sampling_steps, eta=variant.eta, flips=variant.flips,
                                 batch_size=settings.inference_batch_size, seed=args.seed, progress=False,
                                 clip=clip).reshape(n, z, h, w)
        name = text.replace(",", "_").replace("=", "")
        report = _score_shell(out, series, bvals, scales, img, folder,
                              WORK / args.dataset / "samplers" / f"{name}.nii.gz")
        entry = dict(spec=text, label=sampler_label(variant), timing=timer.record, score=report)
        record["runs"].append(entry)
        save_record(record)
        print(f"[{entry['label']}] {_summary(report)}; {timer.record['wall_s']:.0f} s", flush=True)
    return 0


# ================================================================================= fa-bias
def fa_bias(args) -> int:
    """The signed white-matter FA bias, mean(FA - FA_gt) over FA_gt > 0.4, of each file (``noisy``
    for the input). score.py reports the bias over the whole mask and only the absolute error in
    white matter; its own DTI fit (``dti_fa_md``) and voxel selection are used here unchanged, so
    the two agree: the mean of |FA - FA_gt| printed next to the bias is score.py's fa_mae_wm."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.spec_from_file_location("official_score", SHARED / "bench" / "score.py")
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    folder = SHARED / "data" / "synthetic" / args.dataset
    gt, mask, bval, bvec, _ = official.load_dataset(folder)
    g = gt[mask]
    peak = float(np.percentile(g, 99.9))
    floor = 1e-3 * peak
    b0 = official.shell_of(bval) == 0
    keep = (g[:, b0].mean(1) if b0.any() else g.max(1)) >= 0.02 * peak
    fa_g, _ = official.dti_fa_md(g[keep], bval, bvec, floor)
    wm = fa_g > 0.4
    for name in args.files:
        path = folder / "dwi.nii.gz" if name == "noisy" else Path(name)
        d = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)[mask]
        fa_d, _ = official.dti_fa_md(d[keep], bval, bvec, floor)
        diff = (fa_d - fa_g)[wm]
        print(f"{name}: WM FA bias {diff.mean():+.4f}, WM FA error {np.abs(diff).mean():.4f}, "
              f"WM FA {fa_d[wm].mean():.4f} (truth {fa_g[wm].mean():.4f}), {int(wm.sum())} voxels", flush=True)
    return 0


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--dataset", choices=DATASETS, default="hardi_snr10")
    p_run.add_argument("--preset", default="cpu")
    p_run.add_argument("--tag", required=True)
    p_run.add_argument("--checkpoint", help="checkpoint folder name (default: the tag); share it to reuse stages")
    p_run.add_argument("--set", nargs="*", help="settings overrides key=value (network.width=24, ...)")
    p_run.add_argument("--samplers", nargs="*", help="extra samplers on the same model: steps=N,eta=E,flips=F")
    p_run.add_argument("--no-bvecs", action="store_true", help="do not pass the b-vectors")
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--threads", type=int, default=2)
    p_base = sub.add_parser("baselines")
    p_base.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p_base.add_argument("--threads", type=int, default=2)
    p_acc = sub.add_parser("accept")
    p_acc.add_argument("--dataset", choices=DATASETS, default="hardi_snr10")
    p_acc.add_argument("--threads", type=int, default=2)
    p_acc.add_argument("--checkpoint", help="resume this checkpoint folder of an earlier accept run (its stages "
                                            "are not rerun; their recorded seconds are reported)")
    p_abl = sub.add_parser("ablate", help="Stage III or Stage I alone on the accept run's shell")
    p_abl.add_argument("what", choices=("stage3", "stage1"))
    p_abl.add_argument("--dataset", choices=DATASETS, default="hardi_snr10")
    p_abl.add_argument("--checkpoint", help="stage3: the accept checkpoint folder whose Stage I/II to use")
    p_abl.add_argument("--range", default="matched", help="stage3: matched, focused or full")
    p_abl.add_argument("--steps", type=int, help="training steps of the stage (default: stage3 1500, stage1 the "
                                                 "preset's)")
    p_abl.add_argument("--order", default="acquisition", help="stage1: acquisition or direction")
    p_abl.add_argument("--neighbours", type=int, help="stage1: input volumes per target (default: the preset's)")
    p_abl.add_argument("--direction-input", action="store_true",
                       help="stage1: also give the network the gradient directions (direction_input)")
    p_abl.add_argument("--seed", type=int, default=0)
    p_abl.add_argument("--threads", type=int, default=2)
    p_smp = sub.add_parser("samplers", help="every sampler on one trained Stage III of an accept checkpoint")
    p_smp.add_argument("--dataset", choices=DATASETS, default="hardi_snr10")
    p_smp.add_argument("--checkpoint", required=True, help="the accept checkpoint folder (Stage II and III read)")
    p_smp.add_argument("--samplers", nargs="+", required=True, help="specs steps=N,eta=E,flips=F (steps 0: "
                                                                    "full chain, 1: x0 from t*)")
    p_smp.add_argument("--seed", type=int, default=0)
    p_smp.add_argument("--threads", type=int, default=2)
    p_fa = sub.add_parser("fa-bias", help="signed white-matter FA bias of outputs (score.py's own DTI fit)")
    p_fa.add_argument("--dataset", choices=DATASETS, default="hardi_snr10")
    p_fa.add_argument("files", nargs="+", help="denoised series, or 'noisy'")
    args = parser.parse_args(argv)
    if args.command == "ablate" and args.what == "stage3" and not args.checkpoint:
        parser.error("ablate stage3 needs --checkpoint (an accept run's checkpoint folder)")
    return {"run": run, "baselines": baselines, "accept": accept, "ablate": ablate,
            "samplers": samplers, "fa-bias": fa_bias}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
