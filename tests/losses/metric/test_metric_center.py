"""Center loss: the formula and the paper's centre update against float64 loops, parameter and
buffer modes, checkpoint resume, errors and host reads. (pytorch-metric-learning has no center
loss to compare with.)"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import CenterLoss
from lightning_losses.testing import no_host_sync

K, D = 4, 3


def _inputs(n=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
    y = torch.tensor([0, 1, 1, 2, 0, 0, 1, 2, 2])[:n]  # class 3 absent
    return x, y


def _loss(**kwargs):
    torch.manual_seed(0)
    return CenterLoss(K, D, reduction="none", **kwargs).double()


def center_reference(x, y, centers):
    return torch.stack([0.5 * ((x[i] - centers[int(y[i])]) ** 2).sum() for i in range(len(y))])


def paper_update(x, y, centers, alpha):
    """Wen et al., Algorithm 1: c_j <- c_j - alpha * sum_{y_i=j}(c_j - x_i) / (1 + n_j)."""
    new = centers.clone()
    for j in range(len(centers)):
        members = [i for i in range(len(y)) if int(y[i]) == j]
        delta = sum((centers[j] - x[i] for i in members), torch.zeros_like(centers[j]))
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return new


def test_matches_the_formula_with_gradients():
    x, y = _inputs()
    loss = _loss()
    c = loss.centers.detach().clone().requires_grad_(True)
    xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = center_reference(xr, y, c)
    ours = loss(xo, y)
    torch.testing.assert_close(ours, ref)
    ref.sum().backward()
    ours.sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(loss.centers.grad, c.grad)


def test_moving_average_follows_the_papers_rule():
    x, y = _inputs()
    loss = _loss(update="moving_average", alpha=0.5)
    before = loss.centers.clone()
    values = loss(x, y)  # training mode, gradients enabled: one update
    torch.testing.assert_close(values, center_reference(x, y, before))  # old centres
    torch.testing.assert_close(loss.centers, paper_update(x, y, before, 0.5))
    assert torch.equal(loss.centers[3], before[3])  # an absent class does not move
    assert list(loss.parameters()) == []


def test_moving_average_does_not_move_in_eval_or_without_grad():
    x, y = _inputs()
    loss = _loss(update="moving_average")
    before = loss.centers.clone()
    loss.eval()
    loss(x, y)
    loss.train()
    with torch.no_grad():
        loss(x, y)
    assert torch.equal(loss.centers, before)


@pytest.mark.parametrize("update", ["parameter", "moving_average"])
def test_resume_continues_exactly(update):
    """Stop after 2 steps, reload the state into a new loss, continue: same centres as an
    uninterrupted run of 4 steps."""
    batches = [_inputs(seed=s) for s in range(4)]

    def step(loss, opt, x, y):
        value = loss(x, y).mean()
        if opt is not None:
            opt.zero_grad()
            value.backward()
            opt.step()

    def make():
        loss = _loss(update=update)
        opt = torch.optim.SGD(loss.parameters(), lr=0.5) if update == "parameter" else None
        return loss, opt

    straight, opt = make()
    for x, y in batches:
        step(straight, opt, x, y)
    first, opt = make()
    for x, y in batches[:2]:
        step(first, opt, x, y)
    state = {"loss": first.state_dict(), "opt": opt.state_dict() if opt else None}
    torch.manual_seed(123)  # another initial draw, overwritten by the checkpoint
    resumed = CenterLoss(K, D, update=update, reduction="none").double()
    resumed.load_state_dict(state["loss"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.5) if update == "parameter" else None
    if opt2 is not None:
        opt2.load_state_dict(state["opt"])
    for x, y in batches[2:]:
        step(resumed, opt2, x, y)
    assert "centers" in state["loss"]
    torch.testing.assert_close(resumed.centers, straight.centers, rtol=0, atol=0)


def test_parameter_mode_trains_the_centres_toward_the_class_means():
    x, y = _inputs()
    loss = _loss()
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        loss(x, y).sum().backward()
        opt.step()
    for j in range(3):
        torch.testing.assert_close(loss.centers[j], x[y == j].mean(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    loss = build_loss("center", num_classes=K, embedding_dim=D, reduction="none")
    x, y = _inputs(dtype=torch.float32)
    x = x * 300  # squared distances beyond fp16's range
    low = loss(x.to(dtype), y)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss(x, y)
    torch.testing.assert_close(auto, loss(x, y))


def test_bad_input_is_a_clear_error():
    loss = build_loss("center", num_classes=K, embedding_dim=D)
    x, y = _inputs(dtype=torch.float32)
    y_bad = y.clone()
    y_bad[0] = K
    with pytest.raises(ValueError, match=r"`target` holds labels outside \[0, 3\].*\[4\]"):
        loss(x, y_bad)
    with pytest.raises(ValueError, match=r"`input` must have 3 columns"):
        loss(x[:, :2], y)
    with pytest.raises(ValueError, match="`update` must be one of"):
        CenterLoss(K, D, update="ema")
    with pytest.raises(ValueError, match="`alpha` must lie in"):
        CenterLoss(K, D, alpha=2.0)


@pytest.mark.parametrize("update", ["parameter", "moving_average"])
@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads(update, validate_args):
    loss = build_loss(
        "center", num_classes=K, embedding_dim=D, update=update, validate_args=validate_args
    )
    x, y = _inputs(dtype=torch.float32)
    x.requires_grad_(True)
    with no_host_sync():
        loss(x, y, sample_weight=torch.rand(9)).backward()
