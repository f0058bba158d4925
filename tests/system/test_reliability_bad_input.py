"""Bad input: a clear message naming the file and the problem, the right exit code, nothing
partial written for the bad run, and the other runs still processed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_denoise import config
from bids_denoise.cli.run import main

pytestmark = pytest.mark.slow
N_B0, N_DWI = 2, 6


def _write_run(folder: Path, stem: str, *, shape=(8, 8, 6), bvals=None, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bvals = np.r_[np.zeros(N_B0), np.full(N_DWI, 1000.0)] if bvals is None else np.asarray(bvals, float)
    signal = rng.uniform(300, 900, shape)[..., None] * np.exp(-bvals / 1500)
    data = (signal + rng.normal(0, 20, signal.shape)).astype(np.float32)
    nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(folder / f"{stem}.nii.gz")
    np.savetxt(folder / f"{stem}.bval", bvals[None], fmt="%g")
    vectors = rng.normal(size=(3, bvals.size))
    vectors /= np.linalg.norm(vectors, axis=0)
    vectors[:, bvals <= 50] = 0
    np.savetxt(folder / f"{stem}.bvec", vectors, fmt="%.6f")


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "faults", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-bad\nsub-good\n")
    _write_run(root / "sub-good" / "dwi", "sub-good_dwi", seed=1)
    _write_run(root / "sub-bad" / "dwi", "sub-bad_dwi", seed=2)
    return root


BAD = "sub-bad/dwi/sub-bad_dwi"


def _rewrite_image(path: Path, data):
    nb.Nifti1Image(np.asarray(data, np.float32), np.eye(4)).to_filename(path)


def missing_bval(bids):
    (bids / f"{BAD}.bval").unlink()


def missing_bvec(bids):
    (bids / f"{BAD}.bvec").unlink()


def count_mismatch(bids):
    np.savetxt(bids / f"{BAD}.bval", np.r_[np.zeros(N_B0), np.full(N_DWI - 1, 1000)][None], fmt="%g")


def bvec_two_rows(bids):
    np.savetxt(bids / f"{BAD}.bvec", np.ones((2, N_B0 + N_DWI)))


def bvec_not_numeric(bids):
    (bids / f"{BAD}.bvec").write_text("x y z\n" * 3)


def negative_bvals(bids):
    np.savetxt(bids / f"{BAD}.bval", np.r_[np.zeros(N_B0), -np.full(N_DWI, 1000)][None], fmt="%g")


def nan_voxels(bids):
    data = nb.load(bids / f"{BAD}.nii.gz").get_fdata()
    data[1, 1, 1, 3] = np.nan
    data[2, 2, 2, 4] = np.inf
    _rewrite_image(bids / f"{BAD}.nii.gz", data)


def image_3d(bids):
    _rewrite_image(bids / f"{BAD}.nii.gz", nb.load(bids / f"{BAD}.nii.gz").get_fdata()[..., 0])


def truncated_gzip(bids):
    path = bids / f"{BAD}.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def only_b0s(bids):
    _write_run(bids / "sub-bad" / "dwi", "sub-bad_dwi", bvals=np.zeros(6))


def no_b0(bids):
    _write_run(bids / "sub-bad" / "dwi", "sub-bad_dwi", bvals=np.full(6, 1000.0))


def single_dwi(bids):
    _write_run(bids / "sub-bad" / "dwi", "sub-bad_dwi", bvals=[0, 0, 0, 1000])


def tiny_image(bids):
    _write_run(bids / "sub-bad" / "dwi", "sub-bad_dwi", shape=(8, 8, 2))


# (case, mutation, extra arguments, exit code, message fragments)
PER_RUN_CASES = [
    ("missing bval", missing_bval, [], 66, ["sub-bad_dwi.nii.gz", ".bval"]),
    ("missing bvec", missing_bvec, [], 66, ["sub-bad_dwi.nii.gz", ".bvec"]),
    ("counts disagree", count_mismatch, [], 65, ["sub-bad_dwi.bval", "7 b-values", "8 volumes"]),
    ("bvec not 3xN", bvec_two_rows, [], 65, ["sub-bad_dwi.bvec", "expected 3 rows"]),
    ("bvec not numeric", bvec_not_numeric, [], 65, ["sub-bad_dwi.bvec", "not numeric"]),
    ("negative b-values", negative_bvals, [], 65, ["sub-bad_dwi.bval", "negative b-values"]),
    ("NaN or Inf voxels", nan_voxels, [], 65, ["sub-bad_dwi.nii.gz", "2 voxel values are NaN or Inf"]),
    ("3D image", image_3d, [], 65, ["sub-bad_dwi.nii.gz", "must be a 4D image"]),
    ("truncated gzip", truncated_gzip, [], 65, ["sub-bad_dwi.nii.gz", "truncated or corrupt"]),
    ("only b0s", only_b0s, [], 65, ["sub-bad_dwi.nii.gz", "no diffusion-weighted volume"]),
    ("no b0", no_b0, [], 65, ["sub-bad_dwi.nii.gz", "--b0-threshold"]),
    ("single DWI volume", single_dwi, [], 65, ["sub-bad_dwi.nii.gz", "only one diffusion-weighted volume"]),
    ("patch radius larger than the image", tiny_image, ["--patch-radius", "2"], 65,
     ["sub-bad_dwi.nii.gz", "patch radius 2 along axis 2 is too large"]),
]


@pytest.fixture(autouse=True)
def _isolated(isolated_app_state):
    yield


@pytest.fixture
def layout(tmp_path):
    bids = _dataset(tmp_path / "bids")
    plugin = tmp_path / "linear.yml"
    plugin.write_text("plugin: Linear\n")
    return bids, tmp_path / "out", tmp_path / "work", plugin


def _run(layout, *extra, skip_validation=True):
    bids, out, work, plugin = layout
    argv = [str(bids), str(out), "participant", "-w", str(work), "--use-plugin", str(plugin), *extra]
    if skip_validation:
        argv.append("--skip-bids-validation")
    return main(argv)


def _derivatives(out: Path, subject: str) -> list[Path]:
    return sorted((out / f"sub-{subject}").rglob("*")) if (out / f"sub-{subject}").exists() else []


def _no_partial_files(out: Path):
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    leftovers += [p for p in out.rglob("*.tmp*")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("case, mutate, extra, code, fragments", PER_RUN_CASES, ids=[c[0] for c in PER_RUN_CASES])
def test_a_bad_run_fails_alone_with_a_clear_message(layout, capsys, case, mutate, extra, code, fragments):
    bids, out, _, _ = layout
    mutate(bids)
    assert _run(layout, *extra) == code
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "[failed] sub-bad/dwi/sub-bad_dwi.nii.gz" in err
    assert not _derivatives(out, "bad"), "a derivative was written for the bad run"
    assert (out / "sub-good/dwi/sub-good_desc-denoised_dwi.nii.gz").is_file(), "the good run was not processed"
    _no_partial_files(out)


def test_stop_on_first_crash_stops_before_any_work(layout, capsys):
    bids, out, _, _ = layout
    nan_voxels(bids)
    assert _run(layout, "--stop-on-first-crash") == 65
    assert "NaN or Inf" in capsys.readouterr().err
    assert not _derivatives(out, "good") and not _derivatives(out, "bad")


def test_non_unit_bvectors_only_warn(layout, capsys):
    bids, out, _, _ = layout
    vectors = np.loadtxt(bids / f"{BAD}.bvec")
    vectors[:, N_B0:] *= 1.5
    np.savetxt(bids / f"{BAD}.bvec", vectors)
    assert _run(layout) == 0
    captured = capsys.readouterr()
    assert "sub-bad_dwi.bvec" in captured.err and "not unit length" in captured.err
    assert (out / "sub-bad/dwi/sub-bad_desc-denoised_dwi.nii.gz").is_file()


def test_an_empty_file_is_skipped_with_a_warning(layout, capsys):
    bids, out, _, _ = layout
    (bids / f"{BAD}.nii.gz").write_bytes(b"")
    assert _run(layout) == 0
    captured = capsys.readouterr()
    assert "[skipped] sub-bad/dwi/sub-bad_dwi.nii.gz: " in captured.out
    assert "empty (0 bytes)" in captured.out
    assert not _derivatives(out, "bad")


def test_unknown_participant_lists_those_that_exist(layout, capsys):
    assert _run(layout, "--participant-label", "nobody") == 18
    err = capsys.readouterr().err
    assert "nobody" in err and "bad" in err and "good" in err


def test_a_folder_that_is_not_bids_is_refused(layout, capsys):
    bids, out, _, _ = layout
    (bids / "dataset_description.json").unlink()
    assert _run(layout) == 66
    assert "dataset_description.json" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*.nii.gz"))


@pytest.mark.parametrize("where", ["same", "raw data", "derivatives root"])
def test_output_dir_equal_to_or_inside_bids_raw_data_is_refused(layout, capsys, where):
    # A folder of derivatives/ is allowed (pybids and the validator skip it); the dataset root,
    # a folder among the raw data and derivatives/ itself are not.
    bids, _, work, plugin = layout
    out = {"same": bids, "raw data": bids / "sub-good" / "denoised", "derivatives root": bids / "derivatives"}[where]
    argv = [str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation"]
    assert main(argv) == 64
    assert str(bids) in capsys.readouterr().err
    assert not (bids / "derivatives").exists()
    assert not (bids / "sub-good" / "denoised").exists()


def test_work_dir_inside_bids_dir_is_refused(layout, capsys):
    bids, out, _, _ = layout
    assert main([str(bids), str(out), "participant", "-w", str(bids / "work"), "--skip-bids-validation"]) == 64
    assert "work" in capsys.readouterr().err
    assert not (bids / "work").exists()


def test_an_output_dir_that_cannot_be_written_is_refused(layout, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bids, _, work, plugin = layout
    assert main([str(bids), str(blocker / "out"), "participant", "-w", str(work), "--skip-bids-validation"]) == 73
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_outputs_of_another_version_are_never_overwritten(layout, capsys):
    bids, out, _, _ = layout
    out.mkdir()
    description = {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "bids_denoise", "Version": "0.0.1"}]}
    (out / "dataset_description.json").write_text(json.dumps(description))
    assert _run(layout) == 64
    assert "0.0.1" in capsys.readouterr().err
    assert json.loads((out / "dataset_description.json").read_text()) == description
    assert not _derivatives(out, "good")


def test_outputs_made_with_other_settings_are_never_overwritten(layout, capsys):
    _, out, _, _ = layout
    assert _run(layout) == 0
    first = (out / "sub-good/dwi/sub-good_desc-denoised_dwi.nii.gz").read_bytes()
    capsys.readouterr()
    config.reset()
    assert _run(layout, "--p2s-model", "ridge") == 64
    err = capsys.readouterr().err
    assert "sub-good_desc-denoised_dwi.json" in err and "Model" in err
    assert (out / "sub-good/dwi/sub-good_desc-denoised_dwi.nii.gz").read_bytes() == first


def test_a_run_that_needs_more_memory_than_allowed_is_refused_before_starting(layout, capsys):
    _, out, _, _ = layout
    assert _run(layout, "--mem-gb", "0.05") == 64
    err = capsys.readouterr().err
    assert "needs about" in err and "GB" in err and "--mem-gb" in err
    assert not _derivatives(out, "good")
