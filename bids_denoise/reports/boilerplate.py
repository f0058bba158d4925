"""The methods text ("boilerplate") of a run, and ``logs/CITATION.{md,bib,html}``.

:func:`build_boilerplate` writes one Markdown paragraph from the settings
(``config.workflow``) and the selected runs: how many shells the b-values of those runs really
form, how volumes were grouped, what happened to the b=0 volumes, and the denoiser with its
parameters. Citations use pandoc's ``[@key]`` syntax with the keys of
``bids_denoise/data/boilerplate.bib``.

Each method's sentence and its references come from its entry in
:mod:`bids_denoise.denoise.methods`; the common references are in ``boilerplate.bib``.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from bids_denoise.__about__ import __version__
from bids_denoise.denoise.methods import METHODS, join_words
from bids_denoise.denoise.shells import MIN_GROUP_VOLUMES, MIN_SHELL_VOLUMES, group_volumes
from bids_denoise.reports.markdown import markdown_to_html, parse_bibtex, references_html

LOGGER = logging.getLogger(__name__)

BIB_FILE = Path(__file__).resolve().parents[1] / "data" / "boilerplate.bib"
#: Placeholder in ``boilerplate.bib`` replaced by the running version.
VERSION_PLACEHOLDER = "{{version}}"


# ------------------------------------------------------------------------------------ helpers
def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _bvalue_list(values: Iterable[int]) -> str:
    values = sorted(set(int(v) for v in values))
    if len(values) > 6:
        return f"{values[0]} to {values[-1]}"
    return join_words([str(v) for v in values])


def _flatten_runs(runs) -> list:
    if runs is None:
        return []
    if isinstance(runs, Mapping):
        return [run for subject in sorted(runs) for run in (runs[subject] or [])]
    return list(runs)


# ------------------------------------------------------------------------------ shell survey
def survey_runs(runs, *, b0_threshold: float, shell_tolerance: float) -> list[dict]:
    """The b0 count and the shells of each run, from its bval file.

    Parameters
    ----------
    runs : mapping of subject to runs, or iterable of runs
        Objects with ``bval_file`` (and ``dwi_file``), as :class:`bids_denoise.utils.bids.DWIRun`.
    b0_threshold, shell_tolerance : float
        As in :func:`bids_denoise.denoise.shells.group_volumes`.

    Returns
    -------
    list of dict
        Per readable run: ``file``, ``subject`` (or ``None``), ``n_volumes``, ``n_b0``,
        ``shells`` (nominal b-values, increasing) and ``shell_counts``. Unreadable bval files
        are skipped with a warning.
    """
    survey = []
    for run in _flatten_runs(runs):
        try:
            check = getattr(run, "check", None)  # what the preflight check already read
            bvals = check.bvals if check is not None else np.loadtxt(run.bval_file, ndmin=1).ravel()
            groups = group_volumes(bvals, b0_threshold=b0_threshold, grouping="shell",
                                   shell_tolerance=shell_tolerance, min_shell_volumes=1)
        except (OSError, ValueError) as exc:
            LOGGER.warning("Cannot read the b-values of %s for the methods text (%s).", run.bval_file, exc)
            continue
        shells = [g for g in groups if not g.is_b0]
        entities = getattr(run, "entities", None) or {}
        survey.append({
            "file": str(getattr(run, "dwi_file", run.bval_file)),
            "subject": entities.get("subject"),
            "n_volumes": int(bvals.size),
            "n_b0": sum(g.size for g in groups if g.is_b0),
            "shells": [g.nominal_bvalue for g in shells],
            "shell_counts": [g.size for g in shells],
        })
    return survey


def _shell_sentence(survey: list[dict], b0_threshold: float, shell_tolerance: float) -> str:
    threshold = f"a b0 threshold of {b0_threshold:g} s/mm²"
    clustering = f"b-values within {shell_tolerance:g} s/mm² of each other formed one shell"
    if not survey:
        return (f"Volumes were split into b=0 volumes and diffusion-weighted shells with {threshold} "
                f"({clustering}).")
    n_runs = len(survey)
    counts = sorted({len(s["shells"]) for s in survey})
    if len(counts) == 1:
        n = counts[0]
        same = all(s["shells"] == survey[0]["shells"] and s["shell_counts"] == survey[0]["shell_counts"]
                   for s in survey)
        where = "The volumes" if n_runs == 1 else f"In each of the {n_runs} series, the volumes"
        if n == 0:
            shells = "no diffusion-weighted shell (b=0 volumes only)"
        elif same:
            shells = (f"{_plural(n, 'diffusion-weighted shell')} (b = {_bvalue_list(survey[0]['shells'])} s/mm², "
                      f"with {join_words(survey[0]['shell_counts'])} volumes)")
        else:
            shells = (f"{_plural(n, 'diffusion-weighted shell')} (b = "
                      f"{_bvalue_list(b for s in survey for b in s['shells'])} s/mm² across series)")
        b0 = sorted({s["n_b0"] for s in survey})
        b0_text = _plural(b0[0], "b=0 volume") if len(b0) == 1 else f"{b0[0]} to {b0[-1]} b=0 volumes"
        return f"{where} were split into {shells} and {b0_text}, with {threshold} ({clustering})."
    parts = []
    for n in counts:
        members = [s for s in survey if len(s["shells"]) == n]
        bvals = _bvalue_list(b for s in members for b in s["shells"])
        parts.append(f"{_plural(n, 'shell')} in {_plural(len(members), 'series', 'series')}"
                     + (f" (b = {bvals} s/mm²)" if n else ""))
    return (f"With {threshold} ({clustering}), the volumes of the {n_runs} series were split into "
            f"b=0 volumes and {counts[0]} to {counts[-1]} diffusion-weighted shells: {'; '.join(parts)}.")


def _grouping_sentence(settings, survey: list[dict]) -> str:
    if settings.shell_grouping == "all":
        multi = any(len(s["shells"]) > 1 for s in survey) if survey else True
        return ("All diffusion-weighted volumes of a series were then pooled into one group and denoised "
                "together" + (", across shells." if multi else "."))
    small = any(count < MIN_SHELL_VOLUMES for s in survey for count in s["shell_counts"]) and any(
        len(s["shells"]) > 1 for s in survey)
    merged = (f"; shells of fewer than {MIN_SHELL_VOLUMES} volumes were denoised together with their "
              "nearest shell in b") if small else ""
    return f"Each shell was denoised from its own volumes only{merged}."


def _b0_sentence(settings, survey: list[dict]) -> str:
    if survey and all(s["n_b0"] == 0 for s in survey):
        return "None of the series had b=0 volumes."
    if not settings.b0_denoising:
        return "The b=0 volumes were not denoised: they were copied through unchanged."
    method = METHODS.get(str(getattr(settings, "method", "")))
    minimum = method.min_group_volumes if method else MIN_GROUP_VOLUMES
    few = [s for s in survey if 0 < s["n_b0"] < minimum]
    note = ""
    if few:
        single = all(s["n_b0"] == 1 for s in few)
        note = (f" (in {_plural(len(few), 'series', 'series')} with "
                f"{'a single b=0 volume it was' if single else f'fewer than {minimum} b=0 volumes they were'}"
                f" left unchanged, as at least {minimum} are needed)")
    return f"The b=0 volumes were denoised as a group of their own, from each other{note}."


# --------------------------------------------------------------------------- method sentence
def _method_sentence(settings) -> str:
    """The sentence describing the configured denoiser and all of its parameters."""
    method = METHODS.get(str(getattr(settings, "method", "patch2self")))
    return method.sentence(settings) if method else f"Denoising used {getattr(settings, 'method', '?')}."


def _rician_sentence(settings) -> str:
    correction = str(getattr(settings, "rician_correction", "none"))
    if correction == "none":
        return ""
    how = ("by inverting the mean of the Rician distribution [@koay2006]" if correction == "mean"
           else "with the method-of-moments correction [@gudbjartsson1995]")
    return (f"The Rician noise floor was then removed from the denoised series {how}, with the run's map "
            "of the noise standard deviation: MP-PCA [@veraart2016] over all volumes with the noise estimator "
            "of Cordero-Grande et al. [@corderogrande2019], corrected for the "
            "lower variance of Rician magnitudes at low signal, and scaled to the noise level measured "
            "from repeated b=0 volumes where at least three agreed with it.")


def _error_sentence(settings) -> str:
    if not bool(getattr(settings, "error_estimate", True)):
        return ""
    return ("The error of every volume group was estimated without ground truth by Monte-Carlo SURE "
            "[@stein1981; @ramani2008]: each group was denoised a second time from data perturbed by "
            "Gaussian noise, and the Rician mean, variance and bias were accounted for inside a head mask.")


def _qc_sentence() -> str:
    from bids_denoise.reports.qc import HIGH_FA, THRESHOLDS

    return ("Each output was checked without ground truth: a volume group was flagged when its residual "
            f"exceeded {THRESHOLDS['ResidualRatio']:g} times the noise level, or when the median absolute "
            "correlation between its residual and the denoised signal exceeded "
            f"{THRESHOLDS['ResidualCorrelation']:g} (and the spread of white noise), and a series was flagged "
            f"when the mean FA of its voxels with FA above {HIGH_FA:g} (tensor fit on b ≤ 1500 s/mm²) fell "
            f"by more than {100 * THRESHOLDS['FADrop']:.0f} % once the noise was added back to the output.")


# ---------------------------------------------------------------------------- the paragraph
def _selected_runs_from_config():
    """The runs the CLI selected (same layout, labels and filters), or ``None``."""
    try:
        from bids_denoise import config

        execution = config.execution
        if execution.layout is None:
            return None
        from bids_denoise.utils.bids import collect_dwi_runs, collect_participants

        subjects = collect_participants(execution.layout, participant_label=execution.participant_label) or []
    except Exception as exc:  # noqa: BLE001 - the text falls back to a generic sentence
        LOGGER.debug("No run selection for the methods text: %s", exc)
        return None
    runs = {}
    for subject in subjects:
        try:
            runs[subject] = list(collect_dwi_runs(execution.layout, subject, sessions=execution.session_label,
                                                  bids_filters=execution.bids_filters) or [])
        except Exception as exc:  # noqa: BLE001 - e.g. a run without gradients
            LOGGER.debug("sub-%s left out of the methods text: %s", subject, exc)
    return runs


def build_boilerplate(settings=None, runs=None, *, version: str | None = None) -> str:
    """The methods paragraph (Markdown with ``[@key]`` citations).

    Parameters
    ----------
    settings : object, optional
        Has the attributes of ``config.workflow`` (``method``, ``b0_threshold``,
        ``shell_tolerance``, ``shell_grouping``, ``b0_denoising`` and the method's
        parameters). Default: ``config.workflow``.
    runs : mapping or iterable, optional
        The selected runs (subject -> runs, or runs), whose b-values give the real number of
        shells. Default: the runs selected by the CLI's layout and filters, when there is one;
        otherwise the text says nothing about counts.
    version : str, optional
        bids_denoise version to state. Default: the running version.
    """
    if settings is None:
        from bids_denoise import config

        settings = config.workflow
    if runs is None:
        runs = _selected_runs_from_config()
    b0_threshold = float(settings.b0_threshold)
    shell_tolerance = float(settings.shell_tolerance)
    survey = survey_runs(runs, b0_threshold=b0_threshold, shell_tolerance=shell_tolerance)
    subjects = {s["subject"] for s in survey if s["subject"]}
    scope = ""
    if survey:
        scope = f"{_plural(len(survey), 'DWI series', 'DWI series')}"
        if subjects:
            scope += f" of {_plural(len(subjects), 'participant')}"
        scope = f" {scope[0].upper()}{scope[1:]} {'was' if len(survey) == 1 else 'were'} processed."
    sentences = [
        f"Diffusion MRI data were denoised with *bids_denoise* {version or __version__} [@bids_denoise].{scope}",
        _shell_sentence(survey, b0_threshold, shell_tolerance),
        _grouping_sentence(settings, survey),
        _b0_sentence(settings, survey),
        _method_sentence(settings),
        _rician_sentence(settings),
        _error_sentence(settings),
        _qc_sentence(),
        "The denoised volumes were put back in their acquisition order, and the residuals (raw minus "
        "denoised) were summarised per voxel as a noise map.",
        "The workflow was built with Nipype [@nipype]; data were indexed with PyBIDS [@pybids] and read "
        "and written with NiBabel [@nibabel].",
    ]
    return "### Diffusion MRI denoising\n\n" + " ".join(sentence for sentence in sentences if sentence) + "\n"


# -------------------------------------------------------------------------------- citations
def bibtex(version: str | None = None) -> str:
    """``boilerplate.bib`` with every method's references after the first entry (bids_denoise
    itself), and the version filled in."""
    first, _, common = BIB_FILE.read_text(encoding="utf-8").partition("\n@")
    methods = "\n".join(method.bibtex for method in METHODS.values())
    text = f"{first}\n{methods}\n@{common}"
    return text.replace(VERSION_PLACEHOLDER, version or __version__)


def citation_html(markdown: str, bib_text: str | None = None, *, title: str = "Methods") -> str:
    """A standalone HTML page of the methods text with its reference list."""
    references = parse_bibtex(bib_text if bib_text is not None else bibtex())
    body, cited = markdown_to_html(markdown, references)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5;padding:0 1em}"
        "ol.references li{margin-bottom:.4em}</style>\n</head>\n<body>\n"
        f"{body}\n<h3>References</h3>\n{references_html(cited, references)}\n</body>\n</html>\n"
    )


def write_citation_files(output_dir: str | os.PathLike, markdown: str, *, version: str | None = None) -> dict:
    """Write ``<output_dir>/logs/CITATION.md``, ``.bib`` and ``.html`` (atomically).

    The HTML comes from :func:`citation_html` (no pandoc needed).

    Returns
    -------
    dict
        ``{"md": path, "bib": path, "html": path}``.
    """
    from bids_denoise.utils.atomic import atomic_write_text

    logs = Path(output_dir) / "logs"
    bib_text = bibtex(version)
    return {
        "md": atomic_write_text(logs / "CITATION.md", markdown),
        "bib": atomic_write_text(logs / "CITATION.bib", bib_text),
        "html": atomic_write_text(logs / "CITATION.html", citation_html(markdown, bib_text)),
    }


__all__ = [
    "bibtex",
    "build_boilerplate",
    "citation_html",
    "survey_runs",
    "write_citation_files",
]
