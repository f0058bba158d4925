"""The top-level workflows/embed_denoising.py recipe runs and denoises inside a parent pipeline."""

import runpy
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

RECIPE = Path(__file__).parents[2] / "workflows" / "embed_denoising.py"


@pytest.mark.slow
def test_embedding_recipe_runs_on_the_example_dataset(tmp_path, capsys):
    module = runpy.run_path(str(RECIPE))
    assert module["main"](["--work-dir", str(tmp_path / "work"), "--nprocs", "1"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Denoised and processed:")]
    out_file = Path(printed[-1].split(": ", 1)[1])
    assert out_file.exists()
    # the workflow's last step: the Rician correction of the merged series (a default)
    merged = next((tmp_path / "work").rglob("rician_correction/denoised_dwi.nii.gz"))
    denoised = nb.load(merged)
    assert denoised.get_data_dtype() == np.float32
    # The downstream node consumed the denoised series, not the raw one.
    bval_file = RECIPE.parents[1] / "bids_denoise/data/example_ds/sub-02/dwi/sub-02_acq-multishell_dwi.bval"
    b0 = np.loadtxt(bval_file) <= 50
    expected = denoised.get_fdata(dtype=np.float32)[..., b0].mean(-1)
    np.testing.assert_allclose(nb.load(out_file).get_fdata(), expected, rtol=1e-5)
