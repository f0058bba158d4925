"""The per-run denoising workflow: split by shell, denoise each group, merge back."""

from __future__ import annotations

from types import SimpleNamespace

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_denoise.denoise.methods import DEFAULT_METHOD, DEFAULT_RICIAN_CORRECTION, get_method
from bids_denoise.denoise.shells import B0_THRESHOLD, MIN_SHELL_VOLUMES, SHELL_TOLERANCE
from bids_denoise.interfaces.shells import MergeGroupMaps, MergeShells, SplitShells

#: Per-group inputs an interface may take, fed from the group labels.
GROUP_INPUTS = ("group_label", "checkpoint_dir")
#: Per-group outputs an interface may give, gathered on the outputnode (output -> field).
GROUP_OUTPUTS = {"history_file": "history_files", "model_file": "model_files"}
#: Per-group 3D maps an interface may give; MergeGroupMaps makes one file of each per run.
GROUP_MAPS = ("rank_file",)
RICIAN_CORRECTIONS = ("none", "mean", "moments")


def method_settings(method: str, options: dict) -> SimpleNamespace:
    """The method's options (and those of the methods it borrows from): ``options`` over the
    registry defaults, each checked."""
    entry = get_method(method)
    known = {option.name: option for name in (*entry.borrows, method) for option in get_method(name).options}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{', '.join(unknown)}: not option(s) of method {method!r}; its options are "
                        f"{', '.join(known)}")
    values = {name: option.coerce(options.get(name, option.default)) for name, option in known.items()}
    return SimpleNamespace(**values)


def init_dwi_denoise_wf(
    *,
    method: str = DEFAULT_METHOD,
    b0_threshold: float = B0_THRESHOLD,
    shell_tolerance: float = SHELL_TOLERANCE,
    shell_grouping: str | None = None,
    min_shell_volumes: int = MIN_SHELL_VOLUMES,
    b0_denoising: bool = True,
    rician_correction: str = DEFAULT_RICIAN_CORRECTION,
    error_estimate: bool = True,
    device: str = "auto",
    checkpoint_root: str | None = None,
    omp_nthreads: int = 1,
    mem_gb: float = 1.0,
    name: str = "dwi_denoise_wf",
    **options,
):
    """Denoise one DWI series group by group, keeping the volume order.

    Workflow graph::

        inputnode -> SplitShells -> denoise (MapNode, one item per group) -> MergeShells -> outputnode
        inputnode -> EstimateNoise (noise map, head mask) -> denoise (error estimate)
                                                          -> RicianCorrection (after MergeShells)

    Parameters
    ----------
    method : str
        A method of :data:`bids_denoise.denoise.methods.METHODS` (``"patch2self"``, ``"mppca"``,
        ``"ddm2"``, ``"auto"``). Default ``"auto"``.
    b0_threshold : float
        Volumes with ``b <= b0_threshold`` form the b0 group. Default 50.
    shell_tolerance : float
        Largest b-value gap inside one shell. Default 100.
    shell_grouping : {"shell", "all"}
        One group per shell, or all diffusion-weighted volumes pooled. Default (None): the
        method's ``default_grouping``, ``"all"`` except for DDM2.
    min_shell_volumes : int
        With ``shell_grouping="shell"``, smaller shells are denoised together with their
        nearest shell in b. Default 10.
    b0_denoising : bool
        Denoise the b0 group from its own volumes; otherwise copy it. Default True.
    rician_correction : {"none", "mean", "moments"}
        Remove the Rician noise floor from the merged series with the run's noise map (see
        ``sigma_file``, :mod:`bids_denoise.denoise.rician`). Default "mean".
    device : {"auto", "cpu", "cuda"}
        PyTorch device.
    checkpoint_root : str, optional
        For methods that keep checkpoints (DDM2): they go to ``<checkpoint_root>/<group label>``,
        which must lie outside the Nipype node folders (Nipype empties a node's folder before
        rerunning it). ``None``: no checkpoints.
    omp_nthreads : int
        Threads each denoising node may use.
    mem_gb : float
        Memory (GB) reserved for each denoising node by the scheduler.
    name : str
        Workflow name.
    **options
        The method's options, named as in the registry (e.g. ``patch_radius=1``,
        ``p2s_model="ridge"``, ``ddm2_preset="smoke"``, ``ddm2_stage1_steps=500``); the rest keep
        their defaults.

    Inputs
    ------
    dwi_file, bval_file, bvec_file
        The 4D series and its FSL gradient files.
    mask_file
        Optional brain mask; the regressions are fitted inside it.

    Outputs
    -------
    denoised_file
        Float32 series with the input's geometry, volumes in the original order.
    bval_file, bvec_file
        The gradients, unchanged.
    noise_file
        3D root mean square of the residuals over all denoised volumes.
    groups, n_denoised, devices, run_times
        What was denoised where, for the sidecars.
    error_estimates
        One dict per group (:meth:`bids_denoise.denoise.error.ErrorEstimate.as_dict` and its
        seconds); empty dicts when not estimated.
    quality_control
        The QC numbers and flags of the written series (:class:`~bids_denoise.interfaces.qc.QualityControl`).
    sigma_file, region_file, noise_note
        The run's Gaussian noise standard deviation (3D; :func:`bids_denoise.denoise.noise.measure_noise`:
        MP-PCA over all volumes, Rician-corrected, at the b0 repeats' level when they agree), the
        head mask it is measured in, and one sentence on its source.
    rank_file
        Only for MP-PCA: the 4D stack of each group's signal-rank map.
    history_files, model_files, group_labels
        Only for methods whose interface gives them (DDM2): the training history of every
        group, the model files of the groups that have one, and the labels of all groups.
    """
    if rician_correction not in RICIAN_CORRECTIONS:
        raise ValueError(f"rician_correction must be one of {RICIAN_CORRECTIONS}, got {rician_correction!r}")
    entry = get_method(method)
    shell_grouping = shell_grouping or entry.default_grouping
    settings = method_settings(method, options)
    settings.device = device
    interface = entry.interface_class()(
        b0_threshold=b0_threshold, b0_denoising=b0_denoising, device=device, num_threads=omp_nthreads,
        rician_correction=rician_correction, estimate_error=bool(error_estimate and entry.error_estimate),
        **entry.interface_inputs(settings),
    )
    inputs = set(interface.inputs.copyable_trait_names())
    outputs = set(interface.output_spec().copyable_trait_names())
    group_inputs = [field for field in GROUP_INPUTS if field in inputs]
    if checkpoint_root is None and "checkpoint_dir" in group_inputs:
        group_inputs.remove("checkpoint_dir")
    extra_outputs = {output: field for output, field in GROUP_OUTPUTS.items() if output in outputs}
    if group_inputs:
        extra_outputs["group_label"] = "group_labels"
    maps = [output for output in GROUP_MAPS if output in outputs]

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "mask_file"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[
            "denoised_file", "bval_file", "bvec_file", "noise_file",
            "groups", "n_denoised", "devices", "run_times", "error_estimates", *extra_outputs.values(), *maps,
            "sigma_file", "region_file", "noise_note", "quality_control",
        ]),
        name="outputnode",
    )
    split = pe.Node(
        SplitShells(b0_threshold=b0_threshold, shell_tolerance=shell_tolerance, grouping=shell_grouping,
                    min_shell_volumes=min_shell_volumes),
        name="split_shells",
    )
    # a method that can use the gradient directions (DDM2's Stage-I inputs) gets each group's own
    with_bvecs = "bvec_file" in inputs
    iterfield = ["in_file", "bval_file", *(["bvec_file"] if with_bvecs else []), *group_inputs]
    denoise = pe.MapNode(interface, iterfield=iterfield, name="denoise", n_procs=omp_nthreads, mem_gb=mem_gb)
    merge = pe.Node(MergeShells(), name="merge_shells")

    workflow.connect([
        (inputnode, split, [("dwi_file", "in_file"), ("bval_file", "bval_file")]),
        (inputnode, denoise, [("mask_file", "mask_file")]),
        (split, denoise, [("group_files", "in_file"), ("group_bval_files", "bval_file")]),
        (inputnode, merge, [("dwi_file", "reference_file")]),
        (split, merge, [("group_indices", "group_indices")]),
        (denoise, merge, [
            ("out_file", "in_files"),
            ("noise_file", "noise_files"),
            ("n_denoised", "noise_weights"),
        ]),
        (merge, outputnode, [("noise_file", "noise_file")]),
        (inputnode, outputnode, [("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
        (split, outputnode, [("groups", "groups")]),
        (denoise, outputnode, [
            ("n_denoised", "n_denoised"), ("device", "devices"), ("run_time", "run_times"),
            ("error_estimate", "error_estimates"),
        ]),
    ])  # fmt:skip
    if with_bvecs:
        workflow.connect([
            (inputnode, split, [("bvec_file", "bvec_file")]),
            (split, denoise, [("group_bvec_files", "bvec_file")]),
        ])  # fmt:skip
    final = _connect_maps(workflow, inputnode, denoise, merge, outputnode, maps, rician_correction, device,
                          omp_nthreads)
    _connect_quality_control(workflow, inputnode, split, denoise, final, outputnode, rician_correction)
    for output, field in extra_outputs.items():
        if output != "group_label":
            workflow.connect(denoise, output, outputnode, field)
    if group_inputs:
        labels = pe.Node(
            niu.Function(function=_group_folders, input_names=["groups", "root"],
                         output_names=["labels", "folders"]),
            name="group_labels",
        )
        labels.inputs.root = checkpoint_root
        workflow.connect([
            (split, labels, [("groups", "groups")]),
            (labels, denoise, [("labels", "group_label")]),
            (labels, outputnode, [("labels", "group_labels")]),
        ])  # fmt:skip
        if "checkpoint_dir" in group_inputs:
            workflow.connect(labels, "folders", denoise, "checkpoint_dir")
    return workflow


def _connect_maps(workflow, inputnode, denoise, merge, outputnode, maps, rician_correction, device, omp_nthreads):
    """The run's noise map, the method's per-group maps merged, the Rician correction."""
    from bids_denoise.interfaces.noise import EstimateNoise, RicianCorrection

    estimate = pe.Node(EstimateNoise(device=device, num_threads=omp_nthreads), name="estimate_noise",
                       n_procs=omp_nthreads)
    workflow.connect([
        (inputnode, estimate, [("dwi_file", "in_file"), ("bval_file", "bval_file")]),
        (estimate, outputnode, [("sigma_file", "sigma_file"), ("region_file", "region_file"),
                                ("noise_note", "noise_note")]),
        (estimate, denoise, [("sigma_file", "sigma_file"), ("region_file", "region_file")]),
    ])  # fmt:skip
    if maps:
        merge_maps = pe.Node(MergeGroupMaps(), name="merge_maps")
        workflow.connect([
            (inputnode, merge_maps, [("dwi_file", "reference_file")]),
            (denoise, merge_maps, [(output, f"{output[:-5]}_files") for output in maps]),
            (merge_maps, outputnode, [(output, output) for output in maps]),
        ])  # fmt:skip
    if rician_correction == "none":
        workflow.connect(merge, "out_file", outputnode, "denoised_file")
        return merge
    correct = pe.Node(RicianCorrection(method=rician_correction), name="rician_correction")
    workflow.connect([
        (merge, correct, [("out_file", "in_file")]),
        (estimate, correct, [("sigma_file", "sigma_file")]),
        (correct, outputnode, [("out_file", "denoised_file")]),
    ])  # fmt:skip
    return correct


def _connect_quality_control(workflow, inputnode, split, denoise, final, outputnode, rician_correction):
    """QC numbers and flags of the series as written (``final`` gives it as ``out_file``)."""
    from bids_denoise.interfaces.qc import QualityControl

    qc = pe.Node(QualityControl(rician_correction=rician_correction), name="quality_control")
    estimate = workflow.get_node("estimate_noise")
    workflow.connect([
        (inputnode, qc, [("dwi_file", "in_file"), ("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
        (final, qc, [("out_file", "denoised_file")]),
        (estimate, qc, [("sigma_file", "sigma_file"), ("region_file", "region_file")]),
        (split, qc, [("groups", "groups")]),
        (denoise, qc, [("n_denoised", "n_denoised")]),
        (qc, outputnode, [("quality_control", "quality_control")]),
    ])  # fmt:skip


def _group_folders(groups, root):
    """Labels of the groups and their checkpoint folders ``<root>/<label>`` (root may be None)."""
    import os

    labels = [str(group["Label"]) for group in groups]
    return labels, [os.path.join(root, label) if root else "" for label in labels]
