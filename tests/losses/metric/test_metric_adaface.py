"""AdaFace: a float64 loop written from the paper's formula (with and without the statistics
update), its ArcFace and CosFace special cases, the norm-statistics buffers, low precision,
host reads and errors.

pytorch-metric-learning 2.9 has no AdaFace, so no side-by-side test exists.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import AdaFaceLoss, ArcFaceLoss, CosFaceLoss
from lightning_losses.testing import no_host_sync

K, D = 5, 4


def _batch(n=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # norms spread around 20 so that the quality term takes several values
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * 10.0
    y = torch.randint(0, K, (n,), generator=g)
    return x.to(dtype), y


def _loss(**kwargs):
    torch.manual_seed(0)
    return AdaFaceLoss(K, D, **kwargs).double()


def adaface_reference(x, y, weight, mean, std, m=0.4, h=0.333, s=64.0, eps=1e-3):
    out = []
    for i in range(len(y)):
        norm = x[i].detach().norm().clamp(1e-3, 100.0)
        z = (h * (norm - mean) / (std + eps)).clamp(-1.0, 1.0)
        cos = [
            (x[i] / x[i].norm() * weight[j] / weight[j].norm()).sum().clamp(-1 + eps, 1 - eps)
            for j in range(weight.shape[0])
        ]
        theta = (torch.acos(cos[y[i]]) - m * z).clamp(eps, math.pi - eps)
        logits = [s * c for c in cos]
        logits[y[i]] = s * (torch.cos(theta) - (m * z + m))
        out.append(torch.logsumexp(torch.stack(logits), 0) - logits[y[i]])
    return torch.stack(out)


def _updated_statistics(x, mean=20.0, std=100.0, momentum=0.99):
    norms = x.detach().norm(dim=1).clamp(1e-3, 100.0)
    return (
        momentum * mean + (1 - momentum) * norms.mean(),
        momentum * std + (1 - momentum) * norms.std(),
    )


def test_eval_matches_the_formula_with_stored_statistics():
    x, y = _batch()
    loss = _loss(reduction="none").eval()
    loss.norm_mean.fill_(15.0)
    loss.norm_std.fill_(6.0)
    ours_x = x.clone().requires_grad_(True)
    ours = loss(ours_x, y)
    ours.sum().backward()
    ref_x = x.clone().requires_grad_(True)
    weight = loss.weight.detach().clone().requires_grad_(True)
    ref = adaface_reference(ref_x, y, weight, 15.0, 6.0)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(loss.weight.grad, weight.grad, rtol=1e-9, atol=1e-11)
    assert float(loss.norm_mean) == 15.0, "eval mode does not move the statistics"


def test_training_step_updates_the_statistics_first_then_uses_them():
    x, y = _batch()
    loss = _loss(reduction="none")
    ours = loss(x.clone().requires_grad_(True), y)
    mean, std = _updated_statistics(x)
    torch.testing.assert_close(loss.norm_mean, mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.norm_std, std, rtol=1e-14, atol=0)
    ref = adaface_reference(x, y, loss.weight.detach(), loss.norm_mean, loss.norm_std)
    torch.testing.assert_close(ours.detach(), ref, rtol=1e-10, atol=1e-10)


def test_statistics_move_only_on_a_forward_that_trains():
    x, y = _batch()
    loss = _loss()
    loss(x, y)  # input does not require grad: an evaluation inside training
    with torch.no_grad():
        loss(x.clone().requires_grad_(True), y)
    assert float(loss.norm_mean) == 20.0 and float(loss.norm_std) == 100.0
    loss(x.clone().requires_grad_(True), y)
    assert float(loss.norm_mean) != 20.0


def test_a_batch_of_one_keeps_the_standard_deviation():
    x, y = _batch(1)
    loss = _loss()
    value = loss(x.clone().requires_grad_(True), y)
    assert torch.isfinite(value)
    assert float(loss.norm_std) == 100.0 and float(loss.norm_mean) != 20.0


def test_statistics_are_checkpointed_buffers():
    loss = _loss()
    state = loss.state_dict()
    assert {"weight", "norm_mean", "norm_std"} <= set(state)
    x, y = _batch()
    loss(x.clone().requires_grad_(True), y)
    fresh = _loss()
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.norm_mean, loss.norm_mean)
    assert torch.equal(fresh.norm_std, loss.norm_std)


def test_low_quality_is_arcface_and_average_quality_is_cosface():
    """z = -1 (norm far below the mean): cos(theta + m), ArcFace's target; z = 0 (norm at the
    mean): cos(theta) - m, CosFace's."""
    x, y = _batch()
    arc = ArcFaceLoss(K, D, scale=64.0, margin=0.4, reduction="none").double()
    cos = CosFaceLoss(K, D, scale=64.0, margin=0.4, reduction="none").double()
    ada = _loss(reduction="none").eval()
    arc.weight.data.copy_(ada.weight)
    cos.weight.data.copy_(ada.weight)
    ada.norm_mean.fill_(1e4)  # every sample far below: z = -1
    torch.testing.assert_close(ada(x, y), arc(x, y), rtol=1e-10, atol=1e-10)
    at_mean = torch.nn.functional.normalize(x, dim=1) * 20.0
    ada.norm_mean.fill_(20.0)
    torch.testing.assert_close(ada(at_mean, y), cos(at_mean, y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x, y = _batch(16)
    loss = AdaFaceLoss(K, D)
    low = x.to(dtype).requires_grad_(True)
    value = loss(low, y)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(low.grad.float()).all()


def test_autocast_keeps_the_logits_in_float32():
    x, y = _batch(16, dtype=torch.float32)
    loss = AdaFaceLoss(K, D).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x, y)
    torch.testing.assert_close(low.double(), loss.double()(x.double(), y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads_while_training(validate_args):
    x, y = _batch(dtype=torch.float32)
    loss = build_loss("adaface", num_classes=K, embedding_dim=D, validate_args=validate_args)
    x.requires_grad_(True)
    loss(x, y)
    with no_host_sync():
        loss(x, y, sample_weight=torch.rand(8)).backward()


def test_bad_input_and_options_are_clear_errors():
    loss = AdaFaceLoss(K, D)
    x, y = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"`input` must have 4 columns"):
        loss(x[:, :3], y)
    with pytest.raises(ValueError, match=r"`target` holds labels outside \[0, 4\]"):
        loss(x, torch.full((8,), 7))
    with pytest.raises(ValueError, match="`momentum` must lie in"):
        AdaFaceLoss(K, D, momentum=1.5)
    with pytest.raises(ValueError, match="`h` must be > 0"):
        AdaFaceLoss(K, D, h=0.0)
    with pytest.raises(ValueError, match="`margin` must lie in"):
        AdaFaceLoss(K, D, margin=2.0)


def test_defaults_follow_the_paper_and_reference_code():
    loss = AdaFaceLoss(K, D)
    assert (loss.margin, loss.h, loss.scale, loss.momentum, loss.eps) == (
        0.4,
        0.333,
        64.0,
        0.99,
        1e-3,
    )
    assert (float(loss.norm_mean), float(loss.norm_std)) == (20.0, 100.0)
