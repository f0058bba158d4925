#!/usr/bin/env python
"""Embed bids_denoise's per-run workflow in your own Nipype pipeline.

``init_dwi_denoise_wf`` is an ordinary Nipype workflow with an ``inputnode``
(dwi_file, bval_file, bvec_file, optional mask_file) and an ``outputnode``
(denoised_file, bval_file, bvec_file, noise_file). Connect your own nodes to them.

This example denoises one run of the bundled example dataset, then feeds the result to a
downstream node of "your" pipeline (here a tiny function that extracts the mean b0), all
inside one parent workflow run by MultiProc.

    python workflows/embed_denoising.py [--work-dir DIR] [--dwi FILE --bval FILE --bvec FILE]
"""

import argparse
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_denoise.data import example_dataset
from bids_denoise.workflows.dwi import init_dwi_denoise_wf


def mean_b0(in_file, bval_file, threshold=50.0):
    """A stand-in for your next processing step: the mean of the b0 volumes."""
    import os

    import nibabel as nb
    import numpy as np

    img = nb.load(in_file)
    bvals = np.loadtxt(bval_file, ndmin=1)
    mean = np.asanyarray(img.dataobj)[..., bvals <= threshold].mean(-1)
    out_file = os.path.abspath("mean_b0.nii.gz")
    nb.Nifti1Image(mean.astype("float32"), img.affine).to_filename(out_file)
    return out_file


def build_pipeline(dwi, bval, bvec, work_dir):
    pipeline = pe.Workflow(name="my_dmri_pipeline", base_dir=str(work_dir))
    source = pe.Node(niu.IdentityInterface(fields=["dwi", "bval", "bvec"]), name="source")
    source.inputs.dwi, source.inputs.bval, source.inputs.bvec = str(dwi), str(bval), str(bvec)

    denoise_wf = init_dwi_denoise_wf(b0_threshold=50, omp_nthreads=1)  # the app's defaults
    downstream = pe.Node(
        niu.Function(function=mean_b0, input_names=["in_file", "bval_file"], output_names=["out_file"]),
        name="mean_b0",
    )
    pipeline.connect([
        (source, denoise_wf, [
            ("dwi", "inputnode.dwi_file"), ("bval", "inputnode.bval_file"), ("bvec", "inputnode.bvec_file"),
        ]),
        (denoise_wf, downstream, [
            ("outputnode.denoised_file", "in_file"), ("outputnode.bval_file", "bval_file"),
        ]),
    ])  # fmt:skip
    return pipeline


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("embed-work"), help="Nipype work directory")
    parser.add_argument("--dwi", type=Path, help="4D DWI (default: a run of the example dataset)")
    parser.add_argument("--bval", type=Path, help="its bval file")
    parser.add_argument("--bvec", type=Path, help="its bvec file")
    parser.add_argument("--nprocs", type=int, default=2, help="MultiProc processes")
    args = parser.parse_args(argv)
    if args.dwi is None:
        run = example_dataset() / "sub-02" / "dwi" / "sub-02_acq-multishell_dwi"
        args.dwi, args.bval, args.bvec = (Path(f"{run}{ext}") for ext in (".nii.gz", ".bval", ".bvec"))
    pipeline = build_pipeline(args.dwi, args.bval, args.bvec, args.work_dir.absolute())
    result = pipeline.run(plugin="MultiProc", plugin_args={"n_procs": args.nprocs})
    node = next(n for n in result.nodes() if n.name == "mean_b0")
    print(f"Denoised and processed: {node.result.outputs.out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
