#!/usr/bin/env python
"""Check that two bids_denoise output folders hold the same derivatives.

    python scripts/ci/compare_derivatives.py DIR_A DIR_B [--atol 1e-4] [--rtol 1e-5] [--range-tol 1e-6]
        [--ignore-key KEY ...] [--exclude GLOB ...] [--loose GLOB ...] [--compare-figures]

CI uses it twice: ``test_slurm.sh`` compares each Slurm mode with a MultiProc run, and
``test_container.sh`` compares the image's outputs with a host run.

* the lists of files must be identical once run identifiers in file names
  (``logs/config-20250101-120000_1a2b3c4d.toml``) are replaced by ``<run_uuid>``; left out:
  the hidden lock file and write probes;
* NIfTI images: same shape, data type, affine, voxel sizes and qform/sform codes, and voxel
  values within ``atol + --rtol * |b|`` (float32 tolerance by default; NaNs must match), where
  ``atol`` is the larger of ``--atol`` and ``--range-tol`` times the image's largest magnitude:
  float32 sums in another order (another thread count) differ by about 1e-7 of the range, and
  the Rician correction, steep just above the noise floor, amplifies that there (3.6e-4 on a
  b0 of peak about 2,000 between a MultiProc and a Slurm-array run);
* JSON files: equal once the volatile keys are removed (at any depth: ``RunTime``,
  ``Seconds`` (of the error estimate), ``Devices``, ``Device``, which depend on the machine and the load, ``Provenance``, which
  records how the run was made, plus any ``--ignore-key``); numbers are compared with the same
  tolerance;
* figures and HTML reports (.svg, .png, .html, ...): present in both and not empty; their
  bytes hold drawing ids, dates and paths (``--compare-figures`` compares them byte for byte);
  so are the per-run configuration records ``logs/config-*.toml`` and any ``--loose`` glob;
* every other file (.bval, .bvec, .tsv, .md, ...): byte for byte.

Prints one line per difference and a summary; exit status 0 when the folders match, 1 when
they differ, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from pathlib import Path

VOLATILE_KEYS = ("RunTime", "Seconds", "Devices", "Device", "Provenance")
FIGURE_SUFFIXES = (".svg", ".png", ".jpg", ".jpeg", ".gif", ".html")
#: Left out of every comparison: the output lock and write probes.
DEFAULT_EXCLUDE = (".bids_denoise.lock", ".bids_denoise_write_test_*")
#: Only required to exist, not empty, in both: each run writes its own configuration record.
DEFAULT_LOOSE = ("logs/config-*.toml",)
#: ``bids_denoise.config.new_run_uuid()``: YYYYmmdd-HHMMSS_<8 hex digits>.
RUN_UUID = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}")


def list_files(root: Path, exclude) -> dict[str, Path]:
    """``{relative path with run ids replaced by <run_uuid>: file}`` for the files under ``root``.

    When several files share a name (one configuration record per invocation, e.g. one per
    job of a Slurm array), the last in sorted order is kept.
    """
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(path.name, pat) or fnmatch.fnmatch(rel, pat) for pat in exclude):
            continue
        files[RUN_UUID.sub("<run_uuid>", rel)] = path
    return files


def _strip(value, ignore):
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def _json_diff(a, b, atol, rtol, where="$"):
    """Yield the places where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'B' if key not in a else 'A'}"
            else:
                yield from _json_diff(a[key], b[key], atol, rtol, f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} vs {len(b)} items"
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                yield from _json_diff(x, y, atol, rtol, f"{where}[{i}]")
    elif (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool)
    ):
        if not math.isclose(a, b, rel_tol=rtol, abs_tol=atol):
            yield f"{where}: {a!r} vs {b!r}"
    elif a != b:
        yield f"{where}: {a!r} vs {b!r}"


def compare_json(fa: Path, fb: Path, ignore, atol, rtol) -> list[str]:
    try:
        a, b = json.loads(fa.read_text()), json.loads(fb.read_text())
    except ValueError as exc:
        return [f"invalid JSON: {exc}"]
    return list(_json_diff(_strip(a, ignore), _strip(b, ignore), atol, rtol))


def compare_nifti(fa: Path, fb: Path, atol, rtol, range_tol=0.0) -> tuple[list[str], float]:
    import nibabel as nb
    import numpy as np

    ia, ib = nb.load(fa), nb.load(fb)
    problems = []
    if ia.shape != ib.shape:
        return [f"shape {ia.shape} vs {ib.shape}"], math.inf
    if ia.get_data_dtype() != ib.get_data_dtype():
        problems.append(f"dtype {ia.get_data_dtype()} vs {ib.get_data_dtype()}")
    if not np.allclose(ia.affine, ib.affine, atol=1e-6):
        problems.append("affines differ")
    if ia.header.get_zooms() != ib.header.get_zooms():
        problems.append(f"voxel sizes {ia.header.get_zooms()} vs {ib.header.get_zooms()}")
    for code in ("qform_code", "sform_code"):
        if int(ia.header[code]) != int(ib.header[code]):
            problems.append(f"{code} {int(ia.header[code])} vs {int(ib.header[code])}")
    da = np.asanyarray(ia.dataobj).astype(np.float64)
    db = np.asanyarray(ib.dataobj).astype(np.float64)
    if not np.array_equal(np.isnan(da), np.isnan(db)):
        problems.append("NaNs in different voxels")
    finite = ~(np.isnan(da) | np.isnan(db))
    max_abs = float(np.max(np.abs(da[finite] - db[finite]), initial=0.0))
    atol = max(atol, range_tol * float(np.max(np.abs(db[finite]), initial=0.0)))
    if not np.allclose(da[finite], db[finite], atol=atol, rtol=rtol):
        bad = int(np.sum(~np.isclose(da[finite], db[finite], atol=atol, rtol=rtol)))
        problems.append(f"{bad} voxel values differ beyond atol={atol:g} rtol={rtol:g} (max |A-B| = {max_abs:.3g})")
    return problems, max_abs


def compare(dir_a: Path, dir_b: Path, *, atol=1e-4, rtol=1e-5, range_tol=1e-6, ignore=VOLATILE_KEYS,
            exclude=DEFAULT_EXCLUDE, loose=DEFAULT_LOOSE, compare_figures=False):
    """Return ``(differences, counts)``: a list of ``"path: problem"`` lines and per-kind counts."""
    files_a, files_b = list_files(dir_a, exclude), list_files(dir_b, exclude)
    diffs = [f"{rel}: only in A ({dir_a})" for rel in sorted(set(files_a) - set(files_b))]
    diffs += [f"{rel}: only in B ({dir_b})" for rel in sorted(set(files_b) - set(files_a))]
    counts = {"nifti": 0, "json": 0, "figures": 0, "other": 0, "max_abs_diff": 0.0}
    for rel in sorted(set(files_a) & set(files_b)):
        fa, fb = files_a[rel], files_b[rel]
        presence_only = any(fnmatch.fnmatch(rel, pat) for pat in loose) or (
            rel.lower().endswith(FIGURE_SUFFIXES) and not compare_figures
        )
        if presence_only:
            problems = [f"empty in {side}" for side, f in (("A", fa), ("B", fb)) if f.stat().st_size == 0]
            counts["figures"] += 1
        elif rel.endswith((".nii", ".nii.gz")):
            problems, max_abs = compare_nifti(fa, fb, atol, rtol, range_tol)
            counts["nifti"] += 1
            counts["max_abs_diff"] = max(counts["max_abs_diff"], max_abs)
        elif rel.endswith(".json"):
            problems = compare_json(fa, fb, set(ignore), atol, rtol)
            counts["json"] += 1
        else:
            problems = [] if fa.read_bytes() == fb.read_bytes() else ["contents differ"]
            counts["other"] += 1
        diffs += [f"{rel}: {p}" for p in problems]
    counts["files"] = len(set(files_a) | set(files_b))
    return diffs, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir_a", type=Path)
    parser.add_argument("dir_b", type=Path)
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    parser.add_argument("--range-tol", type=float, default=1e-6,
                        help="images: absolute tolerance as a fraction of the image's largest magnitude, "
                        "when larger than --atol (default 1e-6)")
    parser.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                        help=f"another JSON key to ignore at any depth (repeatable); always ignored: "
                        f"{', '.join(VOLATILE_KEYS)}")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="file name or relative path pattern to leave out (repeatable)")
    parser.add_argument("--loose", action="append", default=[], metavar="GLOB",
                        help="relative paths only required to exist, not empty, in both (repeatable); "
                        f"always: {', '.join(DEFAULT_LOOSE)} and figures")
    parser.add_argument("--compare-figures", action="store_true",
                        help="compare report figures byte for byte (default: presence only)")
    opts = parser.parse_args(argv)
    for folder in (opts.dir_a, opts.dir_b):
        if not folder.is_dir():
            parser.error(f"not a folder: {folder}")
    diffs, counts = compare(
        opts.dir_a, opts.dir_b, atol=opts.atol, rtol=opts.rtol, range_tol=opts.range_tol,
        ignore=VOLATILE_KEYS + tuple(opts.ignore_key), exclude=DEFAULT_EXCLUDE + tuple(opts.exclude),
        loose=DEFAULT_LOOSE + tuple(opts.loose), compare_figures=opts.compare_figures,
    )
    for line in diffs:
        print(f"DIFF {line}")
    verdict = "MATCH" if not diffs else f"DIFFER ({len(diffs)} difference(s))"
    print(
        f"{verdict}: {counts['files']} files ({counts['nifti']} NIfTI, max |A-B| = {counts['max_abs_diff']:.3g}; "
        f"{counts['json']} JSON; {counts['figures']} figures and records, presence only; "
        f"{counts['other']} other) in {opts.dir_a} vs {opts.dir_b}"
    )
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
