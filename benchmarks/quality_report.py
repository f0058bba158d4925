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
        "Rule: the default is the setting (Patch2Self or MP-PCA, with or without the Rician correction) with the best mean PSNR over all phantoms, among "
        f"the settings whose WM FA error (fa_mae_wm) is no worse than the noisy input's on every phantom "
        f"with at least 30 diffusion-weighted volumes ({ruled}).",
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
        "# Denoising quality: Patch2Self settings against DIPY and MRtrix",
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
              "the mean absolute FA error in voxels with ground-truth FA > 0.4.", ""]
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
    methods = list(next(iter(phantoms.values()))["methods"])
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
        lines += [f"### {name}", "", f"Shape {'x'.join(map(str, entry['shape']))}, {entry['n_dw']} diffusion-weighted volumes.", "",
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
    return lines


def _timing_section(report) -> list[str]:
    timings = report.get("timings")
    if not timings:
        return []
    lines = ["## Run times of ours (CPU)", "",
             f"Best of 2 calls, {timings['threads']} threads, data already in memory.", "",
             "| data | radius | pooling | grouping | seconds |", "|---|---|---|---|---|"]
    for row in timings["rows"]:
        seconds = fmt(row.get("seconds")) if row.get("seconds") is not None else row.get("note", "-")
        lines.append(f"| {row['data']} | {row['patch_radius']} | {row['patch_pooling']} | {row['grouping']} | {seconds} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = _header(report) + _rule_section(report) + _phantom_section(report) + _real_section(report)
    lines += _timing_section(report)
    return "\n".join(lines).rstrip() + "\n"
