"""Every file bids_denoise writes into the derivatives dataset, listed once.

A run-level output is named after its raw series: the raw entities, then ``desc-<desc>``, the
suffix and the extension (:func:`bids_denoise.utils.derivatives.derivative_path`). A
dataset-level output sits at a fixed place under the output folder. Each entry says whether a
JSON sidecar goes with the file and which ``.bidsignore`` lines cover it (files without a BIDS
rule). The sinks, the preflight check for earlier outputs, the group level, the reports,
``.bidsignore`` and the README's table of outputs all read this list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Output:
    """One kind of output file.

    Attributes
    ----------
    key : str
        How the code refers to it (``"dwi"``, ``"noise"``, ...).
    what : str
        One line for users (the README's table).
    desc, suffix, extension : str
        Name parts of a run-level output (``None`` for dataset-level files).
    sidecar : bool
        Whether a JSON sidecar is written next to it.
    bidsignore : tuple of str
        ``.bidsignore`` lines that cover it (and its sidecar).
    location : str
        Where a dataset-level file goes, relative to the output folder.
    method : str, optional
        Written only by this method, when asked for (e.g. DDM2's trained networks).
    """

    key: str
    what: str
    desc: str | None = None
    suffix: str | None = None
    extension: str | None = None
    sidecar: bool = False
    bidsignore: tuple[str, ...] = ()
    location: str | None = None
    method: str | None = None

    @property
    def name_pattern(self) -> str:
        """``*_desc-denoised_dwi.nii.gz`` (or the location of a dataset-level file)."""
        if self.location is not None:
            return self.location
        return f"*_desc-{self.desc}_{self.suffix}{self.extension}"

    @property
    def sidecar_pattern(self) -> str:
        return f"*_desc-{self.desc}_{self.suffix}.json"

    def path(self, source_file, output_dir) -> Path:
        """Where this output of ``source_file`` goes in ``output_dir``."""
        from bids_denoise.utils.derivatives import derivative_path

        return derivative_path(source_file, output_dir, desc=self.desc, suffix=self.suffix,
                               extension=self.extension)

    def sidecar_path(self, source_file, output_dir) -> Path:
        from bids_denoise.utils.derivatives import derivative_path

        return derivative_path(source_file, output_dir, desc=self.desc, suffix=self.suffix, extension=".json")


RUN_OUTPUTS = (
    Output("dwi", "the denoised series (float32), volumes in the original order, with a sidecar "
           "recording the method, its parameters, the volume groups and provenance",
           desc="denoised", suffix="dwi", extension=".nii.gz", sidecar=True),
    # The derivative dwi rule allows only .nii[.gz]/.json; gradient tables next to each denoised
    # series are the de facto convention (QSIPrep, MRtrix3_connectome).
    Output("bval", "its b-values (unchanged)", desc="denoised", suffix="dwi", extension=".bval",
           bidsignore=("*_dwi.bval",)),
    Output("bvec", "its b-vectors (unchanged)", desc="denoised", suffix="dwi", extension=".bvec",
           bidsignore=("*_dwi.bvec",)),
    # No BIDS suffix for a noise map yet (BEP016).
    Output("noise", "3D map of the residual's root mean square over the denoised volumes, with a sidecar",
           desc="noise", suffix="dwimap", extension=".nii.gz", sidecar=True,
           bidsignore=("*_dwimap.nii.gz", "*_dwimap.json")),
    Output("sigma", "3D map of the noise standard deviation (MP-PCA over all volumes, Rician-corrected, at "
           "the level of the b0 repeats when they agree), in the input's units, with a sidecar", desc="sigma", suffix="dwimap",
           extension=".nii.gz", sidecar=True, bidsignore=("*_dwimap.nii.gz", "*_dwimap.json")),
    Output("rank", "MP-PCA's number of signal components per voxel, one volume per volume group "
           "(--method mppca), with a sidecar", desc="rank", suffix="dwimap", extension=".nii.gz",
           sidecar=True, bidsignore=("*_dwimap.nii.gz", "*_dwimap.json")),
    Output("model", "the trained networks of every group (--ddm2-save-model), a PyTorch file",
           desc="ddm2", suffix="model", extension=".pt", bidsignore=("*_model.pt",), method="ddm2"),
)
DATASET_OUTPUTS = (
    Output("description", "the derivatives dataset's description", location="dataset_description.json"),
    Output("bidsignore", "the files the BIDS validator should skip", location=".bidsignore"),
    Output("figures", "the reportlets (PNG, SVG) and their statistics (JSON)", location="sub-<label>/figures/",
           bidsignore=("**/figures", "sub-*/figures")),
    Output("logs", "the methods text (CITATION.md, .bib, .html) and each run's configuration",
           location="logs/", bidsignore=("logs/", "sub-*/log")),
    Output("reports", "one HTML report per subject", location="sub-<label>.html", bidsignore=("*.html",)),
    Output("group_summary", "the group-level table (analysis level group)", location="group_summary.tsv",
           bidsignore=("/group_summary.tsv", "/group_summary.json")),
)
OUTPUTS = {output.key: output for output in (*RUN_OUTPUTS, *DATASET_OUTPUTS)}


def bidsignore_lines(keys=None) -> tuple[str, ...]:
    """``.bidsignore`` lines of the outputs ``keys`` (default: every output of every run), each once."""
    chosen = [OUTPUTS[key] for key in keys] if keys is not None else [o for o in OUTPUTS.values() if not o.method]
    return tuple(dict.fromkeys(line for output in chosen for line in output.bidsignore))


__all__ = ["DATASET_OUTPUTS", "OUTPUTS", "Output", "RUN_OUTPUTS", "bidsignore_lines"]
