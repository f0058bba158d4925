"""Reports, methods text and provenance of real runs of the app on the bundled example dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bids_denoise import __version__
from bids_denoise.data import example_dataset
from tests.reports.test_html import check_links

pytestmark = pytest.mark.slow
MULTISHELL = "sub-02_acq-multishell"


def run_cli(out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    """``bids-denoise <example> out participant`` on sub-02's multi-shell run only."""
    work.mkdir(parents=True, exist_ok=True)
    filters = work.parent / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "multishell"}}))
    command = [sys.executable, "-m", "bids_denoise.cli.run", str(example_dataset()), str(out), "participant",
               "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation",
               "--participant-label", "02", "--bids-filter-file", str(filters), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def build_example_report(root: Path, *extra: str) -> Path:
    """Run the app into ``root/out`` and return the output folder (fails the test on error)."""
    result = run_cli(root / "out", root / "work", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "out"


@pytest.fixture(scope="module")
def patch2self_out(tmp_path_factory):
    # Patch2Self per shell, as written (the defaults, auto over all DWIs, are run by test_integration_app)
    return build_example_report(tmp_path_factory.mktemp("p2s"), "--method", "patch2self", "--shell-grouping", "shell",
                                "--rician-correction", "none")


def _stats(out: Path) -> dict:
    return json.loads((out / "sub-02" / "figures" / f"{MULTISHELL}_desc-reportstats_dwi.json").read_text())


def test_patch2self_report_on_the_example_dataset(patch2self_out):
    out = patch2self_out
    report = out / "sub-02.html"
    parser = check_links(report)
    images = [Path(src).name for src in parser.images]
    assert images == [f"{MULTISHELL}_desc-{d}_dwi.{e}" for d, e in (
        ("brainmask", "png"), ("mosaicb0", "png"), ("mosaicb1000", "png"), ("mosaicb2000", "png"), ("fa", "png"),
        ("residualhist", "svg"), ("residualstd", "svg"), ("residualcorr", "svg"), ("sigma", "svg"))]
    page = report.read_text()
    assert "b0: b=0 × 13" in page and "b1000: b=1000 × 30" in page and "b2000: b=2000 × 60" in page
    assert "Patch2Self" in page and "ShellGrouping" in page and "cpu" in page and __version__ in page
    assert "split into 2 diffusion-weighted shells (b = 1000 and 2000 s/mm², with 30 and 60 volumes)" in page
    assert "No errors to report." in page and "--participant-label 02" in page
    stats = _stats(out)
    assert stats["Shape"] == [40, 40, 2, 103]
    for group in stats["Groups"]:
        assert group["Denoised"] and group["SNRAfter"] > group["SNRBefore"]
        assert group["SigmaAfter"] < group["SigmaBefore"]
        # Patch2Self leaves no anatomy in the residuals of this run
        assert group["MedianAbsAnatomyCorrelation"] < 3 * stats["CorrelationChanceLevel"]


def test_methods_files_and_configuration_copy(patch2self_out):
    from bids_denoise import config

    logs = patch2self_out / "logs"
    citation = (logs / "CITATION.md").read_text()
    assert "1 DWI series of 1 participant was processed" in citation
    assert "split into 2 diffusion-weighted shells" in citation and "b0 threshold of 50 s/mm²" in citation
    assert "[@patch2self]" in citation and "@inproceedings{patch2self," in (logs / "CITATION.bib").read_text()
    assert "Fadnavis et al., 2020" in (logs / "CITATION.html").read_text()
    (copy,) = logs.glob("config-*.toml")
    config.reset()
    try:
        config.load(copy, init=False)
        assert config.execution.participant_label == ["02"] and config.workflow.method == "patch2self"
        assert copy.name == f"config-{config.execution.run_uuid}.toml"
    finally:
        config.reset()


def test_provenance_in_sidecars_and_description(patch2self_out):
    out = patch2self_out
    description = json.loads((out / "dataset_description.json").read_text())
    for sidecar in (out / "sub-02" / "dwi").glob(f"{MULTISHELL}_desc-*.json"):
        record = json.loads(sidecar.read_text())["Provenance"]
        assert record["Version"] == __version__ and "GitCommit" in record and "Container" in record
        assert "--participant-label 02" in record["CommandLine"]
        assert record["Configuration"]["execution"]["participant_label"] == ["02"]
        assert record == description["GeneratedBy"][0]["Provenance"]


def test_boilerplate_only_writes_only_the_methods(tmp_path):
    result = run_cli(tmp_path / "out", tmp_path / "work", "--boilerplate-only", "--shell-grouping", "all",
                     "--no-b0-denoising", "--p2s-model", "ridge", "--patch-radius", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["logs/CITATION.bib", "logs/CITATION.html", "logs/CITATION.md"]
    text = (tmp_path / "out" / "logs" / "CITATION.md").read_text()
    assert "split into 2 diffusion-weighted shells" in text and "pooled into one group" in text
    assert "b=0 volumes were not denoised" in text and "ridge regression (alpha = 1)" in text
    assert "a patch radius of 1 (patches of 3³ voxels)" in text


def _ddm2_runnable() -> bool:
    import bids_denoise.interfaces.ddm2  # noqa: F401
    from bids_denoise.denoise.methods import METHODS

    return "ddm2" in METHODS


@pytest.mark.skipif(not _ddm2_runnable(), reason="DDM2 is not available in this version")
def test_ddm2_smoke_report_on_the_example_dataset(tmp_path):
    out = build_example_report(tmp_path, "--method", "ddm2", "--ddm2-preset", "smoke", "--shell-grouping", "shell")
    parser = check_links(out / "sub-02.html")
    images = [Path(src).name for src in parser.images]
    assert f"{MULTISHELL}_desc-ddm2loss_dwi.svg" in images and f"{MULTISHELL}_desc-ddm2tstar_dwi.svg" in images
    page = (out / "sub-02.html").read_text()
    assert "DDM2 training" in page and "DDM2 matched states t*" in page and "smoke" in page
    stats = _stats(out)
    trained = [row for row in stats["DDM2"] if row["TStarMedian"] is not None]
    assert {row["Label"] for row in trained} >= {"b1000", "b2000"}
    assert all(row["Preset"] == "smoke" and row["Steps"]["stage1"] > 0 for row in trained)
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "DDM2 [@ddm2]" in citation and "smoke preset" in citation
