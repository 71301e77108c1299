"""DRO-family losses against naive float64 loops of their formulas and their known limits.

LDR-KL (Zhu, Ying, Yang, ICML 2023): the reference below is written from the closed form with
Python floats and :mod:`math`; the limits c = 0 (temperature-scaled cross-entropy) and
lambda -> 0 (Crammer–Singer hinge) are derived in the loss's docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss
from lightning_losses.losses import LDRKLLoss

IGNORE = -100


def make_inputs(n=6, k=5, *, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * scale, torch.randint(0, k, (n,))


def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def naive_ldr_kl(x, y, margin, lam, transform):
    out = []
    for row, t in zip(x.tolist(), y.tolist(), strict=True):
        k = len(row)
        if transform:
            sp = [softplus(v) for v in row]
            mean = sum(sp) / k
            row = [v / mean for v in sp]
        gaps = [(row[j] - row[t] + (margin if j != t else 0.0)) / lam for j in range(k)]
        top = max(gaps)
        out.append(lam * (top + math.log(sum(math.exp(g - top) for g in gaps) / k)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("transform", [True, False])
@pytest.mark.parametrize(("margin", "lam"), [(2.0, 1.0), (0.1, 10.0), (1.0, 0.1), (0.0, 0.5)])
def test_ldr_kl_matches_naive_loop(transform, margin, lam):
    x, y = make_inputs(seed=int(10 * lam))
    loss = LDRKLLoss(margin=margin, lam=lam, transform_logits=transform, reduction="none")
    torch.testing.assert_close(loss(x, y), naive_ldr_kl(x, y, margin, lam, transform))


def test_ldr_kl_is_the_kl_regularised_worst_case():
    """The closed form equals max_p <p, gaps> - lam KL(p || u), attained at softmax(gaps/lam)."""
    x, y = make_inputs(n=4, k=6, seed=3)
    margin, lam = 0.7, 0.8
    gaps = x - x.gather(1, y[:, None]) + margin * (1 - F.one_hot(y, 6).double())
    p = torch.softmax(gaps / lam, 1)
    kl = (p * torch.log(p * 6)).sum(1)
    value = (p * gaps).sum(1) - lam * kl
    loss = LDRKLLoss(margin=margin, lam=lam, transform_logits=False, reduction="none")
    torch.testing.assert_close(loss(x, y), value)


@pytest.mark.parametrize("lam", [0.3, 1.0, 4.0])
def test_zero_margin_is_temperature_scaled_cross_entropy(lam):
    x, y = make_inputs(seed=7)
    loss = LDRKLLoss(margin=0.0, lam=lam, transform_logits=False, reduction="none")(x, y)
    ce = F.cross_entropy(x / lam, y, reduction="none")
    torch.testing.assert_close(loss, lam * ce - lam * math.log(5))


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.5])
def test_small_lambda_approaches_crammer_singer(margin):
    x, y = make_inputs(n=8, seed=11)
    is_target = F.one_hot(y, 5).bool()
    others = (x + margin).masked_fill(is_target, -math.inf).amax(1)
    hinge = torch.clamp(others - x.gather(1, y[:, None]).squeeze(1), min=0.0)
    for lam in (1e-1, 1e-2, 1e-4):
        loss = LDRKLLoss(margin=margin, lam=lam, transform_logits=False, reduction="none")(x, y)
        assert (loss <= hinge + 1e-12).all()
        assert (loss >= hinge - lam * math.log(5) - 1e-12).all()
    torch.testing.assert_close(loss, hinge, atol=1e-3, rtol=0)


def test_defaults_and_finite_at_saturated_logits():
    """With the official transform the scores are softplus(z)/mean; the loss is finite at +-100."""
    x, y = make_inputs(seed=5)
    loss = build_loss("ldr_kl", reduction="none")
    assert loss.transform_logits and loss.margin == 2.0 and loss.lam == 1.0
    for sign in (1.0, -1.0):
        z = (torch.sign(x) * 100 * sign).requires_grad_(True)
        value = loss(z, y)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(z.grad).all()
    very_negative = torch.full((2, 5), -1e4, dtype=torch.float32)
    assert torch.isfinite(loss(very_negative, torch.tensor([0, 3]))).all()


def test_ignore_index_and_class_weight():
    x, y = make_inputs(n=6, seed=9)
    loss = LDRKLLoss(reduction="none", ignore_index=IGNORE)
    full = loss(x, y)
    y_ign = y.clone()
    y_ign[2] = IGNORE
    out = loss(x, y_ign)
    assert out[2] == 0
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(out[keep], full[keep])
    mean = LDRKLLoss(ignore_index=IGNORE)(x, y_ign)
    torch.testing.assert_close(mean, full[keep].mean())
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    weighted = LDRKLLoss(weight=w, reduction="none")(x, y)
    torch.testing.assert_close(weighted, full * w.double()[y])


def test_argument_errors():
    with pytest.raises(ValueError, match="lam"):
        LDRKLLoss(lam=0.0)
    with pytest.raises(ValueError, match="margin"):
        LDRKLLoss(margin=-1.0)
    with pytest.raises(TypeError, match="transform_logits"):
        LDRKLLoss(transform_logits="yes")
    with pytest.raises(TypeError, match="floating-point"):
        LDRKLLoss()(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 1]))
