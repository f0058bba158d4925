"""Assemble ``<output_dir>/sub-<label>.html`` from the figures and sidecars of a finished run.

The report is one HTML file with inline CSS and no scripts; its only external resources are
the reportlets in ``sub-<label>/figures/``, linked relatively, so the output folder can be
moved, archived or opened offline. Sections:

* **Summary**: runs, sessions, volume groups (b-value and count), method and every
  parameter, devices, run times and version, from the ``*_desc-denoised_dwi.json`` sidecars;
* one section per **run**: noise/SNR table (from ``desc-reportstats``) and every reportlet
  with a caption;
* **Methods**: ``logs/CITATION.md`` rendered with its references;
* **About**: version, git commit, container, command line, run identifier, configuration file;
* **Errors**: Nipype crash files of this subject from this run, if any.

:func:`generate_reports` never raises: a report that cannot be written is logged and skipped.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from bids_denoise.__about__ import __version__
from bids_denoise.outputs import OUTPUTS
from bids_denoise.reports import names
from bids_denoise.reports.html_text import _CSS, CAPTIONS
from bids_denoise.reports.markdown import markdown_to_html, parse_bibtex, references_html

LOGGER = logging.getLogger(__name__)

DENOISED_SIDECAR = OUTPUTS["dwi"].sidecar_pattern[1:]  # "_desc-denoised_dwi.json"
_FIGURE_EXTENSIONS = (".png", ".svg")
_MAX_CRASH_CHARS = 20000


# ------------------------------------------------------------------------------ collecting
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        LOGGER.warning("Cannot read %s for the report (%s).", path, exc)
        return None


def _entities(prefix: str) -> dict:
    return dict(part.split("-", 1) for part in prefix.split("_") if "-" in part)


def collect_subject(output_dir: str | os.PathLike, subject: str) -> list[dict]:
    """The runs of one subject found in ``output_dir``: sidecar, statistics and figures.

    Returns
    -------
    list of dict
        Sorted by name; each has ``prefix`` (the entities part of the file names),
        ``entities``, ``sidecar`` (dict or ``None``), ``sidecar_path``, ``denoised_path``
        (relative to ``output_dir``, or ``None``), ``stats`` (dict or ``None``) and ``figures``
        (list of ``(desc, relative path)`` in display order).
    """
    output_dir = Path(output_dir)
    root = output_dir / f"sub-{subject}"
    runs: dict[str, dict] = {}

    def entry(prefix):
        return runs.setdefault(prefix, {
            "prefix": prefix, "entities": _entities(prefix), "sidecar": None, "sidecar_path": None,
            "denoised_path": None, "stats": None, "figures": [],
        })

    for sidecar in sorted(root.rglob(f"*{DENOISED_SIDECAR}")):
        if sidecar.parent.name == "figures":
            continue
        run = entry(sidecar.name[: -len(DENOISED_SIDECAR)])
        run["sidecar"] = _read_json(sidecar)
        run["sidecar_path"] = sidecar.relative_to(output_dir).as_posix()
        nifti = sidecar.with_name(sidecar.name[: -len(".json")] + ".nii.gz")
        if nifti.is_file():
            run["denoised_path"] = nifti.relative_to(output_dir).as_posix()

    figures_dir = root / "figures"
    pattern = re.compile(r"^(?P<prefix>.+?)_desc-(?P<desc>[A-Za-z0-9]+)_" + names.SUFFIX + r"(?P<ext>\.[a-z]+)$")
    for path in sorted(figures_dir.glob("*")) if figures_dir.is_dir() else []:
        match = pattern.match(path.name)
        if not match or not path.is_file() or not names.is_reportlet(match["desc"]):
            continue
        run = entry(match["prefix"])
        if match["desc"] == names.STATS_DESC and match["ext"] == ".json":
            run["stats"] = _read_json(path)
        elif match["ext"] in _FIGURE_EXTENSIONS:
            run["figures"].append((match["desc"], path.relative_to(output_dir).as_posix()))

    for run in runs.values():
        order = [f.get("Desc") for f in ((run["stats"] or {}).get("Figures") or []) if isinstance(f, dict)]
        run["figures"].sort(key=lambda item: (order.index(item[0]) if item[0] in order else len(order),
                                              names.sort_key(item[0])))
    return [runs[key] for key in sorted(runs)]


def find_crash_files(log_dir, subject: str, since: float | None = None) -> list[Path]:
    """Nipype crash files in ``log_dir`` that mention this subject's workflow.

    Parameters
    ----------
    log_dir : path or None
        Where Nipype writes ``crash-*`` files.
    subject : str
        Label without ``sub-``.
    since : float, optional
        Only files modified at or after this POSIX time (the start of the run).
    """
    if not log_dir or not Path(log_dir).is_dir():
        return []
    needle = f"sub_{subject}_wf"
    found = []
    for path in sorted(Path(log_dir).glob("crash-*")):
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            if path.suffix == ".txt":
                text = path.read_text(encoding="utf-8", errors="replace")
            else:
                text = path.read_bytes().decode("latin-1")
        except OSError:
            continue
        if needle in text or needle in path.name:
            found.append(path)
    return found


# ------------------------------------------------------------------------------ formatting
def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return _e(value)


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{_e(k)}: {_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return _num(value)


def _groups_text(groups) -> str:
    parts = []
    for group in groups or []:
        state = "" if group.get("Denoised", True) else " (copied)"
        parts.append(f"{_e(group.get('Label'))}: b={_e(group.get('BValue'))} × {_e(group.get('Count'))}{state}")
    return "<br>".join(parts) or "n/a"


def _run_title(run: Mapping) -> str:
    return run["prefix"]


def _anchor(run: Mapping) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", run["prefix"])


def _summary_section(subject: str, runs: list[dict]) -> str:
    sidecars = [r["sidecar"] or {} for r in runs]
    sessions = sorted({r["entities"].get("ses") for r in runs if r["entities"].get("ses")})
    methods = sorted({s.get("DenoisingMethod") for s in sidecars if s.get("DenoisingMethod")})
    versions = sorted({str(s.get("SoftwareVersion")) for s in sidecars if s.get("SoftwareVersion")})
    devices = sorted({d for s in sidecars for d in (s.get("Devices") or [])})
    total = sum(float(s.get("RunTime") or 0) for s in sidecars)
    rows = [
        ("Subject", f"sub-{_e(subject)}"),
        ("Runs", str(len(runs))),
        ("Sessions", ", ".join(f"ses-{_e(s)}" for s in sessions) or "none (no session entity)"),
        ("Method", ", ".join(_e(m) for m in methods) or "n/a"),
        ("Devices", ", ".join(_e(d) for d in devices) or "n/a"),
        ("Denoising time (all runs)", f"{total:.1f} s"),
        ("bids_denoise version", ", ".join(_e(v) for v in versions) or _e(__version__)),
    ]
    out = ['<section id="summary">', "<h2>Summary</h2>", _qc_box(runs), "<table>"]
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out += ["</table>", "<h3>Runs</h3>", "<table>",
            "<tr><th>Run</th><th>Session</th><th>Volume groups (label: b-value × volumes)</th><th>Method</th>"
            "<th>Device</th><th>Run time (s)</th><th>Version</th></tr>"]
    for run, sidecar in zip(runs, sidecars):
        out.append(
            f'<tr><td><a href="#{_anchor(run)}">{_e(_run_title(run))}</a></td>'
            f"<td>{_e(run['entities'].get('ses', '–'))}</td>"
            f"<td>{_groups_text(sidecar.get('VolumeGroups') or (run['stats'] or {}).get('Groups'))}</td>"
            f"<td>{_e(sidecar.get('DenoisingMethod', 'n/a'))}</td>"
            f"<td>{_e(', '.join(sidecar.get('Devices') or []) or 'n/a')}</td>"
            f'<td class="num">{_num(sidecar.get("RunTime"))}</td>'
            f"<td>{_e(sidecar.get('SoftwareVersion', 'n/a'))}</td></tr>"
        )
    out.append("</table>")
    parameters = [s.get("DenoisingParameters") for s in sidecars if s.get("DenoisingParameters")]
    if parameters:
        out.append("<h3>Parameters</h3>")
        if all(p == parameters[0] for p in parameters):
            out.append("<table><tr><th>Parameter</th><th>Value (all runs)</th></tr>")
            out += [f"<tr><td>{_e(k)}</td><td>{_value(v)}</td></tr>" for k, v in parameters[0].items()]
        else:
            keys = list(dict.fromkeys(k for p in parameters for k in p))
            titles = [_run_title(r) for r, s in zip(runs, sidecars) if s.get("DenoisingParameters")]
            out.append("<table><tr><th>Parameter</th>" + "".join(f"<th>{_e(t)}</th>" for t in titles) + "</tr>")
            for key in keys:
                cells = "".join(f"<td>{_value(p.get(key))}</td>" for p in parameters)
                out.append(f"<tr><td>{_e(key)}</td>{cells}</tr>")
        out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


def _qc_box(runs: list[dict]) -> str:
    """A highlighted box: every QC flag of the subject's runs, or that none was raised."""
    flags, checked = [], 0
    for run in runs:
        quality = (run["sidecar"] or {}).get("QualityControl")
        if quality is None:
            continue
        checked += 1
        flags += [(run, flag) for flag in quality.get("Flags", [])]
    if not checked:
        return ""
    if not flags:
        return (f'<div class="qc"><b>QC: no warnings</b> in {checked} run(s): the residuals are at the noise '
                "level, uncorrelated with the signal, and FA in high-FA voxels is kept (thresholds in the "
                "sidecars' <code>QualityControl</code>).</div>")
    items = "".join(f'<li><a href="#{_anchor(run)}">{_e(_run_title(run))}</a>: {_e(flag.get("Message", ""))}</li>'
                    for run, flag in flags)
    return (f'<div class="qc warn"><b>QC: {len(flags)} warning(s)</b>. Signal may have been removed; check '
            f"the residual figures of these runs, or try another method or --shell-grouping:<ul>{items}</ul></div>")


def _stats_table(stats: Mapping, sidecar: Mapping | None = None) -> str:
    groups = stats.get("Groups") or []
    if not groups:
        return ""
    sidecar = sidecar or {}
    estimates = {str(g.get("Label")): g.get("EstimatedRMSE") for g in sidecar.get("VolumeGroups") or []}
    ratios = {str(g.get("Group")): g.get("ResidualRatio")
              for g in (sidecar.get("QualityControl") or {}).get("Groups", [])}
    out = ["<table>", "<tr><th>Group</th><th>b-value</th><th>Volumes</th><th>Denoised</th><th>σ raw</th>"
           "<th>Residual SD</th><th>Residual / noise</th><th>Estimated RMSE</th><th>SNR raw</th>"
           "<th>median |r| residual vs signal</th><th>median |r| residual vs mean b0</th></tr>"]
    for g in groups:
        label = str(g.get("Label"))
        out.append(
            f"<tr><td>{_e(g.get('Label'))}</td><td class=\"num\">{_num(g.get('BValue'))}</td>"
            f"<td class=\"num\">{_num(g.get('Count'))}</td><td>{_num(g.get('Denoised'))}</td>"
            + "".join(f'<td class="num">{_num(value)}</td>' for value in (
                g.get("SigmaBefore"), g.get("ResidualStd"), ratios.get(label), estimates.get(label),
                g.get("SNRBefore"), g.get("MedianAbsCorrelation"), g.get("MedianAbsAnatomyCorrelation")))
            + "</tr>"
        )
    out.append("</table>")
    out.append('<p class="muted">Residual / noise: the residual RMS over the RMS the noise alone would leave '
               "(near 1: only noise removed; above 1.2 is flagged: signal was removed). Estimated RMSE: the "
               "error left in the output, estimated without ground truth (Monte-Carlo SURE), in input "
               "units. A higher SNR after denoising is not shown: removing signal raises it too.</p>")
    out.append(f'<p class="muted">Brain mask: {_num(stats.get("MaskVoxels"))} voxels; white-noise correlation '
               f'band ±{_num(stats.get("CorrelationChanceLevel"), 2)}.</p>')
    return "\n".join(out)


def _fa_table(sidecar: Mapping) -> str:
    """FA of the high-FA voxels before and after (QualityControl.FA), when the run has a DTI shell."""
    fa = (sidecar.get("QualityControl") or {}).get("FA")
    if not fa:
        return ""
    return ("<h3>FA in high-FA voxels</h3><table><tr><th>Voxels (raw FA &gt; 0.4)</th><th>FA raw</th>"
            f"<th>FA denoised</th><th>Change</th></tr><tr><td class=\"num\">{_num(fa.get('Voxels'))}</td>"
            f"<td class=\"num\">{_num(fa.get('Before'), 3)}</td><td class=\"num\">{_num(fa.get('After'), 3)}</td>"
            f"<td class=\"num\">{_num(100 * fa['Change'], 2) if fa.get('Change') is not None else 'n/a'} %</td>"
            "</tr></table><p class=\"muted\">Log-linear DTI fit on b ≤ 1500 in the head mask. Noise inflates "
            "FA, so a small fall is expected; a fall of more than 10 % is flagged.</p>")


def _ddm2_table(stats: Mapping) -> str:
    rows = stats.get("DDM2") or []
    if not rows:
        return ""
    out = ["<h3>DDM2 training</h3>", "<table><tr><th>Group</th><th>Preset</th><th>Steps</th>"
           "<th>Final loss stage I</th><th>Final loss stage III</th><th>t* median (range)</th></tr>"]
    for row in rows:
        t_range = (f"{_num(row.get('TStarMedian'))} ({_num(row.get('TStarMin'))}–{_num(row.get('TStarMax'))})"
                   if row.get("TStarMedian") is not None else "n/a")
        out.append(f"<tr><td>{_e(row.get('Label'))}</td><td>{_e(row.get('Preset') or 'n/a')}</td>"
                   f"<td>{_value(row.get('Steps') or {})}</td>"
                   f"<td class=\"num\">{_num(row.get('Stage1FinalLoss'))}</td>"
                   f"<td class=\"num\">{_num(row.get('Stage3FinalLoss'))}</td><td>{t_range}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _mosaic_labels(stats: Mapping | None) -> dict:
    labels, taken = {}, set()
    for group in (stats or {}).get("Groups") or []:
        desc = names.mosaic_desc(group.get("Label"), taken)
        taken.add(desc)
        labels[desc] = group
    return labels


def _run_section(run: Mapping) -> str:
    sidecar = run["sidecar"] or {}
    stats = run["stats"] or {}
    out = [f'<section id="{_anchor(run)}">', f"<h2>{_e(_run_title(run))}</h2>"]
    facts = []
    sources = sidecar.get("Sources") or []
    if sources:
        facts.append(f"<tr><th>Source</th><td><code>{_e(sources[0])}</code></td></tr>")
    if run["denoised_path"]:
        facts.append(f'<tr><th>Denoised series</th><td><a href="{_e(run["denoised_path"])}">'
                     f'{_e(run["denoised_path"])}</a></td></tr>')
    if run["sidecar_path"]:
        facts.append(f'<tr><th>Sidecar</th><td><a href="{_e(run["sidecar_path"])}">'
                     f'{_e(run["sidecar_path"])}</a></td></tr>')
    if stats.get("Shape"):
        facts.append(f"<tr><th>Matrix, voxel size</th><td>{' × '.join(str(s) for s in stats['Shape'])}; "
                     f"{' × '.join(f'{z:g}' for z in stats.get('Zooms') or [])} mm</td></tr>")
    if sidecar.get("DenoisingMethod"):
        facts.append(f"<tr><th>Method</th><td>{_e(sidecar['DenoisingMethod'])}, "
                     f"{_num(sidecar.get('RunTime'))} s on {_e(', '.join(sidecar.get('Devices') or []))}</td></tr>")
    if facts:
        out += ["<table>", *facts, "</table>"]
    if stats:
        out += ["<h3>Noise and residuals</h3>", _stats_table(stats, sidecar), _ddm2_table(stats)]
    out.append(_fa_table(sidecar))
    if not run["figures"]:
        out.append('<p class="muted">No reportlets were found for this run.</p>')
    mosaic_groups = _mosaic_labels(stats)
    for desc, path in run["figures"]:
        kind = names.MOSAIC_PREFIX if desc not in names.FIXED and desc.startswith(names.MOSAIC_PREFIX) else desc
        title, caption = CAPTIONS.get(kind, (desc, ""))
        group = mosaic_groups.get(desc)
        label = desc[len(names.MOSAIC_PREFIX):] if group is None else (
            f"{group.get('Label')} (b = {group.get('BValue')}, {group.get('Count')} volumes)")
        title = title.format(label=label)
        out.append(
            f'<figure id="{_anchor(run)}-{_e(desc)}"><img src="{_e(path)}" alt="{_e(title)}">'
            f"<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>"
        )
    out.append("</section>")
    return "\n".join(out)


def _methods_section(output_dir: Path, boilerplate: str | None) -> str:
    logs = output_dir / "logs"
    if boilerplate is None and (logs / "CITATION.md").is_file():
        boilerplate = (logs / "CITATION.md").read_text(encoding="utf-8")
    out = ['<section id="methods">', "<h2>Methods</h2>"]
    if not boilerplate:
        out += ['<p class="muted">No methods text (logs/CITATION.md) was found.</p>', "</section>"]
        return "\n".join(out)
    bib_file = logs / "CITATION.bib"
    if bib_file.is_file():
        bib_text = bib_file.read_text(encoding="utf-8")
    else:
        from bids_denoise.reports.boilerplate import bibtex

        bib_text = bibtex()
    references = parse_bibtex(bib_text)
    body, cited = markdown_to_html(boilerplate, references, heading_offset=1)
    out += ["<p>We kindly ask to report results with the following text, which bids_denoise wrote from the "
            "options and data of this run (it may be copied and adapted freely).</p>", body,
            "<h3>References</h3>", references_html(cited, references)]
    links = [f'<a href="logs/{name}">logs/{name}</a>' for name in ("CITATION.md", "CITATION.bib", "CITATION.html")
             if (logs / name).is_file()]
    if links:
        out.append(f"<p>Also in {', '.join(links)}.</p>")
    out.append("</section>")
    return "\n".join(out)


def _about_section(output_dir: Path, runs: list[dict], run_uuid: str | None, generated: str) -> str:
    provenance = next((r["sidecar"].get("Provenance") for r in runs
                       if r["sidecar"] and isinstance(r["sidecar"].get("Provenance"), dict)), None) or {}
    container = provenance.get("Container")
    rows = [
        ("bids_denoise version", _e(provenance.get("Version") or __version__)),
        ("Git commit", f"<code>{_e(provenance['GitCommit'])}</code>" + (
            f" ({_e(provenance['GitDescribe'])})" if provenance.get("GitDescribe") else "")
         if provenance.get("GitCommit") else "unknown (not run from a git checkout)"),
        ("Container", _e(f"{container.get('Type')}: {container.get('Image')}") if isinstance(container, dict)
         else "none"),
        ("Command line",
         f"<code>{_e(provenance.get('CommandLine'))}</code>" if provenance.get("CommandLine") else "n/a"),
        ("Run identifier", _e(run_uuid or "n/a")),
        ("Report generated", _e(generated)),
    ]
    if run_uuid and (output_dir / "logs" / f"config-{run_uuid}.toml").is_file():
        rows.append(("Configuration", f'<a href="logs/config-{_e(run_uuid)}.toml">logs/config-{_e(run_uuid)}.toml</a>'))
    out = ['<section id="about">', "<h2>About</h2>", "<table>"]
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out.append("</table>")
    configuration = provenance.get("Configuration")
    if isinstance(configuration, dict) and configuration:
        out.append("<details><summary>Resolved configuration (as recorded in the sidecars)</summary>"
                   f"<pre>{_e(json.dumps(configuration, indent=2, sort_keys=True))}</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _errors_section(crash_files: Iterable[Path]) -> str:
    crash_files = list(crash_files)
    out = ['<section id="errors">', "<h2>Errors</h2>"]
    if not crash_files:
        out.append('<p class="ok">No errors to report.</p>')
    for path in crash_files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace") if path.suffix == ".txt" else (
                "(binary crash file; open it with: nipypecli crash " + str(path) + ")")
        except OSError as exc:
            text = f"(cannot read: {exc})"
        if len(text) > _MAX_CRASH_CHARS:
            text = text[:_MAX_CRASH_CHARS] + "\n[... truncated]"
        out.append(f'<h3 class="bad">{_e(path.name)}</h3><p class="muted">{_e(path)}</p><pre>{_e(text)}</pre>')
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------------- writing
def render_subject_report(
    output_dir: str | os.PathLike,
    subject: str,
    *,
    run_uuid: str | None = None,
    crash_files: Iterable[Path] = (),
    boilerplate: str | None = None,
    generated: str | None = None,
) -> str:
    """The HTML text of ``sub-<subject>.html`` (see the module docstring)."""
    output_dir = Path(output_dir)
    runs = collect_subject(output_dir, subject)
    crash_files = list(crash_files)
    generated = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    nav = ['<a href="#summary">Summary</a>']
    nav += [f'<a href="#{_anchor(r)}">{_e(_run_title(r))}</a>' for r in runs]
    nav += ['<a href="#methods">Methods</a>', '<a href="#about">About</a>',
            f'<a href="#errors">Errors{f" ({len(crash_files)})" if crash_files else ""}</a>']
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sub-{_e(subject)}: bids_denoise report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<nav>{''.join(nav)}</nav>", "<main>",
        f"<h1>bids_denoise report: sub-{_e(subject)}</h1>",
        _summary_section(subject, runs),
        *(_run_section(run) for run in runs),
        _methods_section(output_dir, boilerplate),
        _about_section(output_dir, runs, run_uuid, generated),
        _errors_section(crash_files),
        "</main>", "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_subject_report(output_dir: str | os.PathLike, subject: str, **kwargs) -> Path:
    """Write ``<output_dir>/sub-<subject>.html`` atomically; return its path."""
    from bids_denoise.utils.atomic import atomic_write_text

    return atomic_write_text(Path(output_dir) / f"sub-{subject}.html",
                             render_subject_report(output_dir, subject, **kwargs))


def generate_reports(
    output_dir: str | os.PathLike,
    subjects: Iterable[str] | None = None,
    *,
    run_uuid: str | None = None,
    log_dir: str | os.PathLike | None = None,
    since: float | None = None,
) -> list[Path]:
    """Write the report of every subject; return the reports written. Never raises.

    Parameters
    ----------
    output_dir : path
        The derivative dataset.
    subjects : iterable of str, optional
        Labels without ``sub-``. Default: every ``sub-*`` folder in ``output_dir``.
    run_uuid : str, optional
        Identifier of the run, shown in the report (and used to link
        ``logs/config-<run_uuid>.toml``).
    log_dir : path, optional
        Where Nipype wrote crash files; those of each subject modified since ``since`` are shown.
    since : float, optional
        POSIX time of the start of the run. Default: every crash file in ``log_dir``.
    """
    output_dir = Path(output_dir)
    written = []
    try:
        if subjects is None:
            subjects = sorted(p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir())
        subjects = list(subjects)
    except Exception as exc:  # noqa: BLE001
        LOGGER.warning("No reports were written: cannot list the subjects in %s (%s).", output_dir, exc)
        return written
    started = time.perf_counter()
    for subject in subjects:
        try:
            crashes = find_crash_files(log_dir, subject, since)
            written.append(write_subject_report(output_dir, subject, run_uuid=run_uuid, crash_files=crashes))
        except Exception as exc:  # noqa: BLE001 - a report must never fail the run
            LOGGER.warning("The report of sub-%s could not be written: %s", subject, exc, exc_info=True)
    LOGGER.debug("Wrote %d report(s) in %.1f s", len(written), time.perf_counter() - started)
    return written


__all__ = [
    "CAPTIONS",
    "collect_subject",
    "find_crash_files",
    "generate_reports",
    "render_subject_report",
    "write_subject_report",
]
