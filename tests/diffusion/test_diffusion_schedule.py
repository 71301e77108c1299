"""Schedules read from diffusers schedulers and tensors; lookups, errors, state."""

from __future__ import annotations

import pytest
import torch

from lightning_losses.diffusion import (
    DiffusionSchedule,
    ddpm_alphas_cumprod,
    snr_from_alphas_cumprod,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
)

T = torch.arange(1000)


def test_default_schedule_is_diffusers_ddpm_default_bit_for_bit():
    assert torch.equal(ddpm_alphas_cumprod(), DDPMScheduler().alphas_cumprod)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(),
        DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        DDIMScheduler(beta_schedule="scaled_linear"),
        EulerDiscreteScheduler(),
        DPMSolverMultistepScheduler(),
    ],
    ids=["ddpm", "ddpm-cosine", "ddim-scaled", "euler", "dpmsolver"],
)
def test_variance_preserving_schedules_read_alphas_cumprod(scheduler):
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    assert schedule.parameterization == "vp" and schedule.num_timesteps == 1000
    acp = scheduler.alphas_cumprod.double()
    torch.testing.assert_close(schedule.alphas_cumprod(), acp, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(
        schedule.double().snr(T), snr_from_alphas_cumprod(acp), rtol=1e-6, atol=0
    )


def test_zero_terminal_snr_is_exactly_zero_without_nan():
    schedule = DiffusionSchedule.from_scheduler(DDPMScheduler(rescale_betas_zero_snr=True))
    last = torch.tensor([999])
    assert schedule.snr(last).item() == 0.0
    alpha, sigma = schedule.alpha_sigma(last)
    assert alpha.item() == 0.0 and sigma.item() == 1.0
    alpha, sigma = schedule.alpha_sigma(T)
    assert torch.isfinite(alpha).all() and torch.isfinite(sigma).all()


def test_edm_scheduler_gives_a_sigma_table_without_the_final_zero():
    scheduler = EDMEulerScheduler()
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    sigmas = scheduler.sigmas[:-1].double()
    assert scheduler.sigmas[-1] == 0 and schedule.parameterization == "ve"
    assert schedule.num_timesteps == len(sigmas)
    t = torch.arange(len(sigmas))
    torch.testing.assert_close(schedule.double().snr(t), sigmas**-2, rtol=1e-6, atol=0)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.equal(alpha, torch.ones_like(alpha))
    torch.testing.assert_close(sigma.double(), sigmas, rtol=1e-6, atol=0)


def test_continuous_sigma_schedule_takes_sigma_values():
    schedule = DiffusionSchedule.continuous_sigma()
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.snr(sigma), sigma**-2)
    with pytest.raises(TypeError, match=r"timesteps.*σ values"):
        schedule.snr(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps.*> 0"):
        schedule.snr(torch.tensor([1.0, -0.5]), validate_args=True)


@pytest.mark.parametrize("bad", [1000, -1, 5000])
@pytest.mark.parametrize("validate_args", [False, True])
def test_timesteps_outside_the_schedule_are_a_clear_error(bad, validate_args):
    schedule = DiffusionSchedule.ddpm()
    t = torch.tensor([0, 10, bad])
    with pytest.raises(ValueError, match=rf"timesteps.*\[0, 999\].*{bad}"):
        schedule.log_snr_at(t, validate_args=validate_args)


def test_timesteps_dtype_and_shape_errors():
    schedule = DiffusionSchedule.ddpm()
    with pytest.raises(TypeError, match=r"timesteps.*integer indices"):
        schedule.log_snr_at(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"timesteps.*\(N,\)"):
        schedule.log_snr_at(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="timesteps"):
        schedule.log_snr_at([1, 2])
    # int32 and uint8 indices work as int64 ones do
    torch.testing.assert_close(
        schedule.log_snr_at(torch.tensor([3, 7], dtype=torch.uint8)),
        schedule.log_snr_at(torch.tensor([3, 7])),
    )


def test_bad_tables_are_rejected():
    with pytest.raises(ValueError, match=r"alphas_cumprod.*\[0, 1\)"):
        DiffusionSchedule.from_alphas_cumprod(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"alphas_cumprod.*\[0, 1\)"):
        DiffusionSchedule.from_alphas_cumprod(torch.tensor([0.9, -0.1]))
    with pytest.raises(ValueError, match=r"sigmas.*> 0"):
        DiffusionSchedule.from_sigmas(torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        DiffusionSchedule.from_alphas_cumprod(torch.ones(2, 2) * 0.5)
    with pytest.raises(TypeError, match=r"scheduler.*alphas_cumprod.*sigmas"):
        DiffusionSchedule.from_scheduler(object())


def test_half_precision_casts_keep_the_table_in_float32():
    schedule = DiffusionSchedule.ddpm()
    reference = schedule.log_snr.clone()
    for cast in (torch.nn.Module.half, torch.nn.Module.bfloat16):
        cast(schedule)
        assert schedule.log_snr.dtype == torch.float32
        assert torch.equal(schedule.log_snr, reference)
    schedule.double()
    assert schedule.log_snr.dtype == torch.float64
    schedule.float()
    assert torch.equal(schedule.log_snr, reference)


def test_state_round_trip():
    a = DiffusionSchedule.from_scheduler(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    b = DiffusionSchedule.ddpm()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.log_snr, b.log_snr)
    assert list(a.state_dict()) == ["log_snr"]
