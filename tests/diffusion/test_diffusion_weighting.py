"""Per-timestep weights: diffusers' Min-SNR as the reference, one x₀-space objective across
prediction types, safety at SNR = 0, EDM's preconditioning against the paper and diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_losses.diffusion import (
    DiffusionSchedule,
    debiased_weight,
    edm_preconditioning,
    edm_weight,
    min_snr_weight,
    p2_weight,
    timestep_weight,
)
from lightning_losses.losses.diffusion import DiffusionLoss

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, EDMEulerScheduler  # noqa: E402
from diffusers.training_utils import compute_snr  # noqa: E402

T = torch.arange(1000)
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SNR_TYPES = ("epsilon", "v_prediction", "sample")


def diffusers_min_snr_weights(scheduler, timesteps, gamma, prediction_type):
    """The weighting diffusers' training scripts apply (train_text_to_image.py, --snr_gamma)."""
    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        return weights / snr
    return weights / (snr + 1)


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_equals_diffusers_training_utilities(beta_schedule, prediction_type, gamma):
    scheduler = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type)
    loss = DiffusionLoss(scheduler, weighting="min_snr", min_snr_gamma=gamma)
    assert loss.prediction_type == prediction_type  # read from the scheduler's config
    ours = loss.timestep_weights(loss.schedule.log_snr_at(T))
    expected = diffusers_min_snr_weights(scheduler, T, gamma, prediction_type)
    torch.testing.assert_close(ours, expected, rtol=2e-6, atol=0)
    snr = loss.schedule.snr(T)
    torch.testing.assert_close(snr, compute_snr(scheduler, T), rtol=2e-6, atol=0)
    torch.testing.assert_close(min_snr_weight(snr, gamma, prediction_type), ours)


def test_zero_terminal_snr_weights_are_finite_where_diffusers_divides_by_zero():
    scheduler = DDPMScheduler(rescale_betas_zero_snr=True)
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    snr = schedule.snr(T)
    assert snr[-1].item() == 0.0 and torch.isfinite(schedule.log_snr_at(T)[:-1]).all()
    reference = diffusers_min_snr_weights(scheduler, T, 5.0, "epsilon")
    assert torch.isnan(reference[-1])  # min(0, γ) / 0
    for prediction_type in SNR_TYPES:
        for weighting in ("constant", "min_snr", "p2", "debiased"):
            w = timestep_weight(snr, weighting, prediction_type)
            assert torch.isfinite(w).all() and (w >= 0).all(), (weighting, prediction_type)
    eps = min_snr_weight(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps[:-1], reference[:-1], rtol=2e-6, atol=0)
    assert eps[-1].item() == 1.0  # the limit of min(SNR, γ)/SNR as SNR → 0


def test_min_snr_floor_keeps_the_terminal_steps_trained():
    snr = DiffusionSchedule.from_scheduler(DDPMScheduler(rescale_betas_zero_snr=True)).snr(T)
    plain = min_snr_weight(snr, 5.0, "v_prediction")
    assert plain[-1].item() == 0.0  # diffusers issue #9451: no gradient at t = T
    floored = min_snr_weight(snr, 5.0, "v_prediction", floor=0.1)
    assert floored[-1].item() == pytest.approx(0.1)
    torch.testing.assert_close(floored, plain.clamp_min(0.1))


@settings(max_examples=50, deadline=None)
@given(
    log_snr=st.lists(st.floats(-12, 12), min_size=1, max_size=8),
    gamma=st.floats(0.1, 20),
    k=st.floats(0.1, 5),
)
def test_every_weighting_is_one_x0_objective_across_prediction_types(log_snr, gamma, k):
    """w_ε·SNR = w_v·(SNR+1) = w_x₀ (the identities of 10.1 move the weight between spaces)."""
    snr = torch.tensor(log_snr, dtype=torch.float64).exp()
    for weighting, kwargs in (
        ("min_snr", dict(min_snr_gamma=gamma)),
        ("p2", dict(p2_gamma=gamma, p2_k=k)),
        ("debiased", {}),
        ("constant", {}),
    ):
        w = {p: timestep_weight(snr, weighting, p, **kwargs) for p in SNR_TYPES}
        if weighting == "constant":  # one in each space: three different objectives
            assert all(torch.equal(v, torch.ones_like(snr)) for v in w.values())
            continue
        torch.testing.assert_close(w["epsilon"] * snr, w["sample"], rtol=1e-12, atol=1e-300)
        torch.testing.assert_close(
            w["v_prediction"] * (snr + 1), w["sample"], rtol=1e-12, atol=1e-300
        )


@settings(max_examples=50, deadline=None)
@given(snr=st.floats(1e-6, 1e6), gamma=st.floats(0.1, 20), k=st.floats(0.1, 5))
def test_weights_equal_the_papers_formulas(snr, gamma, k):
    s = torch.tensor([snr], dtype=torch.float64)
    assert min_snr_weight(s, gamma, "epsilon").item() == pytest.approx(min(snr, gamma) / snr)
    assert min_snr_weight(s, gamma, "v_prediction").item() == pytest.approx(
        min(snr, gamma) / (snr + 1)
    )
    assert min_snr_weight(s, gamma, "sample").item() == pytest.approx(min(snr, gamma))
    assert p2_weight(s, gamma, k, "epsilon").item() == pytest.approx(1 / (k + snr) ** gamma)
    assert debiased_weight(s, "epsilon").item() == pytest.approx(1 / math.sqrt(snr))


def test_debiased_weight_is_capped_at_zero_snr():
    snr = torch.tensor([0.0, 1e-12, 1e-4, 1.0], dtype=torch.float64)
    w = debiased_weight(snr, "epsilon", max_weight=1000.0)
    torch.testing.assert_close(w, torch.tensor([1000.0, 1000.0, 100.0, 1.0], dtype=torch.float64))
    v = debiased_weight(snr, "v_prediction")
    assert torch.isfinite(v).all() and v[0].item() == 0.0


@settings(max_examples=40, deadline=None)
@given(sigma=st.floats(1e-3, 100), sigma_data=st.floats(0.05, 5))
def test_edm_preconditioning_equals_the_paper_in_float64(sigma, sigma_data):
    s = torch.tensor([sigma], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(s, sigma_data)
    total = sigma**2 + sigma_data**2
    assert c_skip.item() == pytest.approx(sigma_data**2 / total, rel=1e-14)
    assert c_out.item() == pytest.approx(sigma * sigma_data / math.sqrt(total), rel=1e-14)
    assert c_in.item() == pytest.approx(1 / math.sqrt(total), rel=1e-14)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-14, abs=1e-15)
    lam = edm_weight(s, sigma_data)
    assert lam.item() == pytest.approx(total / (sigma * sigma_data) ** 2, rel=1e-14)
    assert (lam * c_out**2).item() == pytest.approx(1.0, rel=1e-13)


def test_edm_preconditioning_equals_diffusers_edm_scheduler():
    scheduler = EDMEulerScheduler(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma[:, None], 0.5)
    torch.testing.assert_close(scheduler.precondition_inputs(x, sigma[:, None]), c_in * x)
    torch.testing.assert_close(
        scheduler.precondition_outputs(x, f, sigma[:, None]), c_skip * x + c_out * f
    )
    torch.testing.assert_close(scheduler.precondition_noise(sigma), c_noise[:, 0])


def test_impossible_combinations_are_clear_errors():
    snr = torch.ones(3)
    with pytest.raises(ValueError, match=r"min_snr.*edm"):
        DiffusionLoss(prediction_type="edm", weighting="min_snr")
    with pytest.raises(ValueError, match=r"weighting='edm'.*prediction_type='edm'"):
        DiffusionLoss(prediction_type="epsilon", weighting="edm")
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weight(snr, 5.0, "edm")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionLoss(prediction_type="flow_matching")
    with pytest.raises(ValueError, match=r"weighting.*Did you mean 'min_snr'"):
        DiffusionLoss(weighting="minsnr")


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_gamma_must_be_positive(gamma):
    with pytest.raises(ValueError, match=r"min_snr_gamma.*> 0"):
        DiffusionLoss(weighting="min_snr", min_snr_gamma=gamma)
    with pytest.raises(ValueError, match=r"p2_gamma.*> 0"):
        DiffusionLoss(weighting="p2", p2_gamma=gamma)
    with pytest.raises(ValueError, match=r"gamma.*> 0"):
        min_snr_weight(torch.ones(2), gamma)
