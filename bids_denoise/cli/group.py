"""The group level: one table of every denoised series already in the output folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from bids_denoise import config
from bids_denoise.cli.version import PROG
from bids_denoise.errors import EXIT_OK
from bids_denoise.outputs import OUTPUTS

GROUP_SUMMARY = OUTPUTS["group_summary"].location
#: Sidecars of the denoised series that the group level summarises.
DENOISED_SIDECAR_GLOB = OUTPUTS["dwi"].sidecar_pattern
GROUP_COLUMNS = ("subject", "session", "acquisition", "direction", "run", "method", "groups", "group_methods",
                 "estimated_rmse", "residual_ratio", "residual_correlation", "fa_high_before", "fa_high_after",
                 "qc_warnings", "qc_checks", "runtime_s", "sidecar")
_ENTITY_RE = re.compile(r"(?:^|_)(sub|ses|acq|dir|run)-([A-Za-z0-9]+)")
_ENTITY_COLUMNS = {"sub": "subject", "ses": "session", "acq": "acquisition", "dir": "direction", "run": "run"}


def _format_groups(groups) -> str:
    """``b0:6;b1000:60`` from the sidecar's ``VolumeGroups``."""
    return ";".join(f"{group['Label']}:{group['Count']}" for group in groups)


def _per_group(items, key) -> str | None:
    """``b0:1.23;b1000:4.56`` of one key over the groups that have it (None if none has)."""
    cells = [f"{item.get('Label', item.get('Group'))}:{item[key]}" for item in items if item.get(key) is not None]
    return ";".join(cells) or None


def _quality_columns(meta: dict) -> dict:
    """The error-estimate and QC columns of one sidecar."""
    groups = meta.get("VolumeGroups", [])
    quality = meta.get("QualityControl") or {}
    fa = quality.get("FA") or {}
    flags = quality.get("Flags", []) if quality else []
    return {
        "group_methods": _per_group(groups, "Method"),
        "estimated_rmse": _per_group(groups, "EstimatedRMSE"),
        "residual_ratio": _per_group(quality.get("Groups", []), "ResidualRatio"),
        "residual_correlation": _per_group(quality.get("Groups", []), "ResidualCorrelation"),
        "fa_high_before": fa.get("Before"),
        "fa_high_after": fa.get("After"),
        "qc_warnings": len(flags) if quality else None,
        "qc_checks": ";".join(f"{f.get('Check')}" + (f"({f['Group']})" if f.get("Group") else "") for f in flags)
        or None,
    }


def summarise_outputs(output_dir: Path, participants=None, sessions=None) -> list[dict]:
    """One row per denoised-series sidecar under ``output_dir`` (see :data:`GROUP_COLUMNS`)."""
    log = config.loggers.cli
    rows = []
    for sidecar in sorted(Path(output_dir).rglob(DENOISED_SIDECAR_GLOB)):
        row = dict.fromkeys(GROUP_COLUMNS)
        for key, value in _ENTITY_RE.findall(sidecar.name):
            row[_ENTITY_COLUMNS[key]] = value
        if participants and row["subject"] not in participants:
            continue
        if sessions and row["session"] not in sessions:
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            log.warning("Cannot read %s (%s); its row has no metadata.", sidecar, exc)
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        row["method"] = meta.get("DenoisingMethod")
        row["groups"] = _format_groups(meta.get("VolumeGroups", [])) or None
        row.update(_quality_columns(meta))
        row["runtime_s"] = meta.get("RunTime")
        row["sidecar"] = sidecar.relative_to(output_dir).as_posix()
        rows.append(row)
    return rows


def run_group_level() -> int:
    """Write ``<output_dir>/group_summary.tsv``, or log that there is nothing to do."""
    execution = config.execution
    rows = summarise_outputs(execution.output_dir, execution.participant_label, execution.session_label)
    if not rows:
        config.loggers.cli.log(config.IMPORTANT, "No denoised outputs (%s) in %s: nothing to do at the group level.",
                               DENOISED_SIDECAR_GLOB, execution.output_dir)
        print(f"{PROG}: nothing to do at the group level (no {DENOISED_SIDECAR_GLOB} in {execution.output_dir}).")
        return EXIT_OK
    out_file = Path(execution.output_dir) / GROUP_SUMMARY
    with open(out_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=GROUP_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "n/a" if value is None else value for key, value in row.items()})
    print(f"{PROG}: group summary of {len(rows)} denoised series written to {out_file}")
    return EXIT_OK
