"""Nothing lost: read-only input, concurrent participants, a full disk, SIGKILL then resume.

These run the real app in subprocesses on the bundled example dataset. Read-only mounts and a
tmpfs need root (CI runs as root); those tests skip otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_denoise.data import example_dataset

pytestmark = pytest.mark.slow
VOLATILE_KEYS = {"RunTime", "Devices", "VolumeGroups", "Provenance"}  # Provenance: command line, paths, commit


def _command(bids, out, work, *extra):
    return [sys.executable, "-m", "bids_denoise.cli.run", str(bids), str(out), "participant",
            "-w", str(work), "--nprocs", "1", "--omp-nthreads", "1", "--skip-bids-validation", *extra]


def _run(*args, **kwargs):
    return subprocess.run(_command(*args, **kwargs), capture_output=True, text=True, timeout=900)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _assert_nothing_partial(out: Path):
    """Every file is complete: NIfTIs load whole, JSONs parse, no temporary files remain."""
    temporaries = [p for p in out.rglob(".*") if p.is_file() and ".tmp" in p.name]
    assert not temporaries, temporaries
    for path in out.rglob("*.nii.gz"):
        np.asanyarray(nb.load(path).dataobj)
    for path in out.rglob("*.json"):
        json.loads(path.read_text())


def _same_derivatives(a: Path, b: Path):
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "logs" not in p.parts)
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and "logs" not in p.parts)
    assert files_a == files_b
    for relative in files_a:
        if relative.name.endswith(".nii.gz"):
            left, right = nb.load(a / relative), nb.load(b / relative)
            np.testing.assert_array_equal(np.asanyarray(left.dataobj), np.asanyarray(right.dataobj))
            np.testing.assert_array_equal(left.affine, right.affine)
        elif relative.suffix == ".json" and relative.name != "dataset_description.json":
            strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE_KEYS}  # noqa: E731
            assert strip(json.loads((a / relative).read_text())) == strip(json.loads((b / relative).read_text()))


@pytest.fixture
def bids_copy(tmp_path):
    target = tmp_path / "bids"
    shutil.copytree(example_dataset(), target)
    return target


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_read_only_input_is_never_written(bids_copy, tmp_path):
    mounted = tmp_path / "ro"
    mounted.mkdir()
    if not (_mount("--bind", str(bids_copy), str(mounted))
            and _mount("-o", "remount,bind,ro", str(mounted))):
        pytest.skip("bind mounts are not permitted here")
    try:
        with pytest.raises(OSError):
            (mounted / "probe").write_text("the mount must be read-only")
        before = _digest(mounted)
        result = _run(mounted, tmp_path / "out", tmp_path / "work", "--participant-label", "02")
        assert result.returncode == 0, result.stderr[-2000:]
        assert _digest(mounted) == before
        assert (tmp_path / "out/sub-02/dwi/sub-02_acq-multishell_desc-denoised_dwi.nii.gz").is_file()
    finally:
        subprocess.run(["umount", str(mounted)], check=False)


def test_two_participants_at_once_into_one_output_dir(bids_copy, tmp_path):
    out = tmp_path / "out"
    processes = [
        subprocess.Popen(_command(bids_copy, out, tmp_path / f"work-{label}", "--participant-label", label),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for label in ("01", "02")
    ]
    for process in processes:
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-2000:]
    description = json.loads((out / "dataset_description.json").read_text())
    assert [entry["Name"] for entry in description["GeneratedBy"]] == ["bids_denoise"]
    ignored = (out / ".bidsignore").read_text().splitlines()
    assert len(ignored) == len(set(ignored)) and "*_dwi.bval" in ignored
    assert len(list(out.rglob("*_desc-denoised_dwi.nii.gz"))) == 5
    _assert_nothing_partial(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_gives_a_clear_error_and_no_corrupt_output(bids_copy, tmp_path):
    out = tmp_path / "small"
    out.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=600k", "tmpfs", str(out)):
        pytest.skip("tmpfs mounts are not permitted here")
    try:
        result = _run(bids_copy, out, tmp_path / "work", "--participant-label", "02")
        assert result.returncode != 0
        assert "No space left on device" in result.stderr or "no space left" in result.stderr
        assert "[failed]" in result.stderr or "no space left on the device" in result.stderr
        _assert_nothing_partial(out)
    finally:
        subprocess.run(["umount", str(out)], check=False)


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("method_args", [["--patch-radius", "1"], ["--method", "ddm2", "--ddm2-preset", "smoke"]],
                         ids=["patch2self", "ddm2-smoke"])
def test_sigkill_while_denoising_then_resume_gives_the_uninterrupted_result(bids_copy, tmp_path, method_args):
    only_multishell = tmp_path / "filter.json"
    only_multishell.write_text(json.dumps({"dwi": {"acquisition": "multishell"}}))
    select = ["--participant-label", "02", "--bids-filter-file", str(only_multishell), *method_args]
    reference = _run(bids_copy, tmp_path / "ref-out", tmp_path / "ref-work", *select)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out, work = tmp_path / "out", tmp_path / "work"
    process = subprocess.Popen(_command(bids_copy, out, work, *select), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    started = _wait_for(lambda: any(work.rglob("denoise/mapflow/_denoise*/_report")), timeout=300)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert started, "denoising never started"
    _assert_nothing_partial(out)
    finished_before_kill = {p: p.stat().st_mtime_ns for p in work.rglob("split_shells/result_split_shells.pklz")}
    assert finished_before_kill, "the kill came before any node finished"

    resumed = _run(bids_copy, out, work, *select)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for result, mtime in finished_before_kill.items():
        assert result.stat().st_mtime_ns == mtime, f"{result} was recomputed instead of reused"
    _same_derivatives(tmp_path / "ref-out", out)
