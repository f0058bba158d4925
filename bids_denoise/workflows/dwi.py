"""The per-run denoising workflow: split by shell, denoise each group, merge back."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_denoise.denoise.patch2self import CLIP_NEGATIVE_VALS, normalize_patch_radius
from bids_denoise.denoise.shells import B0_THRESHOLD, MIN_SHELL_VOLUMES, SHELL_TOLERANCE
from bids_denoise.interfaces.ddm2 import DDM2
from bids_denoise.interfaces.patch2self import Patch2Self
from bids_denoise.interfaces.shells import MergeShells, SplitShells

METHODS = ("patch2self", "ddm2")


def init_dwi_denoise_wf(
    *,
    method: str = "patch2self",
    b0_threshold: float = B0_THRESHOLD,
    shell_tolerance: float = SHELL_TOLERANCE,
    shell_grouping: str = "shell",
    min_shell_volumes: int = MIN_SHELL_VOLUMES,
    b0_denoising: bool = True,
    p2s_model: str = "ols",
    p2s_alpha: float = 1.0,
    patch_radius=0,
    clip_negative_vals: bool = CLIP_NEGATIVE_VALS,
    device: str = "auto",
    ddm2_preset: str = "fast",
    ddm2_overrides: dict | None = None,
    seed: int = 0,
    ddm2_save_model: bool = False,
    checkpoint_root: str | None = None,
    omp_nthreads: int = 1,
    mem_gb: float = 1.0,
    name: str = "dwi_denoise_wf",
):
    """Denoise one DWI series group by group, keeping the volume order.

    Workflow graph::

        inputnode -> SplitShells -> denoise (MapNode, one item per group) -> MergeShells -> outputnode

    Parameters
    ----------
    method : {"patch2self", "ddm2"}
        Denoiser run on every group.
    b0_threshold : float
        Volumes with ``b <= b0_threshold`` form the b0 group. Default 50.
    shell_tolerance : float
        Largest b-value gap inside one shell. Default 100.
    shell_grouping : {"shell", "all"}
        One group per shell (default) or all diffusion-weighted volumes pooled.
    min_shell_volumes : int
        With ``shell_grouping="shell"``, smaller shells are denoised together with their
        nearest shell in b. Default 10.
    b0_denoising : bool
        Denoise the b0 group from its own volumes; otherwise copy it. Default True.
    p2s_model, p2s_alpha, patch_radius, clip_negative_vals
        Patch2Self settings; see :func:`bids_denoise.denoise.patch2self.patch2self`.
    device : {"auto", "cpu", "cuda"}
        PyTorch device.
    ddm2_preset, ddm2_overrides, seed, ddm2_save_model
        DDM2 settings (``method="ddm2"``): the preset, a dictionary of count/precision
        overrides (keys of :class:`bids_denoise.interfaces.ddm2.DDM2` inputs, e.g.
        ``stage1_steps``; ``None`` values are ignored), the seed and whether to output the networks.
    checkpoint_root : str, optional
        DDM2 only: stage checkpoints go to ``<checkpoint_root>/<group label>``. It must lie outside
        the Nipype node folders (Nipype empties a node's folder before rerunning it). ``None``:
        no checkpoints.
    omp_nthreads : int
        Threads each denoising node may use.
    mem_gb : float
        Memory (GB) reserved for each denoising node by the scheduler.
    name : str
        Workflow name.

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
    history_files, model_files, group_labels
        DDM2 only: the training history JSON of every group, the model files of the groups
        that have a model (with ``ddm2_save_model``) and the labels of all groups.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    radius = list(normalize_patch_radius(patch_radius))
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "mask_file"]),
        name="inputnode",
    )
    ddm2_fields = ["history_files", "model_files", "group_labels"] if method == "ddm2" else []
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[
            "denoised_file", "bval_file", "bvec_file", "noise_file",
            "groups", "n_denoised", "devices", "run_times", *ddm2_fields,
        ]),
        name="outputnode",
    )
    split = pe.Node(
        SplitShells(b0_threshold=b0_threshold, shell_tolerance=shell_tolerance, grouping=shell_grouping,
                    min_shell_volumes=min_shell_volumes),
        name="split_shells",
    )
    if method == "ddm2":
        overrides = {k: v for k, v in (ddm2_overrides or {}).items() if v is not None}
        interface = DDM2(
            b0_threshold=b0_threshold, b0_denoising=b0_denoising, preset=ddm2_preset, device=device,
            seed=seed, save_model=ddm2_save_model, num_threads=omp_nthreads, **overrides,
        )
        iterfield = ["in_file", "bval_file", "group_label"]
        if checkpoint_root is not None:
            iterfield.append("checkpoint_dir")
    else:
        interface = Patch2Self(
            b0_threshold=b0_threshold, b0_denoising=b0_denoising, model=p2s_model, alpha=p2s_alpha,
            patch_radius=radius, clip_negative_vals=clip_negative_vals, device=device,
            num_threads=omp_nthreads,
        )
        iterfield = ["in_file", "bval_file"]
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
        (merge, outputnode, [("out_file", "denoised_file"), ("noise_file", "noise_file")]),
        (inputnode, outputnode, [("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
        (split, outputnode, [("groups", "groups")]),
        (denoise, outputnode, [
            ("n_denoised", "n_denoised"), ("device", "devices"), ("run_time", "run_times"),
        ]),
    ])  # fmt:skip
    if method == "ddm2":
        labels = pe.Node(
            niu.Function(function=_group_folders, input_names=["groups", "root"],
                         output_names=["labels", "folders"]),
            name="ddm2_groups",
        )
        labels.inputs.root = checkpoint_root
        workflow.connect([
            (split, labels, [("groups", "groups")]),
            (labels, denoise, [("labels", "group_label")]),
            (labels, outputnode, [("labels", "group_labels")]),
            (denoise, outputnode, [("history_file", "history_files"), ("model_file", "model_files")]),
        ])  # fmt:skip
        if checkpoint_root is not None:
            workflow.connect(labels, "folders", denoise, "checkpoint_dir")
    return workflow


def _group_folders(groups, root):
    """Labels of the groups and their checkpoint folders ``<root>/<label>`` (root may be None)."""
    import os

    labels = [str(group["Label"]) for group in groups]
    return labels, [os.path.join(root, label) if root else "" for label in labels]
