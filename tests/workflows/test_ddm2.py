"""DDM2 in the per-run workflow, the configuration, the CLI guard and the BIDS App."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_denoise import config
from bids_denoise.data import example_dataset
from bids_denoise.denoise.ddm2 import ddm2_denoise
from bids_denoise.denoise.methods.ddm2 import overrides
from bids_denoise.denoise.shells import group_volumes
from bids_denoise.errors import EXIT_USAGE
from bids_denoise.interfaces.ddm2 import DDM2
from bids_denoise.utils.threads import limit_threads
from bids_denoise.workflows.dwi import init_dwi_denoise_wf

TINY = dict(stage1_steps=3, stage3_steps=3, sampling_steps=2)
MULTISHELL = Path("sub-02") / "dwi" / "sub-02_acq-multishell_dwi.nii.gz"


def test_ddm2_graph_keeps_the_contract_and_passes_the_settings(tmp_path):
    wf = init_dwi_denoise_wf(method="ddm2", ddm2_preset="fast", ddm2_flips=2, ddm2_stage1_steps=None,
                             seed=7, ddm2_save_model=True, checkpoint_root=str(tmp_path / "ddm2" / "run"),
                             omp_nthreads=2)
    p2s = init_dwi_denoise_wf()
    assert set(wf.get_node("inputnode").inputs.copyable_trait_names()) == \
        set(p2s.get_node("inputnode").inputs.copyable_trait_names())
    outputs = set(wf.get_node("outputnode").inputs.copyable_trait_names())
    assert set(p2s.get_node("outputnode").inputs.copyable_trait_names()) <= outputs
    assert {"history_files", "model_files", "group_labels"} <= outputs
    denoise = wf.get_node("denoise")
    assert isinstance(denoise.interface, DDM2)
    assert denoise.iterfield == ["in_file", "bval_file", "bvec_file", "group_label", "checkpoint_dir"]
    assert denoise.n_procs == 2
    inputs = denoise.inputs
    assert inputs.preset == "fast" and inputs.flips == 2 and inputs.seed == 7 and inputs.save_model
    assert inputs.num_threads == 2
    edges = {(u.name, v.name) for u, v in wf._graph.edges()}
    assert {("split_shells", "group_labels"), ("group_labels", "denoise"), ("denoise", "merge_shells")} <= edges


def test_workflow_denoises_every_shell_with_its_own_model_and_resumes(multishell_series, tmp_path):
    data, bvals, paths = multishell_series
    root = tmp_path / "ddm2" / "run"

    def run(base):
        wf = init_dwi_denoise_wf(method="ddm2", ddm2_preset="smoke", **{f"ddm2_{k}": v for k, v in TINY.items()},
                                 checkpoint_root=str(root), shell_grouping="shell",
                                 omp_nthreads=1, min_shell_volumes=1)
        wf.base_dir = str(base)
        for field, path in zip(("dwi_file", "bval_file", "bvec_file"), paths):
            setattr(wf.inputs.inputnode, field, str(path))
        result = wf.run()
        merge = next(node for node in result.nodes() if node.name == "merge_shells")
        denoise = next(node for node in result.nodes() if node.name == "denoise")
        orders = [json.loads(Path(path).read_text())["neighbour_order"]
                  for path in denoise.result.outputs.history_file]
        assert orders == [None, "direction", "direction"]  # b0 group (Patch2Self), b1000, b2000
        return nb.load(merge.result.outputs.out_file).get_fdata(dtype=np.float32)

    denoised = run(tmp_path / "work1")
    expected = data.copy()
    bvecs = np.loadtxt(paths[2])
    with limit_threads(1):
        for group in group_volumes(bvals, min_shell_volumes=1):
            index = list(group.indices)
            # each shell gets its own b-vectors: Stage I picks its inputs by gradient direction
            expected[..., index] = ddm2_denoise(data[..., index], bvals[index], bvecs=bvecs[:, index],
                                                preset="smoke", device="cpu", progress=False, **TINY).denoised
    np.testing.assert_allclose(denoised, expected, rtol=1e-6, atol=1e-3)
    assert sorted(p.name for p in root.iterdir()) == ["b1000", "b2000"]  # the b0 group trains nothing
    files = sorted(root.rglob("*.pt"))
    assert len(files) == 8
    mtimes = [p.stat().st_mtime_ns for p in files]
    # a fresh Nipype work folder (as after Nipype emptied the node folders): nothing is retrained
    again = run(tmp_path / "work2")
    np.testing.assert_array_equal(again, denoised)
    assert [p.stat().st_mtime_ns for p in files] == mtimes


def test_config_round_trips_the_ddm2_settings(tmp_path):
    config.reset()
    try:
        config.from_dict({"workflow": {"method": "ddm2", "ddm2_preset": "fast", "ddm2_stage3_steps": 5000,
                                       "ddm2_sampling_steps": 0, "ddm2_flips": 4, "seed": 11, "force": True,
                                       "ddm2_save_model": True}}, init=False)
        path = config.to_filename(tmp_path / "config.toml")
        config.reset()
        config.load(path, init=False)
        wf = config.workflow
        assert (wf.ddm2_preset, wf.ddm2_stage3_steps, wf.ddm2_sampling_steps, wf.ddm2_flips) == ("fast", 5000, 0, 4)
        assert wf.ddm2_stage1_steps is None and wf.ddm2_precision is None
        assert wf.seed == 11 and wf.force is True and wf.ddm2_save_model is True
        assert overrides(wf) == {"stage3_steps": 5000, "sampling_steps": 0, "flips": 4}
        from bids_denoise.workflows.base import denoising_parameters

        parameters = denoising_parameters()
        assert parameters["Preset"] == "fast" and parameters["Stage3Steps"] == 5000
        assert parameters["Stage1Steps"] == 3000 and parameters["SamplingChain"] == "full"
        assert parameters["Seed"] == 11 and parameters["B0Method"] == "Patch2Self"
        for bad in ({"ddm2_flips": 3}, {"ddm2_stage1_steps": 0}, {"ddm2_precision": "fp16"}, {"seed": -2}):
            with pytest.raises(ValueError):
                config.workflow.load(bad, init=False)
    finally:
        config.reset()


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture
def small_bids(tmp_path):
    """The example dataset's multi-shell run only, and a filter file selecting it."""
    bids = tmp_path / "bids"
    shutil.copytree(example_dataset(), bids, ignore=shutil.ignore_patterns("sub-01"))
    for path in (bids / "sub-02" / "dwi").glob("*acq-dsi*"):
        path.unlink()
    for path in bids.glob("acq-dsi*"):
        path.unlink()
    (bids / "participants.tsv").write_text("participant_id\nsub-02\n")
    return bids


def _argv(bids, tmp_path, *extra):
    return [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1", "--method", "ddm2", *extra]


def test_cli_refuses_ddm2_on_the_cpu_with_the_estimate(small_bids, tmp_path, isolated_app_state, capsys,
                                                       monkeypatch):
    from bids_denoise.cli import run as run_module
    from bids_denoise.cli import workflow as workflow_module

    started = []
    monkeypatch.setattr(workflow_module, "run_participant_level", lambda *args: started.append(args) or 0)
    assert run_module.main(_argv(small_bids, tmp_path, "--device", "cpu")) == EXIT_USAGE
    err = capsys.readouterr().err
    # The default preset (fast) is refused too, with its estimate in hours or days.
    # (calibrated on this machine with the run's thread count, so only the units are fixed)
    assert "preset 'fast' on the CPU with 1 thread(s) is estimated to take about" in err
    assert " h for " in err or " days for " in err
    assert "--force" in err and "--ddm2-preset smoke" in err
    # the refusal names the cpu preset with its own estimate for the same runs
    assert "--ddm2-preset cpu (about " in err
    assert started == [] and not (tmp_path / "out" / "sub-02").exists()
    # cpu and smoke are allowed, and so is any preset with --force
    assert run_module.main(_argv(small_bids, tmp_path, "--device", "cpu", "--ddm2-preset", "cpu")) == 0
    assert run_module.main(_argv(small_bids, tmp_path, "--device", "cpu", "--ddm2-preset", "smoke")) == 0
    assert run_module.main(_argv(small_bids, tmp_path, "--device", "cpu", "--ddm2-preset", "fast", "--force")) == 0
    assert len(started) == 3


def test_parser_fills_the_ddm2_settings(small_bids, tmp_path, isolated_app_state):
    from bids_denoise.cli.parser import parse_args

    parse_args(_argv(small_bids, tmp_path, "--ddm2-preset", "fast", "--ddm2-stage1-steps", "100",
                     "--ddm2-stage3-steps", "200", "--ddm2-sampling-steps", "0", "--ddm2-batch-size", "8",
                     "--ddm2-inference-batch-size", "4", "--ddm2-flips", "2", "--ddm2-precision", "fp32",
                     "--ddm2-save-model", "--seed", "5", "--force"))
    wf = config.workflow
    assert wf.method == "ddm2" and wf.ddm2_preset == "fast" and wf.seed == 5 and wf.force and wf.ddm2_save_model
    assert overrides(wf) == {"stage1_steps": 100, "stage3_steps": 200, "sampling_steps": 0, "batch_size": 8,
                                   "inference_batch_size": 4, "flips": 2, "precision": "fp32"}
    with pytest.raises(SystemExit) as exc:
        parse_args(_argv(small_bids, tmp_path, "--ddm2-flips", "3"))
    assert exc.value.code == EXIT_USAGE


# --------------------------------------------------------------------------------- the app
@pytest.mark.slow
def test_bids_app_with_ddm2_smoke_writes_the_patch2self_set_of_derivatives(small_bids, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bids_denoise.cli.run", str(small_bids), str(out), "participant",
               "-w", str(tmp_path / "work"), "--nprocs", "2", "--omp-nthreads", "1", "--method", "ddm2",
               "--shell-grouping", "shell",
               "--ddm2-preset", "smoke", "--ddm2-stage1-steps", "10", "--ddm2-stage3-steps", "10",
               "--ddm2-sampling-steps", "3", "--ddm2-save-model", "--seed", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stem = out / "sub-02" / "dwi" / "sub-02_acq-multishell"
    expected = {f"{stem}_desc-{desc}{suffix}" for desc, suffix in (
        ("denoised", "_dwi.nii.gz"), ("denoised", "_dwi.json"), ("denoised", "_dwi.bval"),
        ("denoised", "_dwi.bvec"), ("noise", "_dwimap.nii.gz"), ("noise", "_dwimap.json"),
        ("sigma", "_dwimap.nii.gz"), ("sigma", "_dwimap.json"),
    )}  # fmt: skip
    written = {str(p) for p in (out / "sub-02" / "dwi").iterdir()}
    assert written == expected | {f"{stem}_desc-ddm2_model.pt"}
    source = nb.load(small_bids / MULTISHELL)
    denoised = nb.load(f"{stem}_desc-denoised_dwi.nii.gz")
    assert denoised.shape == source.shape and denoised.get_data_dtype() == np.float32
    np.testing.assert_allclose(denoised.affine, source.affine, atol=1e-6)
    assert np.isfinite(denoised.get_fdata()).all()
    meta = json.loads(Path(f"{stem}_desc-denoised_dwi.json").read_text())
    assert meta["DenoisingMethod"] == "DDM2"
    parameters = meta["DenoisingParameters"]
    assert parameters["Preset"] == "smoke" and parameters["Stage1Steps"] == 10 and parameters["Stage3Steps"] == 10
    assert parameters["SamplingSteps"] == 3 and parameters["Seed"] == 2 and parameters["B0Method"] == "Patch2Self"
    assert parameters["NoiseSchedule"] == {"Type": "reverse warm-up", "Timesteps": 1000, "BetaStart": 5e-5,
                                           "BetaEnd": 1e-2, "RampFraction": 0.7}
    assert [g["Label"] for g in meta["VolumeGroups"]] == ["b0", "b1000", "b2000"]
    assert all(g["Denoised"] for g in meta["VolumeGroups"])
    assert "DDM2 [@ddm2]" in (out / "logs" / "CITATION.md").read_text()
    checkpoints = tmp_path / "work" / "ddm2"
    assert sorted(p.parent.name for p in checkpoints.rglob("stage3.pt")) == ["b1000", "b2000"]
    from bids_denoise.utils.validator import find_validator, validate_derivatives

    if find_validator() is not None:
        ok, report = validate_derivatives(out)
        assert ok, report
