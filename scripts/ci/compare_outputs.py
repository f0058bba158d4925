#!/usr/bin/env python3
"""Compare two bids_denoise output folders: same files, same data within float32 tolerance.

Usage::

    compare_outputs.py DIR_A DIR_B [--rtol 1e-5] [--atol 1e-3] [--ignore-key KEY ...]
                                   [--exclude GLOB ...] [-q]

For every file (relative path) in either folder:

* both folders must have it (hidden lock files and ``--exclude`` globs are skipped);
* NIfTI (``.nii``, ``.nii.gz``): same shape, on-disk dtype, affine, qform/sform codes and voxel
  sizes; data equal within ``|a - b| <= atol + rtol * |b|`` (NaNs must match);
* JSON: equal after removing volatile keys at any depth (``RunTime``, ``Devices``, ``Device``,
  ``DatasetLinks``, ``Container``, ``Provenance`` by default, more with ``--ignore-key``);
  numbers compared with the same tolerance;
* reports and run records (``*.html``, ``*.svg``, ``*.png``, ``logs/config-*.toml``; more with
  ``--loose``): only required to exist in both (they embed dates, paths, library versions);
* anything else (``.bval``, ``.bvec``, ``.tsv``, text): byte-identical.

Run identifiers in file names (``logs/config-20250101-120000_1a2b3c4d.toml``) are replaced by
``<run_uuid>`` before the file lists are compared.

Exit status: 0 when the folders match, 1 when they differ, 2 on bad usage. A one-line summary
per difference goes to stdout, with the largest absolute and relative NIfTI differences.
Needs numpy and nibabel (the bids_denoise environment has both).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
from pathlib import Path

#: Keys whose values depend on the machine or the run, not on the data (any nesting level).
DEFAULT_IGNORED_KEYS = ("RunTime", "Devices", "Device", "DatasetLinks", "Container", "Provenance")
#: Files only checked for presence: renderings and per-invocation records.
DEFAULT_LOOSE = ("*.html", "*.svg", "*.png", "logs/config-*.toml")
#: ``bids_denoise.config.new_run_uuid()``: YYYYmmdd-HHMMSS_<8 hex digits>.
RUN_UUID = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}")
#: Files that are not outputs (the advisory lock of the dataset-level writers).
DEFAULT_EXCLUDES = (".bids_denoise.lock", "*/.bids_denoise.lock")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def normalise(rel: str) -> str:
    """A relative path with run identifiers replaced by ``<run_uuid>``."""
    return RUN_UUID.sub("<run_uuid>", rel)


def list_files(root: Path, excludes) -> dict[str, Path]:
    """``{normalised relative path: file}`` for the regular files under ``root``, minus ``excludes``.

    When several files share a normalised name (one config per invocation), the last one in
    sorted order is kept.
    """
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pattern) for pattern in excludes):
            continue
        files[normalise(rel)] = path
    return files


def _strip(value, ignored):
    if isinstance(value, dict):
        return {k: _strip(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_strip(v, ignored) for v in value]
    return value


def _json_differences(a, b, rtol, atol, where="") -> list[str]:
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a == b else [f"{where or '/'}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (a != a and b != b):
            return []
        return [f"{where or '/'}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'B' if key not in a else 'A'}")
            else:
                out += _json_differences(a[key], b[key], rtol, atol, f"{where}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where or '/'}: {len(a)} items != {len(b)} items"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _json_differences(x, y, rtol, atol, f"{where}/{i}")
        return out
    return [] if a == b else [f"{where or '/'}: {a!r} != {b!r}"]


def compare_json(path_a: Path, path_b: Path, rtol, atol, ignored) -> list[str]:
    try:
        a = _strip(json.loads(path_a.read_text()), ignored)
        b = _strip(json.loads(path_b.read_text()), ignored)
    except (OSError, ValueError) as err:
        return [f"cannot read JSON: {err}"]
    return _json_differences(a, b, rtol, atol)


def compare_nifti(path_a: Path, path_b: Path, rtol, atol, stats: dict) -> list[str]:
    import nibabel as nb
    import numpy as np

    img_a, img_b = nb.load(path_a), nb.load(path_b)
    problems = []
    if img_a.shape != img_b.shape:
        return [f"shape {img_a.shape} != {img_b.shape}"]
    if img_a.get_data_dtype() != img_b.get_data_dtype():
        problems.append(f"dtype {img_a.get_data_dtype()} != {img_b.get_data_dtype()}")
    if not np.allclose(img_a.affine, img_b.affine, atol=1e-6):
        problems.append("affines differ")
    for key in ("qform_code", "sform_code"):
        if int(img_a.header[key]) != int(img_b.header[key]):
            problems.append(f"{key} {int(img_a.header[key])} != {int(img_b.header[key])}")
    if not np.allclose(img_a.header.get_zooms(), img_b.header.get_zooms(), atol=1e-6):
        problems.append(f"zooms {img_a.header.get_zooms()} != {img_b.header.get_zooms()}")
    data_a = np.asanyarray(img_a.dataobj).astype(np.float64)
    data_b = np.asanyarray(img_b.dataobj).astype(np.float64)
    nan_a, nan_b = np.isnan(data_a), np.isnan(data_b)
    if (nan_a != nan_b).any():
        problems.append(f"NaNs differ in {int((nan_a != nan_b).sum())} voxels")
    finite = ~(nan_a | nan_b)
    diff = np.abs(data_a - data_b)[finite]
    scale = np.abs(data_b)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(scale, np.finfo(np.float32).tiny)).max()) if diff.size else 0.0
    stats["max_abs"] = max(stats.get("max_abs", 0.0), max_abs)
    stats["max_rel"] = max(stats.get("max_rel", 0.0), max_rel)
    stats["identical"] = stats.get("identical", 0) + int(max_abs == 0.0)
    stats["nifti"] = stats.get("nifti", 0) + 1
    bad = diff > atol + rtol * scale
    if bad.any():
        problems.append(
            f"data differ in {int(bad.sum())} of {diff.size} values "
            f"(max |a-b| {max_abs:.3g}, max relative {max_rel:.3g})"
        )
    return problems


def compare_dirs(dir_a: Path, dir_b: Path, *, rtol=1e-5, atol=1e-3, ignored=DEFAULT_IGNORED_KEYS,
                 excludes=DEFAULT_EXCLUDES, loose=DEFAULT_LOOSE) -> tuple[list[str], dict]:
    """All differences between two output folders, and statistics of the comparison."""
    files_a, files_b = list_files(dir_a, excludes), list_files(dir_b, excludes)
    problems = [f"only in A: {rel}" for rel in sorted(set(files_a) - set(files_b))]
    problems += [f"only in B: {rel}" for rel in sorted(set(files_b) - set(files_a))]
    common = sorted(set(files_a) & set(files_b))
    stats: dict = {"files": len(common), "loose": 0}
    for rel in common:
        path_a, path_b = files_a[rel], files_b[rel]
        if any(fnmatch.fnmatch(rel, pattern) for pattern in loose):
            stats["loose"] += 1
            continue
        if rel.endswith(NIFTI_SUFFIXES):
            found = compare_nifti(path_a, path_b, rtol, atol, stats)
        elif rel.endswith(".json"):
            found = compare_json(path_a, path_b, rtol, atol, set(ignored))
        else:
            found = [] if path_a.read_bytes() == path_b.read_bytes() else ["contents differ"]
        problems += [f"{rel}: {item}" for item in found]
    return problems, stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir_a", type=Path, help="first output folder (A)")
    parser.add_argument("dir_b", type=Path, help="second output folder (B), e.g. the reference")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="absolute tolerance, in the units of the data (default 1e-3)")
    parser.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                        help="another JSON key to ignore at any depth (repeatable); always ignored: "
                             + ", ".join(DEFAULT_IGNORED_KEYS))
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="relative paths to skip (fnmatch glob, repeatable)")
    parser.add_argument("--loose", action="append", default=[], metavar="GLOB",
                        help="relative paths only required to exist in both (repeatable); always: "
                             + ", ".join(DEFAULT_LOOSE))
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the differences")
    opts = parser.parse_args(argv)
    for folder in (opts.dir_a, opts.dir_b):
        if not folder.is_dir():
            parser.error(f"{folder} is not a directory")  # exits 2

    problems, stats = compare_dirs(
        opts.dir_a, opts.dir_b, rtol=opts.rtol, atol=opts.atol,
        ignored=DEFAULT_IGNORED_KEYS + tuple(opts.ignore_key),
        excludes=DEFAULT_EXCLUDES + tuple(opts.exclude),
        loose=DEFAULT_LOOSE + tuple(opts.loose),
    )
    for line in problems:
        print(f"DIFF {line}")
    if not opts.quiet or problems:
        print(
            f"{'DIFFERENT' if problems else 'MATCH'}: {opts.dir_a} vs {opts.dir_b}: "
            f"{stats['files']} common files ({stats['loose']} only checked for presence), "
            f"{stats.get('nifti', 0)} NIfTI "
            f"({stats.get('identical', 0)} bit-identical; max |a-b| {stats.get('max_abs', 0.0):.3g}, "
            f"max relative {stats.get('max_rel', 0.0):.3g}; rtol {opts.rtol:g}, atol {opts.atol:g}), "
            f"{len(problems)} difference(s)"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
