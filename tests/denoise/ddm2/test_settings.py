"""DDM2 presets, overrides, the calibrated cost model, the CPU guard and the sidecar parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bids_denoise import config
from bids_denoise.denoise.ddm2 import settings as ddm2_settings
from bids_denoise.denoise.ddm2.cost import (
    Calibration,
    calibrate,
    estimate_runtime,
    estimate_runtime_seconds,
    estimate_series_seconds,
    format_duration,
)
from bids_denoise.denoise.ddm2.settings import (
    DDM2Settings,
    preset_settings,
    resolve_settings,
    sidecar_parameters,
)

HOUR = 3600.0
DAY = 24 * HOUR


def test_presets_hold_the_documented_counts():
    paper = preset_settings("paper")
    assert (paper.stage1_steps, paper.stage3_steps, paper.batch_size) == (10_000, 100_000, 32)
    assert (paper.sampling_steps, paper.flips, paper.eta, paper.precision) == (0, 4, 1.0, "fp32")
    assert paper.n_neighbours == 2 and paper.learning_rate == 1e-4 and not paper.compile
    assert paper.network.width == 32 and paper.network.channel_mults == (1, 2, 4, 8, 8)
    assert paper.network.attention_levels == (3,) and paper.network.res_blocks == 2
    assert (paper.n_timesteps, paper.beta_start, paper.beta_end) == (1000, 5e-5, 1e-2)
    # the paper's choices: inputs in acquisition order, the maximum as scale, the whole schedule
    assert (paper.neighbour_order, paper.scale_percentile, paper.stage3_range) == ("acquisition", 100.0, "full")
    assert paper.stage3_min_learning_rate is None and not paper.direction_input
    fast = preset_settings("fast")
    assert (fast.stage1_steps, fast.stage3_steps, fast.sampling_steps, fast.flips) == (3000, 20_000, 1, 4)
    assert fast.precision == "bf16" and fast.compile and fast.eta == 0.0
    assert fast.network == paper.network and fast.n_neighbours == 4
    cpu = preset_settings("cpu")
    assert (cpu.stage1_steps, cpu.stage3_steps, cpu.batch_size, cpu.sampling_steps, cpu.flips) == (1200, 2500, 8, 1, 4)
    assert cpu.network.width == 16 and cpu.network.channel_mults == (1, 2, 2) and cpu.precision == "fp32"
    assert not cpu.compile and cpu.learning_rate == 1e-3 and cpu.stage3_min_learning_rate == 1e-5
    smoke = preset_settings("smoke")
    assert smoke.stage1_steps < 100 and smoke.stage3_steps < 100 and smoke.network.width <= 8
    for preset in (fast, cpu, smoke):  # the changes of issue #14, in every preset but paper
        assert (preset.neighbour_order, preset.stage3_range, preset.scale_percentile) == ("direction", "focused", 99.9)


def test_overrides_replace_only_what_is_given():
    resolved = resolve_settings("fast", stage1_steps=7, sampling_steps=0, flips=None, precision="fp32")
    assert resolved.stage1_steps == 7 and resolved.sampling_steps == 0 and resolved.precision == "fp32"
    assert resolved.flips == 4 and resolved.stage3_steps == 20_000 and resolved.preset == "fast"
    resolved = resolve_settings("cpu", n_neighbours=2, neighbour_order="acquisition", stage3_range="full")
    assert (resolved.n_neighbours, resolved.neighbour_order, resolved.stage3_range) == (2, "acquisition", "full")
    assert resolved.stage1_steps == 1200 and resolved.preset == "cpu"
    with pytest.raises(ValueError, match="unknown DDM2 setting"):
        resolve_settings("paper", stage2_steps=3)
    for bad in (dict(flips=3), dict(stage1_steps=0), dict(sampling_steps=-1), dict(precision="fp16"),
                dict(batch_size=2.5), dict(eta=2.0), dict(neighbour_order="random"), dict(stage3_range="half"),
                dict(n_neighbours=0)):
        with pytest.raises(ValueError):
            resolve_settings("paper", **bad)
    with pytest.raises(ValueError, match="preset"):
        DDM2Settings(preset="slow")


def test_the_registry_options_are_engine_settings():
    """Every DDM2 option of the registry that overrides a preset names a DDM2Settings field, and
    the config offers exactly the engine's choices."""
    from bids_denoise.denoise.methods import ddm2 as registry

    fields = {f.name for f in dataclasses.fields(DDM2Settings)}
    assert set(registry.OVERRIDES) <= fields
    assert set(ddm2_settings.COUNT_OVERRIDES) <= set(registry.OVERRIDES)
    options = {option.name: option for option in registry.OPTIONS}
    assert options["ddm2_preset"].choices == ddm2_settings.PRESETS
    assert options["ddm2_precision"].choices == ddm2_settings.PRECISIONS
    assert options["ddm2_flips"].choices == ddm2_settings.FLIP_COUNTS
    for name in ("ddm2_preset", "ddm2_flips", "seed"):
        assert name in config.workflow._fields()


def test_cost_model_matches_the_notes():
    # shared/reference/ddm2.md section 5: 96x96x60 x 64 DWIs (GPU rows: measured on an H100)
    shape = (96, 96, 60, 64)
    paper_gpu = estimate_runtime(shape, "paper", device="cuda")
    assert 1.5 * HOUR < paper_gpu.total < 4 * HOUR
    assert 1.2 * HOUR < paper_gpu.stage3 < 2.5 * HOUR
    assert 10 * 60 < paper_gpu.inference < 40 * 60
    assert 15 * 60 < estimate_runtime_seconds(shape, "fast", device="cuda") < 45 * 60
    # CPU rows of the uncalibrated table (2 threads): the paper network trains at 60 GFLOP/s
    assert 20 * DAY < estimate_runtime_seconds(shape, "paper", device="cpu") < 60 * DAY
    assert 2 * DAY < estimate_runtime_seconds(shape, "fast", device="cpu") < 10 * DAY
    assert estimate_runtime_seconds((16, 16, 3, 8), "smoke", device="cpu") < 60
    # the cpu preset fits the acceptance shell (73x100x5, 60 directions) in 30 minutes on 2 cores
    assert 5 * 60 < estimate_runtime_seconds((73, 100, 5, 60), "cpu", device="cpu", n_threads=2) < 30 * 60
    # more threads, fewer steps: faster
    assert estimate_runtime_seconds(shape, "paper", device="cpu", n_threads=8) < \
        estimate_runtime_seconds(shape, "paper", device="cpu")
    assert estimate_runtime_seconds(shape, "paper", device="cuda", stage3_steps=1000) < paper_gpu.total / 4


def test_series_estimate_sums_the_shells_and_ignores_b0s():
    bvals = np.array([0] * 4 + [1000] * 30 + [2000] * 60, float)
    shape = (40, 40, 10, bvals.size)
    total = estimate_series_seconds(shape, bvals, "fast", device="cuda")
    parts = [estimate_runtime_seconds((40, 40, 10, n), "fast", device="cuda") for n in (30, 60)]
    assert total == pytest.approx(sum(parts))
    pooled = estimate_series_seconds(shape, bvals, "fast", device="cuda", grouping="all")
    assert pooled == pytest.approx(estimate_runtime_seconds((40, 40, 10, 90), "fast", device="cuda"))


def test_durations_are_human_readable():
    assert format_duration(42) == "42 s"
    assert format_duration(600) == "10 min"
    assert format_duration(3 * HOUR) == "3.0 h"
    assert format_duration(40 * DAY) == "40.0 days"


def test_sidecar_parameters_record_every_count():
    parameters = sidecar_parameters(resolve_settings("paper", stage1_steps=500), seed=3)
    assert parameters["Preset"] == "paper" and parameters["Stage1Steps"] == 500
    assert parameters["Stage3Steps"] == 100_000 and parameters["SamplingChain"] == "full"
    assert parameters["Flips"] == 4 and parameters["Seed"] == 3 and parameters["NeighbourVolumes"] == 2
    assert parameters["NoiseSchedule"]["Type"] == "reverse warm-up"
    assert parameters["Network"]["ChannelMultipliers"] == [1, 2, 4, 8, 8]
    cpu = sidecar_parameters(resolve_settings("cpu"), seed=0)
    assert (cpu["NeighbourOrder"], cpu["Stage3Range"], cpu["ScalePercentile"]) == ("direction", "focused", 99.9)
    assert cpu["SamplingChain"] == "x0 from t*" and cpu["NeighbourVolumes"] == 4


def test_a_calibration_replaces_the_table():
    from bids_denoise.denoise.ddm2.unet import forward_flops

    smoke = resolve_settings("smoke")
    measured = calibrate(smoke, 16, 16, device="cpu", n_threads=1, target_seconds=0.2)
    assert measured.train_rate > 0 and measured.infer_rate > 0 and measured.n_threads == 1
    assert measured.train_batch <= smoke.batch_size and measured.infer_batch <= smoke.inference_batch_size
    assert estimate_runtime((16, 16, 3, 8), settings=smoke, calibration=measured).total > 0
    # the estimate is the FLOP count over the measured rates, without the table's per-call overhead
    slow = Calibration("cpu", 2, train_rate=1e9, infer_rate=2e9, train_batch=8, infer_batch=32, seconds=0.0)
    fast = dataclasses.replace(slow, train_rate=2e9, infer_rate=4e9)
    shape = (73, 100, 5, 60)
    at_slow = estimate_runtime(shape, "cpu", calibration=slow)
    assert estimate_runtime(shape, "cpu", calibration=fast).total == pytest.approx(at_slow.total / 2)
    settings = resolve_settings("cpu")
    flops = forward_flops(settings.network, 73, 100, in_channels=1, level_input=True)
    assert at_slow.stage3 == pytest.approx(settings.stage3_steps * settings.batch_size * 3 * flops / 1e9)
    assert at_slow.inference == pytest.approx(5 * 60 * 1 * settings.flips * flops / 2e9)


def test_the_matched_stage3_range_needs_the_one_step_sampler():
    assert resolve_settings("cpu", stage3_range="matched", sampling_steps=1).stage3_range == "matched"
    with pytest.raises(ValueError, match="matched.*sampling_steps 1"):
        resolve_settings("cpu", stage3_range="matched", sampling_steps=10)
    assert resolve_settings("paper", stage3_range="focused").sampling_steps == 0  # a chain may focus
