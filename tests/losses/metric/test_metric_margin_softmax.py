"""ArcFace and CosFace: float64 references from the papers' formulas, pytorch-metric-learning
side by side, the class weights as a parameter, errors and host reads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_losses import build_loss
from lightning_losses.losses.metric import ArcFaceLoss, CosFaceLoss
from lightning_losses.testing import no_host_sync

K, D = 7, 6


def _inputs(n=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, K, (n,), generator=g)
    return x, y


def _loss(cls, **kwargs):
    torch.manual_seed(0)
    return cls(K, D, reduction="none", **kwargs).double()


def margin_softmax_reference(x, y, weight, scale, target_logit):
    """-log softmax of the scaled cosines, the target's cosine replaced, one sample at a time."""
    out = []
    for i in range(len(y)):
        xi = x[i] / x[i].norm()
        cos = [torch.dot(xi, w / w.norm()) for w in weight]
        logits = [scale * c for c in cos]
        c = int(y[i])
        logits[c] = scale * target_logit(cos[c])
        lse = torch.logsumexp(torch.stack(logits), 0)
        out.append(lse - logits[c])
    return torch.stack(out)


def arcface_target(m):
    def target(c):
        theta = torch.acos(c)
        if theta + m <= math.pi:
            return torch.cos(theta + m)
        return c - m * math.sin(m)  # the reference code's monotonic extension

    return target


def cosface_target(m):
    return lambda c: c - m


@pytest.mark.parametrize(
    ("cls", "target", "margin"),
    [
        (ArcFaceLoss, arcface_target, 0.5),
        (ArcFaceLoss, arcface_target, 0.2),
        (CosFaceLoss, cosface_target, 0.35),
    ],
)
def test_matches_the_formula(cls, target, margin):
    x, y = _inputs()
    loss = _loss(cls, margin=margin)
    xr = x.clone().requires_grad_(True)
    wr = loss.weight.detach().clone().requires_grad_(True)
    ref = margin_softmax_reference(xr, y, wr, 64.0, target(margin))
    xo = x.clone().requires_grad_(True)
    ours = loss(xo, y)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    ref.sum().backward()
    ours.sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(loss.weight.grad, wr.grad, rtol=1e-8, atol=1e-10)


def test_arcface_is_monotonic_past_pi_minus_m():
    """cos(theta + m) turns back up beyond theta = pi - m; the extension keeps decreasing."""
    loss = ArcFaceLoss(2, 2, margin=0.5)
    cos = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    target = loss.target_cosine(cos)
    assert (target.diff() > 0).all()
    torch.testing.assert_close(target[-1], torch.tensor(math.cos(0.5), dtype=torch.float64))


def test_zero_margin_is_normalised_softmax():
    x, y = _inputs()
    for cls in (ArcFaceLoss, CosFaceLoss):
        loss = _loss(cls, margin=0.0, scale=10.0)
        cos = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(loss.weight, dim=1).T
        expected = nn.functional.cross_entropy(10.0 * cos, y, reduction="none")
        torch.testing.assert_close(loss(x, y), expected)


# -- pytorch-metric-learning side by side -----------------------------------------------------

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402


def _pml_pair(cls, pml_cls, pml_margin, **kwargs):
    ours = _loss(cls, **kwargs)
    theirs = pml_cls(num_classes=K, embedding_size=D, margin=pml_margin, scale=64).double()
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)  # PML stores W as (embedding_size, num_classes)
    return ours, theirs


@pytest.mark.parametrize(
    ("cls", "pml_cls", "margin", "pml_margin"),
    [
        (ArcFaceLoss, pml_losses.ArcFaceLoss, 0.5, math.degrees(0.5)),  # PML: degrees
        (CosFaceLoss, pml_losses.CosFaceLoss, 0.35, 0.35),
    ],
)
def test_agrees_with_pml(cls, pml_cls, margin, pml_margin):
    ours, theirs = _pml_pair(cls, pml_cls, pml_margin, margin=margin)
    x, y = _inputs()
    xo, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    mean_ours, mean_theirs = ours(xo, y).mean(), theirs(xt, y)
    torch.testing.assert_close(mean_ours, mean_theirs)
    mean_ours.backward()
    mean_theirs.backward()
    torch.testing.assert_close(xo.grad, xt.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.W.grad.T)


def test_pml_arcface_default_margin_is_28_6_degrees():
    """PML's default margin, 28.6 degrees, is 0.49916 rad, not the paper's 0.5."""
    ours, theirs = _pml_pair(ArcFaceLoss, pml_losses.ArcFaceLoss, 28.6)
    x, y = _inputs()
    assert not torch.allclose(ours(x, y).mean(), theirs(x, y), rtol=1e-6)
    close = _loss(ArcFaceLoss, margin=math.radians(28.6))
    with torch.no_grad():
        close.weight.copy_(ours.weight)
    torch.testing.assert_close(close(x, y).mean(), theirs(x, y))


# -- the class weights ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_class_weights_are_a_parameter_saved_and_trained(name):
    loss = build_loss(name, num_classes=K, embedding_dim=D)
    assert [n for n, _ in loss.named_parameters()] == ["weight"]
    assert loss.weight.shape == (K, D)
    assert "weight" in loss.state_dict()
    head = nn.Linear(4, D)
    model = nn.ModuleDict({"head": head, "criterion": loss})
    opt = torch.optim.SGD(
        [{"params": head.parameters()}, {"params": loss.parameters(), "lr": 1.0}], lr=0.1
    )
    before = loss.weight.detach().clone()
    x, y = torch.randn(8, 4), torch.randint(0, K, (8,))
    model["criterion"](model["head"](x), y).backward()
    opt.step()
    assert not torch.equal(before, loss.weight)


@pytest.mark.parametrize("name", ["arcface", "cosface"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(name, dtype):
    loss = build_loss(name, num_classes=K, embedding_dim=D, reduction="none")
    x, y = _inputs(dtype=torch.float32)
    low = loss(x.to(dtype), y)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss(x, y)
    torch.testing.assert_close(auto, loss(x, y), rtol=1e-5, atol=1e-5)


# -- errors and host reads --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_bad_input_is_a_clear_error(name):
    loss = build_loss(name, num_classes=K, embedding_dim=D)
    x, y = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"`input` must have 6 columns \(`embedding_dim`\)"):
        loss(x[:, :4], y)
    y_bad = y.clone()
    y_bad[3] = K
    with pytest.raises(ValueError, match=r"`target` holds labels outside \[0, 6\].*\[7\]"):
        loss(x, y_bad)
    y_bad[3] = -1
    with pytest.raises(ValueError, match=r"outside \[0, 6\].*\[-1\]"):
        build_loss(name, num_classes=K, embedding_dim=D, validate_args=True)(x, y_bad)
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 1"):
        build_loss(name, num_classes=0, embedding_dim=D)
    with pytest.raises(TypeError, match="embedding_dim"):
        build_loss(name, num_classes=K)


@pytest.mark.parametrize("name", ["arcface", "cosface"])
@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads(name, validate_args):
    loss = build_loss(name, num_classes=K, embedding_dim=D, validate_args=validate_args)
    x, y = _inputs(dtype=torch.float32)
    x.requires_grad_(True)
    with no_host_sync():
        loss(x, y, sample_weight=torch.rand(10)).backward()
