"""The identities of METHODS 10.1 as properties, over random schedules and timesteps, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_losses.diffusion import (
    DiffusionSchedule,
    add_noise,
    convert_prediction,
    edm_denoise,
    edm_preconditioning,
    edm_target,
    edm_weight,
    epsilon_from_v,
    epsilon_from_x0,
    training_target,
    velocity,
    x0_from_epsilon,
    x0_from_v,
)

TYPES = ("epsilon", "v_prediction", "sample")


def random_case(seed: int, steps: int, n: int = 4):
    """A random VP schedule (betas in (1e-4, 0.3)), timesteps, clean samples and noise."""
    g = torch.Generator().manual_seed(seed)
    betas = 1e-4 + 0.3 * torch.rand(steps, generator=g, dtype=torch.float64)
    acp = torch.cumprod(1.0 - betas, 0).clamp_min(1e-6)
    t = torch.randint(0, steps, (n,), generator=g)
    a = acp[t]
    alpha, sigma = a.sqrt(), (1.0 - a).sqrt()
    x0 = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    guess = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    return acp, t, alpha, sigma, x0, eps, guess


def sq(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).square().sum(1)


CASES = dict(seed=st.integers(0, 2**31 - 1), steps=st.integers(2, 200))


@settings(max_examples=40, deadline=None)
@given(**CASES)
def test_epsilon_error_is_snr_times_x0_error(seed, steps):
    acp, t, alpha, sigma, x0, eps, eps_hat = random_case(seed, steps)
    snr = acp[t] / (1 - acp[t])
    x_t = add_noise(x0, eps, alpha, sigma)
    x0_hat = x0_from_epsilon(x_t, eps_hat, alpha, sigma)
    torch.testing.assert_close(sq(eps_hat - eps), snr * sq(x0_hat - x0), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(**CASES)
def test_v_error_is_snr_plus_one_times_x0_error(seed, steps):
    acp, t, alpha, sigma, x0, eps, v_hat = random_case(seed, steps)
    snr = acp[t] / (1 - acp[t])
    x_t = add_noise(x0, eps, alpha, sigma)
    v = velocity(x0, eps, alpha, sigma)
    x0_hat = x0_from_v(x_t, v_hat, alpha, sigma)
    torch.testing.assert_close(sq(v_hat - v), (snr + 1) * sq(x0_hat - x0), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(**CASES)
def test_v_identities_recover_x0_and_epsilon(seed, steps):
    _, _, alpha, sigma, x0, eps, _ = random_case(seed, steps)
    x_t = add_noise(x0, eps, alpha, sigma)
    v = velocity(x0, eps, alpha, sigma)
    torch.testing.assert_close(x0_from_v(x_t, v, alpha, sigma), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(epsilon_from_v(x_t, v, alpha, sigma), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(epsilon_from_x0(x_t, x0, alpha, sigma), eps, rtol=1e-8, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(**CASES)
def test_every_conversion_maps_true_targets_and_round_trips(seed, steps):
    _, _, alpha, sigma, x0, eps, guess = random_case(seed, steps)
    x_t = add_noise(x0, eps, alpha, sigma)
    truth = {k: training_target(k, x0, eps, alpha, sigma) for k in TYPES}
    for a, b in itertools.permutations(TYPES, 2):
        mapped = convert_prediction(truth[a], a, b, x_t, alpha, sigma)
        torch.testing.assert_close(mapped, truth[b], rtol=1e-7, atol=1e-7)
        there = convert_prediction(guess, a, b, x_t, alpha, sigma)
        back = convert_prediction(there, b, a, x_t, alpha, sigma)
        torch.testing.assert_close(back, guess, rtol=1e-7, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(**CASES)
def test_schedule_snr_alpha_sigma_match_the_alphas_cumprod_formulas(seed, steps):
    acp, t, alpha, sigma, *_ = random_case(seed, steps)
    schedule = DiffusionSchedule.from_alphas_cumprod(acp).double()
    a, s = schedule.alpha_sigma(t)
    # the table is stored in float32: relative precision ~1e-7 on λ
    torch.testing.assert_close(a, alpha, rtol=1e-6, atol=0)
    torch.testing.assert_close(s, sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(schedule.snr(t), acp[t] / (1 - acp[t]), rtol=1e-5, atol=0)
    torch.testing.assert_close(schedule.snr(t), (a / s) ** 2, rtol=1e-10, atol=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_sigma=st.floats(-6, 5), sigma_data=st.floats(0.1, 2))
def test_edm_safe_target_equals_the_preconditioned_objective(seed, log_sigma, sigma_data):
    """λ(σ)‖D − x₀‖² = ‖F − F*‖² and F* = (x₀ − c_skip x)/c_out (Karras et al. 2022, eq. 8)."""
    g = torch.Generator().manual_seed(seed)
    x0, n, f = torch.randn(3, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.full((2,), 10.0**log_sigma, dtype=torch.float64)
    x = x0 + sigma[:, None, None, None] * n
    c_skip, c_out, _, _ = edm_preconditioning(sigma[:, None, None, None], sigma_data)
    target = edm_target(x0, n, sigma, sigma_data)
    torch.testing.assert_close(target, (x0 - c_skip * x) / c_out, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(edm_denoise(target, x, sigma, sigma_data), x0, rtol=1e-9, atol=1e-9)
    weighted = edm_weight(sigma, sigma_data) * sq(edm_denoise(f, x, sigma, sigma_data) - x0)
    torch.testing.assert_close(weighted, sq(f - target), rtol=1e-8, atol=1e-10)


def test_edm_target_is_finite_where_the_textbook_form_is_not():
    x0 = torch.ones(1, 4, dtype=torch.float64)
    n = torch.full((1, 4), 0.5, dtype=torch.float64)
    sigma = torch.zeros(1, dtype=torch.float64)
    _, c_out, _, _ = edm_preconditioning(sigma, 0.5)
    assert c_out.item() == 0.0  # the textbook target divides by it
    torch.testing.assert_close(edm_target(x0, n, sigma, 0.5), -n)  # limit σ → 0: −n


def test_conversions_name_unknown_types():
    x = torch.zeros(2, 3)
    one = torch.ones(2)
    with pytest.raises(ValueError, match="to_type"):
        convert_prediction(x, "epsilon", "noise", x, one, one)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target("flow", x, x, one, one)
