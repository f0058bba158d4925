"""Derivative names, BIDS URIs, dataset_description.json and .bidsignore."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import bids_denoise
from bids_denoise import __about__
from bids_denoise.errors import BidsDenoiseError, UsageError
from bids_denoise.utils import derivatives
from bids_denoise.utils.derivatives import (
    DEFAULT_BIDSIGNORE,
    DERIVATIVE_ENTITIES,
    bids_uri,
    derivative_path,
    parse_entities,
    write_bidsignore,
    write_derivative_description,
)

FULL_NAME = "sub-01_ses-1_acq-multi_dir-AP_run-2_part-mag_dwi.nii.gz"


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "Raw study", "BIDSVersion": "1.9.0", "License": "CC0",
        "DatasetDOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
    }))
    return root


@pytest.fixture(autouse=True)
def _no_container_env(monkeypatch):
    monkeypatch.delenv("BIDS_DENOISE_CONTAINER_IMAGE", raising=False)
    monkeypatch.delenv("BIDS_DENOISE_CONTAINER_TYPE", raising=False)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _resolve_link(link: str, output_dir: Path) -> Path:
    if link.startswith("file:"):
        return Path(unquote(urlparse(link).path))
    return (output_dir / link).resolve()


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------
def test_parse_entities_keeps_labels_as_written():
    assert parse_entities(f"/data/sub-01/ses-1/dwi/{FULL_NAME}") == {
        "subject": "01", "session": "1", "acquisition": "multi", "direction": "AP",
        "run": "2", "part": "mag"}
    assert parse_entities("sub-01_rec-x_run-007_dwi.bval") == {"subject": "01", "run": "007"}


def test_derivative_path_with_all_entities(tmp_path):
    path = derivative_path(tmp_path / "raw" / FULL_NAME, tmp_path / "out", desc="patch2self",
                           suffix="dwi", extension=".nii.gz")
    assert path == (tmp_path / "out" / "sub-01" / "ses-1" / "dwi" /
                    "sub-01_ses-1_acq-multi_dir-AP_run-2_part-mag_desc-patch2self_dwi.nii.gz")
    assert tuple(parse_entities(path)) == DERIVATIVE_ENTITIES


def test_derivative_path_without_session_and_other_entities_dropped():
    path = derivative_path("sub-02_acq-dsi_rec-x_echo-1_dwi.nii.gz", "/out", desc="noise",
                           suffix="dwimap", extension=".nii.gz")
    assert path == Path("/out/sub-02/dwi/sub-02_acq-dsi_desc-noise_dwimap.nii.gz")


def test_derivative_path_overrides():
    path = derivative_path(FULL_NAME, "/out", desc="ddm2", suffix="dwi", extension=".json",
                           entities={"run": None, "acq": "new", "part": None})
    assert path.name == "sub-01_ses-1_acq-new_dir-AP_desc-ddm2_dwi.json"


def test_derivative_path_figures_and_no_desc():
    fig = derivative_path(FULL_NAME, "/out", desc="patch2self", suffix="dwi",
                          extension=".svg", datatype="figures")
    assert fig.parent == Path("/out/sub-01/figures")
    plain = derivative_path("sub-01_dwi.nii.gz", "/out", desc=None, suffix="dwi",
                            extension=".bval")
    assert plain == Path("/out/sub-01/dwi/sub-01_dwi.bval")


@pytest.mark.parametrize("kwargs, match", [
    ({"desc": "patch-2-self"}, "desc"),
    ({"extension": "nii.gz"}, "dot"),
    ({"suffix": "dwi_map"}, "suffix"),
    ({"entities": {"echo": "1"}}, "unsupported entity"),
    ({"entities": {"run": "1.5"}}, "alphanumeric"),
])
def test_derivative_path_rejects_invalid_names(kwargs, match):
    arguments = {"desc": "x", "suffix": "dwi", "extension": ".nii.gz", **kwargs}
    with pytest.raises(ValueError, match=match):
        derivative_path(FULL_NAME, "/out", **arguments)


def test_derivative_path_needs_a_subject():
    with pytest.raises(ValueError, match="sub-"):
        derivative_path("dwi.nii.gz", "/out", desc="x", suffix="dwi", extension=".nii.gz")


def test_bids_uri(tmp_path):
    raw = tmp_path / "raw"
    target = raw / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    assert bids_uri(target, raw) == "bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"
    assert bids_uri(target, raw, dataset="") == "bids::sub-01/dwi/sub-01_dwi.nii.gz"
    with pytest.raises(ValueError, match="not inside"):
        bids_uri(tmp_path / "elsewhere.nii.gz", raw)


def test_bids_uri_through_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "sub-01").mkdir(parents=True)
    (real / "sub-01" / "f.nii.gz").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert bids_uri(real / "sub-01" / "f.nii.gz", link) == "bids:raw:sub-01/f.nii.gz"


# ----------------------------------------------------------------------------------------------
# dataset_description.json
# ----------------------------------------------------------------------------------------------
def test_description_content(raw, tmp_path):
    out = tmp_path / "out"
    path = write_derivative_description(out, raw)
    desc = _read(path)
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] and "Raw study" in desc["Name"]
    assert desc["GeneratedBy"] == [{"Name": "bids_denoise",
                                    "Version": bids_denoise.__version__,
                                    "CodeURL": __about__.__url__}]
    assert _resolve_link(desc["DatasetLinks"]["raw"], out) == raw.resolve()
    assert desc["SourceDatasets"] == [{
        "DOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
        "URL": "https://doi.org/10.18112/openneuro.ds000001.v1.0.0"}]
    assert desc["License"] == "CC0"


def test_description_nested_in_raw_uses_a_relative_link(raw):
    out = raw / "derivatives" / "bids_denoise"
    desc = _read(write_derivative_description(out, raw))
    assert desc["DatasetLinks"]["raw"] == "../.."
    assert _resolve_link(desc["DatasetLinks"]["raw"], out) == raw.resolve()


def test_description_without_raw_extras(tmp_path):
    raw = tmp_path / "bare"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "b", "BIDSVersion": "1.9.0"}')
    desc = _read(write_derivative_description(tmp_path / "out", raw))
    assert "SourceDatasets" not in desc and "License" not in desc


@pytest.mark.parametrize("kind, expected", [(None, "docker"), ("singularity", "singularity")])
def test_container_from_environment(raw, tmp_path, monkeypatch, kind, expected):
    monkeypatch.setenv("BIDS_DENOISE_CONTAINER_IMAGE", "bids/denoise:0.1.0")
    if kind:
        monkeypatch.setenv("BIDS_DENOISE_CONTAINER_TYPE", kind)
    desc = _read(write_derivative_description(tmp_path / "out", raw))
    assert desc["GeneratedBy"][0]["Container"] == {"Type": expected, "Tag": "bids/denoise:0.1.0"}


def test_explicit_container_argument(raw, tmp_path):
    desc = _read(write_derivative_description(
        tmp_path / "out", raw, container={"Type": "apptainer", "Tag": "x.sif"}))
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "apptainer", "Tag": "x.sif"}


def test_merge_keeps_other_pipelines_and_does_not_duplicate_ours(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "Shared outputs", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsiprep", "Version": "1.0.0"}],
        "DatasetLinks": {"templates": "file:///templates"}, "Custom": 1,
    }))
    for _ in range(3):
        write_derivative_description(out, raw)
    desc = _read(out / "dataset_description.json")
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["qsiprep", "bids_denoise"]
    assert desc["Name"] == "Shared outputs" and desc["Custom"] == 1
    assert set(desc["DatasetLinks"]) == {"templates", "raw"}


def test_other_bids_denoise_version_is_refused(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "dataset_description.json"
    path.write_text(json.dumps({
        "Name": "old", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_denoise", "Version": "0.0.1"}]}))
    before = path.read_bytes()
    with pytest.raises(UsageError) as err:
        write_derivative_description(out, raw)
    assert isinstance(err.value, BidsDenoiseError)
    assert "0.0.1" in str(err.value) and bids_denoise.__version__ in str(err.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", ['{"Name": "raw", "BIDSVersion": "1.9.0"}', "{not json"])
def test_unusable_existing_description_is_refused(raw, tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "dataset_description.json"
    path.write_text(content)
    with pytest.raises(UsageError):
        write_derivative_description(out, raw)
    assert path.read_text() == content


def _hammer(output_dir: str, raw_dir: str, worker: int, iterations: int) -> None:
    for i in range(iterations):
        write_derivative_description(output_dir, raw_dir)
        write_bidsignore(output_dir, [f"worker{worker}-{i}"])


def test_concurrent_writers_never_leave_invalid_or_lost_content(raw, tmp_path):
    out = tmp_path / "out"
    iterations, workers = 60, 3
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(out), str(raw), w, iterations))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        for name in ("dataset_description.json", ".bidsignore"):
            try:
                text = (out / name).read_text()
            except FileNotFoundError:
                continue
            if name.endswith(".json"):
                json.loads(text)  # a partial file would raise here
            else:
                assert text.endswith("\n")
            reads += 1
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    assert reads > 0
    desc = _read(out / "dataset_description.json")
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["bids_denoise"]
    lines = (out / ".bidsignore").read_text().splitlines()
    expected = {f"worker{w}-{i}" for w in range(workers) for i in range(iterations)}
    assert expected <= set(lines), "a read-modify-write race lost some lines"
    assert len(lines) == len(set(lines))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# .bidsignore
# ----------------------------------------------------------------------------------------------
def test_default_bidsignore_patterns_cover_our_outputs():
    for pattern in ("*_dwi.bval", "*_dwi.bvec", "*_dwimap.nii.gz", "*_dwimap.json",
                    "**/figures", "sub-*/figures", "logs/", "*.html"):
        assert pattern in DEFAULT_BIDSIGNORE
    assert any(p.lstrip("/") == "group_summary.tsv" for p in DEFAULT_BIDSIGNORE)


def test_bidsignore_merges_and_is_idempotent(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bidsignore").write_text("# from another tool\nextra/\n*.html\n")
    write_bidsignore(out)
    first = (out / ".bidsignore").read_text()
    write_bidsignore(out)
    write_bidsignore(out, ["custom_*.txt", "extra/"])
    lines = (out / ".bidsignore").read_text().splitlines()
    assert first.splitlines()[:3] == ["# from another tool", "extra/", "*.html"]
    assert lines.count("*.html") == 1 and lines.count("extra/") == 1
    assert lines[-1] == "custom_*.txt"
    assert set(DEFAULT_BIDSIGNORE) <= set(lines)


def test_bidsignore_in_a_new_folder(tmp_path):
    path = write_bidsignore(tmp_path / "new" / "out")
    assert path.read_text().splitlines() == list(DEFAULT_BIDSIGNORE)


def test_lock_file_is_hidden(raw, tmp_path):
    out = tmp_path / "out"
    write_derivative_description(out, raw)
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [derivatives.LOCK_FILE]
    assert os.path.basename(derivatives.LOCK_FILE).startswith(".")
