"""Markdown for bench_quality.py's results."""

from __future__ import annotations

ANCHOR_LABELS = {
    "dipy-mppca": "DIPY 1.12.1 mppca, r=2",
    "dipy-p2s-v3": "DIPY 1.12.1 patch2self v3",
    "mrtrix-dwidenoise": "MRtrix3 dwidenoise",
}


def label(method: str) -> str:
    return ANCHOR_LABELS.get(method, f"ours {method}")


def fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def rule_text(rule: dict) -> str:
    ruled = ", ".join(rule["ruled_phantoms"])
    lines = [
        "Rule: the default is the setting (Patch2Self or MP-PCA, with or without the Rician correction) with the "
        "best mean PSNR over the 5-slice phantoms (where every setting runs), among the settings whose WM FA "
        "error (fa_mae_wm) is no worse than the noisy input's on every phantom with at least 30 "
        f"diffusion-weighted volumes ({ruled}).",
    ]
    if rule["winner"]:
        lines.append(f"Winner: **{rule['winner']}** (mean PSNR {rule['table'][rule['winner']]['mean_psnr']:.2f} dB).")
    else:
        best = rule["best_psnr_any_fa"]
        lines.append(f"Winner: **none**: no setting keeps WM FA on every ruled phantom. Best mean PSNR "
                     f"regardless of FA: {best} ({rule['table'][best]['mean_psnr']:.2f} dB).")
    return "\n".join(lines)


def _header(report) -> list[str]:
    machine = report["machine"]
    versions = report["versions"]
    lines = [
        "# Denoising quality: our methods and settings against DIPY and MRtrix",
        "",
        f"- Date: {report['date']}; commit `{report['commit']}`",
        f"- Command: `{report['command']}`",
        f"- Machine: {machine['cpu_model']}, {machine['cpu_usable']} usable cores, {machine['ram_gib']} GiB RAM, "
        f"GPU: {machine['gpu'] or 'none'}",
        f"- Threads: {report['threads']} for every method (OMP/OpenBLAS/MKL and torch)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "blas"),
        f"- Wall time: {report.get('wall_seconds', '-')} s",
    ]
    for name, why in report.get("skipped_anchors", {}).items():
        lines.append(f"- Skipped anchor {label(name)}: {why}")
    lines += ["", "Our settings: `p2s-r<radius>-<pooling>-<grouping>-<model>` (Patch2Self; ridge uses the app's "
              "default alpha 1.0) and `mppca-<grouping>-<estimator>-<reconstruction>` (MP-PCA, 5x5x5 "
              "windows); `+rician` adds `--rician-correction mean` with MP-PCA's noise map (its time is "
              "included). Scores come from `shared/bench/score.py`; PSNR in dB, `faWM` is `fa_mae_wm`, "
              "the mean absolute FA error in voxels with ground-truth FA > 0.4. `auto-<grouping>` is "
              "`--method auto` with `p2s-r1-radial-<grouping>-ols` and `mppca-<grouping>-veraart-overlap` as "
              "candidates.", ""]
    return lines


def _rule_section(report) -> list[str]:
    rule = report.get("rule")
    if not rule:
        return []
    lines = ["## The default, by rule", "", rule_text(rule), "",
             "| setting | mean PSNR | keeps WM FA on every ruled phantom |", "|---|---|---|"]
    for name, row in sorted(rule["table"].items(), key=lambda item: -item[1]["mean_psnr"]):
        mark = "yes" if row["keeps_fa"] else "no"
        bold = "**" if name == rule["winner"] else ""
        lines.append(f"| {bold}{name}{bold} | {row['mean_psnr']:.2f} | {mark} |")
    return lines + [""]


def _phantom_section(report) -> list[str]:
    phantoms = report.get("phantoms")
    if not phantoms:
        return []
    names = list(phantoms)
    lines = ["## Phantoms: PSNR / faWM", "",
             "Bold: WM FA error no worse than the noisy input's.", "",
             "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    methods = list(dict.fromkeys(m for entry in phantoms.values() for m in entry["methods"]))
    cells = ["noisy input"] + [f"{fmt(phantoms[n]['noisy'].get('psnr'))} / {fmt(phantoms[n]['noisy'].get('fa_mae_wm'), '{:.4f}')}"
                               for n in names]
    lines.append("| " + " | ".join(cells) + " |")
    for method in methods:
        cells = [label(method)]
        for name in names:
            row = phantoms[name]["methods"].get(method, {})
            noisy = phantoms[name]["noisy"].get("fa_mae_wm")
            fa = row.get("fa_mae_wm")
            text = f"{fmt(row.get('psnr'))} / {fmt(fa, '{:.4f}')}"
            cells.append(f"**{text}**" if fa is not None and noisy is not None and fa <= noisy else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, entry in phantoms.items():
        lines += [f"### {name}", "", f"Shape {'x'.join(map(str, entry['shape']))}, {entry['n_dw']} diffusion-weighted volumes."
                  + (" A short list of our settings only (see WHOLEBRAIN_SETTINGS in bench_quality.py)." if entry.get("subset") else "")]
        lines += [f"Not run here: {label(a)}: {why}." for a, why in entry.get("not_run", {}).items()]
        lines += ["",
                  "| method | PSNR | SSIM | faWM | MD rel err | MD bias | time s |", "|---|---|---|---|---|---|---|"]
        noisy = entry["noisy"]
        lines.append(f"| noisy input | {fmt(noisy.get('psnr'))} | {fmt(noisy.get('ssim'), '{:.4f}')} | "
                     f"{fmt(noisy.get('fa_mae_wm'), '{:.4f}')} | {fmt(noisy.get('md_rel_err'), '{:.4f}')} | "
                     f"{fmt(noisy.get('md_rel_bias'), '{:+.4f}')} | - |")
        for method, row in entry["methods"].items():
            if "error" in row:
                lines.append(f"| {label(method)} | {row['error']} | | | | | |")
                continue
            lines.append(f"| {label(method)} | {fmt(row.get('psnr'))} | {fmt(row.get('ssim'), '{:.4f}')} | "
                         f"{fmt(row.get('fa_mae_wm'), '{:.4f}')} | {fmt(row.get('md_rel_err'), '{:.4f}')} | "
                         f"{fmt(row.get('md_rel_bias'), '{:+.4f}')} | {fmt(row.get('seconds'))} |")
        lines.append("")
    return lines


def _estimate_section(report) -> list[str]:
    """EstimatedRMSE against the true RMSE in the head, per phantom and setting."""
    phantoms = {n: e for n, e in (report.get("phantoms") or {}).items() if e.get("estimates")}
    if not phantoms:
        return []
    lines = ["## The error estimate against the truth", "",
             "`EstimatedRMSE` as the app computes it (Monte-Carlo SURE with one perturbed run, Rician-aware, "
             "over the head mask; noise map from MP-PCA, at the b0 repeats' level when they agree) against the "
             "true RMSE over the same voxels and volumes. Each cell: estimate / truth (ratio) for the whole run, "
             "then the ratio furthest from 1 over the volume groups. Target: every ratio within 0.8-1.2.", "",
             "| setting | " + " | ".join(phantoms) + " |", "|---" * (len(phantoms) + 1) + "|"]
    names = list(dict.fromkeys(n for e in phantoms.values() for n in e["estimates"]))
    worst = 1.0
    for name in names:
        cells = [name]
        for entry in phantoms.values():
            row = entry["estimates"].get(name)
            if not row or not row.get("true"):
                cells.append("-")
                continue
            ratios = [g["estimate"] / g["true"] for g in row["groups"] if g.get("true")]
            far = max(ratios, key=lambda r: abs(r - 1)) if ratios else None
            ratio = row["estimate"] / row["true"]
            worst = max([worst, abs(ratio - 1) + 1] + [abs(r - 1) + 1 for r in ratios])
            cells.append(f"{row['estimate']:.2f} / {row['true']:.2f} ({ratio:.2f}); groups {fmt(far)}")
        lines.append("| " + " | ".join(cells) + " |")
    sources = {n: next(iter(e["estimates"].values()))["noise"] for n, e in phantoms.items()}
    lines += ["", "Noise level from: " + ", ".join(f"{n}: {src}" for n, src in sources.items()) + ".",
              f"Largest deviation from the truth, over every run and group: {100 * (worst - 1):.0f} %.", ""]
    return lines


def _auto_section(report) -> list[str]:
    """--method auto against its candidates on the phantoms."""
    phantoms = report.get("phantoms") or {}
    autos = sorted({n for e in phantoms.values() for n in e.get("estimates", {}) if n.startswith("auto")})
    if not autos:
        return []
    lines = ["## `--method auto` against the single methods", "",
             "Auto keeps, group by group, the candidate with the lower `EstimatedRMSE`. Each cell: auto's PSNR, "
             "minus the best single candidate's PSNR on that phantom (target: > -0.3 dB), and the choices.", "",
             "| setting | " + " | ".join(phantoms) + " |", "|---" * (len(phantoms) + 1) + "|"]
    for auto in autos:
        cells = [auto]
        for entry in phantoms.values():
            found = entry["estimates"].get(auto)
            methods = entry["methods"]
            if not found or auto not in methods or "psnr" not in methods[auto]:
                cells.append("-")
                continue
            candidates = list(found["groups"][0]["candidates"])
            best = max(methods[c]["psnr"] for c in candidates if "psnr" in methods.get(c, {}))
            choices = ", ".join(f"{g['label']}: {'P2S' if g['chosen'].startswith('p2s') else 'MP-PCA'}"
                                for g in found["groups"])
            cells.append(f"{methods[auto]['psnr']:.2f} ({methods[auto]['psnr'] - best:+.2f}); {choices}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _real_section(report) -> list[str]:
    real = report.get("real")
    if not real:
        return []
    lines = ["## Real scanner sets (no ground truth)", "",
             "`FA high`: mean FA over the voxels whose reference FA is above 0.4 (reference: the raw data, "
             "or for siemens_trio the average of its two repeats). `res/σ`: median residual standard "
             "deviation over a robust noise estimate of the raw volume, for the b0s and the DW volumes; "
             "noise correlated between voxels lowers the estimate, so compare b0 with DW of the same row. "
             "`|corr|`: median |corr(residual, denoised)| of the DW volumes; white noise stays within the "
             "band given per set.", ""]
    for name, entry in real.items():
        reference = ""
        if "reference_fa" in entry:
            reference = (f" Reference FA ({entry['high_fa_reference']}) over {entry['high_fa_voxels']} "
                         f"voxels: {entry['reference_fa']:.3f}.")
        lines += [f"### {name}", "",
                  f"Shape {'x'.join(map(str, entry['shape']))}, mask {entry['mask_voxels']} voxels, "
                  f"white-noise band ±{entry['chance_correlation']:.3f}.{reference}", "",
                  "| method | FA high | FA error vs reference | b0 res/σ | DW res/σ | DW \\|corr\\| | time s |",
                  "|---|---|---|---|---|---|---|"]
        for method, row in entry["methods"].items():
            name_cell = "raw" if method == "raw" else label(method)
            if "error" in row:
                lines.append(f"| {name_cell} | {row['error']} | | | | | |")
                continue
            lines.append(f"| {name_cell} | {fmt(row.get('fa_high'), '{:.3f}')} | "
                         f"{fmt(row.get('fa_mae_vs_reference'), '{:.3f}')} | {fmt(row.get('b0_ratio'))} | "
                         f"{fmt(row.get('dw_ratio'))} | {fmt(row.get('dw_corr'), '{:.3f}')} | {fmt(row.get('seconds'))} |")
        lines.append("")
        estimates = entry.get("estimates") or {}
        if estimates:
            lines.append("EstimatedRMSE per group (" + next(iter(estimates.values()))["noise"] + " noise level): " + "; ".join(
                f"{name} " + ", ".join(f"{g['label']} {g['estimate']:.2f}"
                                       + (f" [{'P2S' if g['chosen'].startswith('p2s') else 'MP-PCA'}]" if "chosen" in g else "")
                                       for g in row["groups"])
                for name, row in estimates.items()) + ".")
            lines.append("")
    return lines


def _calls(timings) -> str:
    counts = {len(row.get("all") or [None]) for row in timings["rows"] if row.get("seconds") is not None}
    if counts == {1}:
        return "One call each"
    return f"Best of {max(counts)} calls" if counts else "No call"


def _timing_section(report) -> list[str]:
    timings = report.get("timings")
    if not timings:
        return []
    lines = ["## Run times of ours (CPU)", "",
             f"{_calls(timings)}, {timings['threads']} threads, data already in memory; 2 cores, nothing else "
             "running.", "",
             "| data | radius | pooling | grouping | seconds |", "|---|---|---|---|---|"]
    for row in timings["rows"]:
        seconds = fmt(row.get("seconds")) if row.get("seconds") is not None else row.get("note", "-")
        lines.append(f"| {row['data']} | {row['patch_radius']} | {row['patch_pooling']} | {row['grouping']} | {seconds} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = _header(report) + _rule_section(report) + _phantom_section(report) + _estimate_section(report)
    lines += _auto_section(report) + _real_section(report) + _qc_real_section(report)
    lines += _timing_section(report)
    return "\n".join(lines).rstrip() + "\n"


def _qc_real_section(report) -> list[str]:
    """Which QC flags fire on the real sets, per method."""
    sets = report.get("qc_real")
    if not sets:
        return []
    methods = list(dict.fromkeys(m for entry in sets.values() for m in entry["methods"]))
    lines = ["## QC flags on the real sets", "",
             "The app's QC (`bids_denoise.reports.qc`: ResidualRatio > 1.2, ResidualCorrelation > "
             "max(0.15, 2/sqrt(n)), FADrop > 10 % of the re-noised output) on the outputs above, with the "
             "app's noise map and default volume groups. Each cell: the flags that fire (`-`: none), then "
             "the FA change of the re-noised output and the largest residual ratio over the groups.", "",
             "| method | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for method in methods:
        cells = []
        for entry in sets.values():
            row = entry["methods"].get(method)
            if row is None:
                cells.append("")
                continue
            flags = ", ".join(row["flags"]) or "-"
            fa = "" if row["fa_change"] is None else f"; FA {100 * row['fa_change']:+.0f} %"
            ratio = "" if row["max_ratio"] is None else f"; ratio {row['max_ratio']:.2f}"
            cells.append(f"{flags}{fa}{ratio}")
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    sources = ", ".join(f"{name}: {entry['noise_source']}" for name, entry in sets.items())
    return lines + ["", f"Noise level from: {sources}.", ""]
