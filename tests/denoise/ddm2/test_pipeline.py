"""The DDM2 engine end to end on tiny arrays: stages, checkpoints, resume, b0s, sampling maths.

Everything runs the ``smoke`` preset (a tiny network, tens of steps) on one CPU thread; the
checks are about plumbing, units and bookkeeping, not about denoising quality.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from bids_denoise.denoise.ddm2 import ddm2_denoise, resolve_settings
from bids_denoise.denoise.ddm2.sampling import denoise_slices, reverse_step
from bids_denoise.denoise.ddm2.schedule import NoiseSchedule
from bids_denoise.denoise.ddm2.unet import NetworkSettings, UNet
from bids_denoise.denoise.patch2self import patch2self

HISTORY_KEYS = {"stage1_loss", "stage3_loss", "t_star", "stage_seconds", "preset", "steps", "neighbour_order",
                "stage3_t_min", "stage3_t_max"}
STAGE_FILES = ("stage1.pt", "stage2.pt", "stage3.pt", "inference.pt")


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _phantom(shape=(16, 16, 3, 8), sigma=20.0, seed=0):
    """Smooth blobs whose brightness differs per volume, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    blob = 500 * np.exp(-2 * (x**2 + y**2))[..., None, None]
    clean = blob * np.linspace(0.9, 1.1, shape[2])[None, None, :, None] * rng.uniform(0.5, 1.0, shape[3])
    return (clean + rng.normal(0, sigma, shape)).astype(np.float32), clean


class Recorder:
    """A callback that records (stage, step) and can stop the run at one of them."""

    def __init__(self, stop_at=None):
        self.calls = []
        self.stop_at = stop_at

    def __call__(self, stage, step):
        self.calls.append((stage, step))
        if (stage, step) == self.stop_at:
            raise KeyboardInterrupt(f"stopped at {stage} step {step}")

    def steps(self, stage):
        return [step for name, step in self.calls if name == stage]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    torch.set_num_threads(1)
    data, clean = _phantom()
    folder = tmp_path_factory.mktemp("ddm2") / "b1000"
    recorder = Recorder()
    result = ddm2_denoise(data, np.full(8, 1000.0), preset="smoke", device="cpu", checkpoint_dir=folder,
                          progress=False, callback=recorder)
    return {"data": data, "clean": clean, "folder": folder, "result": result, "recorder": recorder}


def test_smoke_run_shapes_units_and_history(smoke_run):
    data, result = smoke_run["data"], smoke_run["result"]
    settings = resolve_settings("smoke")
    assert result.denoised.shape == data.shape and result.denoised.dtype == np.float32
    assert result.noise.shape == data.shape[:3] and result.noise.dtype == np.float32
    assert np.isfinite(result.denoised).all() and np.isfinite(result.noise).all()
    assert result.n_denoised == 8 and result.device == "cpu"
    # units restored: the output is clamped to the group's range of values, and its mean is
    # close to the input's. The smoke network trains for tens of steps only; over seeds its
    # mean is within about 10 %, while a normalisation error would be off by half the volume
    # scale or a factor of 2. The exact round trip is tested below.
    low, high = min(0.0, data.min()), data.max()
    span = high - low
    assert result.denoised.min() >= low - 1e-5 * span and result.denoised.max() <= high + 1e-5 * span
    assert result.denoised.mean() == pytest.approx(data.mean(), rel=0.1)
    noise = np.sqrt(np.mean((data.astype(np.float64) - result.denoised) ** 2, axis=3))
    np.testing.assert_allclose(result.noise, noise, rtol=1e-4, atol=1e-3)
    history = result.history
    assert set(history) == HISTORY_KEYS
    assert len(history["stage1_loss"]) == settings.stage1_steps
    assert len(history["stage3_loss"]) == settings.stage3_steps
    assert np.isfinite(history["stage1_loss"]).all() and np.isfinite(history["stage3_loss"]).all()
    t_star = np.asarray(history["t_star"])
    assert t_star.shape == (8, 3) and t_star.min() >= 1 and t_star.max() <= 1000
    assert history["preset"] == "smoke"
    assert history["steps"] == {"stage1": settings.stage1_steps, "stage3": settings.stage3_steps,
                                "sampling": settings.sampling_steps}
    assert history["neighbour_order"] == "acquisition"  # no b-vectors were given
    # the smoke preset trains Stage III on the levels up to the matched ones (focused)
    assert 1 <= history["stage3_t_min"] <= t_star.min() <= t_star.max() <= history["stage3_t_max"] < 1000
    assert set(history["stage_seconds"]) == {"stage1", "stage2", "stage3", "inference"}
    assert all(seconds > 0 for seconds in history["stage_seconds"].values())
    assert smoke_run["recorder"].steps("stage1") == list(range(1, settings.stage1_steps + 1))
    assert all((smoke_run["folder"] / name).is_file() for name in STAGE_FILES)


@pytest.mark.parametrize("percentile", [100.0, 99.0])
def test_units_round_trip_exactly_through_the_engine(monkeypatch, percentile):
    """With an identity sampler the engine must return the input, whatever the volume scale."""
    from bids_denoise.denoise.ddm2 import pipeline

    seen = {}

    def identity(model, slices, *args, clip, **kwargs):
        seen["clip"] = clip
        return slices.clamp(*clip)

    monkeypatch.setattr(pipeline, "denoise_slices", identity)
    data, _ = _phantom((10, 9, 2, 5), seed=2)
    data[0, 0, 0, 0] = -15.0
    data[1, 1, 1, 1] = 5 * data.max()  # a bright outlier lies far above a 99th-percentile scale
    settings = resolve_settings("smoke", stage1_steps=1, stage3_steps=1, scale_percentile=percentile)
    result = ddm2_denoise(data, settings=settings, device="cpu", progress=False)
    scale = data.reshape(-1, 5).max(0)
    np.testing.assert_allclose(result.denoised, data, rtol=0, atol=4 * np.finfo(np.float32).eps * scale.max())
    assert seen["clip"][0] < -1 and (seen["clip"][1] > 1) == (percentile < 100)


def test_stage1_output_and_direction_aware_inputs(tmp_path):
    data, _ = _phantom((12, 10, 2, 6), seed=5)
    bvecs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0], [0, 1, 0.1], [0.1, 0, 1]], float).T
    kwargs = dict(preset="smoke", stage1_steps=3, stage3_steps=2, device="cpu", progress=False, n_neighbours=1,
                  return_stage1=True, return_model=True)
    by_direction = ddm2_denoise(data, bvecs=bvecs, **kwargs)
    assert by_direction.history["neighbour_order"] == "direction"
    assert by_direction.model_state["neighbours"].flatten().tolist() == [3, 4, 5, 0, 1, 2]
    assert by_direction.stage1.shape == data.shape and np.isfinite(by_direction.stage1).all()
    assert not np.allclose(by_direction.stage1, by_direction.denoised)
    with pytest.warns(UserWarning, match="acquisition order"):
        fallback = ddm2_denoise(data, **kwargs)
    assert fallback.history["neighbour_order"] == "acquisition"
    assert fallback.model_state["neighbours"].flatten().tolist() == [1, 2, 3, 4, 5, 0]
    paper_order = ddm2_denoise(data, bvecs=bvecs, neighbour_order="acquisition", **kwargs)
    assert paper_order.model_state["neighbours"].flatten().tolist() == [1, 2, 3, 4, 5, 0]
    with pytest.raises(ValueError, match="b-vectors"):
        ddm2_denoise(data, bvecs=bvecs[:, :5], **kwargs)


def test_a_rerun_skips_every_finished_stage(smoke_run):
    folder = smoke_run["folder"]
    mtimes = {name: (folder / name).stat().st_mtime_ns for name in STAGE_FILES}
    recorder = Recorder()
    again = ddm2_denoise(smoke_run["data"], np.full(8, 1000.0), preset="smoke", device="cpu",
                         checkpoint_dir=folder, progress=False, callback=recorder)
    assert recorder.calls == []  # no training step, no inference
    assert again.skipped_stages == ["stage1", "stage2", "stage3", "inference"]
    assert {name: (folder / name).stat().st_mtime_ns for name in STAGE_FILES} == mtimes
    np.testing.assert_array_equal(again.denoised, smoke_run["result"].denoised)
    assert again.history == smoke_run["result"].history


def test_an_interrupted_stage_resumes_from_its_checkpoint_with_the_same_result(smoke_run, tmp_path):
    data, folder = smoke_run["data"], tmp_path / "b1000"
    settings = resolve_settings("smoke")
    assert settings.checkpoint_every == 10
    first = Recorder(stop_at=("stage1", 15))
    with pytest.raises(KeyboardInterrupt):
        ddm2_denoise(data, preset="smoke", device="cpu", checkpoint_dir=folder, progress=False, callback=first)
    assert (folder / "stage1.pt").is_file() and not (folder / "stage2.pt").exists()
    second = Recorder(stop_at=("stage3", 25))
    with pytest.raises(KeyboardInterrupt):
        ddm2_denoise(data, preset="smoke", device="cpu", checkpoint_dir=folder, progress=False, callback=second)
    assert second.steps("stage1")[0] == 11  # resumed after the checkpoint of step 10
    assert second.steps("stage1")[-1] == settings.stage1_steps
    third = Recorder()
    result = ddm2_denoise(data, preset="smoke", device="cpu", checkpoint_dir=folder, progress=False, callback=third)
    assert third.steps("stage1") == []  # finished: skipped
    assert third.steps("stage3")[0] == 21 and third.steps("stage3")[-1] == settings.stage3_steps
    assert result.skipped_stages == ["stage1", "stage2"]
    # same batches after a resume: identical to the uninterrupted run, losses included
    np.testing.assert_array_equal(result.denoised, smoke_run["result"].denoised)
    assert result.history["stage1_loss"] == smoke_run["result"].history["stage1_loss"]
    assert result.history["stage3_loss"] == smoke_run["result"].history["stage3_loss"]


def test_changed_settings_redo_only_the_stages_they_affect(smoke_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(smoke_run["folder"], folder)
    recorder = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ddm2_denoise(smoke_run["data"], preset="smoke", stage3_steps=12, device="cpu",
                              checkpoint_dir=folder, progress=False, callback=recorder)
    assert recorder.steps("stage1") == [] and recorder.steps("stage3") == list(range(1, 13))
    assert result.skipped_stages == ["stage1", "stage2"]
    assert len(result.history["stage3_loss"]) == 12
    other = Recorder()
    ddm2_denoise(smoke_run["data"] + 1, preset="smoke", stage1_steps=3, stage3_steps=2, device="cpu",
                 checkpoint_dir=folder, progress=False, callback=other)
    assert other.steps("stage1") == [1, 2, 3]  # other data: nothing reused


@pytest.mark.filterwarnings("ignore:DDM2. the group has only")
def test_b0s_are_denoised_with_patch2self_or_copied(tmp_path):
    data, _ = _phantom((12, 10, 2, 7), seed=3)
    bvals = np.array([0, 1000, 1000, 5, 1000, 1000, 0], float)
    kwargs = dict(preset="smoke", stage1_steps=2, stage3_steps=2, sampling_steps=1, device="cpu", progress=False)
    with_p2s = ddm2_denoise(data, bvals, **kwargs)
    b0 = [0, 3, 6]
    np.testing.assert_allclose(with_p2s.denoised[..., b0], patch2self(data[..., b0], np.zeros(3), progress=False),
                               rtol=1e-5, atol=1e-3)
    assert with_p2s.n_denoised == 7
    copied = ddm2_denoise(data, bvals, b0_denoising=False, **kwargs)
    np.testing.assert_array_equal(copied.denoised[..., b0], data[..., b0])
    assert copied.n_denoised == 4
    np.testing.assert_array_equal(copied.denoised[..., [1, 2, 4, 5]], with_p2s.denoised[..., [1, 2, 4, 5]])
    assert np.asarray(copied.history["t_star"]).shape == (4, 2)


@pytest.mark.filterwarnings("ignore:DDM2. the group has only")
def test_small_groups_are_handled(tmp_path):
    data, _ = _phantom((8, 8, 2, 3), seed=1)
    kwargs = dict(preset="smoke", stage1_steps=2, stage3_steps=2, sampling_steps=1, device="cpu", progress=False)
    with pytest.warns(UserWarning, match="only 3 volumes"):
        result = ddm2_denoise(data, **kwargs)
    assert result.n_denoised == 3 and result.settings.n_neighbours == 2
    with pytest.warns(UserWarning, match="using 1"):
        result = ddm2_denoise(data[..., :2], **kwargs)
    assert result.settings.n_neighbours == 1 and np.isfinite(result.denoised).all()
    with pytest.warns(UserWarning, match="copied through"):
        single = ddm2_denoise(data[..., :1], **kwargs)
    np.testing.assert_array_equal(single.denoised, data[..., :1])
    assert single.n_denoised == 0 and not single.noise.any()
    only_b0 = ddm2_denoise(data, np.zeros(3), **kwargs)
    assert only_b0.history["stage1_loss"] == [] and only_b0.n_denoised == 3


@pytest.mark.parametrize(("data", "bvals", "message"), [
    (np.zeros((4, 4, 4)), None, "4D"),
    (np.full((4, 4, 1, 3), np.nan, np.float32), None, "NaN"),
    (np.zeros((4, 4, 1, 3)), [0, 1000], "b-values"),
])
def test_bad_input_is_refused(data, bvals, message):
    with pytest.raises(ValueError, match=message):
        ddm2_denoise(data, bvals, preset="smoke", device="cpu", progress=False)


# ----------------------------------------------------------------------------- sampling maths
def test_reverse_step_is_the_ddpm_posterior_for_eta_one():
    schedule = NoiseSchedule()
    t = torch.tensor([1, 40, 300, 700])
    s = t - 1
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((4, 1, 5, 5), generator=generator)
    x0 = torch.rand((4, 1, 5, 5), generator=generator) * 2 - 1
    beta = schedule.betas[t - 1].view(-1, 1, 1, 1)
    ab_t, ab_s = schedule.alpha_bar[t].view(-1, 1, 1, 1), schedule.alpha_bar[s].view(-1, 1, 1, 1)
    posterior_mean = (ab_s.sqrt() * beta / (1 - ab_t)) * x0 + ((1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)) * x
    posterior_std = ((1 - ab_s) / (1 - ab_t) * beta).sqrt()
    noise = torch.randn((4, 1, 5, 5), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = reverse_step(x, x0, t, s, schedule, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(step.double(), posterior_mean + posterior_std * noise, rtol=1e-5, atol=1e-5)
    # the last step (s = 0) returns x0, with or without noise
    torch.testing.assert_close(reverse_step(x, x0, t, torch.zeros_like(t), schedule, 1.0, generator), x0)


class _FixedPrediction:
    """A stand-in network that predicts the same clean slice whatever its input."""

    def __init__(self, clean):
        self.clean = clean

    def eval(self):
        return self

    def __call__(self, x, level):
        return self.clean.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize(("steps", "eta", "flips"), [(0, 1.0, 1), (4, 0.0, 1), (0, 0.0, 4)])
def test_sampler_with_a_perfect_model_returns_the_clean_slices(steps, eta, flips):
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand((1, 1, 6, 6), generator=generator) * 1.6 - 0.8
    # with flips the prediction of each flipped copy is unflipped before averaging, so a fixed
    # prediction only survives unchanged when it is flip-symmetric
    clean = (clean + clean.flip(-1) + clean.flip(-2) + clean.flip((-1, -2))) / 4
    noisy = clean[:, 0] + 0.05 * torch.randn((5, 6, 6), generator=generator)
    t_star = torch.tensor([3, 50, 1, 200, 17])
    out = denoise_slices(_FixedPrediction(clean), noisy, t_star, NoiseSchedule(), sampling_steps=steps, eta=eta,
                         flips=flips, batch_size=2, progress=False)
    torch.testing.assert_close(out, clean[:, 0].expand(5, -1, -1), rtol=0, atol=1e-5)


def test_batching_does_not_change_deterministic_sampling():
    torch.manual_seed(0)
    net = NetworkSettings(width=8, channel_mults=(1, 2), res_blocks=1, attention_levels=(1,), norm_groups=4)
    model = UNet(1, 1, network=net, level_input=True).eval()
    slices = torch.rand((7, 8, 8)) * 2 - 1
    t_star = torch.tensor([5, 1, 9, 2, 30, 3, 3])
    schedule = NoiseSchedule()
    kwargs = dict(sampling_steps=4, eta=0.0, flips=2, progress=False)
    together = denoise_slices(model, slices, t_star, schedule, batch_size=7, **kwargs)
    one_by_one = denoise_slices(model, slices, t_star, schedule, batch_size=1, **kwargs)
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)
    assert torch.all(together.abs() <= 1)


def test_fixed_shape_path_for_compiled_networks_gives_the_same_result(monkeypatch):
    """With torch.compile (CUDA) finished slices stay in the batch; the result must not change."""
    from bids_denoise.denoise.ddm2 import stages

    torch.manual_seed(1)
    net = NetworkSettings(width=8, channel_mults=(1, 2), res_blocks=1, attention_levels=(1,), norm_groups=4)
    model = UNet(1, 1, network=net, level_input=True).eval()
    slices = torch.rand((5, 8, 8)) * 2 - 1
    t_star = torch.tensor([7, 1, 3, 12, 2])
    kwargs = dict(sampling_steps=0, eta=0.0, flips=1, batch_size=5, progress=False)
    eager = denoise_slices(model, slices, t_star, NoiseSchedule(), **kwargs)
    monkeypatch.setattr(stages.MaybeCompiled, "is_compiled", property(lambda self: True))
    fixed = denoise_slices(model, slices, t_star, NoiseSchedule(), **kwargs)
    torch.testing.assert_close(fixed, eager, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_on_the_cpu():
    data, _ = _phantom((8, 8, 2, 5), seed=4)
    result = ddm2_denoise(data, preset="smoke", precision="bf16", stage1_steps=2, stage3_steps=2, sampling_steps=1,
                          device="cpu", progress=False)
    assert result.settings.precision == "bf16" and np.isfinite(result.denoised).all()


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_smoke_pipeline_on_cuda(tmp_path, precision):
    data, _ = _phantom()
    result = ddm2_denoise(data, preset="smoke", precision=precision, device="cuda", checkpoint_dir=tmp_path,
                          progress=False)
    assert result.device.startswith("cuda") and np.isfinite(result.denoised).all()
    assert result.denoised.mean() == pytest.approx(data.mean(), rel=0.15)
    again = ddm2_denoise(data, preset="smoke", precision=precision, device="cuda", checkpoint_dir=tmp_path,
                         progress=False)
    assert again.skipped_stages == ["stage1", "stage2", "stage3", "inference"]
