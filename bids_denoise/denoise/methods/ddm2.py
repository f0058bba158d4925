"""DDM2 in the registry: its options, cost models and methods sentence.

The preset table lives with the engine (:mod:`bids_denoise.denoise.ddm2.settings`), which loads
PyTorch; this module imports it only inside the functions that need resolved values.
"""

from __future__ import annotations

import logging

from bids_denoise.denoise.methods.base import Method, Option

LOGGER = logging.getLogger(__name__)

PRESETS = ("paper", "fast", "cpu", "smoke")
#: Presets the CPU guard lets run on the CPU without --force.
CPU_PRESETS = ("cpu", "smoke")
PRECISIONS = ("fp32", "bf16")
FLIP_COUNTS = (1, 2, 4)
NEIGHBOUR_ORDERS = ("direction", "acquisition")
STAGE3_RANGES = ("matched", "focused", "full")
_PRESET = "the preset's"

OPTIONS = (
    Option(
        "ddm2_preset", "--ddm2-preset", kind="choice", choices=PRESETS, default="fast", interface="preset",
        default_help="fast (the practical GPU choice; cpu on a CPU; paper to reproduce the publication)",
        help="Step counts and network size. 'paper': the publication (Stage I 10,000 steps from the 2 "
        "neighbouring volumes in acquisition order, Stage III 100,000 steps over the whole schedule, batch "
        "32, full reverse chain with 4 flips; about 2-3 GPU-hours per shell of 64 volumes of 96x96x60 on an "
        "H100). 'fast': the same network, Stage I 3,000 steps from the 4 nearest gradient directions, Stage "
        "III 20,000 steps on the noise levels up to the matched ones, one x0 prediction from t* averaged over 4 flips, "
        "bf16 and torch.compile (estimated at about 30 min per such shell). 'cpu': a width-16 network and short "
        "training for a few CPU cores (10-21 min measured for a 73x100x5 shell of 60 volumes on 2 cores; on "
        "such 60-direction phantoms it lowered white-matter FA, with 6 directions it kept FA best of all "
        "methods: see benchmarks/results/ddm2.md). 'smoke': a tiny network and "
        "tens of steps, to test an installation (no useful denoising).",
    ),
    Option(
        "ddm2_neighbours", "--ddm2-neighbours", kind="int", minimum=1, metavar="N", interface="n_neighbours",
        default_help=f"{_PRESET} (paper and smoke 2, fast and cpu 4)",
        help="Input volumes of the Stage-I network (each volume is predicted from N others).",
    ),
    Option(
        "ddm2_neighbour_order", "--ddm2-neighbour-order", kind="choice", choices=NEIGHBOUR_ORDERS,
        interface="neighbour_order", default_help=f"{_PRESET} (paper acquisition, the others direction)",
        help="How the Stage-I input volumes are chosen: 'direction', the nearest gradient directions "
        "(needs the .bvec file); 'acquisition', the neighbours in acquisition order, as the paper.",
    ),
    Option(
        "ddm2_stage3_range", "--ddm2-stage3-range", kind="choice", choices=STAGE3_RANGES,
        interface="stage3_range", default_help=f"{_PRESET} (paper full, the others focused)",
        help="Noise levels Stage III trains on: 'matched', only the band of the slices' matched noise "
        "levels (0.9 to 1.1 times), the only levels a one-step sampler visits (needs "
        "--ddm2-sampling-steps 1); 'focused', every level up to 1.1 times the largest matched one (the "
        "states a reverse chain visits); 'full', the whole schedule, as the paper.",
    ),
    Option(
        "ddm2_stage1_steps", "--ddm2-stage1-steps", kind="int", minimum=1, metavar="N",
        interface="stage1_steps", default_help=f"{_PRESET} (paper 10000, fast 3000, cpu 1200, smoke 30)",
        help="Training steps of Stage I (the noise model).",
    ),
    Option(
        "ddm2_stage3_steps", "--ddm2-stage3-steps", kind="int", minimum=1, metavar="N",
        interface="stage3_steps", default_help=f"{_PRESET} (paper 100000, fast 20000, cpu 1500, smoke 40)",
        help="Training steps of Stage III (the diffusion denoiser).",
    ),
    Option(
        "ddm2_sampling_steps", "--ddm2-sampling-steps", kind="int", minimum=0, metavar="N",
        interface="sampling_steps", default_help=f"{_PRESET} (paper 0, the others 1)",
        help="Reverse diffusion steps per slice: 0 runs the full chain from the slice's matched step t* "
        "(t* steps, typically 10-450, with sampling noise, as in the paper); 1 predicts the clean slice "
        "from t* in one step; N > 1 takes at most N evenly strided deterministic steps.",
    ),
    Option(
        "ddm2_batch_size", "--ddm2-batch-size", kind="int", minimum=1, metavar="N", interface="batch_size",
        default_help=f"{_PRESET} (paper and fast 32, cpu 8, smoke 4)",
        help="Training batch of Stages I and III, in slices.",
    ),
    Option(
        "ddm2_inference_batch_size", "--ddm2-inference-batch-size", kind="int", minimum=1, metavar="N",
        interface="inference_batch_size", default_help=f"{_PRESET} (paper 64, fast 256, cpu 32, smoke 16)",
        help="Slices denoised together, each at its own noise level (GPU memory grows with it).",
    ),
    Option(
        "ddm2_flips", "--ddm2-flips", kind="int", choices=FLIP_COUNTS, minimum=1, interface="flips",
        default_help=f"{_PRESET} (smoke 2, the others 4)",
        help="Flipped copies of each slice averaged at every reverse step (1: none; 2: plus a vertical "
        "flip; 4: all four flips, as in the paper); cost grows in proportion.",
    ),
    Option(
        "ddm2_precision", "--ddm2-precision", kind="choice", choices=PRECISIONS, interface="precision",
        default_help=f"{_PRESET} (fast bf16, the others fp32)",
        help="fp32 (TF32 tensor cores on CUDA) or bf16 autocast (faster on recent GPUs, slightly "
        "different numbers).",
    ),
    Option(
        "ddm2_save_model", "--ddm2-save-model", kind="switch", default=False, interface="save_model",
        help="Also write the trained networks of every shell to the derivatives "
        "(<source>_desc-ddm2_model.pt, a PyTorch file).",
    ),
    Option(
        "seed", "--seed", kind="int", default=0, minimum=0, maximum=2**32 - 1, metavar="N",
        interface="seed",
        help="Random seed of the DDM2 network initialisation, training batches and sampling noise. A "
        "CPU run is reproducible; GPU runs differ slightly between runs (non-deterministic cuDNN "
        "kernels).",
    ),
    Option(
        "force", "--force", kind="switch", default=False,
        help="Run DDM2 on the CPU with the 'paper' or 'fast' preset. Without it such a run is refused "
        "with its estimated duration (days on a few cores); 'cpu' and 'smoke' need no --force.",
    ),
)
#: Options that override a preset value, by the engine's keyword.
OVERRIDES = {option.interface: option.name for option in OPTIONS
             if option.name.startswith("ddm2_") and option.default is None}

BIBTEX = """@inproceedings{ddm2,
  author = {Xiang, Tiange and Yurt, Mahmut and Syed, Ali B. and Setsompop, Kawin and Chaudhari, Akshay},
  title = {{DDM}$^2$: Self-Supervised Diffusion {MRI} Denoising with Generative Diffusion Models},
  booktitle = {The Eleventh International Conference on Learning Representations (ICLR 2023)},
  year = {2023},
  url = {https://arxiv.org/abs/2302.03018},
  eprint = {2302.03018},
  archivePrefix = {arXiv}
}
"""


def overrides(settings) -> dict:
    """The preset overrides that ``settings`` set, keyed like ``ddm2_denoise``'s arguments."""
    values = {key: getattr(settings, name, None) for key, name in OVERRIDES.items()}
    return {key: value for key, value in values.items() if value is not None}


def memory_gb(shape, settings, largest_group, device) -> float:
    from bids_denoise.denoise.ddm2.cost import estimate_memory_gb

    return estimate_memory_gb(shape)


def parameters(settings) -> dict:
    from bids_denoise.denoise.ddm2.settings import resolve_settings, sidecar_parameters

    resolved = resolve_settings(settings.ddm2_preset, **overrides(settings))
    values = sidecar_parameters(resolved, seed=settings.seed)
    values["B0Method"] = "Patch2Self" if getattr(settings, "b0_denoising", True) else "none"
    return values


def _estimate(runs, settings, preset, device, n_threads, calibrations) -> float:
    """Estimated seconds of ``preset`` over ``runs``, calibrated on ``device`` per slice size."""
    from bids_denoise.denoise.ddm2.cost import calibrate, estimate_series_seconds
    from bids_denoise.denoise.ddm2.settings import resolve_settings

    resolved = resolve_settings(preset, **overrides(settings))
    total = 0.0
    for run in runs:
        key = (preset, tuple(int(s) for s in run.shape[:2]))
        if key not in calibrations:
            try:
                calibrations[key] = calibrate(resolved, *key[1], device=device, n_threads=n_threads)
            except Exception as exc:  # noqa: BLE001 - the estimate must not stop the app: use the table
                LOGGER.info("DDM2: timing the network on %s failed (%s); the estimate uses the "
                            "throughput table.", device, exc)
                calibrations[key] = None
        total += estimate_series_seconds(
            run.shape, run.bvals, preset, device=device, n_threads=n_threads, b0_threshold=settings.b0_threshold,
            shell_tolerance=settings.shell_tolerance, grouping=settings.shell_grouping,
            calibration=calibrations[key], **overrides(settings))
    return total


def check_runtime(runs, settings, device: str, n_threads: int, n_runs: int | None = None) -> float:
    """Log the estimated time of the selected runs; refuse paper and fast on the CPU without --force.

    The estimate counts the FLOPs of every stage and divides them by the throughput of the
    run's network measured on ``device`` at start-up (a few seconds: one training step and one
    batched forward at the run's slice size; :func:`bids_denoise.denoise.ddm2.cost.calibrate`).
    ``runs`` are the checks of the runs whose shape and b-values are known; ``n_runs`` counts
    every selected run (default: as many as ``runs``).
    """
    from bids_denoise.denoise.ddm2.cost import format_duration
    from bids_denoise.errors import UsageError

    preset = settings.ddm2_preset
    calibrations: dict = {}
    total = _estimate(runs, settings, preset, device, n_threads, calibrations) if runs else float("nan")
    duration = f"about {format_duration(total)}" if runs else "an unknown time"
    estimate = (f"DDM2 with preset '{preset}' on the {device.upper()} with {n_threads} thread(s) is estimated to "
                f"take {duration} for {n_runs or len(runs)} run(s), one model per shell")
    if device == "cpu" and preset not in CPU_PRESETS and not settings.force:
        alternative = ""
        if runs:
            cpu_total = _estimate(runs, settings, "cpu", device, n_threads, calibrations)
            alternative = f" (about {format_duration(cpu_total)} here)"
        raise UsageError(
            f"{estimate}. DDM2 with this preset needs a CUDA GPU (in a container: docker run --gpus all, or "
            f"apptainer run --nv). Use --ddm2-preset cpu{alternative} for a DDM2 sized for the CPU, "
            "--ddm2-preset smoke to test the installation, --method patch2self or mppca for fast CPU "
            "denoising, or --force to run this preset on the CPU anyway."
        )
    LOGGER.log(25, "%s.", estimate)
    return total


def _resolved(settings) -> dict:
    """Preset and counts of a run: the options over the preset's defaults."""
    preset = getattr(settings, "ddm2_preset", None)
    keys = ("stage1_steps", "stage3_steps", "sampling_steps", "flips", "n_neighbours", "neighbour_order",
            "stage3_range")
    values = {key: getattr(settings, f"ddm2_{key}", None) for key in keys}
    if preset:
        try:  # the preset table loads PyTorch; the text must not fail without it
            from bids_denoise.denoise.ddm2.settings import resolve_settings

            resolved = resolve_settings(preset, **{k: v for k, v in values.items() if v is not None})
            values = {key: getattr(resolved, key, values[key]) for key in keys}
        except Exception as exc:  # noqa: BLE001
            LOGGER.debug("DDM2 preset %s not resolved for the methods text: %s", preset, exc)
    return {"preset": preset, **values}


def sentence(settings) -> str:
    values = _resolved(settings)
    details = []
    if values["n_neighbours"] is not None and values["neighbour_order"] is not None:
        order = ("its nearest gradient directions" if values["neighbour_order"] == "direction"
                 else "its neighbours in acquisition order")
        details.append(f"stage I input: {int(values['n_neighbours'])} volumes, {order}")
    if values["stage1_steps"] is not None:
        details.append(f"stage I: {int(values['stage1_steps']):,} training steps")
    if values["stage3_steps"] is not None:
        focused = {"matched": " on the band of matched noise levels only",
                   "focused": " on the noise levels up to the matched ones"}.get(values["stage3_range"], "")
        details.append(f"stage III: {int(values['stage3_steps']):,} training steps{focused}")
    sampling = values["sampling_steps"]
    if sampling is not None:
        details.append({0: "sampling: the full reverse chain from each slice's matched step",
                        1: "sampling: one clean-image prediction from each slice's matched step"}.get(
            int(sampling), f"sampling: at most {int(sampling)} strided reverse steps from each slice's matched step"))
    if values["flips"] is not None and int(values["flips"]) > 1:
        details.append(f"{int(values['flips'])} flipped copies averaged")
    preset = f" with the {values['preset']} preset" if values["preset"] else ""
    if details:
        preset = (preset or " with") + " (" + "; ".join(details) + ")"
    return (
        "Denoising used DDM2 [@ddm2], a self-supervised method in three stages, with one model trained per "
        "volume group: a network that predicts each slice from the same slice of other volumes of the group "
        "(stage I), the matching of each slice to a state of the diffusion Markov chain (stage II), and a "
        "diffusion model trained on the stage-I estimates and the matched noise (stage III), run"
        + (preset or " with its default settings")
        + "."
    )


DDM2 = Method(
    name="ddm2",
    label="DDM2",
    summary="self-supervised diffusion model, one model trained per shell; needs a GPU except with "
    "--ddm2-preset cpu, see the DDM2 options",
    description="Settings of --method ddm2. Each shell gets its own model: Stage I trains a network that "
    "predicts every slice from the same slice of other volumes (the nearest gradient directions, or the "
    "neighbours in acquisition order), Stage II matches each slice's noise to a diffusion step, Stage III "
    "trains the diffusion denoiser, and each slice is then denoised from its own step. b=0 volumes are "
    "denoised with Patch2Self (2 or more b0s; --no-b0-denoising copies them). Stage checkpoints are kept "
    "in <work_dir>/ddm2/<run>/<shell>, so rerunning with the same -w resumes.",
    options=OPTIONS,
    interface="bids_denoise.interfaces.ddm2:DDM2",
    default_grouping="shell",  # its Stage I picks inputs by direction, which assumes one b-value
    memory_gb=memory_gb,
    sentence=sentence,
    bibtex=BIBTEX,
    parameters=parameters,
    check_runtime=check_runtime,
    # The perturbed rerun of the error estimate would train every network a second time (hours
    # on a GPU) and rewrite the resumable checkpoints; DDM2 groups carry no EstimatedRMSE.
    error_estimate=False,
)
