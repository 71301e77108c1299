"""Offset noise, input perturbation and timestep densities (SD3's against diffusers')."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.diffusion import (
    DiffusionSchedule,
    add_noise,
    offset_noise,
    perturb_noise,
    sample_edm_sigma,
    sample_noise_level,
    sample_timesteps,
)
from lightning_losses.losses.diffusion import DiffusionLoss
from lightning_losses.testing import no_host_sync

diffusers = pytest.importorskip("diffusers")
from diffusers.training_utils import compute_density_for_timestep_sampling  # noqa: E402


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_offset_noise_adds_one_value_per_sample_and_channel():
    noise = torch.randn(256, 4, 8, 8, generator=gen(1))
    shifted = offset_noise(noise, 0.1, generator=gen(2))
    offset = shifted - noise
    assert offset.shape == noise.shape
    per_channel = offset[:, :, :1, :1]
    torch.testing.assert_close(offset, per_channel.expand_as(offset))
    assert per_channel.std().item() == pytest.approx(0.1, rel=0.1)
    assert offset_noise(noise, 0.0) is noise
    with pytest.raises(ValueError, match=r"noise.*\(B, C"):
        offset_noise(torch.randn(5), 0.1)
    with pytest.raises(ValueError, match="strength"):
        offset_noise(noise, -0.1)


def test_input_perturbation_changes_x_t_but_not_the_target():
    """x_t is built from ε + g·ξ′; the loss's ε target is the unperturbed ε (Ning et al. 2023)."""
    loss = DiffusionLoss(reduction="none")
    x0 = torch.randn(512, 2, generator=gen(3))
    eps = torch.randn(512, 2, generator=gen(4))
    t = torch.full((512,), 500)
    perturbed = perturb_noise(eps, 0.1, generator=gen(5))
    assert ((perturbed - eps) / 0.1).std().item() == pytest.approx(1.0, rel=0.1)
    alpha, sigma = loss.schedule.alpha_sigma(t)
    x_t = loss.add_noise(x0, perturbed, t)
    torch.testing.assert_close(x_t, add_noise(x0, perturbed, alpha, sigma))
    assert not torch.allclose(x_t, loss.add_noise(x0, eps, t))
    assert torch.equal(loss.training_target(x0, eps, t), eps)
    assert perturb_noise(eps, 0.0) is eps


def test_uniform_timesteps_cover_the_schedule():
    t = sample_timesteps(20000, 1000, generator=gen(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    counts = torch.bincount(t // 100, minlength=10).double()
    assert (counts / 2000 - 1).abs().max() < 0.1


@pytest.mark.parametrize("density", ["logit_normal", "mode"])
def test_sd3_densities_equal_diffusers(density):
    ours = sample_noise_level(
        64, density, logit_mean=0.3, logit_std=1.2, mode_scale=1.29, generator=gen(7)
    )
    theirs = compute_density_for_timestep_sampling(
        density, 64, logit_mean=0.3, logit_std=1.2, mode_scale=1.29, generator=gen(7)
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    t = sample_timesteps(64, 1000, density, logit_mean=0.3, logit_std=1.2, generator=gen(7))
    assert torch.equal(t, (theirs * 1000).long())  # diffusers' SD3 scripts' index map


def test_logit_normal_timesteps_follow_the_density():
    u = sample_noise_level(20000, "logit_normal", logit_mean=0.5, logit_std=0.8, generator=gen(2))
    z = torch.logit(u.double())
    assert z.mean().item() == pytest.approx(0.5, abs=0.03)
    assert z.std().item() == pytest.approx(0.8, rel=0.03)


def test_saturated_noise_levels_map_to_the_last_index():
    t = sample_timesteps(1000, 10, "logit_normal", logit_mean=40.0, generator=gen(0))
    assert t.max().item() == 9


def test_edm_sigma_is_log_normal():
    sigma = sample_edm_sigma(20000, generator=gen(3))
    log_sigma = sigma.double().log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, rel=0.03)
    schedule = DiffusionSchedule.continuous_sigma()
    assert torch.isfinite(schedule.snr(sigma)).all()


def test_samplers_read_nothing_back():
    with no_host_sync():
        sample_timesteps(8, 1000, "mode", generator=gen(0))
        sample_timesteps(8, 1000, "logit_normal", generator=gen(0))
        sample_edm_sigma(8, generator=gen(0))
        offset_noise(torch.randn(2, 3, 4, 4), 0.1)
        perturb_noise(torch.randn(2, 3), 0.1)


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="density"):
        sample_timesteps(4, 1000, "lognormal")
    with pytest.raises(ValueError, match="mode_scale"):
        sample_noise_level(4, "mode", mode_scale=2.0 / (math.pi - 2.0) + 0.1)
    with pytest.raises(ValueError, match="logit_std"):
        sample_noise_level(4, "logit_normal", logit_std=0.0)
    with pytest.raises(ValueError, match="num_timesteps"):
        sample_timesteps(4, 0)
