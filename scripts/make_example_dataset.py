#!/usr/bin/env python
"""Rebuild ``bids_denoise/data/example_ds`` from the real scans in ``../shared/data``.

The example dataset is what ``make demo``, the smoke tests and the documentation run on, so it
must stay small (under 5 MB), valid BIDS and exactly reproducible. This script is the only way it
is made: every crop, every copied metadata key and every licence notice is written down here.

Only sources whose licence allows redistribution are used:

==============================  ============================================  ================
source folder                   becomes                                       licence
==============================  ============================================  ================
siemens_trio_dti_b1000_20dirx2  sub-01/ses-1 acq-dti dir-AP run-1 and run-2   BSD-2-Clause
uih_dti_b930_16dir_b0_1p25      sub-01/ses-2 acq-dti dir-PA (b0 at b=1.25)    BSD-2-Clause
mdt_multishell_b1000_b2000_...  sub-02 acq-multishell (b=0/1000/2000)         LGPL-3.0+
dipy_small101D_dsi_b0_15        sub-02 acq-dsi (b0 at b=15, root bval/bvec)   BSD-3-Clause
==============================  ============================================  ================

The MRtrix3 ``test_data`` sets state no licence, so they are not redistributed.

Determinism: NIfTIs are serialised in memory and gzipped with ``mtime=0``; text files are written
with fixed content and ``\\n`` line ends; b-value and b-vector tokens are copied verbatim (never
re-formatted), so the gradient tables are bit-exact copies of the source columns.

Usage::

    python scripts/make_example_dataset.py            # rebuild in place
    python scripts/make_example_dataset.py --validate # and run bids-validator-deno on it
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUTPUT = REPO_ROOT / "bids_denoise" / "data" / "example_ds"
MAX_BYTES = 5_000_000
DATASET_VERSION = "1.0.0"
RELEASE_DATE = "2026-11-23"
BIDS_VERSION = "1.10.1"
LICENSE_DIR = Path("/usr/share/common-licenses")

# Keys copied from the dcm2niix sidecars: only keys the BIDS schema defines. Site-identifying
# fields (institution, address, station, serial number, study/patient descriptions) and per-scan
# clock times are left out on purpose.
SIDECAR_KEYS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "SoftwareVersions",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "PulseSequenceType",
    "PulseSequenceDetails",
    "SliceThickness",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "PartialFourier",
    "ParallelReductionFactorInPlane",
    "ParallelAcquisitionTechnique",
    "MatrixCoilMode",
    "EffectiveEchoSpacing",
    "TotalReadoutTime",
    "PhaseEncodingDirection",
    "ReceiveCoilName",
    "CoilCombinationMethod",
    "NonlinearGradientCorrection",
    "DwellTime",
)


@dataclass(frozen=True)
class Crop:
    """Half-open voxel ranges kept along x, y and z (``None`` keeps the whole axis)."""

    x: tuple[int, int] | None = None
    y: tuple[int, int] | None = None
    z: tuple[int, int] | None = None

    def slices(self, shape) -> tuple[slice, slice, slice]:
        return tuple(
            slice(*(rng if rng is not None else (0, n)))
            for rng, n in zip((self.x, self.y, self.z), shape[:3])
        )

    def describe(self, shape) -> str:
        return ", ".join(
            f"{axis} {s.start}:{s.stop}" for axis, s in zip("xyz", self.slices(shape))
        )


@dataclass(frozen=True)
class RunSpec:
    """One output DWI series and where it comes from."""

    source: str
    relpath: str  # NIfTI path relative to the dataset root
    crop: Crop
    volumes: tuple[int, int] | None = None  # half-open range of volumes kept
    gradients_relpath: str | None = None  # where bval/bvec go (None: next to the NIfTI)
    sidecar_relpath: str | None = None  # where the JSON goes (None: next to the NIfTI)
    sidecar_extra: dict = field(default_factory=dict)  # documented facts not in a dwi.json
    set_spatial_units_mm: bool = False


RUNS = (
    RunSpec(
        source="siemens_trio_dti_b1000_20dirx2",
        relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_run-1_dwi.nii.gz",
        crop=Crop(x=(14, 62), y=(26, 74), z=(25, 33)),
        volumes=(0, 21),
        # The two repeats share one gradient table and one protocol: inherit them.
        gradients_relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_dwi",
        sidecar_relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_dwi.json",
    ),
    RunSpec(
        source="siemens_trio_dti_b1000_20dirx2",
        relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_run-2_dwi.nii.gz",
        crop=Crop(x=(14, 62), y=(26, 74), z=(25, 33)),
        volumes=(21, 42),
        gradients_relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_dwi",
        sidecar_relpath="sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_dir-AP_dwi.json",
    ),
    RunSpec(
        source="uih_dti_b930_16dir_b0_1p25",
        relpath="sub-01/ses-2/dwi/sub-01_ses-2_acq-dti_dir-PA_dwi.nii.gz",
        crop=Crop(x=(8, 52), y=(6, 56), z=(4, 12)),
    ),
    RunSpec(
        source="mdt_multishell_b1000_b2000_2slices",
        relpath="sub-02/dwi/sub-02_acq-multishell_dwi.nii.gz",
        crop=Crop(x=(32, 72), y=(30, 70)),
        # Recorded in the package's b1k_b2k.prtcl (see the source's SOURCE.md).
        sidecar_extra={"EchoTime": 0.06, "RepetitionTime": 7.1},
    ),
    RunSpec(
        source="dipy_small101D_dsi_b0_15",
        relpath="sub-02/dwi/sub-02_acq-dsi_dwi.nii.gz",
        crop=Crop(),
        # A protocol-level gradient table at the root, inherited like ds114's dwi.bval.
        gradients_relpath="acq-dsi_dwi",
        set_spatial_units_mm=True,
    ),
)

PROVENANCE = {
    "siemens_trio_dti_b1000_20dirx2": {
        "url": "https://github.com/neurolabusc/dcm_qa_stc",
        "version": "f3e6492cdb309110632729d5020554191f3cafba",
        "what": "Siemens TrioTim 3T, syngo MR B15, ep2d_DTI_20_dir_AP (2 x [1 b0 + 20 directions "
        "at b=1000]); DICOM converted with dcm2niix v1.0.20260724",
        "license": "BSD-2-Clause",
        "copyright": "Copyright (c) 2019, Chris Rorden",
    },
    "uih_dti_b930_16dir_b0_1p25": {
        "url": "https://github.com/neurolabusc/dcm_qa_stc",
        "version": "f3e6492cdb309110632729d5020554191f3cafba",
        "what": "United Imaging uMR 770 3T, R002, dti_tra_dir16_PA_rot (1 b0 stored at "
        "b=1.25126 + 16 directions at b=929.75), acquired by Shan C Young of United Imaging "
        "Healthcare; DICOM converted with dcm2niix v1.0.20260724",
        "license": "BSD-2-Clause",
        "copyright": "Copyright (c) 2019, Chris Rorden",
    },
    "mdt_multishell_b1000_b2000_2slices": {
        "url": "https://pypi.org/project/mdt/1.2.7/",
        "version": "mdt 1.2.7, mdt/data/mdt_example_data/b1k_b2k/",
        "what": "MDT example data b1k_b2k: in vivo brain, 2 axial slices, preprocessed float32 "
        "(13 b0 + 30 at b=1000 + 60 at b=2000)",
        "license": "LGPL-3.0-or-later",
        "copyright": "Copyright the Microstructure Diffusion Toolbox (MDT) authors",
    },
    "dipy_small101D_dsi_b0_15": {
        "url": "https://pypi.org/project/dipy/1.12.1/",
        "version": "dipy 1.12.1, dipy/data/files/small_101D.{nii.gz,bval,bvec}",
        "what": "DIPY small_101D: in vivo brain ROI, 1 b0 stored at b=15 + 101 DSI/GQI-style "
        "volumes over 55 b-values (310-4065)",
        "license": "BSD-3-Clause",
        "copyright": "Copyright (c) 2008-2026, dipy developers",
    },
}

BSD2_TEXT = """\
Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

BSD3_TEXT = """\
Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written
   permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


# ----------------------------------------------------------------------------------------------
# Gradient tables: tokens are sliced, never re-formatted, so the copies stay bit-exact.
# ----------------------------------------------------------------------------------------------
def read_tokens(path: Path) -> list[list[str]]:
    """Rows of whitespace-separated tokens of an FSL bval/bvec file."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def gradient_text(rows: list[list[str]], volumes: slice) -> str:
    return "".join(" ".join(row[volumes]) + "\n" for row in rows)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def crop_image(img: nib.Nifti1Image, crop: Crop, volumes: slice, *, units_mm: bool):
    """Crop ``img`` in space and time, keeping dtype, scaling and header fields.

    The new affine moves the origin to the first kept voxel: ``A @ [x0, y0, z0, 1]``.
    """
    sx, sy, sz = crop.slices(img.shape)
    data = np.asarray(img.dataobj[sx, sy, sz, volumes])  # raw on-disk values, no scaling
    if data.dtype != img.get_data_dtype():
        raise RuntimeError(f"unexpected scaling in source image ({data.dtype})")
    affine = img.affine.copy()
    first_voxel = np.array([sx.start, sy.start, sz.start])
    affine[:3, 3] = img.affine[:3, :3] @ first_voxel + img.affine[:3, 3]

    header = img.header.copy()
    out = nib.Nifti1Image(data, affine, header=header)
    sform_code = int(img.header["sform_code"])
    qform_code = int(img.header["qform_code"])
    out.set_sform(affine, code=sform_code)
    out.set_qform(affine if qform_code else None, code=qform_code)
    out.set_data_dtype(img.get_data_dtype())
    if units_mm:
        # The source leaves units unset; its 2.5 mm voxels are millimetres (DIPY docs).
        out.header.set_xyzt_units(xyz="mm", t="sec")

    # Sanity check against nibabel's own slicer, which also tracks the affine.
    expected = img.slicer[sx, sy, sz].affine
    if not np.allclose(out.affine, expected, atol=1e-5):
        raise RuntimeError("affine after crop does not match nibabel's slicer")
    return out


def nifti_gz_bytes(img: nib.Nifti1Image) -> bytes:
    """Serialise to ``.nii.gz`` bytes with a fixed gzip header (mtime 0)."""
    raw = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def copy_sidecar(source_json: Path | None, crop_z: slice, extra: dict) -> dict:
    meta = {}
    if source_json is not None and source_json.exists():
        src = json.loads(source_json.read_text())
        meta = {key: src[key] for key in SIDECAR_KEYS if key in src}
        if "SliceTiming" in src:
            # One entry per slice along k; keep the entries of the slices that were kept.
            meta["SliceTiming"] = src["SliceTiming"][crop_z]
    meta.update(extra)
    return meta


# ----------------------------------------------------------------------------------------------
# Text files
# ----------------------------------------------------------------------------------------------
def write_text(root: Path, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() != text:
        raise RuntimeError(f"two different contents for {relpath}")
    path.write_text(text, newline="\n")


def write_json(root: Path, relpath: str, obj) -> None:
    write_text(root, relpath, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def dataset_description() -> dict:
    sources = []
    seen = set()
    for prov in PROVENANCE.values():
        key = (prov["url"], prov["version"])
        if key not in seen:
            seen.add(key)
            sources.append({"URL": prov["url"], "Version": prov["version"]})
    return {
        "Name": "bids_denoise example: small crops of real diffusion MRI scans",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "BSD-2-Clause AND BSD-3-Clause AND LGPL-3.0-or-later",
        "Acknowledgements": (
            "Scans from neurolabusc/dcm_qa_stc (Chris Rorden; the UIH series was acquired by "
            "Shan C Young of United Imaging Healthcare), the MDT example data (mdt 1.2.7) and "
            "the DIPY test data (dipy 1.12.1). See README."
        ),
        "HowToAcknowledge": "Credit the source datasets listed in README and SourceDatasets.",
        "GeneratedBy": [
            {
                "Name": "make_example_dataset.py",
                "Version": DATASET_VERSION,
                "Description": "Crops and renames the source scans; see scripts/ in bids_denoise.",
                "CodeURL": "https://github.com/bids-denoise/bids_denoise",
            }
        ],
        "SourceDatasets": sources,
    }


def readme(summaries: list[str]) -> str:
    lines = [
        "# bids_denoise example dataset",
        "",
        "Small crops of REAL diffusion MRI scans, arranged as a BIDS dataset so that bids_denoise",
        "can be run end to end in seconds (`make demo`, smoke tests, documentation).",
        "Built by `scripts/make_example_dataset.py` in the bids_denoise repository; do not edit",
        "by hand, rerun the script.",
        "",
        "IMPORTANT: participants and sessions are labels for testing only. The series come from",
        "different people and scanners: sub-01/ses-1 and sub-01/ses-2 are NOT the same person,",
        "and sub-02's two series are unrelated to each other. Do not use for research.",
        "",
        "## What each series exercises",
        "",
        "- sub-01/ses-1: two runs (run-1, run-2) of one protocol, with `acq-` and `dir-`; the",
        "  bval/bvec/json without `run-` are inherited by both runs.",
        "- sub-01/ses-2: b0 stored at a small non-zero b-value (1.25126 s/mm2), oblique affine.",
        "- sub-02 acq-multishell: multi-shell (b=0 x13, 1000 x30, 2000 x60), float32.",
        "- sub-02 acq-dsi: b0 stored at b=15, many b-values; its bval/bvec are the root-level",
        "  `acq-dsi_dwi.bval`/`.bvec` (inheritance principle, as in ds114); no JSON sidecar.",
        "",
        "## Files and sources",
        "",
    ]
    lines += summaries
    lines += [
        "## What was changed",
        "",
        "- Images were cropped in space (and sub-01/ses-1 split into its two repeats in time);",
        "  the affine origin was moved to the first kept voxel. Data type and values are",
        "  unchanged (no rescaling, no resampling). The DIPY series got its spatial unit set",
        "  to mm.",
        "- bval/bvec are verbatim copies of the source columns that were kept (3-row bvec).",
        "- JSON sidecars keep only acquisition keys of the dcm2niix sidecars (no site names,",
        "  serial numbers or clock times); SliceTiming keeps the entries of the kept slices.",
        "  The multi-shell sidecar holds EchoTime/RepetitionTime from the MDT protocol file.",
        "",
        "## Caveats",
        "",
        "- The multi-shell series is PREPROCESSED data (float32, interpolated, negative values",
        "  present), not raw scanner output. The sub-01 series are raw magnitude images",
        "  converted from DICOM.",
        "- The DIPY bvec is copied as shipped; DIPY does not state whether it follows the FSL",
        "  convention (x flipped for images with a positive-determinant affine).",
        "- The dir-PA label of sub-01/ses-2 comes from the protocol name; its sidecar has no",
        "  PhaseEncodingDirection because the source sidecar gives only the axis (j), not the",
        "  polarity.",
        "",
        "## Licences",
        "",
        "Each file keeps the licence of its source (see LICENSE for the full texts):",
        "BSD-2-Clause (dcm_qa_stc series), BSD-3-Clause (DIPY series),",
        "LGPL-3.0-or-later (MDT series). The modifications listed above were made by the",
        f"bids_denoise developers on {RELEASE_DATE}.",
        "",
    ]
    return "\n".join(lines)


def license_text() -> str:
    parts = [
        "Licences of the files in this dataset",
        "=====================================",
        "",
        "The files keep the licences of the scans they were cut from:",
        "",
        "- sub-01/ses-1/** and sub-01/ses-2/** : BSD-2-Clause",
        "  (neurolabusc/dcm_qa_stc, Copyright (c) 2019, Chris Rorden)",
        "- sub-02/dwi/sub-02_acq-dsi_dwi.nii.gz, acq-dsi_dwi.bval, acq-dsi_dwi.bvec : BSD-3-Clause",
        "  (DIPY test data, Copyright (c) 2008-2026, dipy developers)",
        "- sub-02/dwi/sub-02_acq-multishell_dwi.* : LGPL-3.0-or-later",
        "  (MDT example data, mdt 1.2.7). Modified (cropped) copies; see README.",
        "- Dataset-level text files (README, CHANGES, participants.*, dataset_description.json):",
        "  Apache-2.0, like bids_denoise.",
        "",
        "",
        "BSD-2-Clause",
        "------------",
        "",
        "Copyright (c) 2019, Chris Rorden",
        "All rights reserved.",
        "",
        BSD2_TEXT,
        "",
        "BSD-3-Clause",
        "------------",
        "",
        "Copyright (c) 2008-2026, dipy developers",
        "All rights reserved.",
        "",
        BSD3_TEXT,
        "",
    ]
    lgpl = LICENSE_DIR / "LGPL-3"
    gpl = LICENSE_DIR / "GPL-3"
    if not (lgpl.exists() and gpl.exists()):
        raise SystemExit(
            f"Need the LGPL-3 and GPL-3 texts in {LICENSE_DIR} (Debian/Ubuntu 'base-files')."
        )
    parts += [
        "LGPL-3.0-or-later (the GNU LGPL version 3 supplements the GNU GPL version 3; both follow)",
        "----------------------------------------------------------------------------------------",
        "",
        lgpl.read_text().rstrip() + "\n",
        "",
        gpl.read_text().rstrip() + "\n",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
def build(source_root: Path, out_root: Path) -> list[str]:
    summaries: list[str] = []
    for spec in RUNS:
        src = source_root / spec.source
        img = nib.load(src / "dwi.nii.gz")
        n_vols = img.shape[3]
        volumes = slice(*(spec.volumes or (0, n_vols)))
        out = crop_image(img, spec.crop, volumes, units_mm=spec.set_spatial_units_mm)

        nii_path = out_root / spec.relpath
        nii_path.parent.mkdir(parents=True, exist_ok=True)
        nii_path.write_bytes(nifti_gz_bytes(out))

        stem = spec.gradients_relpath or spec.relpath[: -len(".nii.gz")]
        bvals = read_tokens(src / "dwi.bval")
        bvecs = read_tokens(src / "dwi.bvec")
        if len(bvals) != 1 or len(bvecs) != 3 or any(len(r) != n_vols for r in bvals + bvecs):
            raise RuntimeError(f"{spec.source}: gradient files do not match {n_vols} volumes")
        write_text(out_root, stem + ".bval", gradient_text(bvals, volumes))
        write_text(out_root, stem + ".bvec", gradient_text(bvecs, volumes))

        json_src = src / "dwi.json"
        meta = copy_sidecar(json_src if json_src.exists() else None,
                            spec.crop.slices(img.shape)[2], spec.sidecar_extra)
        if meta:
            write_json(out_root, spec.sidecar_relpath or stem + ".json", meta)

        prov = PROVENANCE[spec.source]
        bv = np.array([float(b) for b in bvals[0][volumes]])
        summaries += [
            f"### {spec.relpath}",
            "",
            f"- Source: {prov['what']}.",
            f"  {prov['url']} ({prov['version']});",
            f"  licence {prov['license']}, {prov['copyright']}.",
            f"- Kept: {spec.crop.describe(img.shape)}"
            + (f", volumes {volumes.start}:{volumes.stop}" if spec.volumes else "")
            + f" -> shape {out.shape}, {out.get_data_dtype()}.",
            f"- b-values: {len(bv)} volumes, min {bv.min():g}, max {bv.max():g}.",
            "",
        ]
    return summaries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--validate", action="store_true", help="run bids-validator-deno")
    args = parser.parse_args(argv)

    if not args.source.is_dir():
        parser.error(f"source data folder not found: {args.source}")

    # Build next to the target and swap at the end, so a failed build leaves the old copy.
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".example_ds.", dir=args.output.parent))
    try:
        summaries = build(args.source, staging)
        write_json(staging, "dataset_description.json", dataset_description())
        write_text(staging, "README", readme(summaries))
        write_text(staging, "CHANGES", f"{DATASET_VERSION} {RELEASE_DATE}\n"
                   "  - Initial release, built by scripts/make_example_dataset.py.\n")
        write_text(staging, "LICENSE", license_text())
        write_text(staging, "participants.tsv",
                   "participant_id\tspecies\nsub-01\thomo sapiens\nsub-02\thomo sapiens\n")
        write_json(staging, "participants.json", {
            "participant_id": {"Description": "Participant label (testing only; see README)."},
            "species": {"Description": "Species of the participant."},
        })
        total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if total > MAX_BYTES:
            raise SystemExit(f"example dataset is {total} bytes, over the {MAX_BYTES} budget")
        # mkdtemp makes a private (0700) folder; the installed data must be world-readable
        # (containers often run as a user other than the one that built the image).
        os.chmod(staging, 0o755)
        if args.output.exists():
            shutil.rmtree(args.output)
        os.replace(staging, args.output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"wrote {args.output} ({total} bytes)")

    if args.validate:
        exe = Path(sys.executable).with_name("bids-validator-deno")
        cmd = [str(exe if exe.exists() else "bids-validator-deno"), str(args.output)]
        return subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
