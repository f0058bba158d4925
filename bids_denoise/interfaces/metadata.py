"""Assemble the JSON sidecars that record what was done to a run."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_denoise import __version__
from bids_denoise.denoise.methods import METHODS
from bids_denoise.denoise.shells import VolumeGroup, group_decisions

# Raw metadata that is still true after denoising and that later steps (SDC, eddy) need.
CARRIED_METADATA = (
    "PhaseEncodingDirection", "TotalReadoutTime", "EffectiveEchoSpacing", "SliceTiming",
    "SliceEncodingDirection", "MultibandAccelerationFactor", "EchoTime", "RepetitionTime",
    "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName",
)


class _DenoisingMetadataInputSpec(BaseInterfaceInputSpec):
    method = traits.Enum(*METHODS, mandatory=True, desc="denoiser")
    parameters = traits.Dict(mandatory=True, desc="every parameter of the method and the split")
    groups = traits.List(traits.Dict, mandatory=True, desc="groups from SplitShells")
    n_denoised = traits.List(traits.Int, mandatory=True, desc="denoised volumes per group")
    devices = traits.List(traits.Str, mandatory=True, desc="device of each group")
    run_times = traits.List(traits.Float, mandatory=True, desc="seconds per group")
    sources = traits.List(traits.Str, mandatory=True, desc="bids:raw: URIs of the inputs")
    raw_metadata = traits.Dict(desc="sidecar metadata of the raw run")
    noise_note = traits.Str(desc="how the noise map's level was found (EstimateNoise)")
    error_estimates = traits.List(traits.Dict, desc="each group's error estimate (GroupDenoiser.error_estimate)")
    quality_control = traits.Dict(desc="QC numbers and flags (QualityControl), stored as QualityControl")
    provenance = traits.Dict(desc="bids_denoise.utils.provenance record (version, git commit, container, "
                             "command line, configuration), stored as Provenance")


class _DenoisingMetadataOutputSpec(TraitedSpec):
    dwi_metadata = traits.Dict(desc="sidecar of the denoised series")
    noise_metadata = traits.Dict(desc="sidecar of the noise map")
    sigma_metadata = traits.Dict(desc="sidecar of the noise-sigma map")
    rank_metadata = traits.Dict(desc="sidecar of the MP-PCA rank maps")


#: What each map is, for its sidecar's Description (``{method}``: the method's label).
MAP_DESCRIPTIONS = {
    "noise": "Root mean square over the denoised volumes of the {method} residual (noisy minus "
             "denoised signal), in the units of the input series.",
    "sigma": "Standard deviation of the Gaussian noise in each channel of the complex data, in the units "
             "of the input series: MP-PCA over all volumes (the Marchenko-Pastur bulk of the eigenvalues "
             "of 5x5x5 windows, with the noise edge of Cordero-Grande et al. 2019), corrected for the lower "
             "variance of Rician magnitudes at low signal, and "
             "set to the level measured from the spread of 3 or more b0 volumes when that agrees within "
             "a factor 1.25. It drives the Rician correction.",
    "rank": "Number of principal components MP-PCA kept as signal in the windows around each voxel; "
            "one volume per volume group, in the order of VolumeGroups.",
}


class DenoisingMetadata(SimpleInterface):
    """Build the sidecars of the denoised series and of its maps."""

    input_spec = _DenoisingMetadataInputSpec
    output_spec = _DenoisingMetadataOutputSpec

    def _run_interface(self, runtime):
        method = METHODS[self.inputs.method].label
        groups = []
        b0_denoising = bool(self.inputs.parameters.get("B0Denoising", True))
        min_volumes = METHODS[self.inputs.method].min_group_volumes
        for group, n_denoised, device, seconds in zip(
            self.inputs.groups, self.inputs.n_denoised, self.inputs.devices, self.inputs.run_times
        ):
            groups.append({**group, "Denoised": n_denoised > 0, "Device": device, "RunTime": seconds})
        error_summary = _add_error_estimates(groups, self.inputs.error_estimates
                                             if isdefined(self.inputs.error_estimates) else [])
        minimum_of = {entry.label: entry.min_group_volumes for entry in METHODS.values()}
        for entry in groups:
            # --method auto: the group follows the rules of the method it kept (Patch2Self copies
            # a group of 2, which must then be reported like any copy)
            chosen_minimum = minimum_of.get(entry.get("Method"), min_volumes)
            notes = group_decisions(_as_volume_group(entry), b0_denoising=b0_denoising, min_volumes=chosen_minimum)
            if notes:
                entry["Notes"] = notes
        raw = self.inputs.raw_metadata if isdefined(self.inputs.raw_metadata) else {}
        carried = {key: raw[key] for key in CARRIED_METADATA if key in raw}
        provenance = {
            "DenoisingMethod": method,
            "DenoisingParameters": dict(self.inputs.parameters),
            "VolumeGroups": groups,
            "Devices": sorted(set(self.inputs.devices)),
            "RunTime": round(sum(self.inputs.run_times), 3),
            "SoftwareName": "bids_denoise",
            "SoftwareVersion": __version__,
        }
        if error_summary:
            provenance["ErrorEstimate"] = error_summary
        if isdefined(self.inputs.quality_control) and self.inputs.quality_control:
            provenance["QualityControl"] = dict(self.inputs.quality_control)
        if isdefined(self.inputs.provenance) and self.inputs.provenance:
            provenance["Provenance"] = dict(self.inputs.provenance)
        shells = [g for g in groups if g["Label"] != "b0"]
        self._results["dwi_metadata"] = {
            **carried,
            "Description": (
                f"Diffusion-weighted series denoised with {method}; "
                f"{len(shells)} diffusion-weighted group(s) and "
                f"{'a' if len(groups) > len(shells) else 'no'} b0 group, volumes in the original order."
            ),
            "Sources": list(self.inputs.sources),
            "SkullStripped": False,
            **provenance,
        }
        for key, text in MAP_DESCRIPTIONS.items():
            self._results[f"{key}_metadata"] = {
                "Description": text.format(method=method),
                "Sources": list(self.inputs.sources),
                "SkullStripped": False,
                **provenance,
            }
        if isdefined(self.inputs.noise_note) and self.inputs.noise_note:
            self._results["sigma_metadata"]["NoiseEstimate"] = self.inputs.noise_note
        return runtime


def _add_error_estimates(groups: list, estimates: list) -> dict:
    """Put each group's ``EstimatedRMSE`` (and how it was found) into its entry; return the
    run's summary for the sidecar (empty when nothing was estimated)."""
    from bids_denoise.denoise.error import METHOD_TEXT

    total, count = 0.0, 0
    for entry, estimate in zip(groups, estimates):
        if not estimate:
            continue
        details = dict(estimate)
        rmse = details.pop("EstimatedRMSE")
        if "Chosen" in details:  # --method auto
            entry["Method"] = details.pop("Chosen")
            entry["CandidateRMSE"] = details.pop("Candidates")
            for key in ("ContrastRetained", "PassedOver"):
                if key in details:
                    entry[key] = details.pop(key)
        entry["EstimatedRMSE"] = rmse
        entry["ErrorEstimate"] = details
        total += rmse**2 * details["Values"]
        count += details["Values"]
    if not count:
        return {}
    return {
        "EstimatedRMSE": round((total / count) ** 0.5, 6),
        "Units": "those of the input series",
        "Region": "the head mask (Otsu threshold of the mean b0), every volume",
        "Method": METHOD_TEXT,
    }


def _as_volume_group(group: dict) -> VolumeGroup:
    """A sidecar group entry (``VolumeGroup.as_dict``) back as a :class:`VolumeGroup`."""
    volumes = tuple(int(v) for v in group["Volumes"])
    return VolumeGroup(str(group["Label"]), volumes, (float(group["BValue"]),) * len(volumes),
                       group["Label"] == "b0", tuple(group.get("Notes", ())))
