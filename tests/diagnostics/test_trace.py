"""Hutchinson and Hutch++ against the exact trace; Hutch++ wins on a low-rank-dominated matrix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import LossFunction, MatrixOperator, hutchinson, hutchpp, trace


@pytest.fixture(scope="module")
def problem():
    """A tanh MLP (59 parameters, float64) over three uneven batches, and its exact Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    batches = [(x[:17], y[:17]), (x[17:32], y[17:32]), (x[32:], y[32:])]
    # graphs rebuilt for every HVP, whose cost the counters below check (reuse:
    # test_graph_reuse.py)
    fn = LossFunction(
        model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batches, retain_graph=False
    )
    return fn, fn.hessian()


def _low_rank_dominated(n: int = 100, rank: int = 8, seed: int = 0) -> torch.Tensor:
    """PSD: ``rank`` eigenvalues of 50–100 and a bulk of ``n - rank`` eigenvalues in [0, 0.05]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    top = 50 + 50 * torch.rand(rank, generator=g, dtype=torch.float64)
    bulk = 0.05 * torch.rand(n - rank, generator=g, dtype=torch.float64)
    return q @ torch.diag(torch.cat([top, bulk])) @ q.T


def test_hutchinson_within_four_standard_errors(problem):
    fn, h = problem
    exact = float(torch.trace(h))
    hvps0 = fn.hvp_count
    res = hutchinson(fn, num_matvecs=150, seed=0)
    assert res.method == "hutchinson" and res.samples.shape == (150,)
    assert res.hvp_count == 150 == fn.hvp_count - hvps0 and res.forward_count == 3 * 150
    assert res.std_error > 0
    assert abs(res.estimate - exact) <= 4 * res.std_error
    assert res.estimate == pytest.approx(float(res.samples.mean()))
    assert res.std_error == pytest.approx(float(res.samples.std()) / math.sqrt(150))


def test_hutchpp_within_four_standard_errors(problem):
    fn, h = problem
    exact = float(torch.trace(h))
    res = hutchpp(fn, num_matvecs=45, seed=0)  # sketch of 15, 15 exact products, 15 probes
    assert res.method == "hutch++" and res.hvp_count == 45 and res.samples.shape == (15,)
    assert abs(res.estimate - exact) <= 4 * res.std_error
    assert res.estimate == pytest.approx(res.exact_part + float(res.samples.mean()))
    # the sketch captures most of the trace: the exact part is the bulk of the estimate
    assert abs(res.exact_part - exact) < abs(exact) / 2


def test_hutchpp_beats_hutchinson_on_low_rank_dominated():
    a = _low_rank_dominated()
    exact = float(torch.trace(a))
    budget, seeds = 30, range(10)
    err_h = [hutchinson(a, budget, seed=s).estimate - exact for s in seeds]
    err_pp = [hutchpp(a, budget, seed=s).estimate - exact for s in seeds]
    rms_h = math.sqrt(sum(e * e for e in err_h) / len(err_h))
    rms_pp = math.sqrt(sum(e * e for e in err_pp) / len(err_pp))
    assert rms_pp < 0.05 * rms_h  # the top 8 eigenvalues are taken exactly by the sketch
    # the standard errors say so too
    assert hutchpp(a, budget).std_error < 0.05 * hutchinson(a, budget).std_error


def test_operator_paths_agree():
    """A quadratic loss ½θᵀAθ goes through double backward and gives the matrix's numbers."""
    a = _low_rank_dominated(n=30, rank=3)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.linspace(-1, 1, 30, dtype=torch.float64))

        def forward(self):
            return 0.5 * self.theta @ a @ self.theta

    model = Quadratic()
    fn = LossFunction(model, closure=model)
    for method in ("hutchinson", "hutch++"):
        by_loss = trace(fn, 20, method=method, seed=1)
        by_matrix = trace(MatrixOperator(a), 20, method=method, seed=1)
        assert by_loss.estimate == pytest.approx(by_matrix.estimate, rel=1e-10)
        assert by_loss.hvp_count == by_matrix.hvp_count == by_loss.forward_count == 20


def test_hutchpp_is_exact_when_the_sketch_spans_everything():
    a = _low_rank_dominated(n=6, rank=2)
    res = hutchpp(a, num_matvecs=30)  # sketch of 10 columns >= n = 6
    assert res.estimate == pytest.approx(float(torch.trace(a)), rel=1e-12)
    assert res.std_error == pytest.approx(0.0, abs=1e-12)


def test_errors_name_the_argument(problem):
    fn, _ = problem
    with pytest.raises(ValueError, match="`num_matvecs` must be an integer >= 2"):
        hutchinson(fn, num_matvecs=1)
    with pytest.raises(ValueError, match="`num_matvecs` must be an integer >= 4"):
        hutchpp(fn, num_matvecs=3)
    with pytest.raises(ValueError, match="`method` must be one of 'hutch\\+\\+', 'hutchinson'"):
        trace(fn, method="xtrace")
    with pytest.raises(ValueError, match="`seed` must be an integer >= 0"):
        hutchinson(fn, seed=-1)
