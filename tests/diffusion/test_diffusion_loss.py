"""DiffusionLoss and its robust variants against float64 loops written from the papers, against
diffusers' training-script computation, and on the bad inputs the issue lists."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss
from lightning_losses.diffusion import DiffusionSchedule, sample_edm_sigma
from lightning_losses.diffusion.targets import edm_denoise, edm_target
from lightning_losses.diffusion.weighting import edm_weight
from lightning_losses.losses.diffusion import (
    DiffusionCauchyLoss,
    DiffusionLoss,
    DiffusionPseudoHuberLoss,
)
from lightning_losses.testing import no_host_sync

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, EDMEulerScheduler  # noqa: E402
from diffusers.training_utils import compute_snr  # noqa: E402

SNR_TYPES = ("epsilon", "v_prediction", "sample")
WEIGHTINGS = ("constant", "min_snr", "p2", "debiased")


def batch(n=6, seed=0, shape=(2, 3, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, *shape, generator=g, dtype=dtype)
    target = torch.randn(n, *shape, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (n,), generator=g)
    t[0], t[-1] = 0, 999
    return pred, target, t


def naive_weight(snr, weighting, prediction_type, gamma=5.0, p2_gamma=1.0, k=1.0):
    """The papers' weights, written the textbook way (defined for SNR > 0)."""
    if weighting == "constant":
        return 1.0
    if weighting == "min_snr":  # x₀-space weight min(SNR, γ), moved by the identities of 10.1
        w_x0 = min(snr, gamma)
    elif weighting == "p2":  # ε-space weight 1 / (k + SNR)^γ
        w_x0 = snr / (k + snr) ** p2_gamma
    else:  # debiased: ε-space weight 1 / √SNR, capped at 1000 (documented)
        w_x0 = snr * min(1 / math.sqrt(snr), 1000.0)
    return {"epsilon": w_x0 / snr, "v_prediction": w_x0 / (snr + 1), "sample": w_x0}[
        prediction_type
    ]


def naive_loss(pred, target, t, acp, rho, weight):
    """Per-sample loop: mean over the sample's elements of ρ(r), times w(SNR(t))."""
    out = []
    for i in range(pred.shape[0]):
        a = float(acp[t[i]])
        snr = a / (1 - a)
        elems = [
            rho(float(p) - float(y), int(t[i]), a)
            for p, y in zip(pred[i].flatten(), target[i].flatten(), strict=True)
        ]
        out.append(weight(snr) * sum(elems) / len(elems))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("prediction_type", SNR_TYPES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_l2_loss_equals_a_float64_loop(prediction_type, weighting):
    pred, target, t = batch()
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    loss = DiffusionLoss(
        scheduler, prediction_type=prediction_type, weighting=weighting, reduction="none"
    ).double()
    ours = loss(pred, target, timesteps=t)
    expected = naive_loss(
        pred,
        target,
        t,
        scheduler.alphas_cumprod.double(),
        lambda r, *_: r * r,
        lambda snr: naive_weight(snr, weighting, prediction_type),
    )
    torch.testing.assert_close(ours, expected, rtol=5e-6, atol=1e-12)  # table kept in float32


@pytest.mark.parametrize("c_schedule", ["constant", "exponential", "snr"])
def test_pseudo_huber_equals_a_float64_loop(c_schedule):
    pred, target, t = batch(seed=1)
    c0 = 0.1
    acp = DDPMScheduler().alphas_cumprod.double()

    def c_of(step, a):  # the three schedules of the paper (and of kohya-ss' sd-scripts)
        if c_schedule == "constant":
            return c0
        if c_schedule == "exponential":
            return math.exp(math.log(c0) / 1000 * step)
        sigma = math.sqrt((1 - a) / a)
        return (1 - c0) / (1 + sigma) ** 2 + c0

    def rho(r, step, a):
        c = c_of(step, a)
        return 2 * c * (math.sqrt(r * r + c * c) - c)

    loss = DiffusionPseudoHuberLoss(c=c0, c_schedule=c_schedule, reduction="none").double()
    expected = naive_loss(pred, target, t, acp, rho, lambda snr: 1.0)
    torch.testing.assert_close(loss(pred, target, timesteps=t), expected, rtol=1e-6, atol=1e-12)


def test_cauchy_equals_a_float64_loop():
    pred, target, t = batch(seed=2)
    acp = DDPMScheduler().alphas_cumprod.double()
    loss = DiffusionCauchyLoss(c=0.5, weighting="min_snr", reduction="none").double()
    expected = naive_loss(
        pred,
        target,
        t,
        acp,
        lambda r, *_: 0.25 * math.log(1 + (r / 0.5) ** 2),
        lambda snr: naive_weight(snr, "min_snr", "epsilon"),
    )
    torch.testing.assert_close(loss(pred, target, timesteps=t), expected, rtol=5e-6, atol=1e-12)


def test_robust_losses_reach_l2_and_l1_limits():
    """2c(√(r²+c²) − c) → r² as c → ∞ and ≈ 2c|r| as c → 0; c²·log(1 + (r/c)²) → r²."""
    pred, target, t = batch(seed=3)
    r = pred - target
    l2 = (r**2).flatten(1).mean(1)
    l1 = r.abs().flatten(1).mean(1)
    kw = dict(c_schedule="constant", reduction="none")
    big = DiffusionPseudoHuberLoss(c=1e4, **kw).double()(pred, target, timesteps=t)
    torch.testing.assert_close(big, l2, rtol=1e-6, atol=0)
    small = DiffusionPseudoHuberLoss(c=1e-5, **kw).double()(pred, target, timesteps=t)
    torch.testing.assert_close(small / (2e-5), l1, rtol=1e-3, atol=0)
    cauchy = DiffusionCauchyLoss(c=1e4, **kw).double()(pred, target, timesteps=t)
    torch.testing.assert_close(cauchy, l2, rtol=1e-6, atol=0)
    # the paper's δ²(√(1+(r/δ)²) − 1) is half of this convention
    paper = (0.3**2 * (torch.sqrt(1 + (r / 0.3) ** 2) - 1)).flatten(1).mean(1)
    ours = DiffusionPseudoHuberLoss(c=0.3, **kw).double()(pred, target, timesteps=t)
    torch.testing.assert_close(ours, 2 * paper)


def test_pseudo_huber_is_l1_like_at_noisy_steps_and_l2_like_at_detail_steps():
    loss = DiffusionPseudoHuberLoss(c=0.1, c_schedule="snr")
    log_snr = loss.schedule.log_snr_at(torch.tensor([0, 999]))
    c = loss.threshold(log_snr, torch.tensor([0, 999]))
    assert c[0].item() > 0.95 and c[1].item() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_loss_equals_diffusers_training_script(prediction_type):
    """train_text_to_image.py with --snr_gamma 5: add_noise, get_velocity, compute_snr, the
    weight, then F.mse_loss(reduction="none").mean(non-batch dims) * weight, .mean()."""
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(4)
    x0, noise, pred = torch.randn(3, 8, 4, 6, 6, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    snr = compute_snr(scheduler, t)
    weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
    pred_theirs = pred.clone().requires_grad_(True)
    theirs = F.mse_loss(pred_theirs.float(), target.float(), reduction="none")
    theirs = (theirs.mean(dim=list(range(1, theirs.ndim))) * weights).mean()
    theirs.backward()

    loss = DiffusionLoss(scheduler, weighting="min_snr", min_snr_gamma=5.0)
    torch.testing.assert_close(loss.add_noise(x0, noise, t), noisy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.training_target(x0, noise, t), target, rtol=1e-5, atol=1e-6)
    pred_ours = pred.clone().requires_grad_(True)
    ours = loss(pred_ours, target, timesteps=t)
    ours.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pred_ours.grad, pred_theirs.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "loss",
    [
        DiffusionLoss(prediction_type="v_prediction", weighting="p2"),
        DiffusionPseudoHuberLoss(c=0.3, weighting="min_snr"),
        DiffusionCauchyLoss(c=0.7, c_schedule="snr"),
    ],
    ids=["l2", "pseudo_huber", "cauchy"],
)
def test_gradcheck_in_float64(loss):
    pred, target, t = batch(n=3, shape=(2, 2))
    pred.requires_grad_(True)
    loss = loss.double()
    assert torch.autograd.gradcheck(lambda p: loss(p, target, timesteps=t), (pred,))


@pytest.mark.parametrize("prediction_type", SNR_TYPES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("loss_cls", [DiffusionLoss, DiffusionPseudoHuberLoss])
def test_zero_terminal_snr_gives_finite_values_and_gradients(loss_cls, prediction_type, weighting):
    scheduler = DDPMScheduler(rescale_betas_zero_snr=True)
    loss = loss_cls(scheduler, prediction_type=prediction_type, weighting=weighting)
    pred, target, _ = batch(n=4, dtype=torch.float32)
    pred.requires_grad_(True)
    t = torch.tensor([999, 998, 500, 0])
    value = loss(pred, target, timesteps=t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()


def test_edm_loss_is_the_safe_form_of_the_weighted_denoiser_loss():
    """λ(σ)·mean‖D − x₀‖² (the paper's form) equals the loss on F against edm_target."""
    g = torch.Generator().manual_seed(5)
    x0, n, f = torch.randn(3, 6, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma = sample_edm_sigma(6, generator=g, dtype=torch.float64)
    x = x0 + sigma[:, None, None, None] * n
    loss = DiffusionLoss(prediction_type="edm", reduction="none").double()
    assert loss.weighting == "edm" and loss.schedule.continuous
    target = loss.training_target(x0, n, sigma)
    torch.testing.assert_close(target, edm_target(x0, n, sigma, 0.5))
    paper = edm_weight(sigma, 0.5) * (edm_denoise(f, x, sigma) - x0).flatten(1).square().mean(1)
    torch.testing.assert_close(loss(f, target, timesteps=sigma), paper, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.add_noise(x0, n, sigma), x)


def test_edm_scheduler_sets_prediction_type_sigma_data_and_the_sigma_table():
    scheduler = EDMEulerScheduler(sigma_data=0.7)
    loss = DiffusionLoss(scheduler)
    assert (loss.prediction_type, loss.weighting, loss.sigma_data) == ("edm", "edm", 0.7)
    idx = torch.tensor([0, 500, 999])
    sigma = scheduler.sigmas[idx]
    torch.testing.assert_close(loss.schedule.alpha_sigma(idx)[1], sigma, rtol=1e-6, atol=0)
    x0 = torch.randn(3, 2)
    n = torch.randn(3, 2)
    torch.testing.assert_close(
        loss.training_target(x0, n, idx), edm_target(x0, n, sigma, 0.7), rtol=1e-5, atol=1e-6
    )


def configs():
    yield "diffusion", {}
    yield "diffusion", dict(weighting="min_snr", prediction_type="v_prediction")
    yield "diffusion", dict(weighting="p2", prediction_type="sample")
    yield "diffusion", dict(weighting="debiased")
    yield "diffusion_pseudo_huber", dict(c_schedule="exponential")
    yield "diffusion_pseudo_huber", dict(c_schedule="snr", weighting="min_snr")
    yield "diffusion_cauchy", {}


@pytest.mark.parametrize(("name", "kwargs"), list(configs()))
@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads_in_forward_and_backward(name, kwargs, validate_args):
    loss = build_loss(name, validate_args=validate_args, **kwargs)
    pred, target, t = batch(n=5, dtype=torch.float32)
    pred.requires_grad_(True)
    with no_host_sync():
        loss(pred, target, timesteps=t, sample_weight=torch.rand(5)).backward()
    edm = build_loss("diffusion", prediction_type="edm", validate_args=validate_args)
    with no_host_sync():
        edm(pred, target, timesteps=sample_edm_sigma(5)).backward()


def test_bad_inputs_name_the_argument():
    loss = DiffusionLoss()
    pred, target, t = batch(n=4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"target.*\(4, 2, 3, 3\).*\(4, 2, 3, 2\)"):
        loss(pred, target[..., :2], timesteps=t)
    with pytest.raises(ValueError, match=r"timesteps.*\[0, 999\].*1000"):
        loss(pred, target, timesteps=torch.tensor([0, 5, 1000, 3]))
    with pytest.raises(ValueError, match=r"timesteps.*\(4,\)"):
        loss(pred, target, timesteps=t[:3])
    with pytest.raises(TypeError, match="timesteps"):
        loss(pred, target)
    with pytest.raises(TypeError, match=r"timesteps.*integer"):
        loss(pred, target, timesteps=t.float())
    with pytest.raises(TypeError, match="target"):
        loss(pred, target.long(), timesteps=t)
    bad = pred.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"input.*NaN"):
        DiffusionLoss(validate_args=True)(bad, target, timesteps=t)
    with pytest.raises(ValueError, match=r"target.*NaN"):
        DiffusionLoss(validate_args=True)(target, bad, timesteps=t)


def test_bad_constructions_name_the_argument():
    with pytest.raises(ValueError, match=r"once.*scheduler.*alphas_cumprod"):
        DiffusionLoss(DDPMScheduler(), alphas_cumprod=DDPMScheduler().alphas_cumprod)
    with pytest.raises(ValueError, match=r"prediction_type='edm'.*ᾱ"):
        DiffusionLoss(DDPMScheduler(), prediction_type="edm")
    with pytest.raises(ValueError, match=r"prediction_type='epsilon'.*σ"):
        DiffusionLoss(sigmas=torch.tensor([1.0, 2.0]), prediction_type="epsilon")
    with pytest.raises(ValueError, match="c_schedule"):
        DiffusionPseudoHuberLoss(prediction_type="edm", c_schedule="exponential")
    with pytest.raises(ValueError, match="c_schedule"):
        DiffusionPseudoHuberLoss(c_schedule="cosine")
    with pytest.raises(ValueError, match=r"`c`.*> 0"):
        DiffusionCauchyLoss(c=0.0)


def test_schedule_is_state_and_defaults_build():
    scaled = DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod
    loss = build_loss("diffusion", alphas_cumprod=scaled, weighting="debiased")
    fresh = build_loss("diffusion", weighting="debiased")
    assert "schedule.log_snr" in loss.state_dict()
    pred, target, t = batch(n=4, dtype=torch.float32)
    kw = dict(timesteps=t)
    assert not torch.allclose(fresh(pred, target, **kw), loss(pred, target, **kw))
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh(pred, target, **kw), loss(pred, target, **kw))
    assert torch.equal(DiffusionSchedule.ddpm().log_snr, build_loss("diffusion").schedule.log_snr)
    loss.half()
    assert loss.schedule.log_snr.dtype == torch.float32
