"""Top-level workflows: the whole dataset, then one subject, then one run."""

from __future__ import annotations

import nibabel as nb
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_denoise import config
from bids_denoise.denoise.patch2self import estimate_memory_gb
from bids_denoise.interfaces.bids import DerivativesDataSink
from bids_denoise.interfaces.metadata import DenoisingMetadata
from bids_denoise.utils.derivatives import bids_uri
from bids_denoise.workflows.dwi import init_dwi_denoise_wf


def init_bids_denoise_wf(runs_by_subject):
    """Denoise every selected run of every selected subject.

    Parameters
    ----------
    runs_by_subject : dict of str to list of DWIRun
        Subject label (without ``sub-``) to its runs, as found by
        :func:`bids_denoise.utils.bids.collect_dwi_runs`.
    """
    workflow = pe.Workflow(name="bids_denoise_wf")
    workflow.base_dir = str(config.execution.work_dir)
    for subject, runs in sorted(runs_by_subject.items()):
        if runs:
            workflow.add_nodes([init_single_subject_wf(subject, runs)])
    return workflow


def init_single_subject_wf(subject, runs):
    """Denoise the runs of one subject and write their derivatives."""
    workflow = pe.Workflow(name=f"sub_{subject}_wf")
    for run in runs:
        workflow.add_nodes([init_run_wf(run)])
    return workflow


def denoising_parameters() -> dict:
    """The settings that decide the output, from ``config.workflow``, as recorded in sidecars."""
    settings = config.workflow
    parameters = {
        "B0Threshold": float(settings.b0_threshold),
        "ShellGrouping": settings.shell_grouping,
        "ShellTolerance": float(settings.shell_tolerance),
        "B0Denoising": bool(settings.b0_denoising),
    }
    if settings.method == "patch2self":
        parameters.update(
            Model=settings.p2s_model,
            Alpha=float(settings.p2s_alpha),
            PatchRadius=list(settings.patch_radius),
            ClipNegativeValues=bool(settings.clip_negative_vals),
        )
    return parameters


def init_run_wf(run):
    """Denoise one run and sink its denoised series, gradients, noise map and sidecars."""
    settings = config.workflow
    shape = nb.load(run.dwi_file).shape
    workflow = pe.Workflow(name=f"{run.name}_wf")
    denoise_wf = init_dwi_denoise_wf(
        method=settings.method,
        b0_threshold=settings.b0_threshold,
        shell_tolerance=settings.shell_tolerance,
        shell_grouping=settings.shell_grouping,
        b0_denoising=settings.b0_denoising,
        p2s_model=settings.p2s_model,
        p2s_alpha=settings.p2s_alpha,
        patch_radius=settings.patch_radius,
        clip_negative_vals=settings.clip_negative_vals,
        device=settings.device,
        omp_nthreads=config.nipype.omp_nthreads,
        mem_gb=estimate_memory_gb(shape, patch_radius=settings.patch_radius),
    )
    denoise_wf.inputs.inputnode.dwi_file = str(run.dwi_file)
    denoise_wf.inputs.inputnode.bval_file = str(run.bval_file)
    denoise_wf.inputs.inputnode.bvec_file = str(run.bvec_file)

    bids_dir = config.execution.bids_dir
    metadata = pe.Node(
        DenoisingMetadata(
            method=settings.method,
            parameters=denoising_parameters(),
            sources=[bids_uri(path, bids_dir) for path in (run.dwi_file, run.bval_file, run.bvec_file)],
            raw_metadata=dict(run.metadata),
        ),
        name="metadata",
        run_without_submitting=True,
    )
    sinks = {
        "ds_dwi": dict(desc="denoised", suffix="dwi"),
        "ds_bval": dict(desc="denoised", suffix="dwi", extension=".bval"),
        "ds_bvec": dict(desc="denoised", suffix="dwi", extension=".bvec"),
        "ds_noise": dict(desc="noise", suffix="dwimap"),
    }
    nodes = {
        name: pe.Node(
            DerivativesDataSink(
                base_directory=str(config.execution.output_dir), source_file=str(run.dwi_file), **kwargs
            ),
            name=name,
            run_without_submitting=True,
            mem_gb=0.1,
        )
        for name, kwargs in sinks.items()
    }
    workflow.connect([
        (denoise_wf, metadata, [
            ("outputnode.groups", "groups"), ("outputnode.n_denoised", "n_denoised"),
            ("outputnode.devices", "devices"), ("outputnode.run_times", "run_times"),
        ]),
        (denoise_wf, nodes["ds_dwi"], [("outputnode.denoised_file", "in_file")]),
        (metadata, nodes["ds_dwi"], [("dwi_metadata", "meta_dict")]),
        (denoise_wf, nodes["ds_bval"], [("outputnode.bval_file", "in_file")]),
        (denoise_wf, nodes["ds_bvec"], [("outputnode.bvec_file", "in_file")]),
        (denoise_wf, nodes["ds_noise"], [("outputnode.noise_file", "in_file")]),
        (metadata, nodes["ds_noise"], [("noise_metadata", "meta_dict")]),
    ])  # fmt:skip
    return workflow


def build_boilerplate() -> str:
    """A methods paragraph (Markdown) for the configured denoising."""
    settings = config.workflow
    grouping = (
        "each diffusion-weighted shell (b-values within "
        f"{settings.shell_tolerance:g} s/mm² of each other) was denoised from its own volumes"
        if settings.shell_grouping == "shell"
        else "all diffusion-weighted volumes were denoised together"
    )
    b0 = (
        "the b=0 volumes were denoised from each other"
        if settings.b0_denoising
        else "the b=0 volumes were left unchanged"
    )
    radius = "x".join(str(r) for r in settings.patch_radius)
    return (
        f"Diffusion MRI data were denoised with *bids_denoise* {config.environment.version}. "
        f"Volumes with b <= {settings.b0_threshold:g} s/mm² were treated as b=0 images; {b0}, and "
        f"{grouping}. Denoising used Patch2Self [@patch2self], a self-supervised method that "
        "predicts each volume from the other volumes of its group, with "
        f"{settings.p2s_model.upper() if settings.p2s_model == 'ols' else settings.p2s_model} "
        f"regression (alpha = {settings.p2s_alpha:g}) and a patch radius of {radius}. "
        "Volumes were merged back in their acquisition order. The workflow was built with "
        "Nipype [@nipype], data were indexed with PyBIDS [@pybids] and read and written with "
        "NiBabel [@nibabel].\n"
    )
