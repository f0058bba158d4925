"""The methods text for every option combination, the citation files and the Markdown converter."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bids_denoise import __version__, config
from bids_denoise.reports import boilerplate
from bids_denoise.reports.boilerplate import build_boilerplate, citation_html, survey_runs, write_citation_files
from bids_denoise.reports.markdown import cite_label, markdown_to_html, parse_bibtex

REQUIRED_KEYS = ("patch2self", "ddm2", "nipype", "pybids", "nibabel")


@dataclass
class Run:
    dwi_file: Path
    bval_file: Path
    entities: dict = field(default_factory=dict)


def _run(tmp_path, name, bvals, subject="01"):
    bval = tmp_path / f"{name}.bval"
    bval.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    return Run(tmp_path / f"{name}_dwi.nii.gz", bval, {"subject": subject})


def _settings(**changes):
    values = dict(method="patch2self", b0_threshold=50.0, shell_tolerance=100.0, shell_grouping="shell",
                  b0_denoising=True, p2s_model="ols", p2s_alpha=1.0, patch_radius=(0, 0, 0), clip_negative_vals=True)
    values.update(changes)
    return SimpleNamespace(**values)


SHELLS = {1: [0, 0, 1000, 1000, 1000], 2: [0, 5, 1000, 2000, 1000, 2000], 3: [0, 0, 500, 1005, 2000, 995, 2010]}


@pytest.mark.parametrize("n_shells", [1, 2, 3])
def test_the_real_number_of_shells_is_stated(tmp_path, n_shells):
    text = build_boilerplate(_settings(), [_run(tmp_path, "a", SHELLS[n_shells])])
    noun = "shell" if n_shells == 1 else "shells"
    assert f"split into {n_shells} diffusion-weighted {noun}" in text
    assert "b0 threshold of 50 s/mm²" in text and "within 100 s/mm²" in text
    assert "1 DWI series of 1 participant was processed" in text


def test_shells_that_differ_between_runs(tmp_path):
    runs = {"01": [_run(tmp_path, "a", SHELLS[1]), _run(tmp_path, "b", SHELLS[1])],
            "02": [_run(tmp_path, "c", SHELLS[3], subject="02")]}
    text = build_boilerplate(_settings(), runs)
    assert "3 DWI series of 2 participants were processed" in text
    assert "1 to 3 diffusion-weighted shells" in text
    assert "1 shell in 2 series (b = 1000 s/mm²)" in text and "3 shells in 1 series (b = 500, 1000 and 2000 s/mm²)" in text


def test_threshold_and_tolerance_change_the_count(tmp_path):
    run = _run(tmp_path, "a", [0, 60, 1000, 1000, 1150, 1150])
    text = build_boilerplate(_settings(b0_threshold=70.0, shell_tolerance=200.0), [run])
    assert "b0 threshold of 70 s/mm²" in text and "split into 1 diffusion-weighted shell " in text
    assert "2 b=0 volumes" in text
    text = build_boilerplate(_settings(b0_threshold=10.0, shell_tolerance=100.0), [run])
    assert "split into 3 diffusion-weighted shells" in text


@pytest.mark.parametrize("grouping, b0, model, radius", list(itertools.product(
    ("shell", "all"), (True, False), ("ols", "ridge", "lasso"), ((0, 0, 0), (1, 1, 1), (1, 0, 2)))))
def test_every_patch2self_combination(tmp_path, grouping, b0, model, radius):
    text = build_boilerplate(_settings(shell_grouping=grouping, b0_denoising=b0, p2s_model=model, p2s_alpha=0.5,
                                       patch_radius=radius), [_run(tmp_path, "a", SHELLS[2])])
    if grouping == "shell":
        assert "Each shell was denoised from its own volumes only" in text
    else:
        assert "pooled into one group and denoised together, across shells" in text
    if b0:
        assert "b=0 volumes were denoised as a group of their own" in text
    else:
        assert "b=0 volumes were not denoised" in text
    assert "Patch2Self [@patch2self]" in text and "DDM2" not in text
    expected_model = {"ols": "ordinary least squares (OLS) regression", "ridge": "ridge regression (alpha = 0.5)",
                      "lasso": "lasso regression (alpha = 0.5)"}[model]
    assert expected_model in text
    if model == "ols":
        assert "alpha" not in text
    expected_radius = {(0, 0, 0): "a patch radius of 0 (single voxels)", (1, 1, 1): "a patch radius of 1 (patches of 3³",
                       (1, 0, 2): "a patch radius of 1, 0 and 2 voxels along x, y and z"}[radius]
    assert expected_radius in text


def test_single_b0_and_no_b0_notes(tmp_path):
    text = build_boilerplate(_settings(), [_run(tmp_path, "a", [0, 1000, 1000, 1000])])
    assert "with a single b=0 volume it was left unchanged, as at least 3 are needed" in text
    text = build_boilerplate(_settings(), [_run(tmp_path, "a", [0, 0, 1000, 1000, 1000])])
    assert "with fewer than 3 b=0 volumes they were left unchanged" in text
    text = build_boilerplate(_settings(), [_run(tmp_path, "a", [0, 0, 0, 1000, 1000, 1000])])
    assert "left unchanged" not in text
    text = build_boilerplate(_settings(), [_run(tmp_path, "a", [1000, 1000, 1000])])
    assert "None of the series had b=0 volumes." in text
    text = build_boilerplate(_settings(shell_grouping="all"), [_run(tmp_path, "a", SHELLS[1])])
    assert "denoised together." in text and "across shells" not in text  # one shell: nothing to pool


def test_ddm2_sentence_reads_the_ddm2_settings(tmp_path):
    runs = [_run(tmp_path, "a", SHELLS[2])]
    text = build_boilerplate(_settings(method="ddm2", ddm2_preset="fast", ddm2_stage1_steps=None,
                                       ddm2_stage3_steps=5000), runs)
    assert "DDM2 [@ddm2]" in text and "Patch2Self" not in text
    assert "fast preset" in text and "stage III: 5,000 training steps" in text
    assert "split into 2 diffusion-weighted shells" in text
    # every ddm2_* attribute is optional
    assert "run with its default settings." in build_boilerplate(_settings(method="ddm2"), runs)


def test_ddm2_steps_come_from_the_preset_when_not_overridden():
    import bids_denoise.denoise.ddm2.settings  # noqa: F401

    sentence = boilerplate._method_sentence(_settings(method="ddm2", ddm2_preset="smoke"))
    assert "smoke preset" in sentence and "stage I: 30 training steps" in sentence


def test_unknown_method_and_no_runs():
    text = build_boilerplate(_settings(method="other"), [])
    assert "Denoising used other." in text
    assert "with a b0 threshold of 50 s/mm²" in text and "processed" not in text


def test_unreadable_bval_files_are_skipped(tmp_path):
    missing = Run(tmp_path / "x_dwi.nii.gz", tmp_path / "missing.bval")
    assert survey_runs([missing], b0_threshold=50, shell_tolerance=100) == []


def test_citations_in_the_text_all_exist_in_the_bib(tmp_path):
    references = parse_bibtex(boilerplate.bibtex())
    for method in ("patch2self", "ddm2"):
        text = build_boilerplate(_settings(method=method), [_run(tmp_path, "a", SHELLS[1])])
        keys = re.findall(r"\[@([\w-]+)\]", text)
        assert keys and set(keys) <= set(references)
    assert f"*bids_denoise* {__version__}" in text


def test_bib_has_proper_references():
    references = parse_bibtex(boilerplate.bibtex())
    assert set(REQUIRED_KEYS) <= set(references)
    assert references["patch2self"]["year"] == "2020" and "Neural Information Processing" in references["patch2self"]["booktitle"]
    assert references["ddm2"]["year"] == "2023" and "ICLR" in references["ddm2"]["booktitle"]
    assert references["nipype"]["doi"] == "10.3389/fninf.2011.00013" and "Frontiers in Neuroinformatics" in references["nipype"]["journal"]
    assert references["pybids"]["doi"] == "10.21105/joss.01294" and references["pybids"]["year"] == "2019"
    assert "zenodo" in references["nibabel"]["doi"].lower()
    assert cite_label(references["patch2self"]) == "Fadnavis et al., 2020"
    assert cite_label(references["ddm2"]) == "Xiang et al., 2023"
    assert cite_label(references["pybids"]) == "Yarkoni et al., 2019"
    assert __version__ in references["bids_denoise"]["note"]


def test_citation_files(tmp_path):
    markdown = build_boilerplate(_settings(), [_run(tmp_path, "a", SHELLS[2])])
    paths = write_citation_files(tmp_path / "out", markdown)
    assert paths["md"].read_text() == markdown
    assert "{{version}}" not in paths["bib"].read_text() and "@article{nipype," in paths["bib"].read_text()
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and 'href="#ref-patch2self"' in page and 'id="ref-patch2self"' in page
    assert "Fadnavis et al., 2020" in page and "[@" not in page
    assert sorted(p.name for p in (tmp_path / "out" / "logs").iterdir()) == ["CITATION.bib", "CITATION.html", "CITATION.md"]


def test_markdown_converter_escapes_and_formats():
    body, cited = markdown_to_html(
        "# Title\n\nSome *emph*, **strong**, `a<b`, [link](https://x.org) & <script>x</script> [@a; @b].\n\n"
        "- one\n- two [@a]\n\n1. first\n2. second\n", {"a": {"author": "Doe, J", "year": "2000"}})
    assert "<h1>Title</h1>" in body and "<em>emph</em>" in body and "<strong>strong</strong>" in body
    assert "<code>a&lt;b</code>" in body and '<a href="https://x.org">link</a>' in body
    assert "&lt;script&gt;" in body and "<script>" not in body and "&amp;" in body
    assert '(<a href="#ref-a">Doe, 2000</a>; <a href="#ref-b">b</a>)' in body
    assert "<ul><li>one</li><li>two" in body and "<ol><li>first</li><li>second</li></ol>" in body
    assert cited == ["a", "b"]
    assert markdown_to_html("### H", heading_offset=1)[0] == "<h4>H</h4>"


def test_citation_html_without_references():
    assert "<ol" not in citation_html("No citations here.", "")


def test_workflow_boilerplate_delegates_and_finds_the_selected_runs(tmp_path):
    from bids_denoise.data import example_dataset
    from bids_denoise.utils.bids import init_layout
    from bids_denoise.workflows.base import build_boilerplate as workflow_boilerplate

    config.reset()
    try:
        config.from_dict({"execution": {"bids_dir": example_dataset(), "participant_label": ["02"],
                                        "bids_filters": {"dwi": {"acquisition": "multishell"}}},
                          "workflow": {"p2s_model": "ridge"}}, init=False)
        assert "processed" not in workflow_boilerplate()  # no layout yet: no run counts
        config.execution.layout = init_layout(example_dataset())
        text = workflow_boilerplate()
        assert "1 DWI series of 1 participant was processed" in text
        assert "split into 2 diffusion-weighted shells (b = 1000 and 2000 s/mm², with 30 and 60 volumes)" in text
        assert "ridge regression" in text
    finally:
        config.reset()


def test_merged_shells_and_radial_pooling_are_stated(tmp_path):
    run = _run(tmp_path, "a", [0] * 3 + [1000] * 12 + [2000] * 4)
    text = build_boilerplate(_settings(), [run])
    assert "shells of fewer than 10 volumes were denoised together with their nearest shell in b" in text
    text = build_boilerplate(_settings(patch_radius=(1, 1, 1), patch_pooling="radial"), [run])
    assert "patches of 3³ voxels), the patch voxels at each distance from the centre averaged" in text
    text = build_boilerplate(_settings(patch_radius=(0, 0, 0), patch_pooling="radial"), [run])
    assert "each distance" not in text  # nothing to pool at radius 0


def test_the_quality_checks_and_their_thresholds_are_stated(tmp_path, monkeypatch):
    from bids_denoise.reports import qc

    text = build_boilerplate(_settings(), [_run(tmp_path, "a", [0, 1000, 1000, 1000])])
    assert "residual exceeded 1.2 times the noise level" in text and "fell by more than 10 %" in text
    monkeypatch.setitem(qc.THRESHOLDS, "FADrop", 0.2)
    assert "fell by more than 20 %" in build_boilerplate(_settings(), [_run(tmp_path, "b", [0, 1000, 1000])])
