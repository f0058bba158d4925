"""Nipype interfaces over the pure DDM2 engine: denoise one volume group, bundle the models."""

from __future__ import annotations

import json
import logging
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.denoise.methods.ddm2 import FLIP_COUNTS, NEIGHBOUR_ORDERS, PRECISIONS, PRESETS, STAGE3_RANGES
from bids_denoise.interfaces.denoiser import (
    DenoisedGroup,
    DenoiserInputSpec,
    DenoiserOutputSpec,
    GroupDenoiser,
)
from bids_denoise.utils.images import load_bvecs, save_like

LOGGER = logging.getLogger("nipype.interface")
#: Keys of the history JSON (the report plots them; keep them stable).
HISTORY_KEYS = ("stage1_loss", "stage3_loss", "t_star", "stage_seconds", "preset", "steps", "neighbour_order",
                "stage3_t_min", "stage3_t_max")


class _DDM2InputSpec(DenoiserInputSpec):
    bvec_file = File(exists=True, desc="FSL b-vectors of in_file (3 rows, one column per volume), for the "
                     "direction-aware Stage I; without it the Stage-I inputs follow acquisition order")
    preset = traits.Enum(*PRESETS, usedefault=True, desc="DDM2 preset (paper, fast, cpu, smoke)")
    n_neighbours = traits.Range(low=1, desc="Stage-I input volumes (default: the preset's)")
    neighbour_order = traits.Enum(*NEIGHBOUR_ORDERS, desc="how Stage-I inputs are chosen (default: preset)")
    stage3_range = traits.Enum(*STAGE3_RANGES, desc="noise levels Stage III trains on (default: preset)")
    stage1_steps = traits.Range(low=1, desc="Stage I steps (default: the preset's)")
    stage3_steps = traits.Range(low=1, desc="Stage III steps (default: the preset's)")
    sampling_steps = traits.Range(low=0, desc="reverse steps per slice, 0 = full chain (default: preset)")
    batch_size = traits.Range(low=1, desc="training batch in slices (default: the preset's)")
    inference_batch_size = traits.Range(low=1, desc="slices denoised together (default: the preset's)")
    flips = traits.Enum(*FLIP_COUNTS, desc="flip variants averaged at inference (default: the preset's)")
    precision = traits.Enum(*PRECISIONS, desc="fp32 or bf16 autocast (default: the preset's)")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    checkpoint_dir = traits.Str(
        desc="stable directory for the stage checkpoints, outside the node's folder (Nipype empties "
        "a node's folder before it reruns); undefined: no checkpoints",
    )
    group_label = traits.Str(desc="label of the group (recorded in the model file)")
    save_model = traits.Bool(False, usedefault=True, desc="also write the trained networks")
    save_stage1 = traits.Bool(False, usedefault=True,
                              desc="also write the group with its DDM2 volumes replaced by the Stage-I estimates")
    progress = traits.Bool(True, usedefault=True, desc="tqdm progress bars on stderr")


class _DDM2OutputSpec(DenoiserOutputSpec):
    history_file = File(exists=True, desc="JSON: losses, t* per slice, stage times, preset, steps")
    model_file = File(desc="trained networks (torch.save), with save_model and a trained model")
    stage1_file = File(desc="the group denoised by Stage I alone (float32), with save_stage1 and a trained model")


class DDM2(GroupDenoiser):
    """Denoise one group (all b0s, or the volumes of one shell) with DDM2.

    A shell is denoised by one DDM2 model trained on it (Stages I-III, then inference). A b0
    group is copied through, or denoised with Patch2Self when it has enough volumes and
    ``b0_denoising`` is on. Checkpoints go to ``checkpoint_dir``, so a rerun of the node (after
    a crash, a wall-time kill or a changed downstream node) skips finished stages and resumes
    the interrupted one.

    ``checkpoint_dir`` must not be inside the node's own folder: before (re)running a node,
    Nipype 1.x empties its folder (``Node.run`` calls ``emptydirs``) unless the interface sets
    ``can_resume`` and an ``_0x<hash>_unfinished.json`` marker is left, and that marker is
    deleted when the interface raises, so a crashed node always restarts in an empty folder.
    """

    input_spec = _DDM2InputSpec
    output_spec = _DDM2OutputSpec

    def _overrides(self) -> dict:
        names = ("stage1_steps", "stage3_steps", "sampling_steps", "batch_size", "inference_batch_size",
                 "flips", "precision", "n_neighbours", "neighbour_order", "stage3_range")
        return {name: getattr(self.inputs, name) for name in names if isdefined(getattr(self.inputs, name))}

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        from bids_denoise.denoise.ddm2 import ddm2_denoise

        checkpoint_dir = self.inputs.checkpoint_dir if isdefined(self.inputs.checkpoint_dir) else None
        bvecs = load_bvecs(self.inputs.bvec_file, data.shape[3]) if isdefined(self.inputs.bvec_file) else None
        result = ddm2_denoise(
            data, bvals, bvecs=bvecs, preset=self.inputs.preset, b0_threshold=self.inputs.b0_threshold,
            b0_denoising=self.inputs.b0_denoising, fit_mask=mask, device=device,
            seed=self.inputs.seed, checkpoint_dir=checkpoint_dir, progress=self.inputs.progress,
            return_model=self.inputs.save_model, return_stage1=self.inputs.save_stage1, **self._overrides(),
        )
        return DenoisedGroup(result.denoised, result.noise, int(result.n_denoised), str(result.device),
                             run_time=result.run_time,
                             extra={"history": result.history, "model": result.model_state, "stage1": result.stage1})

    def _save_extra(self, result: DenoisedGroup, img, runtime) -> None:
        from bids_denoise.denoise.ddm2.checkpoints import export_model

        history = {key: result.extra["history"].get(key) for key in HISTORY_KEYS}
        if self.inputs.save_stage1 and result.extra.get("stage1") is not None:
            self._results["stage1_file"] = save_like(img, result.extra["stage1"], runtime.cwd,
                                                     "stage1_dwi.nii.gz")
        history_file = os.path.join(runtime.cwd, "ddm2_history.json")
        with open(history_file, "w") as stream:
            json.dump(history, stream)
        self._results["history_file"] = history_file
        if self.inputs.save_model and result.extra["model"] is not None:
            label = self.inputs.group_label if isdefined(self.inputs.group_label) else None
            model_file = os.path.join(runtime.cwd, "ddm2_model.pt")
            export_model(model_file, {**result.extra["model"], "group": label or ""})
            self._results["model_file"] = model_file


class _BundleModelsInputSpec(BaseInterfaceInputSpec):
    model_files = traits.List(traits.Any, mandatory=True,
                              desc="model files of the groups (groups without a model may be missing or None)")


class _BundleModelsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="one file {'groups': {label: model}} (possibly empty)")


class BundleModels(SimpleInterface):
    """Gather the per-group DDM2 model files of one run into one file ``{label: model}``.

    The label is read from each file (Nipype drops undefined MapNode outputs from its lists,
    so the files cannot be matched to the groups by position).
    """

    input_spec = _BundleModelsInputSpec
    output_spec = _BundleModelsOutputSpec

    def _run_interface(self, runtime):
        import torch

        from bids_denoise.denoise.ddm2.checkpoints import export_model

        groups = {}
        for index, path in enumerate(self.inputs.model_files):
            if path is None or not isdefined(path) or not os.path.isfile(str(path)):
                continue
            model = torch.load(path, map_location="cpu", weights_only=True)
            groups[str(model.get("group") or f"group{index}")] = model
        out_file = os.path.join(runtime.cwd, "ddm2_models.pt")
        export_model(out_file, {"groups": groups})
        self._results["out_file"] = out_file
        return runtime
