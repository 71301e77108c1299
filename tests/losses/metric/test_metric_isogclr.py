"""iSogCLR: a float64 loop of the algorithm (the paper's objective, LibAUC ``GCLoss_v1``'s moving
average and temperature updates) over several steps with revisited samples, the state tables,
small temperatures, host reads and errors.

LibAUC is not a dependency of the project; the loop below is written from the formulas in the
loss's docstring.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import ISogCLRLoss
from lightning_losses.testing import no_host_sync

HYPER = dict(temperature=0.1, rho=0.3, gamma=0.9, eta=0.01, beta=0.9, tau_min=0.05, tau_max=0.7)


def _views(n=6, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


class ReferenceISogCLR:
    """The algorithm with a Python dict per sample and scalar float64 tensor operations."""

    def __init__(self, temperature, rho, gamma, eta, beta, tau_min, tau_max):
        self.t0, self.rho, self.gamma, self.eta, self.beta = temperature, rho, gamma, eta, beta
        self.tau_min, self.tau_max = tau_min, tau_max
        self.state = {}  # index -> (u, v, tau)

    def step(self, a, b, index):
        """Per-sample objective estimates, the surrogate whose gradient the algorithm follows,
        and the state update."""
        a = torch.stack([r / r.norm() for r in a])
        b = torch.stack([r / r.norm() for r in b])
        n = len(index)
        values, surrogate, new_state = [], a.new_zeros(()), {}
        for i in range(n):
            u_old, v_old, tau = self.state.get(int(index[i]), (None, 0.0, self.t0))
            us, gs, value = [], [], a.new_zeros(())
            for view, other in ((a, b), (b, a)):
                x, positive = view[i], (view[i] * other[i]).sum()
                sims = [(x * other[j]).sum() for j in range(n) if j != i]
                sims += [(x * view[j]).sum() for j in range(n) if j != i]
                est = sum(torch.exp(s.detach() / tau) for s in sims) / len(sims)
                u = est if u_old is None else (1 - self.gamma) * u_old + self.gamma * est
                weights = [torch.exp(s.detach() / tau) / u for s in sims]
                value = value + tau * torch.log(u) - positive + tau * self.rho
                pairs = list(zip(weights, sims, strict=True))
                surrogate = surrogate + sum(w * s for w, s in pairs) / len(sims) - positive
                weighted = sum(w * s.detach() / tau for w, s in pairs) / len(sims)
                g = torch.log(u) + self.rho - weighted
                us.append(u)
                gs.append(g)
            v = (1 - self.beta) * v_old + self.beta * (gs[0] + gs[1]) / 2
            new_tau = min(max(float(tau - self.eta * v), self.tau_min), self.tau_max)
            new_state[int(index[i])] = ((us[0] + us[1]) / 2, float(v), new_tau)
            values.append(value)
        self.state.update(new_state)
        return torch.stack(values), surrogate


def _steps():
    """Three steps over 8 samples; samples 2, 3 and 5 come back."""
    return [
        (torch.tensor([0, 1, 2, 3, 4, 5]), 0),
        (torch.tensor([6, 2, 7, 5]), 1),
        (torch.tensor([3, 2, 1, 0, 5]), 2),
    ]


@pytest.mark.parametrize("rho", [0.3, 0.0])
def test_matches_the_algorithm_over_several_steps(rho):
    hyper = {**HYPER, "rho": rho, "eta": 0.5}  # a large step so that temperatures move
    loss = ISogCLRLoss(num_samples=8, reduction="none", **hyper)
    reference = ReferenceISogCLR(**hyper)
    for index, seed in _steps():
        a, b = _views(len(index), seed=seed)
        a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        ours = loss(a1, b1, index=index)
        ours.sum().backward()
        a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        ref_values, surrogate = reference.step(a2, b2, index)
        surrogate.backward()
        torch.testing.assert_close(ours.detach(), ref_values.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-9, atol=1e-12)
        for i, (u, v, tau) in reference.state.items():
            torch.testing.assert_close(loss.log_u[i], torch.log(u).detach(), rtol=1e-12, atol=0)
            assert loss.tau_grad[i].item() == pytest.approx(v, rel=1e-10, abs=1e-14)
            assert loss.tau[i].item() == pytest.approx(tau, rel=1e-12)
    assert not torch.allclose(loss.tau, torch.full((8,), 0.1, dtype=torch.float64))


def test_unseen_samples_keep_their_initial_state():
    loss = ISogCLRLoss(num_samples=10)
    a, b = _views(4)
    loss(a.requires_grad_(True), b, index=torch.tensor([1, 3, 5, 7]))
    untouched = torch.tensor([0, 2, 4, 6, 8, 9])
    assert torch.isinf(loss.log_u[untouched]).all() and (loss.log_u[[1, 3, 5, 7]] > -10).all()
    assert (loss.tau[untouched] == 0.1).all() and (loss.tau_grad[untouched] == 0).all()


def test_state_changes_only_on_a_forward_that_trains():
    loss = ISogCLRLoss(num_samples=6)
    a, b = _views()
    index = torch.arange(6)
    initial = {k: v.clone() for k, v in loss.state_dict().items()}
    loss(a, b, index=index)  # input without grad
    with torch.no_grad():
        loss(a.clone().requires_grad_(True), b, index=index)
    loss.eval()
    loss(a.clone().requires_grad_(True), b, index=index)
    for key, value in loss.state_dict().items():
        assert torch.equal(value, initial[key]), key
    loss.train()
    loss(a.clone().requires_grad_(True), b, index=index)
    assert not torch.equal(loss.tau_grad, initial["tau_grad"])


def test_eval_ignores_the_tables():
    """In eval mode every sample is at its first visit with the initial temperature."""
    trained = ISogCLRLoss(num_samples=6, eta=0.5)
    a, b = _views()
    index = torch.arange(6)
    for _ in range(3):
        trained(a.clone().requires_grad_(True), b, index=index)
    fresh = ISogCLRLoss(num_samples=6, eta=0.5)
    torch.testing.assert_close(trained.eval()(a, b, index=index), fresh.eval()(a, b, index=index))
    assert not torch.allclose(trained.train()(a, b, index=index), fresh.train()(a, b, index=index))


def test_repeated_indices_keep_the_last_row():
    loss = ISogCLRLoss(num_samples=4)
    a, b = _views(4)
    loss(a.requires_grad_(True), b, index=torch.tensor([2, 0, 2, 1]))
    # the same rows under distinct indices: row 0 as sample 8, row 2 as sample 2
    rows = ReferenceISogCLR(**HYPER)
    rows.step(a.detach(), b, torch.tensor([8, 0, 2, 1]))
    first, last = rows.state[8], rows.state[2]
    assert not math.isclose(float(first[0]), float(last[0]))
    torch.testing.assert_close(loss.log_u[2], torch.log(last[0]), rtol=1e-12, atol=0)
    assert loss.tau_grad[2].item() == pytest.approx(last[1], rel=1e-10)


def test_tables_grow_without_num_samples_and_resize_on_load():
    loss = ISogCLRLoss()
    a, b = _views(3)
    loss(a.requires_grad_(True), b, index=torch.tensor([4, 0, 9]))
    assert loss.tau.shape == (10,) and loss.log_u.shape == (10,)
    assert torch.isinf(loss.log_u[5]) and loss.tau[5] == 0.1
    fresh = ISogCLRLoss()
    fresh.load_state_dict(loss.state_dict())
    for name in ("log_u", "tau_grad", "tau"):
        assert torch.equal(getattr(fresh, name), getattr(loss, name))


def test_temperatures_stay_in_their_bounds():
    loss = ISogCLRLoss(num_samples=6, eta=100.0)
    a, b = _views()
    for _ in range(3):
        loss(a.clone().requires_grad_(True), b, index=torch.arange(6))
    assert ((loss.tau >= 0.05) & (loss.tau <= 0.7)).all()
    assert ((loss.tau == 0.05) | (loss.tau == 0.7)).any()


def test_small_temperatures_stay_finite_in_float32():
    """exp(1 / 0.005) overflows float32; u is kept in log space."""
    loss = ISogCLRLoss(num_samples=6, temperature=0.005, rho=6.0, tau_min=0.005, tau_max=0.05)
    a, b = _views(dtype=torch.float32)
    a.requires_grad_(True)
    for _ in range(2):
        value = loss(a, b, index=torch.arange(6))
        value.backward()
    assert torch.isfinite(value) and torch.isfinite(a.grad).all()
    assert torch.isfinite(loss.log_u).all() and torch.isfinite(loss.tau).all()


def test_one_image_gives_zero_and_changes_nothing():
    loss = ISogCLRLoss(num_samples=3)
    a, b = _views(1)
    a.requires_grad_(True)
    value = loss(a, b, index=torch.tensor([1]))
    value.backward()
    assert value == 0 and torch.isinf(loss.log_u).all() and (a.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    a, b = _views(8, 6)
    loss = ISogCLRLoss(num_samples=8)
    low = a.to(dtype).requires_grad_(True)
    value = loss(low, b.to(dtype), index=torch.arange(8))
    assert value.dtype == torch.float32
    value.backward()
    reference = ISogCLRLoss(num_samples=8)(a.to(dtype).double(), b.to(dtype).double(),
                                           index=torch.arange(8))  # fmt: skip
    torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads_with_num_samples(validate_args):
    a, b = _views(8, 5, dtype=torch.float32)
    a.requires_grad_(True)
    loss = build_loss("isogclr", num_samples=20, validate_args=validate_args)
    index = torch.arange(8) * 2
    loss(a, b, index=index)
    with no_host_sync():
        loss(a, b, index=index, sample_weight=torch.rand(8)).backward()


def test_bad_input_and_options_are_clear_errors():
    loss = ISogCLRLoss(num_samples=6)
    a, b = _views()
    with pytest.raises(ValueError, match=r"`index` must be in \[0, 6\).*\[9\]"):
        loss(a, b, index=torch.tensor([0, 1, 2, 3, 4, 9]))
    with pytest.raises(ValueError, match=r"`index` must have shape \(6,\)"):
        loss(a, b, index=torch.arange(5))
    with pytest.raises(TypeError, match="`index` must hold integer dataset indices"):
        loss(a, b, index=torch.arange(6.0))
    with pytest.raises(TypeError, match="needs the context argument"):
        loss(a, b)
    with pytest.raises(ValueError, match=r"`target` must be the second view"):
        loss(a, b[:4], index=torch.arange(6))
    with pytest.raises(ValueError, match=r"`temperature` must lie in \[`tau_min`, `tau_max`\]"):
        ISogCLRLoss(temperature=0.01)
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 1"):
        ISogCLRLoss(num_samples=0)
    with pytest.raises(ValueError, match="`gamma` must lie in"):
        ISogCLRLoss(gamma=0.0)


def test_defaults_follow_libauc():
    loss = ISogCLRLoss()
    assert (loss.temperature, loss.rho, loss.gamma, loss.eta, loss.beta) == (
        0.1,
        0.3,
        0.9,
        0.01,
        0.9,
    )
    assert (loss.tau_min, loss.tau_max) == (0.05, 0.7)
    assert math.isclose(loss.temperature, HYPER["temperature"])
