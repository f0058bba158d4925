"""DDM2 in the registry: its options, cost models and methods sentence.

The preset table lives with the engine (:mod:`bids_denoise.denoise.ddm2.settings`), which loads
PyTorch; this module imports it only inside the functions that need resolved values.
"""

from __future__ import annotations

import logging

from bids_denoise.denoise.methods.base import Method, Option

LOGGER = logging.getLogger(__name__)

PRESETS = ("paper", "fast", "smoke")
PRECISIONS = ("fp32", "bf16")
FLIP_COUNTS = (1, 2, 4)
_PRESET = "the preset's"

OPTIONS = (
    Option(
        "ddm2_preset", "--ddm2-preset", kind="choice", choices=PRESETS, default="fast", interface="preset",
        default_help="fast (the practical choice; use paper to reproduce the publication)",
        help="Step counts and network size. 'paper': the paper's counts (Stage I 10,000 steps, Stage III "
        "100,000, batch 32, 4 flips, full reverse chain; about 2-3 GPU-hours per shell of 64 volumes of "
        "96x96x60 on an H100). 'fast': Stage I 3,000, Stage III 20,000, batch 32, 1 flip, 25 strided "
        "sampling steps, bf16 and torch.compile (about 30 min per such shell). 'smoke': a tiny network "
        "and tens of steps, to test an installation on the CPU (no useful denoising).",
    ),
    Option(
        "ddm2_stage1_steps", "--ddm2-stage1-steps", kind="int", minimum=1, metavar="N",
        interface="stage1_steps", default_help=f"{_PRESET} (paper 10000, fast 3000, smoke 30)",
        help="Training steps of Stage I (the noise model).",
    ),
    Option(
        "ddm2_stage3_steps", "--ddm2-stage3-steps", kind="int", minimum=1, metavar="N",
        interface="stage3_steps", default_help=f"{_PRESET} (paper 100000, fast 20000, smoke 40)",
        help="Training steps of Stage III (the diffusion denoiser).",
    ),
    Option(
        "ddm2_sampling_steps", "--ddm2-sampling-steps", kind="int", minimum=0, metavar="N",
        interface="sampling_steps", default_help=f"{_PRESET} (paper 0, fast 25, smoke 6)",
        help="Reverse diffusion steps per slice: 0 runs the full chain from the slice's matched step t* "
        "(t* steps, typically 10-450, with sampling noise, as in the paper); N > 0 takes at most N "
        "evenly strided deterministic steps.",
    ),
    Option(
        "ddm2_batch_size", "--ddm2-batch-size", kind="int", minimum=1, metavar="N", interface="batch_size",
        default_help=f"{_PRESET} (paper and fast 32, smoke 4)",
        help="Training batch of Stages I and III, in slices.",
    ),
    Option(
        "ddm2_inference_batch_size", "--ddm2-inference-batch-size", kind="int", minimum=1, metavar="N",
        interface="inference_batch_size", default_help=f"{_PRESET} (paper 64, fast 256, smoke 16)",
        help="Slices denoised together, each at its own noise level (GPU memory grows with it).",
    ),
    Option(
        "ddm2_flips", "--ddm2-flips", kind="int", choices=FLIP_COUNTS, minimum=1, interface="flips",
        default_help=f"{_PRESET} (paper 4, fast 1, smoke 2)",
        help="Flipped copies of each slice averaged at every reverse step (1: none; 2: plus a vertical "
        "flip; 4: all four flips, as in the paper); cost grows in proportion.",
    ),
    Option(
        "ddm2_precision", "--ddm2-precision", kind="choice", choices=PRECISIONS, interface="precision",
        default_help=f"{_PRESET} (paper and smoke fp32, fast bf16)",
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
        help="Run DDM2 on the CPU with a preset other than 'smoke'. Without it such a run is refused "
        "with its estimated duration (days to months on a few cores).",
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
    from bids_denoise.denoise.ddm2.settings import estimate_memory_gb

    return estimate_memory_gb(shape)


def parameters(settings) -> dict:
    from bids_denoise.denoise.ddm2.settings import resolve_settings, sidecar_parameters

    resolved = resolve_settings(settings.ddm2_preset, **overrides(settings))
    values = sidecar_parameters(resolved, seed=settings.seed)
    values["B0Method"] = "Patch2Self" if getattr(settings, "b0_denoising", True) else "none"
    return values


def check_runtime(runs, settings, device: str, n_threads: int, n_runs: int | None = None) -> float:
    """Log the estimated time of the selected runs; refuse a CPU run unless smoke or --force.

    ``runs`` are the checks of the runs whose shape and b-values are known; ``n_runs`` counts
    every selected run (default: as many as ``runs``).
    """
    from bids_denoise.denoise.ddm2.settings import estimate_series_seconds, format_duration
    from bids_denoise.errors import UsageError

    total = sum(
        estimate_series_seconds(run.shape, run.bvals, settings.ddm2_preset, device=device, n_threads=n_threads,
                                b0_threshold=settings.b0_threshold, shell_tolerance=settings.shell_tolerance,
                                grouping=settings.shell_grouping, **overrides(settings))
        for run in runs
    )
    duration = f"about {format_duration(total)}" if runs else "an unknown time"
    estimate = (f"DDM2 with preset '{settings.ddm2_preset}' on the {device.upper()} is estimated to take "
                f"{duration} for {n_runs or len(runs)} run(s), one model per shell")
    if device == "cpu" and settings.ddm2_preset != "smoke" and not settings.force:
        raise UsageError(
            f"{estimate}. DDM2 needs a CUDA GPU (in a container: docker run --gpus all, or apptainer "
            "run --nv). Use --ddm2-preset smoke to test the installation on the CPU, --method "
            "patch2self for CPU denoising, or --force to run on the CPU anyway."
        )
    LOGGER.log(25, "%s.", estimate)
    return total


def _resolved(settings) -> dict:
    """Preset and counts of a run: the options over the preset's defaults."""
    preset = getattr(settings, "ddm2_preset", None)
    keys = ("stage1_steps", "stage3_steps", "sampling_steps", "flips")
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
    if values["stage1_steps"] is not None:
        details.append(f"stage I: {int(values['stage1_steps']):,} training steps")
    if values["stage3_steps"] is not None:
        details.append(f"stage III: {int(values['stage3_steps']):,} training steps")
    sampling = values["sampling_steps"]
    if sampling is not None:
        details.append("sampling: the full reverse chain from each slice's matched step" if int(sampling) == 0
                       else f"sampling: at most {int(sampling)} strided reverse steps from each slice's matched step")
    if values["flips"] is not None and int(values["flips"]) > 1:
        details.append(f"{int(values['flips'])} flipped copies averaged")
    preset = f" with the {values['preset']} preset" if values["preset"] else ""
    if details:
        preset = (preset or " with") + " (" + "; ".join(details) + ")"
    return (
        "Denoising used DDM2 [@ddm2], a self-supervised method in three stages, with one model trained per "
        "volume group: a network that predicts each slice from the same slice of neighbouring volumes "
        "(stage I), the matching of each slice to a state of the diffusion Markov chain (stage II), and a "
        "diffusion model trained on the stage-I estimates and the matched noise (stage III), run"
        + (preset or " with its default settings")
        + "."
    )


DDM2 = Method(
    name="ddm2",
    label="DDM2",
    summary="self-supervised diffusion model, one model trained per shell; needs a GPU, see the DDM2 "
    "options",
    description="Settings of --method ddm2. Each shell gets its own model: Stage I trains a network that "
    "predicts every slice from the same slice of 2 neighbouring volumes, Stage II matches each slice's "
    "noise to a diffusion step, Stage III trains the diffusion denoiser, and each slice is then denoised "
    "from its own step. b=0 volumes are denoised with Patch2Self (3 or more b0s; --no-b0-denoising copies "
    "them). Stage checkpoints are kept in <work_dir>/ddm2/<run>/<shell>, so rerunning with the same -w "
    "resumes.",
    options=OPTIONS,
    interface="bids_denoise.interfaces.ddm2:DDM2",
    memory_gb=memory_gb,
    sentence=sentence,
    bibtex=BIBTEX,
    parameters=parameters,
    check_runtime=check_runtime,
    # The perturbed rerun of the error estimate would train every network a second time (hours
    # on a GPU) and rewrite the resumable checkpoints; DDM2 groups carry no EstimatedRMSE.
    error_estimate=False,
)
