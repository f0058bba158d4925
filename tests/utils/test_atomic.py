"""Atomic writers (bids_denoise.utils.atomic): complete files or nothing, never a temp left."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from bids_denoise.utils import atomic
from bids_denoise.utils.atomic import (
    atomic_copy,
    atomic_output,
    atomic_save_nifti,
    atomic_write_json,
    atomic_write_text,
)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def image():
    data = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-3, 4, 5]
    return nib.Nifti1Image(data, affine)


@pytest.fixture
def replaced(monkeypatch):
    """Record the temporary names that os.replace moves into place."""
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    return calls


def test_write_text_creates_parents_and_content(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    assert atomic_write_text(target, "line 1\nline 2\n") == target
    assert target.read_text() == "line 1\nline 2\n"
    assert _listing(target.parent) == ["file.txt"]


def test_write_json_format(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads(text) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}])
def test_unencodable_json_touches_nothing(tmp_path, bad):
    target = tmp_path / "x.json"
    target.write_text('{"old": true}\n')
    with pytest.raises((TypeError, ValueError)):
        atomic_write_json(target, bad)
    assert target.read_text() == '{"old": true}\n'
    assert _listing(tmp_path) == ["x.json"]


def test_exception_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_text("half of the new con")
            assert tmp.parent == tmp_path and tmp.name.startswith(".")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["table.tsv"]


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_failing_rename_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "content")
    assert _listing(tmp_path) == []


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        target = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o640


def test_copy(tmp_path):
    src = tmp_path / "src.bval"
    src.write_text("0 1000\n")
    src.chmod(0o444)  # read-only inputs must not make read-only outputs
    dst = atomic_copy(src, tmp_path / "out" / "dst.bval")
    assert dst.read_text() == "0 1000\n"
    assert dst.stat().st_mode & 0o200  # owner-writable (os.access is always True for root)


def test_copy_of_a_missing_file_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "nope", tmp_path / "out" / "dst")
    assert not (tmp_path / "out").exists() or _listing(tmp_path / "out") == []


@pytest.mark.parametrize("name, gzipped", [("img.nii.gz", True), ("img.nii", False)])
def test_save_nifti_round_trip_and_temp_name(tmp_path, image, replaced, name, gzipped):
    target = atomic_save_nifti(image, tmp_path / name)
    loaded = nib.load(target)
    np.testing.assert_array_equal(loaded.get_fdata(), image.get_fdata())
    np.testing.assert_allclose(loaded.affine, image.affine)
    assert (target.read_bytes()[:2] == b"\x1f\x8b") is gzipped
    (src, dst), = replaced
    assert os.path.dirname(src) == str(tmp_path) and dst == str(target)
    assert os.path.basename(src).startswith(".") and src.endswith(name[name.index("."):])
    assert _listing(tmp_path) == [name]


def test_save_nifti_failure_mid_write(tmp_path, image, monkeypatch):
    target = tmp_path / "dwi.nii.gz"
    atomic_save_nifti(image, target)
    before = target.read_bytes()

    def broken_save(img, filename):
        with gzip.open(filename, "wb") as handle:  # a partial, truncated image
            handle.write(b"\x00" * 100)
        raise MemoryError("killed while writing")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(MemoryError):
        atomic_save_nifti(image, target)
    assert target.read_bytes() == before
    assert _listing(tmp_path) == ["dwi.nii.gz"]


def test_save_nifti_refuses_other_extensions(tmp_path, image):
    with pytest.raises(ValueError, match=".nii"):
        atomic_save_nifti(image, tmp_path / "img.mgz")
    assert _listing(tmp_path) == []
