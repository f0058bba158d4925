"""DenoisingReportlets and ReportletsSink (Nipype interfaces)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.errors import DataError
from bids_denoise.interfaces.reports import DenoisingReportlets, ReportletsSink
from bids_denoise.reports import names

GROUPS = [
    {"Label": "b0", "BValue": 0, "Count": 3, "Volumes": [0, 4, 10]},
    {"Label": "b1000", "BValue": 1000, "Count": 5, "Volumes": [1, 3, 6, 8, 11]},
    {"Label": "b2000", "BValue": 2000, "Count": 5, "Volumes": [2, 5, 7, 9, 12]},
]


@pytest.fixture
def denoised_series(multishell_series, tmp_path):
    data, bvals, (dwi, bval, _) = multishell_series
    rng = np.random.default_rng(5)
    denoised = data - rng.normal(0, 5, data.shape).astype(np.float32)
    affine = nb.load(dwi).affine
    den_file, noise_file = tmp_path / "denoised.nii.gz", tmp_path / "noise.nii.gz"
    nb.Nifti1Image(denoised, affine).to_filename(den_file)
    nb.Nifti1Image(np.std(data - denoised, axis=3), affine).to_filename(noise_file)
    return dwi, bval, den_file, noise_file


def _history_file(path: Path, n_volumes: int) -> Path:
    path.write_text(json.dumps({
        "stage1_loss": [1.0, 0.5, 0.25], "stage3_loss": [0.9, 0.4], "t_star": [[50, 60]] * n_volumes,
        "stage_seconds": {"stage1": 1.0}, "preset": "smoke", "steps": {"stage1": 3, "stage3": 2},
    }))
    return path


def test_reportlets_of_a_run(denoised_series, tmp_path, monkeypatch):
    dwi, bval, den_file, noise_file = denoised_series
    monkeypatch.chdir(tmp_path)
    result = DenoisingReportlets(in_file=str(dwi), denoised_file=str(den_file), bval_file=str(bval),
                                 groups=GROUPS, noise_file=str(noise_file), title="sub-01_dwi").run()
    outputs = result.outputs
    assert outputs.figure_descs == ["brainmask", "mosaicb0", "mosaicb1000", "mosaicb2000", "residualhist",
                                    "residualstd", "residualcorr", "sigma"]
    for path, desc in zip(outputs.figure_files, outputs.figure_descs):
        assert Path(path).is_file() and Path(path).stem == desc
    stats = json.loads(Path(outputs.stats_file).read_text())
    assert stats["Shape"] == [8, 7, 5, 13] and stats["Zooms"] == [2.0, 2.0, 2.5]
    assert [g["Label"] for g in stats["Groups"]] == ["b0", "b1000", "b2000"]
    assert all(g["ResidualStd"] == pytest.approx(5, rel=0.2) for g in stats["Groups"])
    assert [f["Desc"] for f in stats["Figures"]] == outputs.figure_descs
    assert "DDM2" not in stats


@pytest.mark.slow  # every reportlet plus the DDM2 plots: ~6 s
def test_reportlets_with_ddm2_histories(denoised_series, tmp_path, monkeypatch):
    dwi, bval, den_file, _ = denoised_series
    monkeypatch.chdir(tmp_path)
    histories = [str(_history_file(tmp_path / f"h{i}.json", g["Count"])) for i, g in enumerate(GROUPS)]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = DenoisingReportlets(in_file=str(dwi), denoised_file=str(den_file), bval_file=str(bval),
                                 groups=GROUPS, history_files=[*histories[:2], str(broken)], method="ddm2").run()
    assert result.outputs.figure_descs[-2:] == ["ddm2loss", "ddm2tstar"]
    stats = json.loads(Path(result.outputs.stats_file).read_text())
    assert [row["Label"] for row in stats["DDM2"]] == ["b0", "b1000"]  # the unreadable one is skipped
    assert stats["DDM2"][0]["Preset"] == "smoke" and stats["DDM2"][0]["TStarMedian"] == 55


def test_reportlets_refuse_mismatched_series(denoised_series, tmp_path, monkeypatch):
    dwi, bval, den_file, _ = denoised_series
    monkeypatch.chdir(tmp_path)
    img = nb.load(den_file)
    short = tmp_path / "short.nii.gz"
    nb.Nifti1Image(np.asanyarray(img.dataobj)[..., :5], img.affine).to_filename(short)
    with pytest.raises(DataError):
        DenoisingReportlets(in_file=str(dwi), denoised_file=str(short), bval_file=str(bval), groups=GROUPS).run()


def test_mosaic_descs_are_valid_and_unique():
    taken = set()
    for label in ("b1000", "b1000_2", "b1000_2", "dwi", "@@"):
        desc = names.mosaic_desc(label, taken)
        assert desc.isalnum() and desc not in taken and names.is_reportlet(desc)
        taken.add(desc)
    assert not names.is_reportlet("denoised") and names.is_reportlet(names.STATS_DESC)
    assert names.sort_key("brainmask") < names.sort_key("mosaicb0") < names.sort_key("sigma")


def _files(folder: Path, descs, extension=".svg"):
    paths = []
    for desc in descs:
        path = folder / f"{desc}{extension}"
        path.write_text(f"<svg>{desc}</svg>")
        paths.append(str(path))
    return paths


def test_sink_names_and_stale_reportlets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    source = "/raw/sub-01/ses-1/dwi/sub-01_ses-1_acq-dti_run-1_dwi.nii.gz"
    figures = out / "sub-01" / "figures"
    figures.mkdir(parents=True)
    stale = figures / "sub-01_ses-1_acq-dti_run-1_desc-mosaicb2000_dwi.png"
    other_run = figures / "sub-01_ses-1_acq-dti_run-10_desc-mosaicb2000_dwi.png"
    foreign = figures / "sub-01_ses-1_acq-dti_run-1_desc-custom_dwi.svg"
    for path in (stale, other_run, foreign):
        path.write_text("old")
    stats = work / "reportstats.json"
    stats.write_text("{}")
    result = ReportletsSink(base_directory=str(out), source_file=source,
                            in_files=_files(work, ["brainmask", "mosaicb1000"]), descs=["brainmask", "mosaicb1000"],
                            stats_file=str(stats)).run()
    written = sorted(Path(p).name for p in result.outputs.out_files)
    assert written == ["sub-01_ses-1_acq-dti_run-1_desc-brainmask_dwi.svg",
                       "sub-01_ses-1_acq-dti_run-1_desc-mosaicb1000_dwi.svg",
                       "sub-01_ses-1_acq-dti_run-1_desc-reportstats_dwi.json"]
    assert all(Path(p).parent == figures for p in result.outputs.out_files)
    assert not stale.exists()  # this run's reportlet from earlier settings
    assert other_run.exists() and foreign.exists()  # other runs and non-reportlets are kept


def test_sink_checks_lengths(tmp_path):
    with pytest.raises(ValueError):
        ReportletsSink(base_directory=str(tmp_path), source_file="sub-01_dwi.nii.gz",
                       in_files=_files(tmp_path, ["a"]), descs=["a", "b"]).run()


# ------------------------------------------------------------------------------ in the workflow
@pytest.fixture
def example_run(tmp_path):
    from bids_denoise import config
    from bids_denoise.data import example_dataset
    from bids_denoise.utils.bids import collect_dwi_runs, init_layout

    config.reset()
    config.from_dict({"execution": {"bids_dir": example_dataset(), "output_dir": tmp_path / "out",
                                    "work_dir": tmp_path / "work"}}, init=False)
    yield next(r for r in collect_dwi_runs(init_layout(example_dataset()), "02") if "multishell" in r.dwi_file.name)
    config.reset()


def _reportlet_edges(wf):
    graph = wf._graph
    reportlets = next(n for n in graph.nodes if n.name == "reportlets")
    sink = next(n for n in graph.nodes if n.name == "ds_figures")
    incoming = {c for u, v, d in graph.edges(data=True) if v is reportlets for _, c in d["connect"]}
    return reportlets, sink, incoming


def test_run_workflow_draws_and_sinks_the_reportlets(example_run):
    from bids_denoise import config
    from bids_denoise.workflows.base import init_run_wf

    wf = init_run_wf(example_run)
    reportlets, sink, incoming = _reportlet_edges(wf)
    assert incoming == {"denoised_file", "bval_file", "bvec_file", "groups", "noise_file"}  # no DDM2 history
    assert reportlets.inputs.in_file == str(example_run.dwi_file)
    assert sink.inputs.base_directory == str(config.execution.output_dir)
    assert sink.inputs.source_file == str(example_run.dwi_file)


def test_ddm2_histories_reach_the_reportlets(example_run):
    from bids_denoise import config
    from bids_denoise.workflows.base import init_run_wf

    config.workflow.method = "ddm2"
    config.workflow.ddm2_preset = "smoke"
    _, _, incoming = _reportlet_edges(init_run_wf(example_run))
    assert names.HISTORY_FIELD in incoming
