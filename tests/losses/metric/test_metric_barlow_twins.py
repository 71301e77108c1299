"""Barlow Twins: a float64 loop written from the paper's formula, the reference code's
batch-norm formulation, the broadcast per-sample value, low precision, host reads and errors.

pytorch-metric-learning 2.9 has no Barlow Twins loss, so no side-by-side test exists.
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import BarlowTwinsLoss
from lightning_losses.testing import no_host_sync


def _views(n=10, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0 + 1.0
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


def barlow_twins_reference(a, b, lambd=5e-3, eps=1e-5):
    """Scalar loops: per-dimension mean and biased variance, C_ij, then the two sums."""
    n, d = a.shape

    def standardise(z):
        cols = []
        for j in range(d):
            mean = sum(z[b_, j] for b_ in range(n)) / n
            var = sum((z[b_, j] - mean) ** 2 for b_ in range(n)) / n
            cols.append(torch.stack([(z[b_, j] - mean) / torch.sqrt(var + eps) for b_ in range(n)]))
        return cols

    za, zb = standardise(a), standardise(b)
    total = a.new_zeros(())
    for i in range(d):
        for j in range(d):
            c = sum(za[i][k] * zb[j][k] for k in range(n)) / n
            total = total + ((1.0 - c) ** 2 if i == j else lambd * c**2)
    return total


def _value_and_grads(fn, a, b):
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    value = fn(a, b)
    value.backward()
    return value.detach(), a.grad, b.grad


@pytest.mark.parametrize("lambd", [5e-3, 0.5])
def test_matches_the_formula(lambd):
    a, b = _views()
    ours = _value_and_grads(BarlowTwinsLoss(lambd), a, b)
    ref = _value_and_grads(lambda x, y: barlow_twins_reference(x, y, lambd), a, b)
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)


def test_equals_the_reference_codes_batch_norm_formulation():
    """The official code: c = bn(z1).T @ bn(z2) / N with BatchNorm1d(affine=False) in training
    mode; on_diag = sum((diag(c) - 1)^2), off_diag = sum(offdiag(c)^2)."""
    a, b = _views(16, 8)
    bn = torch.nn.BatchNorm1d(8, affine=False).double().train()
    c = bn(a).T @ bn(b) / 16
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    torch.testing.assert_close(BarlowTwinsLoss()(a, b), on_diag + 5e-3 * off_diag)


def test_identical_decorrelated_views_give_zero():
    """Orthogonal standardised columns: C is the identity (up to the eps of the variance)."""
    q, _ = torch.linalg.qr(torch.randn(64, 4, dtype=torch.float64))
    z = q - q.mean(0)
    z = z / z.std(0, unbiased=False)
    value = BarlowTwinsLoss(eps=1e-12)(z, z.clone())
    assert value < 1e-3


def test_none_broadcasts_the_batch_value_and_weights_scale_it():
    a, b = _views()
    total = BarlowTwinsLoss()(a, b)
    none = BarlowTwinsLoss(reduction="none")(a, b)
    assert none.shape == (10,)
    torch.testing.assert_close(none, total.expand(10))
    w = torch.linspace(0.0, 2.0, 10, dtype=torch.float64)
    torch.testing.assert_close(BarlowTwinsLoss()(a, b, sample_weight=w), w.mean() * total)


def test_a_batch_of_one_is_finite():
    a, b = _views(1, 5)
    a = a.requires_grad_(True)
    value = BarlowTwinsLoss()(a, b)
    value.backward()
    torch.testing.assert_close(value, torch.tensor(5.0, dtype=torch.float64))
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    a, b = _views(32, 8)
    a, b = (a * 200).to(dtype).requires_grad_(True), (b * 200).to(dtype)
    value = BarlowTwinsLoss()(a, b)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(a.grad.float()).all()
    reference = BarlowTwinsLoss()(a.detach().double(), b.double())
    torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-4)


def test_autocast_keeps_the_cross_correlation_in_float32():
    a, b = _views(32, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = BarlowTwinsLoss()(a, b)
    torch.testing.assert_close(low.double(), BarlowTwinsLoss()(a.double(), b.double()))


@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads(validate_args):
    a, b = _views(8, 5, dtype=torch.float32)
    a.requires_grad_(True)
    loss = build_loss("barlow_twins", validate_args=validate_args, gather_across_ranks=True)
    with no_host_sync():
        loss(a, b, sample_weight=torch.rand(8)).backward()


def test_bad_input_is_a_clear_error():
    a, b = _views(6, 4)
    loss = BarlowTwinsLoss()
    with pytest.raises(ValueError, match=r"`input` must be embeddings of shape \(N, D\)"):
        loss(a[:, 0], b[:, 0])
    with pytest.raises(ValueError, match=r"`target` must be the second view.*\(6, 4\).*\(6, 3\)"):
        loss(a, b[:, :3])
    with pytest.raises(TypeError, match="`target` must be the second view's floating-point"):
        loss(a, torch.arange(6))
    with pytest.raises(ValueError, match=r"`target`.*NaN"):
        BarlowTwinsLoss(validate_args=True)(a, b.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="`lambd` must be >= 0"):
        BarlowTwinsLoss(lambd=-1.0)


def test_default_lambda_follows_the_paper():
    assert BarlowTwinsLoss().lambd == 5e-3 and BarlowTwinsLoss().eps == 1e-5
