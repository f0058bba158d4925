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

from bids_denoise.denoise.methods.ddm2 import FLIP_COUNTS, PRECISIONS, PRESETS
from bids_denoise.interfaces.denoiser import (
    DenoisedGroup,
    DenoiserInputSpec,
    DenoiserOutputSpec,
    GroupDenoiser,
)

LOGGER = logging.getLogger("nipype.interface")
#: Keys of the history JSON (the report plots them; keep them stable).
HISTORY_KEYS = ("stage1_loss", "stage3_loss", "t_star", "stage_seconds", "preset", "steps")


class _DDM2InputSpec(DenoiserInputSpec):
    preset = traits.Enum(*PRESETS, usedefault=True, desc="DDM2 preset (paper, fast, smoke)")
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
    progress = traits.Bool(True, usedefault=True, desc="tqdm progress bars on stderr")


class _DDM2OutputSpec(DenoiserOutputSpec):
    history_file = File(exists=True, desc="JSON: losses, t* per slice, stage times, preset, steps")
    model_file = File(desc="trained networks (torch.save), with save_model and a trained model")


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
                 "flips", "precision")
        return {name: getattr(self.inputs, name) for name in names if isdefined(getattr(self.inputs, name))}

    def _denoise(self, data, bvals, mask, device) -> DenoisedGroup:
        from bids_denoise.denoise.ddm2 import ddm2_denoise

        checkpoint_dir = self.inputs.checkpoint_dir if isdefined(self.inputs.checkpoint_dir) else None
        result = ddm2_denoise(
            data, bvals, preset=self.inputs.preset, b0_threshold=self.inputs.b0_threshold,
            b0_denoising=self.inputs.b0_denoising, fit_mask=mask, device=device,
            seed=self.inputs.seed, checkpoint_dir=checkpoint_dir, progress=self.inputs.progress,
            return_model=self.inputs.save_model, **self._overrides(),
        )
        return DenoisedGroup(result.denoised, result.noise, int(result.n_denoised), str(result.device),
                             run_time=result.run_time,
                             extra={"history": result.history, "model": result.model_state})

    def _save_extra(self, result: DenoisedGroup, img, runtime) -> None:
        from bids_denoise.denoise.ddm2.checkpoints import export_model

        history = {key: result.extra["history"][key] for key in HISTORY_KEYS}
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
