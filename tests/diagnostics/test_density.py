"""Stochastic Lanczos quadrature: exact moments, total mass, mean, histogram mass, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import LossFunction, MatrixOperator, spectral_density


@pytest.fixture(scope="module")
def problem():
    """A tanh MLP (59 parameters, float64), its probe loss (one batch: SLQ needs many HVPs and
    the batch weighting is tested in test_hvp) and its exact Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    # graph rebuilt for every HVP, whose cost the counters below check (reuse:
    # test_graph_reuse.py)
    fn = LossFunction(
        model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), [(x, y)], retain_graph=False
    )
    return fn, fn.hessian()


def _rademacher_starts(n: int, runs: int, seed: int) -> list[torch.Tensor]:
    """The start vectors spectral_density draws for this seed (its documented recipe)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(n)
        for _ in range(runs)
    ]


def test_quadrature_moments_are_exact():
    """Σ τ² θ^p = mean over runs of q₁ᵀ H^p q₁ for every p <= 2m − 1 (Gauss quadrature)."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = (b + b.T) / 8
    m, runs = 6, 3
    res = spectral_density(MatrixOperator(a), num_runs=runs, num_steps=m, seed=5)
    assert res.nodes.shape == res.weights.shape == (runs * m,)
    assert res.hvp_count == runs * m and res.forward_count == 0
    starts = _rademacher_starts(40, runs, seed=5)
    for p in range(2 * m):
        direct = sum(float(q @ torch.linalg.matrix_power(a, p) @ q) for q in starts) / runs
        assert res.moment(p) == pytest.approx(direct, rel=1e-8, abs=1e-10), p
    # one degree further the rule is no longer exact (the test above is not vacuous)
    p = 2 * m + 2
    direct = sum(float(q @ torch.linalg.matrix_power(a, p) @ q) for q in starts) / runs
    assert abs(res.moment(p) - direct) > 1e-6 * abs(direct)


def test_mass_and_mean_of_the_density(problem):
    fn, h = problem
    n = h.shape[0]
    runs = 20
    res = spectral_density(fn, num_runs=runs, num_steps=n, sigma=0.02, seed=0)
    # H has rank 50 < n: each run stops once its Krylov space is exhausted (β ≈ 0)
    assert res.hvp_count == res.nodes.numel() < runs * n
    assert res.forward_count == res.hvp_count
    assert float(res.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    grid = res.grid(4001)
    phi = res.density(grid)
    assert float(torch.trapezoid(phi, grid)) == pytest.approx(1.0, abs=1e-6)
    mean = float(torch.trapezoid(grid * phi, grid))
    assert mean == pytest.approx(res.moment(1), abs=1e-6)
    # the mean estimates tr(H)/n; its standard error for Rademacher probes is known exactly
    exact_mean = float(torch.trace(h)) / n
    var_one = 2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum())) / n**2
    assert abs(mean - exact_mean) <= 4 * math.sqrt(var_one / runs)
    assert abs(mean - exact_mean) < 0.2 * abs(exact_mean)


def test_histogram_matches_exact_eigenvalues(problem):
    fn, h = problem
    eig = torch.linalg.eigvalsh(h)
    res = spectral_density(fn, num_runs=20, num_steps=h.shape[0], seed=1)
    edges = torch.tensor([-10.0, -1e-3, 1e-3, 0.05, 10.0], dtype=torch.float64)
    exact = torch.histogram(eig, edges).hist / eig.numel()
    assert bool((exact > 0.05).all())  # every bin is populated
    estimate = res.histogram(edges, sigma=0)
    # per-bin sd of the estimate ≈ √(2k/(n²·n_v)) ≈ 0.025 for the fullest bin (k = 24); the
    # seed is fixed, observed error 0.02
    torch.testing.assert_close(estimate, exact, atol=0.06, rtol=0)
    # Gaussian smoothing moves mass only near the edges: the outer bins keep theirs
    smooth = res.histogram(edges, sigma=1e-4)
    torch.testing.assert_close(smooth[[0, 3]], estimate[[0, 3]], atol=1e-3, rtol=0)
    assert float(smooth.sum()) == pytest.approx(1.0, abs=1e-9)
    # negative mass: all of the first bin, none of the last two
    assert float(estimate[0]) <= res.negative_mass <= float(estimate[:2].sum())
    assert res.negative_mass == pytest.approx(float(res.weights[res.nodes < 0].sum()))
    # with m = n every run's nodes are the exact eigenvalues (full Krylov space), to float64
    # round-off (observed <= 1.4e-15). Distances by direct subtraction: torch.cdist's
    # matrix-product path computes |a - b| as sqrt(a² + b² - 2ab), which is only accurate to
    # about sqrt(eps)·|a| ~ 1e-8 for nearly equal numbers.
    n = h.shape[0]
    for run in range(res.num_runs):
        nodes, weights = res.nodes[run * n : (run + 1) * n], res.weights[run * n : (run + 1) * n]
        gaps = (nodes[:, None] - eig[None, :]).abs().min(1).values
        assert bool((gaps[weights > 1e-8] < 1e-12).all()), (run, gaps.max())


def test_without_reorthogonalisation_low_moments_stay_exact(problem):
    fn, h = problem
    full = spectral_density(fn, num_runs=2, num_steps=25, seed=3)
    cheap = spectral_density(fn, num_runs=2, num_steps=25, seed=3, reorthogonalize=False)
    for p in (0, 1, 2):
        assert cheap.moment(p) == pytest.approx(full.moment(p), rel=1e-8)
    starts = _rademacher_starts(h.shape[0], 2, seed=3)
    assert full.moment(1) == pytest.approx(sum(float(q @ h @ q) for q in starts) / 2, rel=1e-9)


def test_errors_name_the_argument(problem):
    fn, _ = problem
    with pytest.raises(ValueError, match="`num_runs` must be an integer >= 1"):
        spectral_density(fn, num_runs=0)
    with pytest.raises(ValueError, match="`num_steps` must be an integer >= 1"):
        spectral_density(fn, num_steps=0)
    with pytest.raises(ValueError, match="`sigma` must be > 0"):
        spectral_density(fn, sigma=0.0)
    res = spectral_density(fn, num_steps=5)
    with pytest.raises(ValueError, match="`edges` must be a strictly increasing"):
        res.histogram(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 2"):
        res.grid(1)
