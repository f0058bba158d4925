"""Nipype interfaces that draw the reportlets of one run and sink them to ``sub-X/figures/``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise.denoise.shells import B0_THRESHOLD
from bids_denoise.errors import DataError
from bids_denoise.reports import names
from bids_denoise.utils.atomic import atomic_copy, atomic_write_json
from bids_denoise.utils.derivatives import derivative_path
from bids_denoise.utils.images import load_bvals, load_bvecs

LOGGER = logging.getLogger("nipype.interface")


class _DenoisingReportletsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the raw 4D DWI series")
    denoised_file = File(exists=True, mandatory=True, desc="its denoised version (same grid)")
    bval_file = File(exists=True, mandatory=True, desc="b-values of in_file")
    bvec_file = File(exists=True, desc="gradient directions of in_file (FSL layout), for the FA figure")
    groups = traits.List(traits.Dict, mandatory=True, desc="volume groups from SplitShells")
    noise_file = File(exists=True, desc="3D noise map (residual RMS)")
    history_files = InputMultiObject(File(exists=True), desc="DDM2 history JSON, one per group")
    sigma_file = File(exists=True, desc="MP-PCA noise-sigma map (3D)")
    rank_file = File(exists=True, desc="MP-PCA rank maps (4D, one volume per group)")
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b <= threshold is a b0")
    method = traits.Str("patch2self", usedefault=True, desc="denoiser, for titles")
    title = traits.Str(desc="run name shown in figure titles")


class _DenoisingReportletsOutputSpec(TraitedSpec):
    figure_files = traits.List(File(exists=True), desc="reportlet files (PNG/SVG)")
    figure_descs = traits.List(traits.Str, desc="desc- label of each reportlet")
    stats_file = File(exists=True, desc="JSON of the statistics behind the reportlets")


class DenoisingReportlets(SimpleInterface):
    """Brain mask, before/after/residual mosaics, residual and noise plots of one run.

    Writes, in the node's folder, ``<desc>.<ext>`` for every reportlet (see
    :mod:`bids_denoise.reports.names`) and ``reportstats.json`` with every number plotted
    (:func:`bids_denoise.reports.stats.residual_statistics`, plus geometry, the figure list and,
    for DDM2, a summary of each training history).
    """

    input_spec = _DenoisingReportletsInputSpec
    output_spec = _DenoisingReportletsOutputSpec

    def _run_interface(self, runtime):
        from bids_denoise.reports.reportlets import draw_reportlets

        raw_img = nb.as_closest_canonical(nb.load(self.inputs.in_file))
        denoised_img = nb.as_closest_canonical(nb.load(self.inputs.denoised_file))
        if raw_img.shape != denoised_img.shape or len(raw_img.shape) != 4:
            raise DataError(
                f"{self.inputs.denoised_file}: shape {denoised_img.shape} does not match the raw "
                f"series {raw_img.shape}"
            )
        raw = np.asarray(raw_img.dataobj, dtype=np.float32)
        denoised = np.asarray(denoised_img.dataobj, dtype=np.float32)
        bvals = load_bvals(self.inputs.bval_file, raw.shape[3])
        zooms = [float(z) for z in raw_img.header.get_zooms()[:3]]
        noise = None
        if isdefined(self.inputs.noise_file):
            noise = np.asarray(nb.as_closest_canonical(nb.load(self.inputs.noise_file)).dataobj, dtype=np.float32)
            if noise.shape != raw.shape[:3]:
                LOGGER.warning("%s: noise map shape %s does not fit; not shown", self.inputs.noise_file, noise.shape)
                noise = None
        maps = {}
        for name in ("sigma", "rank"):
            path = getattr(self.inputs, f"{name}_file")
            if isdefined(path):
                maps[name] = np.asarray(nb.as_closest_canonical(nb.load(path)).dataobj, dtype=np.float32)
        bvecs = None
        if isdefined(self.inputs.bvec_file):  # FA needs no reorientation: it is rotation invariant
            try:
                bvecs = load_bvecs(self.inputs.bvec_file, raw.shape[3])
            except DataError as err:
                LOGGER.warning("%s; no FA figure", err)
        title = self.inputs.title if isdefined(self.inputs.title) else Path(self.inputs.in_file).name
        made, stats = draw_reportlets(
            raw, denoised, bvals, [dict(g) for g in self.inputs.groups], Path(runtime.cwd), zooms=zooms,
            title=title, b0_threshold=self.inputs.b0_threshold, noise=noise,
            history_files=list(self.inputs.history_files) if isdefined(self.inputs.history_files) else [],
            sigma=maps.get("sigma"), ranks=maps.get("rank"), bvecs=bvecs,
        )
        stats.update(
            Method=self.inputs.method,
            Source=Path(self.inputs.in_file).name,
            Orientation="RAS (as displayed)",
            Shape=[int(s) for s in raw.shape],
            Zooms=zooms,
            B0Threshold=float(self.inputs.b0_threshold),
            Figures=[{"Desc": desc, "File": Path(path).name} for desc, path in made],
        )
        stats_file = atomic_write_json(Path(runtime.cwd) / "reportstats.json", stats)
        self._results["figure_files"] = [str(path) for _, path in made]
        self._results["figure_descs"] = [desc for desc, _ in made]
        self._results["stats_file"] = str(stats_file)
        return runtime


class _ReportletsSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivative dataset")
    source_file = File(mandatory=True, desc="raw file whose entities name the reportlets")
    in_files = traits.List(File(exists=True), mandatory=True, desc="reportlets to write")
    descs = traits.List(traits.Str, mandatory=True, desc="desc- label of each file")
    stats_file = File(exists=True, desc="statistics JSON (written as desc-reportstats)")
    remove_stale = traits.Bool(True, usedefault=True, desc="delete this run's reportlets not in in_files")


class _ReportletsSinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="the written files")


class ReportletsSink(SimpleInterface):
    """Copy a run's reportlets to ``<base>/sub-X/figures/<entities>_desc-<desc>_dwi.<ext>``.

    Reportlets of the same run left from an earlier run with other settings (a shell that is now
    pooled, DDM2 plots after switching to Patch2Self) are removed, so the report never mixes
    runs. Files of other runs and files that are not reportlets are never touched.
    """

    input_spec = _ReportletsSinkInputSpec
    output_spec = _ReportletsSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        if len(self.inputs.in_files) != len(self.inputs.descs):
            raise ValueError("in_files and descs differ in length")
        pairs = list(zip(self.inputs.in_files, self.inputs.descs))
        if isdefined(self.inputs.stats_file):
            pairs.append((self.inputs.stats_file, names.STATS_DESC))
        written = []
        for in_file, desc in pairs:
            extension = "".join(Path(in_file).suffixes) or ".dat"
            target = derivative_path(self.inputs.source_file, self.inputs.base_directory, desc=desc,
                                     suffix=names.SUFFIX, extension=extension, datatype="figures")
            written.append(atomic_copy(in_file, target))
        if self.inputs.remove_stale:
            self._remove_stale(written)
        self._results["out_files"] = [str(p) for p in written]
        return runtime

    def _remove_stale(self, written):
        probe = derivative_path(self.inputs.source_file, self.inputs.base_directory, desc="X",
                                suffix=names.SUFFIX, extension=".png", datatype="figures")
        prefix = probe.name.split("_desc-X_")[0] + "_desc-"
        keep = {p.name for p in written}
        for path in probe.parent.glob(f"{prefix}*"):
            rest = path.name[len(prefix):]
            desc, sep, tail = rest.partition("_")
            if (sep and tail.startswith(names.SUFFIX + ".") and names.is_reportlet(desc)
                    and path.name not in keep and path.is_file()):
                try:
                    os.unlink(path)
                except OSError as exc:  # pragma: no cover - permissions
                    LOGGER.warning("Could not remove the stale reportlet %s (%s).", path, exc)
