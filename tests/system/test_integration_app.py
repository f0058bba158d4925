"""The whole app on the bundled example dataset, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.data import example_dataset
from bids_denoise.denoise.mppca import mppca
from bids_denoise.denoise.patch2self import patch2self
from bids_denoise.denoise.rician import correct_rician_bias
from bids_denoise.interfaces.mppca import fitted_radius
from bids_denoise.utils.validator import find_validator, validate_derivatives

pytestmark = pytest.mark.slow
RAW_RUNS = sorted(p.relative_to(example_dataset()) for p in example_dataset().rglob("sub-*_dwi.nii.gz"))


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _run_app(bids, out, work, *extra):
    command = [sys.executable, "-m", "bids_denoise.cli.run", str(bids), str(out), "participant",
               "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    bids = root / "bids"
    shutil.copytree(example_dataset(), bids)
    before = _tree_digest(bids)
    first = _run_app(bids, root / "out", root / "work")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    outputs = {p: p.stat().st_mtime_ns for p in (root / "work").rglob("denoise/mapflow/*/result_*.pklz")}
    snapshot = _tree_digest(root / "out")
    second = _run_app(bids, root / "out", root / "work")
    return {
        "root": root, "bids": bids, "out": root / "out", "work": root / "work", "first": first,
        "second": second, "input_before": before, "denoise_results": outputs, "out_after_first": snapshot,
    }


def _derivative(out, raw, desc, suffix, ext):
    name = raw.name.replace("_dwi.nii.gz", f"_desc-{desc}_{suffix}{ext}")
    return out / raw.parent / name


def test_every_run_has_its_derivatives(app_run):
    out = app_run["out"]
    assert len(RAW_RUNS) == 5
    expected = {"dataset_description.json", ".bidsignore", "logs/CITATION.md", "logs/CITATION.bib",
                "logs/CITATION.html", "sub-01.html", "sub-02.html"}
    for raw in RAW_RUNS:
        for desc, suffix, ext in (("denoised", "dwi", ".nii.gz"), ("denoised", "dwi", ".json"),
                                  ("denoised", "dwi", ".bval"), ("denoised", "dwi", ".bvec"),
                                  ("noise", "dwimap", ".nii.gz"), ("noise", "dwimap", ".json"),
                                  ("sigma", "dwimap", ".nii.gz"), ("sigma", "dwimap", ".json")):
            expected.add(str(_derivative(Path(""), raw, desc, suffix, ext)))
        stem = raw.name.replace("_dwi.nii.gz", "")
        for desc, ext in (("brainmask", ".png"), ("residualhist", ".svg"), ("residualstd", ".svg"),
                          ("residualcorr", ".svg"), ("sigma", ".svg"), ("reportstats", ".json"),
                          ("fa", ".png")):  # every example run has a b0 and 6+ directions at b <= 1500
            expected.add(f"{raw.parts[0]}/figures/{stem}_desc-{desc}_dwi{ext}")
        groups = json.loads(_derivative(out, raw, "denoised", "dwi", ".json").read_text())["VolumeGroups"]
        for group in groups:  # one before/after/residual mosaic per volume group
            expected.add(f"{raw.parts[0]}/figures/{stem}_desc-mosaic{group['Label'].replace('_', '')}_dwi.png")
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".bids_denoise.lock"}
    configs = {p for p in written if p.startswith("logs/config-") and p.endswith(".toml")}
    assert len(configs) == 2  # the resolved configuration of each of the two invocations
    assert written - configs == expected


@pytest.mark.parametrize("raw", RAW_RUNS, ids=str)
def test_headers_match_the_input_and_data_are_float32(app_run, raw):
    source = nb.load(app_run["bids"] / raw)
    denoised = nb.load(_derivative(app_run["out"], raw, "denoised", "dwi", ".nii.gz"))
    noise = nb.load(_derivative(app_run["out"], raw, "noise", "dwimap", ".nii.gz"))
    assert denoised.shape == source.shape and noise.shape == source.shape[:3]
    assert denoised.get_data_dtype() == np.float32 and noise.get_data_dtype() == np.float32
    for img in (denoised, noise):
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-6)
        np.testing.assert_allclose(img.get_qform(), source.get_qform(), atol=1e-6)
        np.testing.assert_allclose(img.get_sform(), source.get_sform(), atol=1e-6)
        assert int(img.header["qform_code"]) == int(source.header["qform_code"])
        assert int(img.header["sform_code"]) == int(source.header["sform_code"])
        assert img.header.get_zooms()[:3] == source.header.get_zooms()[:3]
    assert np.isfinite(denoised.get_fdata()).all()


@pytest.mark.parametrize("raw", RAW_RUNS, ids=str)
def test_gradients_are_copied_and_the_sidecar_records_the_processing(app_run, raw):
    bids, out = app_run["bids"], app_run["out"]
    from bids_denoise.utils.bids import collect_dwi_runs, init_layout

    layout = init_layout(bids)
    run = next(r for r in collect_dwi_runs(layout, raw.parts[0][4:]) if r.dwi_file.name == raw.name)
    for ext, source in ((".bval", run.bval_file), (".bvec", run.bvec_file)):
        assert _derivative(out, raw, "denoised", "dwi", ext).read_bytes() == source.read_bytes()
    meta = json.loads(_derivative(out, raw, "denoised", "dwi", ".json").read_text())
    assert meta["SkullStripped"] is False
    assert meta["DenoisingMethod"].startswith("Auto")  # the defaults: auto, all DWIs together, Rician mean
    assert meta["DenoisingParameters"]["B0Threshold"] == 50.0
    assert meta["DenoisingParameters"]["ShellGrouping"] == "all"
    assert meta["DenoisingParameters"]["RicianCorrection"] == "mean"
    assert all(group["Method"] in ("Patch2Self", "MP-PCA") for group in meta["VolumeGroups"])
    assert meta["Sources"][0] == f"bids:raw:{raw.as_posix()}"
    volumes = sorted(v for group in meta["VolumeGroups"] for v in group["Volumes"])
    assert volumes == list(range(nb.load(bids / raw).shape[3]))
    assert meta["SoftwareVersion"] and meta["Devices"] == ["cpu"] and meta["RunTime"] >= 0


def test_denoised_series_equals_the_chosen_engines_on_the_raw_data(app_run):
    """Each group equals the engine its sidecar names, on the raw group, then the Rician mean
    is removed with the written noise map."""
    raw = next(r for r in RAW_RUNS if "multishell" in r.name)
    source = app_run["bids"] / raw
    data = np.asanyarray(nb.load(source).dataobj)
    bvals = np.loadtxt(str(source).replace(".nii.gz", ".bval"))
    meta = json.loads(_derivative(app_run["out"], raw, "denoised", "dwi", ".json").read_text())
    expected = np.zeros(data.shape, np.float32)
    for group in meta["VolumeGroups"]:
        index = list(group["Volumes"])
        if group["Method"] == "Patch2Self":
            out = patch2self(data[..., index], bvals[index], progress=False, grouping="all", patch_radius=1,
                             patch_pooling="radial")
        else:
            out = mppca(data[..., index], patch_radius=fitted_radius(2, data.shape[:3]), progress=False).denoised
        expected[..., index] = out
    sigma = nb.load(_derivative(app_run["out"], raw, "sigma", "dwimap", ".nii.gz")).get_fdata(dtype=np.float32)
    expected = correct_rician_bias(expected, sigma, method="mean")
    denoised = nb.load(_derivative(app_run["out"], raw, "denoised", "dwi", ".nii.gz")).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(denoised, expected, rtol=1e-4, atol=1e-2)
    assert np.abs(denoised - data).max() > 1.0  # it did denoise


def test_dataset_description_links_the_raw_data(app_run):
    description = json.loads((app_run["out"] / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_denoise"
    link = description["DatasetLinks"]["raw"]
    assert Path(link.removeprefix("file://")).resolve() == app_run["bids"].resolve()


@pytest.mark.skipif(find_validator() is None, reason="bids-validator-deno is not installed")
def test_output_passes_the_bids_validator(app_run):
    ok, report = validate_derivatives(app_run["out"])
    assert ok is True, report


def test_rerun_reuses_the_cache_and_gives_identical_outputs(app_run):
    assert app_run["second"].returncode == 0, app_run["second"].stderr[-3000:]
    assert app_run["denoise_results"], "no cached denoising results were found"
    for result, mtime in app_run["denoise_results"].items():
        assert result.stat().st_mtime_ns == mtime, f"{result} was recomputed"
    def derivatives(digest):  # the reports and configuration copies record each invocation
        return {k: v for k, v in digest.items() if not k.endswith(".html") and not k.startswith("logs/config-")}

    assert derivatives(_tree_digest(app_run["out"])) == derivatives(app_run["out_after_first"])


def test_the_input_tree_is_byte_identical_afterwards(app_run):
    assert _tree_digest(app_run["bids"]) == app_run["input_before"]
    assert not list(app_run["bids"].rglob("derivatives"))
