"""bids-validator-deno wrapper (bids_denoise.utils.validator).

Tests that run the real validator are skipped when it is not installed; the wrapper's own
logic (finding the executable, exit codes, a missing validator) is tested with stand-ins.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_denoise.data import example_dataset
from bids_denoise.utils import validator
from bids_denoise.utils.atomic import atomic_copy, atomic_save_nifti, atomic_write_json
from bids_denoise.utils.derivatives import (
    bids_uri,
    derivative_path,
    write_bidsignore,
    write_derivative_description,
)
from bids_denoise.utils.validator import (
    find_validator,
    validate_derivatives,
    validate_input_dataset,
)

needs_validator = pytest.mark.skipif(find_validator() is None,
                                     reason="bids-validator-deno is not installed")


@pytest.fixture
def example_copy(tmp_path):
    return Path(shutil.copytree(example_dataset(), tmp_path / "ds"))


def _fake_validator(folder: Path, script: str, monkeypatch) -> Path:
    """Put an executable ``bids-validator-deno`` next to a fake ``sys.executable``."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "bids-validator-deno"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(folder / "python"))
    return exe


# ----------------------------------------------------------------------------------------------
# Wrapper logic (no real validator needed)
# ----------------------------------------------------------------------------------------------
def test_validator_next_to_python_is_preferred(tmp_path, monkeypatch):
    exe = _fake_validator(tmp_path / "venv" / "bin", "exit 0\n", monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert find_validator() == exe


def test_validator_on_path_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nobin" / "python"))
    on_path = tmp_path / "path"
    on_path.mkdir()
    exe = on_path / "bids-validator-deno"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert find_validator() == exe


def test_missing_validator_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(validator, "find_validator", lambda: None)
    ok, message = validate_input_dataset(tmp_path)
    assert ok is None and "not installed" in message


def test_crashing_validator_gives_none(tmp_path, monkeypatch):
    _fake_validator(tmp_path / "bin", "echo 'segfault-ish' >&2\nexit 3\n", monkeypatch)
    ok, message = validate_input_dataset(tmp_path)
    assert ok is None and "exit 3" in message and "segfault-ish" in message


def test_validator_arguments_and_exclusions(tmp_path, monkeypatch):
    """The wrapper passes --format json/--outfile and an ignore config for excluded subjects."""
    record = tmp_path / "args.txt"
    script = (f'printf "%s\\n" "$@" > {record}\n'
              'while [ $# -gt 0 ]; do\n'
              '  if [ "$1" = "--outfile" ]; then shift; out="$1"; fi\n'
              '  if [ "$1" = "--config" ]; then shift; cp "$1" ' f'{tmp_path}/config.json; fi\n'
              '  shift\ndone\n'
              'echo \'{"issues": {"issues": [], "codeMessages": {}}, "summary": {}}\' > "$out"\n'
              'exit 0\n')
    _fake_validator(tmp_path / "bin", script, monkeypatch)
    ok, _ = validate_input_dataset(tmp_path, exclude_subjects=["sub-02", "03"])
    args = record.read_text().split()
    assert ok is True
    assert "--schema" not in args and "-s" not in args  # offline: bundled schema only
    assert args[args.index("--format") + 1] == "json"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"ignore": [{"location": "sub-02/**"}, {"location": "sub-03/**"}]}


# ----------------------------------------------------------------------------------------------
# Real validator
# ----------------------------------------------------------------------------------------------
@needs_validator
def test_example_dataset_is_valid():
    ok, message = validate_input_dataset(example_dataset())
    assert ok is True, message
    assert "no BIDS errors" in message


@needs_validator
def test_missing_description_fails(example_copy):
    (example_copy / "dataset_description.json").unlink()
    ok, message = validate_input_dataset(example_copy)
    assert ok is False
    assert "MISSING_DATASET_DESCRIPTION" in message


@needs_validator
def test_wrong_bval_count_fails_and_names_the_file(example_copy):
    bval = example_copy / "sub-02" / "dwi" / "sub-02_acq-multishell_dwi.bval"
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")
    ok, message = validate_input_dataset(example_copy)
    assert ok is False
    assert "sub-02_acq-multishell_dwi" in message

    ok, message = validate_input_dataset(example_copy, exclude_subjects=["sub-02"])
    assert ok is True, message


def _write_small_derivative(raw: Path, out: Path) -> None:
    """What a bids_denoise run leaves: denoised DWI + sidecar + gradients, noise map, extras."""
    src = raw / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-dti_dir-AP_run-1_dwi.nii.gz"
    img = nib.load(src)

    def path(desc, suffix, ext, **kw):
        return derivative_path(src, out, desc=desc, suffix=suffix, extension=ext, **kw)

    atomic_save_nifti(img, path("patch2self", "dwi", ".nii.gz"))
    atomic_write_json(path("patch2self", "dwi", ".json"),
                      {"SkullStripped": False, "Sources": [bids_uri(src, raw)]})
    shared = raw / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-dti_dir-AP_dwi"
    atomic_copy(f"{shared}.bval", path("patch2self", "dwi", ".bval"))
    atomic_copy(f"{shared}.bvec", path("patch2self", "dwi", ".bvec"))
    noise = nib.Nifti1Image(np.zeros(img.shape[:3], np.float32), img.affine)
    atomic_save_nifti(noise, path("noise", "dwimap", ".nii.gz"))
    atomic_write_json(path("noise", "dwimap", ".json"), {"SkullStripped": False})
    path("patch2self", "dwi", ".svg", datatype="figures").parent.mkdir(parents=True)
    path("patch2self", "dwi", ".svg", datatype="figures").write_text("<svg/>")
    (out / "logs").mkdir()
    (out / "logs" / "CITATION.md").write_text("methods")
    (out / "sub-01.html").write_text("<html/>")
    (out / "group_summary.tsv").write_text("participant_id\tn\nsub-01\t1\n")
    write_derivative_description(out, raw)


@needs_validator
def test_derivatives_validate_only_with_our_bidsignore(example_copy, tmp_path):
    out = tmp_path / "out"
    _write_small_derivative(example_copy, out)
    ok, message = validate_derivatives(out)
    assert ok is False and "ALL_FILENAME_RULES_HAVE_ISSUES" in message

    write_bidsignore(out)
    ok, message = validate_derivatives(out)
    assert ok is True, message


def test_validate_derivatives_refuses_a_raw_dataset():
    ok, message = validate_derivatives(example_dataset())
    assert ok is False and "not a derivative dataset" in message
