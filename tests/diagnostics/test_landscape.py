"""Slices, interpolation and ε-sharpness: values, exact restoration (also after errors), errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import (
    LossFunction,
    epsilon_sharpness,
    interpolate,
    line_slice,
    plane_slice,
    random_direction,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return [(x[:20], y[:20]), (x[20:], y[20:])], x, y


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snapshot):
    state = model.state_dict()
    return all(torch.equal(state[k], v) for k, v in snapshot.items())


@pytest.fixture
def setup():
    model = _model().train()  # train mode: BN statistics would drift if not restored
    batches, x, y = _data()
    return model, LossFunction(model, _ce, batches), x, y


def _loss_at(model, x, y, moves):
    """The loss with each parameter moved by its entry in ``moves``, computed by hand over the
    same two batches (train-mode BatchNorm uses each batch's statistics)."""
    probe = _model()
    probe.load_state_dict(model.state_dict())
    probe.train(model.training)
    with torch.no_grad():
        for name, p in probe.named_parameters():
            if name in moves:
                p.add_(moves[name])
        return (20 * _ce(probe, (x[:20], y[:20])) + 10 * _ce(probe, (x[20:], y[20:]))).item() / 30


def test_line_slice(setup):
    model, fn, x, y = setup
    before = _snapshot(model)
    base = fn.loss()
    d = random_direction(model, seed=0)
    res = line_slice(fn, d, distance=0.5, num_points=5)
    assert res.alphas.tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert res.losses[2].item() == base  # α = 0 is the model itself, bit for bit
    assert res.forward_count == 5 * 2 and res.hvp_count == 0
    for i in (0, 4):
        a = res.alphas[i].item()
        expected = _loss_at(model, x, y, {k: a * v for k, v in d.items()})
        assert res.losses[i].item() == pytest.approx(expected, rel=1e-12)
    assert res.losses[0] != base and res.losses[4] != base
    assert _same(model, before) and model.training


def test_plane_slice(setup):
    model, fn, x, y = setup
    before = _snapshot(model)
    base = fn.loss()
    g = torch.Generator().manual_seed(0)
    d1, d2 = random_direction(model, seed=g), random_direction(model, seed=g)
    res = plane_slice(fn, d1, d2, distance=1.0, num_points=(3, 5))
    assert res.losses.shape == (3, 5) and res.forward_count == 15 * 2
    assert res.losses[1, 2].item() == base
    a, b = res.alphas[0].item(), res.betas[4].item()
    expected = _loss_at(model, x, y, {k: a * d1[k] + b * d2[k] for k in d1})
    assert res.losses[0, 4].item() == pytest.approx(expected, rel=1e-12)
    assert _same(model, before)


def test_interpolation_endpoints_and_barrier(setup):
    model, fn, x, y = setup
    own = _snapshot(model)
    state_a = _model(1).state_dict()
    # state_b: the same function as state_a with the hidden units permuted (a classic barrier)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    state_b = {k: v.clone() for k, v in state_a.items()}
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        state_b[key] = state_a[key][perm]
    state_b["3.weight"] = state_a["3.weight"][:, perm]
    state_b["1.num_batches_tracked"] = torch.tensor(7)
    res = interpolate(fn, state_a, state_b, num_points=11)
    assert _same(model, own)  # the model's own weights and buffers are back
    la = _loss_at(_load(state_a), x, y, {})
    lb = _loss_at(_load(state_b), x, y, {})
    assert res.losses[0].item() == pytest.approx(la, rel=1e-12)
    assert res.losses[-1].item() == pytest.approx(lb, rel=1e-12)
    assert la == pytest.approx(lb, rel=1e-10)  # same function
    chord = (1 - res.ts) * res.losses[0] + res.ts * res.losses[-1]
    assert res.barrier == pytest.approx(float((res.losses - chord).max()))
    assert res.barrier > 0.01 and 0 < res.barrier_t < 1
    assert res.forward_count == 11 * 2


def _load(state):
    m = _model()
    m.load_state_dict(state)
    return m.train()


def test_interpolation_of_a_convex_loss_has_no_barrier():
    model = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 1, generator=g, dtype=torch.float64)
    fn = LossFunction(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [(x, y)])
    a = {k: v + 1 for k, v in model.state_dict().items()}
    b = {k: v - 2 for k, v in model.state_dict().items()}
    res = interpolate(fn, a, b, num_points=9)
    assert res.barrier == pytest.approx(0.0, abs=1e-12)  # convex: the path lies under the chord
    assert bool(
        (res.losses[1:-1] < ((1 - res.ts) * res.losses[0] + res.ts * res.losses[-1])[1:-1]).all()
    )


def test_epsilon_sharpness(setup):
    model, fn, _, _ = setup
    before = _snapshot(model)
    zero = epsilon_sharpness(fn, epsilon=0.0, steps=3)
    assert zero.value == 0.0 and zero.relative == 0.0 and zero.max_loss == zero.base_loss
    res = epsilon_sharpness(fn, epsilon=1e-2, steps=5)
    assert res.value > 0 and res.max_loss > res.base_loss
    assert res.relative == pytest.approx(100 * res.value / (1 + res.base_loss))
    assert res.gradient_count == 6 and res.forward_count == 6 * 2
    bigger = epsilon_sharpness(fn, epsilon=5e-2, steps=5)
    assert bigger.value > res.value
    assert _same(model, before)


def test_epsilon_sharpness_of_a_linear_loss_is_exact():
    """For L = cᵀθ the box maximum is Σ|c_i|·ε(|θ_i|+1), reached by sign ascent."""
    model = nn.Linear(4, 1, bias=False).double()
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn = LossFunction(model, lambda m, b: m(b).mean(), [x])
    c, theta = x.mean(0), model.weight.detach().reshape(-1)
    eps = 1e-2
    res = epsilon_sharpness(fn, epsilon=eps, steps=4)
    assert res.value == pytest.approx(float((c.abs() * eps * (theta.abs() + 1)).sum()), rel=1e-10)


def test_weights_restored_after_an_exception(setup):
    model, _, x, y = setup
    before = _snapshot(model)
    calls = {"n": 0}

    def flaky(m, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return _ce(m, batch)

    fn = LossFunction(model, flaky, [(x, y)])
    d = random_direction(model, seed=0)
    runs = [
        lambda: line_slice(fn, d, num_points=7),
        lambda: plane_slice(fn, d, d, num_points=3),
        lambda: interpolate(fn, _model(1).state_dict(), _model(2).state_dict(), num_points=7),
        lambda: epsilon_sharpness(fn, epsilon=0.1, steps=6),
    ]
    for run in runs:
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="boom"):
            run()
        assert calls["n"] == 4  # it failed mid-way, with weights displaced
        assert _same(model, before) and model.training


def test_errors_name_the_argument(setup):
    model, fn, _, _ = setup
    d = random_direction(model, seed=0)
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 2; got 1"):
        line_slice(fn, d, num_points=1)
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 2"):
        plane_slice(fn, d, d, num_points=(4, 1))
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 2"):
        interpolate(fn, model.state_dict(), model.state_dict(), num_points=0)
    with pytest.raises(ValueError, match="`distance` must be > 0"):
        line_slice(fn, d, distance=0.0)
    with pytest.raises(ValueError, match=r"`direction` has key 'head\.weight'"):
        line_slice(fn, {"head.weight": torch.ones(3)})
    with pytest.raises(
        ValueError, match=r"`direction2\['3.bias'\]` must have the parameter's shape"
    ):
        plane_slice(fn, d, {"3.bias": torch.ones(4)})
    with pytest.raises(TypeError, match="`direction` must be a non-empty mapping"):
        line_slice(fn, {})
    partial = dict(model.state_dict())
    partial.pop("3.bias")
    with pytest.raises(
        ValueError, match=r"`state_b` must be a state_dict of the model.*missing \['3.bias'\]"
    ):
        interpolate(fn, model.state_dict(), partial)
    with pytest.raises(ValueError, match="`epsilon` must be >= 0"):
        epsilon_sharpness(fn, epsilon=-1e-3)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        epsilon_sharpness(fn, steps=0)
