"""DDM2 noise schedule, Stage-II state matching and the per-slice reverse steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_denoise.denoise.ddm2.schedule import (
    NoiseSchedule,
    focused_max_step,
    match_states,
    matched_min_step,
    reverse_warmup_betas,
    timestep_pairs,
)


def test_reverse_warmup_values_at_key_steps():
    betas = reverse_warmup_betas()
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert betas[0] == pytest.approx(5e-5, abs=0)
    assert betas[299] == pytest.approx(5e-5, abs=0)
    assert np.all(betas[:300] == 5e-5)
    assert betas[999] == pytest.approx(1e-2, rel=1e-12)
    # linear from 5e-5 (step 300) to 1e-2 (step 999)
    ramp = betas[300:]
    np.testing.assert_allclose(np.diff(ramp), (1e-2 - 5e-5) / 699, rtol=1e-9)
    assert ramp[0] == pytest.approx(5e-5)


def test_alpha_bar_is_monotone_and_matches_the_notes():
    schedule = NoiseSchedule()
    alpha_bar = schedule.alpha_bar.numpy()
    assert alpha_bar.shape == (1001,) and alpha_bar[0] == 1.0
    assert np.all(np.diff(alpha_bar) < 0)
    noise = schedule.noise.numpy()
    # sqrt(1 - alpha_bar_t) from shared/reference/ddm2.md section 1.5
    for t, expected in {10: 0.022, 50: 0.050, 100: 0.071, 200: 0.100, 300: 0.122, 400: 0.294,
                        500: 0.515, 700: 0.831, 1000: 0.985}.items():
        assert noise[t] == pytest.approx(expected, abs=1.5e-3), t
    assert schedule.signal[1000].item() == pytest.approx(0.17, abs=0.01)


def test_sampled_levels_lie_between_neighbouring_steps():
    schedule = NoiseSchedule()
    t = torch.tensor([1, 10, 300, 1000])
    for u in (0.0, 0.5, 0.999):
        gamma = schedule.sample_levels(t, torch.full((4,), u)).double()
        assert torch.all(gamma >= schedule.signal[t].float().double() - 1e-7)
        assert torch.all(gamma <= schedule.signal[t - 1].float().double() + 1e-7)
    assert schedule.sample_levels(t, torch.zeros(4)).dtype == torch.float32


@pytest.mark.parametrize("exact", [True, False])
def test_state_matching_recovers_the_step_of_known_noise(exact):
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    steps = [1, 5, 20, 50, 120, 200, 299, 330, 400, 450, 600, 800]
    size = 64 if exact else 192
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                            torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    clean = (0.8 * torch.exp(-3 * (xx**2 + yy**2)) - 0.6).expand(len(steps), size, size)
    noise = torch.randn((len(steps), size, size), generator=generator, dtype=torch.float64)
    if exact:  # residual std exactly sqrt(1 - alpha_bar_t)
        noise = noise - noise.mean((1, 2), keepdim=True)
        noise = noise / noise.pow(2).mean((1, 2), keepdim=True).sqrt()
    t = torch.tensor(steps)
    noisy = schedule.signal[t].view(-1, 1, 1) * clean + schedule.noise[t].view(-1, 1, 1) * noise
    found = match_states(noisy.float(), clean.float(), schedule)
    assert found.dtype == torch.long and found.shape == (len(steps),)
    if exact:
        tolerance = torch.full_like(t, 2)
    else:  # in the flat part the noise level changes by < 0.2 % per step, less than the
        # sampling error of the std of a 192x192 slice (0.4 %), so the random case is looser
        tolerance = torch.where(t < 350, 6, 4)
    assert torch.all((found - t).abs() <= tolerance), list(zip(steps, found.tolist()))


def test_state_matching_is_chunked_consistently_and_clips_to_one():
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(1)
    estimate = torch.rand((10, 16, 16), generator=generator)
    noisy = estimate + 0.05 * torch.randn((10, 16, 16), generator=generator)
    noisy[0] = estimate[0]  # no noise at all
    whole = match_states(noisy, estimate, schedule)
    chunked = match_states(noisy, estimate, schedule, chunk=3)
    assert torch.equal(whole, chunked)
    assert whole[0] == 1 and torch.all(whole >= 1) and torch.all(whole <= 1000)


def test_timestep_pairs_full_and_strided():
    t_star = torch.tensor([5, 1, 30])
    current, following, length = timestep_pairs(t_star, 0)
    assert length.tolist() == [5, 1, 30]
    assert current[0, :5].tolist() == [5, 4, 3, 2, 1] and following[0, :5].tolist() == [4, 3, 2, 1, 0]
    assert current[1, 0] == 1 and following[1, 0] == 0
    current, following, length = timestep_pairs(t_star, 4)
    assert length.tolist() == [4, 1, 4]
    for i in range(3):
        chain = current[i, :length[i]].tolist() + [int(following[i, length[i] - 1])]
        assert chain[0] == t_star[i] and chain[-1] == 0
        assert all(a > b for a, b in zip(chain, chain[1:]))
        assert torch.equal(current[i, 1:length[i]], following[i, :length[i] - 1])
    assert current[2, :4].tolist() == [30, 22, 15, 8]


@pytest.mark.parametrize("t_star", [5, 120, 342, 700])
def test_the_matched_band_brackets_the_matched_noise_level(t_star):
    schedule = NoiseSchedule(reverse_warmup_betas())
    noise = schedule.noise.double()
    low, high = matched_min_step(t_star, schedule, 0.1), focused_max_step(t_star, schedule, 0.1)
    assert 1 <= low <= t_star <= high <= 1000
    # the band is as narrow as the margin allows: 0.9x to 1.1x the level of t*
    assert noise[low] <= 0.9 * noise[t_star] or low == 1
    assert noise[low + 1] > 0.9 * noise[t_star]
    assert noise[high] >= 1.1 * noise[t_star] and noise[high - 1] < 1.1 * noise[t_star]
    assert matched_min_step(t_star, schedule, 0.0) == t_star  # no margin: the level itself
