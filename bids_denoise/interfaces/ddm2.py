"""Nipype interfaces over the pure DDM2 engine: denoise one volume group, bundle the models."""

from __future__ import annotations

import json
import logging
import os
import warnings

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.denoise.shells import B0_THRESHOLD
from bids_denoise.errors import DataError
from bids_denoise.interfaces.shells import _save_like, read_group
from bids_denoise.utils.threads import limit_threads

LOGGER = logging.getLogger("nipype.interface")
#: Keys of the history JSON (the report plots them; keep them stable).
HISTORY_KEYS = ("stage1_loss", "stage3_loss", "t_star", "stage_seconds", "preset", "steps")
_PRESETS = ("paper", "fast", "smoke")


class _DDM2InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D image of one group (b0s or one shell)")
    bval_file = File(exists=True, mandatory=True, desc="b-values of in_file")
    mask_file = File(exists=True, desc="voxels Patch2Self fits the b0 regressions on (DDM2 uses all)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    b0_denoising = traits.Bool(True, usedefault=True, desc="denoise >= 2 b0s with Patch2Self (else copy)")
    preset = traits.Enum(*_PRESETS, usedefault=True, desc="DDM2 preset (paper, fast, smoke)")
    stage1_steps = traits.Range(low=1, desc="Stage I steps (default: the preset's)")
    stage3_steps = traits.Range(low=1, desc="Stage III steps (default: the preset's)")
    sampling_steps = traits.Range(low=0, desc="reverse steps per slice, 0 = full chain (default: preset)")
    batch_size = traits.Range(low=1, desc="training batch in slices (default: the preset's)")
    inference_batch_size = traits.Range(low=1, desc="slices denoised together (default: the preset's)")
    flips = traits.Enum(1, 2, 4, desc="flip variants averaged at inference (default: the preset's)")
    precision = traits.Enum("fp32", "bf16", desc="fp32 or bf16 autocast (default: the preset's)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="PyTorch device")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads (BLAS and PyTorch)")
    checkpoint_dir = traits.Str(
        desc="stable directory for the stage checkpoints, outside the node's folder (Nipype empties "
        "a node's folder before it reruns); undefined: no checkpoints",
    )
    group_label = traits.Str(desc="label of the group (recorded in the model file)")
    save_model = traits.Bool(False, usedefault=True, desc="also write the trained networks")
    progress = traits.Bool(True, usedefault=True, desc="tqdm progress bars on stderr")


class _DDM2OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised group, float32")
    noise_file = File(exists=True, desc="3D residual RMS of the denoised volumes")
    n_denoised = traits.Int(desc="volumes that were denoised (0 if copied through)")
    device = traits.Str(desc="the device that ran")
    run_time = traits.Float(desc="seconds spent in the denoiser")
    history_file = File(exists=True, desc="JSON: losses, t* per slice, stage times, preset, steps")
    model_file = File(desc="trained networks (torch.save), with save_model and a trained model")


class DDM2(SimpleInterface):
    """Denoise one group (all b0s, or the volumes of one shell) with DDM2.

    A shell is denoised by one DDM2 model trained on it (Stages I-III, then inference). A b0
    group is copied through, or denoised with Patch2Self when it has two or more volumes and
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

    def _run_interface(self, runtime):
        from bids_denoise.denoise.ddm2 import ddm2_denoise
        from bids_denoise.denoise.ddm2.checkpoints import export_model
        from bids_denoise.denoise.patch2self import resolve_device

        img, data, bvals, mask = read_group(self.inputs.in_file, self.inputs.bval_file, self.inputs.mask_file)
        device = resolve_device(self.inputs.device)
        checkpoint_dir = self.inputs.checkpoint_dir if isdefined(self.inputs.checkpoint_dir) else None
        with limit_threads(self.inputs.num_threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                result = ddm2_denoise(
                    data, bvals, preset=self.inputs.preset, b0_threshold=self.inputs.b0_threshold,
                    b0_denoising=self.inputs.b0_denoising, fit_mask=mask, device=device,
                    seed=self.inputs.seed, checkpoint_dir=checkpoint_dir, progress=self.inputs.progress,
                    return_model=self.inputs.save_model, **self._overrides(),
                )
            except ValueError as err:
                raise DataError(f"{self.inputs.in_file}: {err}") from err
        for warning in caught:
            LOGGER.warning("%s: %s", self.inputs.in_file, warning.message)

        self._results["run_time"] = round(result.run_time, 3)
        self._results["device"] = result.device
        self._results["n_denoised"] = int(result.n_denoised)
        self._results["out_file"] = _save_like(img, result.denoised, runtime.cwd, "denoised_dwi.nii.gz")
        self._results["noise_file"] = _save_like(img, result.noise, runtime.cwd, "noise_dwimap.nii.gz")
        history = {key: result.history[key] for key in HISTORY_KEYS}
        history_file = os.path.join(runtime.cwd, "ddm2_history.json")
        with open(history_file, "w") as stream:
            json.dump(history, stream)
        self._results["history_file"] = history_file
        if self.inputs.save_model and result.model_state is not None:
            label = self.inputs.group_label if isdefined(self.inputs.group_label) else None
            model_file = os.path.join(runtime.cwd, "ddm2_model.pt")
            export_model(model_file, {**result.model_state, "group": label or ""})
            self._results["model_file"] = model_file
        return runtime


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
