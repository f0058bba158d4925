"""The table of outputs: every file the app writes is listed once, with its .bidsignore lines."""

from __future__ import annotations

from pathlib import Path

from bids_denoise.outputs import DATASET_OUTPUTS, OUTPUTS, RUN_OUTPUTS, bidsignore_lines
from bids_denoise.utils.derivatives import DEFAULT_BIDSIGNORE

REPO = Path(__file__).resolve().parents[1]


def test_run_outputs_are_named_after_the_raw_series(tmp_path):
    source = "sub-01_ses-2_acq-dti_run-1_dwi.nii.gz"
    paths = {output.key: output.path(source, tmp_path) for output in RUN_OUTPUTS}
    assert paths["dwi"] == tmp_path / "sub-01/ses-2/dwi/sub-01_ses-2_acq-dti_run-1_desc-denoised_dwi.nii.gz"
    assert paths["noise"].name == "sub-01_ses-2_acq-dti_run-1_desc-noise_dwimap.nii.gz"
    assert OUTPUTS["dwi"].sidecar_path(source, tmp_path).name.endswith("_desc-denoised_dwi.json")
    assert len(set(paths.values())) == len(paths)


def test_bidsignore_covers_every_output_without_a_bids_rule():
    assert DEFAULT_BIDSIGNORE == bidsignore_lines()
    for output in OUTPUTS.values():
        covered = set(output.bidsignore) <= set(DEFAULT_BIDSIGNORE)
        assert covered != bool(output.method)  # method-specific extras are added only when written
    assert OUTPUTS["dwi"].bidsignore == ()  # the denoised series has a BIDS rule


def test_every_file_of_the_example_run_is_in_the_table():
    """The golden list of the example dataset's outputs names only outputs of the table."""
    listed = (REPO / ".circleci" / "example_ds_outputs.txt").read_text().split()
    run_patterns = [o.name_pattern.lstrip("*") for o in RUN_OUTPUTS] + [o.sidecar_pattern.lstrip("*")
                                                                           for o in RUN_OUTPUTS if o.sidecar]
    for path in listed:
        name = Path(path).name
        if "/figures/" in f"/{path}" or path.startswith("logs/") or path.endswith(".html"):
            continue
        if "/" not in path:
            assert any(o.location == path for o in DATASET_OUTPUTS), path
            continue
        assert any(name.endswith(pattern) for pattern in run_patterns), path


def test_readme_lists_every_output():
    readme = (REPO / "README.md").read_text()
    for output in RUN_OUTPUTS:
        assert f"_desc-{output.desc}_{output.suffix}{output.extension}" in readme, output.key
