"""The per-subject HTML report, assembled from files laid out as a finished run leaves them."""

from __future__ import annotations

import json
import os
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from bids_denoise.reports import html as report_html
from bids_denoise.reports.figures import plot_placeholder

RUN = "sub-01_ses-1_acq-dti_run-1"
PROVENANCE = {"Version": "0.1.0", "GitCommit": "a" * 40, "GitDescribe": "v0.1.0-3-gaaaaaaa",
              "Container": {"Type": "docker", "Image": "bids_denoise:test"},
              "CommandLine": "bids-denoise raw out participant", "Configuration": {"workflow": {"method": "patch2self"}}}


class LinkCollector(HTMLParser):
    """Every src/href and id of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.images, self.scripts = [], set(), [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src"))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append(attrs[key])


def check_links(report: Path) -> LinkCollector:
    """Assert that every relative link of ``report`` resolves (files and #anchors)."""
    parser = LinkCollector()
    parser.feed(report.read_text(encoding="utf-8"))
    for link in parser.links:
        parsed = urlparse(link)
        if parsed.scheme in ("http", "https"):
            continue
        assert not parsed.scheme and not link.startswith("/"), f"absolute link {link}"
        if parsed.path:
            assert (report.parent / unquote(parsed.path)).is_file(), f"broken link {link}"
        elif parsed.fragment:
            assert parsed.fragment in parser.ids, f"broken anchor {link}"
    return parser


def _sidecar(groups, runtime=1.5, **extra):
    return {"DenoisingMethod": "Patch2Self", "DenoisingParameters": {"B0Threshold": 50.0, "Model": "ols",
                                                                      "PatchRadius": [0, 0, 0]},
            "VolumeGroups": groups, "Devices": ["cpu"], "RunTime": runtime, "SoftwareVersion": "0.1.0",
            "Sources": [f"bids:raw:sub-01/ses-1/dwi/{RUN}_dwi.nii.gz"], "Provenance": PROVENANCE, **extra}


@pytest.fixture
def output_dir(tmp_path):
    out = tmp_path / "out"
    dwi = out / "sub-01" / "ses-1" / "dwi"
    figures = out / "sub-01" / "figures"
    dwi.mkdir(parents=True)
    figures.mkdir(parents=True)
    groups = [{"Label": "b0", "BValue": 0, "Count": 2, "Volumes": [0, 5], "Denoised": True, "Device": "cpu"},
              {"Label": "b1000", "BValue": 1000, "Count": 30, "Volumes": list(range(1, 5)), "Denoised": True}]
    (dwi / f"{RUN}_desc-denoised_dwi.json").write_text(json.dumps(_sidecar(groups)))
    (dwi / f"{RUN}_desc-denoised_dwi.nii.gz").write_bytes(b"")
    descs = ["brainmask", "mosaicb0", "mosaicb1000", "residualhist", "residualstd", "residualcorr", "sigma"]
    for desc in reversed(descs):  # the stats file, not the file order, decides the display order
        plot_placeholder(figures / f"{RUN}_desc-{desc}_dwi.svg", desc)
    stats = {"Groups": [{"Label": "b0", "BValue": 0, "Count": 2, "Denoised": True, "SigmaBefore": 12.5,
                         "SigmaAfter": 8.25, "ResidualStd": 9.0, "SNRBefore": 20.0, "SNRAfter": 30.0, "SNRGain": 1.5,
                         "MedianAbsCorrelation": 0.001, "MedianAbsAnatomyCorrelation": 0.01},
                        {"Label": "b1000", "BValue": 1000, "Count": 30, "Denoised": True, "SigmaBefore": 10.0}],
             "MaskVoxels": 1000, "CorrelationChanceLevel": 0.063, "Shape": [48, 48, 8, 32], "Zooms": [2.0, 2.0, 2.0],
             "Figures": [{"Desc": d, "File": f"{d}.svg"} for d in descs]}
    (figures / f"{RUN}_desc-reportstats_dwi.json").write_text(json.dumps(stats))
    (figures / "README.txt").write_text("not a reportlet")
    logs = out / "logs"
    logs.mkdir()
    (logs / "CITATION.md").write_text("### Methods\n\nDenoised with Patch2Self [@patch2self] and Nipype [@nipype].\n")
    (logs / "config-RUNID.toml").write_text("[workflow]\n")
    return out


def test_report_sections_and_content(output_dir):
    report = report_html.write_subject_report(output_dir, "01", run_uuid="RUNID")
    assert report == output_dir / "sub-01.html"
    page = report.read_text()
    for section in ("summary", "methods", "about", "errors", f"run-{RUN}"):
        assert f'id="{section}"' in page
    assert "b1000: b=1000 × 30" in page and "b0: b=0 × 2" in page and "ses-1" in page
    assert "Patch2Self" in page and "PatchRadius" in page and "0, 0, 0" in page and "1.5" in page
    assert "12.5" in page and "9.0" not in page and ">9<" in page and "1000 voxels" in page
    assert "SNR gain" not in page and "8.25" not in page  # removing signal must not look like success
    assert 'class="qc"' not in page  # no QualityControl in the sidecar: no box
    assert "Fadnavis et al., 2020" in page and 'id="ref-nipype"' in page and "[@" not in page
    assert "a" * 40 in page and "v0.1.0-3-gaaaaaaa" in page and "bids_denoise:test" in page
    assert "bids-denoise raw out participant" in page and 'href="logs/config-RUNID.toml"' in page
    assert "No errors to report." in page
    parser = check_links(report)
    assert parser.scripts == 0  # a static page: nothing to execute, nothing fetched
    order = [Path(src).name.split("_desc-")[1].split("_")[0] for src in parser.images]
    assert order == ["brainmask", "mosaicb0", "mosaicb1000", "residualhist", "residualstd", "residualcorr", "sigma"]
    assert "b1000 (b = 1000, 30 volumes)" in page  # the mosaic caption names its group


def test_report_without_statistics_orders_by_kind(output_dir):
    next((output_dir / "sub-01" / "figures").glob("*reportstats*")).unlink()
    parser = check_links(report_html.write_subject_report(output_dir, "01"))
    order = [Path(src).name.split("_desc-")[1].split("_")[0] for src in parser.images]
    assert order[0] == "brainmask" and order[-1] == "sigma" and set(order[1:3]) == {"mosaicb0", "mosaicb1000"}


def test_runs_with_different_parameters_get_a_column_each(output_dir):
    dwi = output_dir / "sub-01" / "ses-1" / "dwi"
    other = _sidecar([], DenoisingParameters={"B0Threshold": 70.0})
    (dwi / "sub-01_ses-1_acq-dti_run-2_desc-denoised_dwi.json").write_text(json.dumps(other))
    page = report_html.render_subject_report(output_dir, "01")
    assert "<th>sub-01_ses-1_acq-dti_run-2</th>" in page and "70" in page


def test_crash_files_of_this_subject_and_run(output_dir, tmp_path):
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    old = logs / "crash-old-denoise.txt"
    old.write_text("Node: bids_denoise_wf.sub_01_wf.x.denoise\nold failure")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    mine = logs / "crash-new-denoise.txt"
    mine.write_text("Node: bids_denoise_wf.sub_01_wf.x.denoise\nValueError: <boom>")
    (logs / "crash-new-other.txt").write_text("Node: bids_denoise_wf.sub_02_wf.y.denoise\nother subject")
    found = report_html.find_crash_files(logs, "01", since=time.time() - 60)
    assert found == [mine]
    assert report_html.find_crash_files(None, "01") == [] and report_html.find_crash_files(tmp_path / "x", "01") == []
    (report,) = report_html.generate_reports(output_dir, ["01"], log_dir=logs, since=time.time() - 60)
    page = report.read_text()
    assert "crash-new-denoise.txt" in page and "ValueError: &lt;boom&gt;" in page and "Errors (1)" in page
    assert "old failure" not in page and "other subject" not in page


def test_generate_reports_never_raises(output_dir, caplog):
    sidecar = next((output_dir / "sub-01").rglob("*_desc-denoised_dwi.json"))
    sidecar.write_text("{broken")
    (output_dir / "sub-02" / "dwi").mkdir(parents=True)  # a subject with nothing yet
    reports = report_html.generate_reports(output_dir)
    assert sorted(p.name for p in reports) == ["sub-01.html", "sub-02.html"]
    assert "No reportlets were found" not in reports[1].read_text()
    assert "No methods text" not in reports[0].read_text()
    # a failing subject is skipped with a warning, the others are written
    original = report_html.write_subject_report

    def failing(output_dir, subject, **kwargs):
        if subject == "01":
            raise RuntimeError("disk on fire")
        return original(output_dir, subject, **kwargs)

    report_html.write_subject_report = failing
    try:
        assert [p.name for p in report_html.generate_reports(output_dir)] == ["sub-02.html"]
    finally:
        report_html.write_subject_report = original
    assert "disk on fire" in caplog.text
    assert report_html.generate_reports(output_dir / "missing") == []


def test_report_without_methods_text(output_dir):
    (output_dir / "logs" / "CITATION.md").unlink()
    page = report_html.render_subject_report(output_dir, "01")
    assert "No methods text (logs/CITATION.md) was found." in page


def test_qc_flags_are_boxed_in_the_summary_and_fa_is_tabled(output_dir):
    sidecar_path = output_dir / "sub-01" / "ses-1" / "dwi" / f"{RUN}_desc-denoised_dwi.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["VolumeGroups"][1]["EstimatedRMSE"] = 7.25
    sidecar["QualityControl"] = {
        "Groups": [{"Group": "b1000", "ResidualRatio": 1.45, "ResidualCorrelation": 0.3}],
        "FA": {"Voxels": 120, "Before": 0.55, "After": 0.41, "AfterRenoised": 0.45, "Change": -0.182},
        "Flags": [{"Check": "ResidualRatio", "Group": "b1000", "Message": "group b1000: the residual is 1.45 times"}],
    }
    sidecar_path.write_text(json.dumps(sidecar))
    page = report_html.write_subject_report(output_dir, "01", run_uuid="RUNID").read_text()
    summary = page[page.index('id="summary"'):page.index("<h3>Runs</h3>")]
    assert 'class="qc warn"' in summary and "QC: 1 warning(s)" in summary
    assert "group b1000: the residual is 1.45 times" in summary
    assert ">1.45<" in page and ">7.25<" in page  # residual / noise and EstimatedRMSE per group
    assert "FA in high-FA voxels" in page and ">0.55<" in page and "-18 %" in page
    sidecar["QualityControl"]["Flags"] = []
    sidecar_path.write_text(json.dumps(sidecar))
    page = report_html.write_subject_report(output_dir, "01", run_uuid="RUNID").read_text()
    assert "QC: no warnings" in page and 'class="qc warn"' not in page
