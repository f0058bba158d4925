"""Write derivatives into the output dataset, named after their raw source file."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.utils.atomic import atomic_copy, atomic_write_json
from bids_denoise.utils.derivatives import derivative_path, split_extension

_NIFTI = (".nii.gz", ".nii")


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivative dataset")
    source_file = File(mandatory=True, desc="raw file whose entities name the output")
    in_file = File(exists=True, mandatory=True, desc="file to write")
    desc = traits.Str(mandatory=True, desc="value of the desc- entity")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix, e.g. dwi")
    extension = traits.Str(desc="extension with its dot; taken from in_file if not given")
    meta_dict = traits.Dict(desc="JSON sidecar written next to a NIfTI output")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the written derivative")
    out_meta = File(desc="its JSON sidecar, if one was written")


class DerivativesDataSink(SimpleInterface):
    """Copy one file into the derivative dataset, atomically, with an optional sidecar.

    Entities (sub, ses, acq, dir, run, part) come from ``source_file``; a reader never sees a
    partial file because every write goes to a temporary file that is then renamed.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        extension = self.inputs.extension if isdefined(self.inputs.extension) else None
        extension = extension or split_extension(Path(self.inputs.in_file).name)[1]
        out_file = derivative_path(
            self.inputs.source_file,
            self.inputs.base_directory,
            desc=self.inputs.desc,
            suffix=self.inputs.suffix,
            extension=extension,
        )
        atomic_copy(self.inputs.in_file, out_file)
        self._results["out_file"] = str(out_file)
        if isdefined(self.inputs.meta_dict) and extension in _NIFTI:
            sidecar = out_file.with_name(out_file.name[: -len(extension)] + ".json")
            atomic_write_json(sidecar, self.inputs.meta_dict)
            self._results["out_meta"] = str(sidecar)
        return runtime
