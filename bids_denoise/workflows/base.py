"""Top-level workflows: the whole dataset, then one subject, then one run."""

from __future__ import annotations

import nibabel as nb
from nipype.pipeline import engine as pe

from bids_denoise import config
from bids_denoise.denoise import methods
from bids_denoise.denoise.methods import get_method
from bids_denoise.interfaces.bids import DerivativesDataSink
from bids_denoise.interfaces.metadata import DenoisingMetadata
from bids_denoise.interfaces.reports import DenoisingReportlets, ReportletsSink
from bids_denoise.outputs import OUTPUTS
from bids_denoise.utils.derivatives import bids_uri
from bids_denoise.workflows.dwi import init_dwi_denoise_wf

#: Maps a run may have (the outputnode field ``<key>_file``), sunk with their sidecars.
MAP_KEYS = ("noise", "sigma", "rank")


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
    return methods.denoising_parameters(config.workflow)


def checkpoint_root(run) -> str:
    """Stable folder of a run's checkpoints, ``<work_dir>/<method>/<run name>``.

    Outside every Nipype node folder on purpose: Nipype empties a node's folder before it
    reruns the node (also after a crash), which would lose the checkpoints.
    """
    from pathlib import Path

    return str(Path(config.execution.work_dir) / config.workflow.method / run.name)


def _add_model_sink(workflow, denoise_wf, run) -> None:
    """Bundle the groups' trained networks and sink ``*_desc-<method>_model.pt``."""
    from bids_denoise.interfaces.ddm2 import BundleModels

    model = OUTPUTS["model"]
    bundle = pe.Node(BundleModels(), name="bundle_models", run_without_submitting=True)
    sink = pe.Node(
        DerivativesDataSink(
            base_directory=str(config.execution.output_dir), source_file=str(run.dwi_file),
            desc=model.desc, suffix=model.suffix, extension=model.extension,
        ),
        name="ds_model",
        run_without_submitting=True,
        mem_gb=0.1,
    )
    workflow.connect([
        (denoise_wf, bundle, [("outputnode.model_files", "model_files")]),
        (bundle, sink, [("out_file", "in_file")]),
    ])  # fmt:skip


def init_run_wf(run):
    """Denoise one run and sink its denoised series, gradients, noise map and sidecars.

    ``run`` may carry what the preflight check read (``run.check``: shape, b-values, groups);
    otherwise the header is read here.
    """
    settings = config.workflow
    method = get_method(settings.method)
    check = getattr(run, "check", None)
    shape = check.shape if check is not None else nb.load(run.dwi_file).shape
    largest_group = check.largest_group if check is not None else None
    workflow = pe.Workflow(name=f"{run.name}_wf")
    denoise_wf = init_dwi_denoise_wf(
        method=settings.method,
        b0_threshold=settings.b0_threshold,
        shell_tolerance=settings.shell_tolerance,
        shell_grouping=settings.shell_grouping,
        b0_denoising=settings.b0_denoising,
        rician_correction=settings.rician_correction,
        error_estimate=settings.error_estimate,
        device=settings.device,
        checkpoint_root=checkpoint_root(run),
        omp_nthreads=config.nipype.omp_nthreads,
        mem_gb=method.memory_gb(shape, settings, largest_group, settings.device),
        **{option.name: getattr(settings, option.name)
           for name in (*method.borrows, method.name) for option in methods.get_method(name).options},
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
            provenance=_sidecar_provenance(),
        ),
        name="metadata",
        run_without_submitting=True,
    )
    nodes = {
        f"ds_{key}": pe.Node(
            DerivativesDataSink(
                base_directory=str(config.execution.output_dir), source_file=str(run.dwi_file),
                desc=OUTPUTS[key].desc, suffix=OUTPUTS[key].suffix, extension=OUTPUTS[key].extension,
            ),
            name=f"ds_{key}",
            run_without_submitting=True,
            mem_gb=0.1,
        )
        for key in ("dwi", "bval", "bvec", *MAP_KEYS)
        if key not in MAP_KEYS or f"{key}_file" in denoise_wf.get_node("outputnode").inputs.copyable_trait_names()
    }
    workflow.connect([
        (denoise_wf, metadata, [
            ("outputnode.groups", "groups"), ("outputnode.n_denoised", "n_denoised"),
            ("outputnode.devices", "devices"), ("outputnode.run_times", "run_times"),
            ("outputnode.noise_note", "noise_note"), ("outputnode.error_estimates", "error_estimates"),
            ("outputnode.quality_control", "quality_control"),
        ]),
        (denoise_wf, nodes["ds_dwi"], [("outputnode.denoised_file", "in_file")]),
        (metadata, nodes["ds_dwi"], [("dwi_metadata", "meta_dict")]),
        (denoise_wf, nodes["ds_bval"], [("outputnode.bval_file", "in_file")]),
        (denoise_wf, nodes["ds_bvec"], [("outputnode.bvec_file", "in_file")]),
    ])  # fmt:skip
    for key in MAP_KEYS:
        if f"ds_{key}" in nodes:
            workflow.connect([
                (denoise_wf, nodes[f"ds_{key}"], [(f"outputnode.{key}_file", "in_file")]),
                (metadata, nodes[f"ds_{key}"], [(f"{key}_metadata", "meta_dict")]),
            ])  # fmt:skip
    _add_reportlets(workflow, denoise_wf, run, shape)
    if OUTPUTS["model"].method == settings.method and getattr(settings, f"{settings.method}_save_model", False):
        _add_model_sink(workflow, denoise_wf, run)
    return workflow


def _sidecar_provenance() -> dict:
    """Version, git commit, container, command line and configuration, for the sidecars."""
    from bids_denoise.utils.provenance import provenance

    return provenance()


def _add_reportlets(workflow, denoise_wf, run, shape) -> None:
    """Draw the run's reportlets and sink them (and their statistics) to ``sub-X/figures/``."""
    settings = config.workflow
    n_voxels = 1
    for size in shape:
        n_voxels *= int(size)
    reportlets = pe.Node(
        DenoisingReportlets(
            in_file=str(run.dwi_file), b0_threshold=settings.b0_threshold, method=settings.method,
            title=run.dwi_file.name.split(".")[0],
        ),
        name="reportlets",
        mem_gb=round(3 * 4 * n_voxels / 1024**3 + 0.3, 2),  # raw and denoised float32, plus slack
    )
    ds_figures = pe.Node(
        ReportletsSink(base_directory=str(config.execution.output_dir), source_file=str(run.dwi_file)),
        name="ds_figures",
        run_without_submitting=True,
        mem_gb=0.1,
    )
    workflow.connect([
        (denoise_wf, reportlets, [
            ("outputnode.denoised_file", "denoised_file"), ("outputnode.bval_file", "bval_file"),
            ("outputnode.bvec_file", "bvec_file"), ("outputnode.groups", "groups"),
            ("outputnode.noise_file", "noise_file"),
        ]),
        (reportlets, ds_figures, [
            ("figure_files", "in_files"), ("figure_descs", "descs"), ("stats_file", "stats_file"),
        ]),
    ])  # fmt:skip
    connect_ddm2_history(workflow, denoise_wf, reportlets)
    fields = denoise_wf.get_node("outputnode").inputs.copyable_trait_names()
    if "rank_file" in fields:  # MP-PCA's maps
        workflow.connect([
            (denoise_wf, reportlets, [("outputnode.sigma_file", "sigma_file"), ("outputnode.rank_file", "rank_file")]),
        ])  # fmt:skip


def connect_ddm2_history(workflow, denoise_wf, reportlets) -> bool:
    """DDM2 hook: feed the per-group training histories to the reportlets, when there are any.

    Connected only when the denoising workflow's outputnode has a ``history_files`` field
    (``init_dwi_denoise_wf(method="ddm2")``); returns whether it was connected.
    """
    from bids_denoise.reports.names import HISTORY_FIELD

    outputnode = denoise_wf.get_node("outputnode")
    if outputnode is None or HISTORY_FIELD not in outputnode.outputs.copyable_trait_names():
        return False
    workflow.connect(denoise_wf, f"outputnode.{HISTORY_FIELD}", reportlets, "history_files")
    return True


def build_boilerplate(runs_by_subject=None) -> str:
    """A methods paragraph (Markdown) for the configured denoising and the selected runs.

    The text is written by :func:`bids_denoise.reports.boilerplate.build_boilerplate`, with the
    method's sentence from its registry entry. Without ``runs_by_subject`` the runs selected by
    the CLI's layout, labels and filters are used to count the shells.
    """
    from bids_denoise.reports.boilerplate import build_boilerplate as _build_boilerplate

    return _build_boilerplate(config.workflow, runs_by_subject, version=config.environment.version)
