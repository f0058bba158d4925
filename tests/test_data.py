"""The bundled example dataset (bids_denoise.data.example_ds) and its builder script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bids_denoise
from bids_denoise.data import example_dataset
from bids_denoise.denoise.shells import group_volumes
from bids_denoise.utils.bids import collect_dwi_runs, collect_participants, init_layout
from bids_denoise.utils.validator import find_validator, validate_input_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILDER = REPO_ROOT / "scripts" / "make_example_dataset.py"
SOURCE_DATA = REPO_ROOT.parent / "shared" / "data"
MAX_BYTES = 5_000_000

needs_sources = pytest.mark.skipif(
    not SOURCE_DATA.is_dir() or not Path("/usr/share/common-licenses/LGPL-3").exists(),
    reason="needs ../shared/data and the LGPL/GPL texts to rebuild the dataset",
)


@pytest.fixture(scope="module")
def runs():
    layout = init_layout(example_dataset())
    return {run.name: run for sub in collect_participants(layout)
            for run in collect_dwi_runs(layout, sub)}


def _bvals(run) -> np.ndarray:
    return np.loadtxt(run.bval_file, ndmin=1)


def _load_builder():
    spec = importlib.util.spec_from_file_location("make_example_dataset", BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Packaging
# ----------------------------------------------------------------------------------------------
def test_example_dataset_is_inside_the_package():
    path = example_dataset()
    assert path.is_dir() and path.is_absolute()
    assert Path(bids_denoise.__file__).parent in path.parents
    assert (path / "dataset_description.json").is_file()


def test_example_dataset_size_budget():
    total = sum(p.stat().st_size for p in example_dataset().rglob("*") if p.is_file())
    assert 0 < total <= MAX_BYTES


def test_required_top_level_files():
    root = example_dataset()
    for name in ("dataset_description.json", "README", "CHANGES", "LICENSE",
                 "participants.tsv", "participants.json"):
        assert (root / name).is_file(), name
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    participants = (root / "participants.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in participants[1:]] == ["sub-01", "sub-02"]


def test_sources_and_licences_are_credited():
    readme = (example_dataset() / "README").read_text()
    licence = (example_dataset() / "LICENSE").read_text()
    for source in ("neurolabusc/dcm_qa_stc", "mdt", "dipy"):
        assert source in readme
    for spdx in ("BSD-2-Clause", "BSD-3-Clause", "LGPL-3.0-or-later"):
        assert spdx in readme and spdx in licence
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in licence
    assert "GNU GENERAL PUBLIC LICENSE" in licence


# ----------------------------------------------------------------------------------------------
# What the dataset must exercise
# ----------------------------------------------------------------------------------------------
def test_layout_subjects_sessions_runs(runs):
    layout = init_layout(example_dataset())
    assert collect_participants(layout) == ["01", "02"]
    assert sorted(layout.get_sessions(subject="01")) == ["1", "2"]
    assert layout.get_sessions(subject="02") == []
    ses1 = [r for r in runs.values() if r.entities.get("session") == "1"]
    assert sorted(r.entities["run"] for r in ses1) == ["1", "2"]
    assert any("acquisition" in r.entities for r in runs.values())
    assert any("direction" in r.entities for r in runs.values())
    assert len(runs) == 5


def test_inherited_files_are_used(runs):
    root = example_dataset()
    assert any(r.bval_file.parent == root for r in runs.values()), "root-level bval"
    shared = [r for r in runs.values() if "run" in r.entities]
    assert len({r.bval_file for r in shared}) == 1, "run-less bval shared by both runs"
    assert all(r.metadata.get("PhaseEncodingDirection") == "j-" for r in shared)


def test_images_match_their_gradient_tables(runs):
    for run in runs.values():
        img = nib.load(run.dwi_file)
        bvals = _bvals(run)
        bvecs = np.loadtxt(run.bvec_file)
        assert img.ndim == 4 and img.shape[3] == bvals.size, run.name
        assert bvecs.shape == (3, bvals.size), run.name
        assert img.get_data_dtype() in (np.int16, np.uint16, np.float32), run.name
        assert np.isfinite(np.asarray(img.dataobj)).all(), run.name
        assert img.header.get_xyzt_units()[0] == "mm", run.name
        weighted = bvals > 50
        norms = np.linalg.norm(bvecs[:, weighted], axis=0)
        np.testing.assert_allclose(norms, 1.0, atol=0.02, err_msg=run.name)


def test_there_is_a_multishell_run_with_enough_volumes_per_shell(runs):
    multishell = []
    for run in runs.values():
        shells = [g for g in group_volumes(_bvals(run)) if not g.is_b0]
        if len(shells) >= 2 and all(g.size >= 10 for g in shells):
            multishell.append(run.name)
    assert multishell


def test_there_are_b0s_stored_at_small_nonzero_b(runs):
    minima = {name: _bvals(run).min() for name, run in runs.items()}
    assert [n for n, b in minima.items() if 0 < b <= 50], minima
    assert [n for n, b in minima.items() if b == 0], minima


def test_sidecars_hold_only_bids_keys(runs):
    from bidsschematools import schema

    known = {entry["name"] for entry in schema.load_schema()["objects"]["metadata"].values()}
    for run in runs.values():
        assert set(run.metadata) <= known, (run.name, set(run.metadata) - known)


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno is not installed")
def test_example_dataset_passes_the_validator():
    ok, message = validate_input_dataset(example_dataset())
    assert ok is True, message


# ----------------------------------------------------------------------------------------------
# Against the sources
# ----------------------------------------------------------------------------------------------
@needs_sources
def test_crops_keep_values_and_world_coordinates():
    builder = _load_builder()
    root = example_dataset()
    for spec in builder.RUNS:
        src = nib.load(SOURCE_DATA / spec.source / "dwi.nii.gz")
        out = nib.load(root / spec.relpath)
        sx, sy, sz = spec.crop.slices(src.shape)
        vols = slice(*(spec.volumes or (0, src.shape[3])))
        expected = np.asarray(src.dataobj[sx, sy, sz, vols])
        np.testing.assert_array_equal(np.asarray(out.dataobj), expected, err_msg=spec.relpath)
        assert out.get_data_dtype() == src.get_data_dtype()
        # Voxel (i, j, k) of the crop is voxel (i + x0, j + y0, k + z0) of the source.
        corner = np.array([[0, 0, 0, 1], [3, 2, 1, 1]]).T
        shifted = corner + np.array([[sx.start], [sy.start], [sz.start], [0]])
        np.testing.assert_allclose(out.affine @ corner, src.affine @ shifted, atol=1e-4)
        bval_src = (SOURCE_DATA / spec.source / "dwi.bval").read_text().split()
        stem = spec.gradients_relpath or spec.relpath[: -len(".nii.gz")]
        assert (root / f"{stem}.bval").read_text().split() == bval_src[vols]


@needs_sources
def test_builder_is_deterministic(tmp_path):
    out = tmp_path / "example_ds"
    subprocess.run([sys.executable, str(BUILDER), "--output", str(out)], check=True,
                   capture_output=True)
    bundled = example_dataset()
    built = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert built == sorted(p.relative_to(bundled) for p in bundled.rglob("*") if p.is_file())
    for relpath in built:
        assert (out / relpath).read_bytes() == (bundled / relpath).read_bytes(), relpath
