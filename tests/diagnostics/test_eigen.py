"""Top-k eigenvalues: Lanczos and power iteration against the exact spectrum, and their errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import (
    LossFunction,
    MatrixOperator,
    lanczos,
    lanczos_tridiagonal,
    power_iteration,
    top_eigenvalues,
)


def _problem():
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
    params = dict(model.named_parameters())
    shapes = [p.shape for p in params.values()]

    def f(v):
        parts = torch.split(v, [s.numel() for s in shapes])
        new = {n: p.view(s) for n, p, s in zip(params, parts, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, new, (x,)), y)

    h = torch.autograd.functional.hessian(f, fn.parameters_vector())
    return fn, h


@pytest.fixture(scope="module")
def problem():
    return _problem()


def _spectrum(n: int, values: list[float], seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with the given leading eigenvalues and the rest uniform in [-0.1, 0.1]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    rest = torch.rand(n - len(values), generator=g, dtype=torch.float64) * 0.2 - 0.1
    lam = torch.cat([torch.tensor(values, dtype=torch.float64), rest])
    return q @ torch.diag(lam) @ q.T


def test_lanczos_top_k_matches_exact(problem):
    fn, h = problem
    exact = torch.linalg.eigvalsh(h).flip(0)
    assert exact[0] > 0.5 and exact[-1] < -0.1  # an indefinite Hessian: a real test of "which"
    hvps0, forwards0 = fn.hvp_count, fn.forward_count
    res = lanczos(fn, k=3, tol=1e-8)
    torch.testing.assert_close(res.eigenvalues, exact[:3], rtol=1e-7, atol=0)
    assert res.converged and res.method == "lanczos"
    assert res.hvp_count == res.iterations == fn.hvp_count - hvps0 < 59
    assert res.forward_count == 3 * res.hvp_count == fn.forward_count - forwards0
    # Ritz vectors are eigenvectors: H u = λ u, unit norm, mutually orthogonal
    u = res.eigenvectors
    assert u.shape == (3, 59)
    torch.testing.assert_close(u @ u.T, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(u @ h, res.eigenvalues[:, None] * u, atol=1e-6, rtol=0)
    assert bool((res.residuals < 1e-6).all())


def test_lanczos_which(problem):
    fn, h = problem
    exact = torch.linalg.eigvalsh(h)
    smallest = lanczos(fn, k=2, which="smallest", tol=1e-8, return_eigenvectors=False)
    torch.testing.assert_close(smallest.eigenvalues, exact[:2], rtol=1e-7, atol=0)
    assert smallest.eigenvectors is None
    by_magnitude = exact[exact.abs().argsort(descending=True)[:4]]
    magnitude = lanczos(fn, k=4, which="magnitude", tol=1e-8)
    torch.testing.assert_close(magnitude.eigenvalues, by_magnitude, rtol=1e-7, atol=0)


def test_power_iteration_matches_exact_and_lanczos(problem):
    fn, h = problem
    exact = torch.linalg.eigvalsh(h)
    top = exact[exact.abs().argsort(descending=True)[:3]]
    default = power_iteration(fn)  # PyHessian's defaults: tol 1e-3, max_iter 100
    assert default.eigenvalues[0] == pytest.approx(float(top[0]), rel=1e-2)
    assert (
        default.hvp_count == default.iterations and default.forward_count == 3 * default.hvp_count
    )
    tight = power_iteration(fn, k=3, tol=1e-9, max_iter=1000)
    assert tight.converged and tight.method == "power"
    torch.testing.assert_close(tight.eigenvalues, top, rtol=1e-4, atol=0)
    via_lanczos = top_eigenvalues(fn, k=3, which="magnitude", tol=1e-8)
    torch.testing.assert_close(tight.eigenvalues, via_lanczos.eigenvalues, rtol=1e-4, atol=0)
    # the eigenvectors agree up to sign
    overlap = (tight.eigenvectors * via_lanczos.eigenvectors).sum(1).abs()
    torch.testing.assert_close(overlap, torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)


def test_power_iteration_on_a_known_spectrum():
    a = _spectrum(60, [5.0, -3.0, 2.0])
    res = power_iteration(a, k=3, tol=1e-12, max_iter=2000)
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor([5.0, -3.0, 2.0]).double(), rtol=1e-8, atol=0
    )
    lan = lanczos(MatrixOperator(a), k=3, which="magnitude", tol=1e-10)
    torch.testing.assert_close(lan.eigenvalues, res.eigenvalues, rtol=1e-8, atol=0)
    assert lan.hvp_count < res.hvp_count  # Lanczos needs fewer products for the same accuracy


def test_not_converged_is_reported():
    a = _spectrum(60, [1.0, 0.99])  # a tiny gap: two iterations cannot converge
    assert not power_iteration(a, k=1, tol=1e-12, max_iter=2).converged
    res = lanczos(a, k=2, tol=1e-12, max_iter=3)
    assert not res.converged and res.iterations == 3


def test_tol_zero_spends_every_product_after_exact_convergence():
    # a gap of 10: both methods reach the top eigenvalue to the last bit well before 40 steps,
    # where a non-strict test (change <= 0) would stop; tol 0 must still take all 40
    a = _spectrum(60, [50.0, 5.0, 4.0])
    for res in (
        power_iteration(a, k=1, tol=0.0, max_iter=40),
        lanczos(a, k=1, tol=0.0, max_iter=40),
    ):
        assert res.hvp_count == res.iterations == 40
        torch.testing.assert_close(res.eigenvalues, torch.tensor([50.0]).double())
    early = power_iteration(a, k=1, tol=1e-12, max_iter=40)
    assert early.iterations < 40  # the same run with a tolerance does stop


def test_invariant_subspace_restart():
    res = lanczos(2.5 * torch.eye(6, dtype=torch.float64), k=3)
    torch.testing.assert_close(res.eigenvalues, torch.full((3,), 2.5, dtype=torch.float64))
    assert res.converged and res.iterations == 3
    u = res.eigenvectors
    torch.testing.assert_close(u @ u.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_seeded_and_deterministic(problem):
    fn, _ = problem
    a = lanczos(fn, k=2, tol=1e-6, seed=3)
    b = lanczos(fn, k=2, tol=1e-6, seed=torch.Generator().manual_seed(3))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    c = lanczos(fn, k=2, tol=1e-6, seed=4)
    assert not torch.equal(a.eigenvectors, c.eigenvectors)
    torch.testing.assert_close(a.eigenvalues, c.eigenvalues, rtol=1e-5, atol=0)


def test_errors_name_the_argument(problem):
    fn, _ = problem
    with pytest.raises(
        ValueError, match=r"`k` must be <= the number of selected parameters \(n = 59\)"
    ):
        lanczos(fn, k=60)
    with pytest.raises(ValueError, match="`k` must be <= the number"):
        power_iteration(fn, k=100)
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        power_iteration(fn, k=0)
    with pytest.raises(ValueError, match="`max_iter` must be an integer >= 1"):
        power_iteration(fn, max_iter=0)
    with pytest.raises(ValueError, match="`max_iter` must be an integer >= 1"):
        lanczos(fn, max_iter=-5)
    with pytest.raises(ValueError, match=r"`max_iter` must be >= k \(= 3\)"):
        lanczos(fn, k=3, max_iter=2)
    with pytest.raises(ValueError, match="`tol` must be >= 0"):
        lanczos(fn, tol=-1.0)
    with pytest.raises(ValueError, match="`which` must be one of 'largest', 'smallest'"):
        lanczos(fn, which="biggest")
    with pytest.raises(ValueError, match="`method` must be one of"):
        top_eigenvalues(fn, method="arnoldi")


def test_lanczos_basis_stays_orthonormal_in_float32():
    """The blocked, DGKS-tested reorthogonalisation keeps Q orthonormal to float32 rounding
    over many steps on a spectrum with a tight top cluster (where plain Lanczos loses it)."""
    n = 600
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    values = torch.cat([torch.tensor([10.0, 9.999, 9.998, 5.0]), torch.rand(n - 4, generator=g)])
    a = ((q * values.double()) @ q.T).float()
    start = torch.randn(n, generator=g)
    alphas, _, basis = lanczos_tridiagonal(MatrixOperator(a), start, 150)
    assert len(alphas) == len(basis) == 150
    basis = torch.stack(basis)
    gram = basis @ basis.T
    assert float((gram - torch.eye(150)).abs().max()) < 1e-5
    res = lanczos(a, 3, max_iter=150, tol=0.0, seed=0)
    torch.testing.assert_close(res.eigenvalues, values[:3].double(), rtol=1e-5, atol=0)
    # the Ritz vectors (combined block by block) are unit eigenvectors
    assert res.eigenvectors is not None
    torch.testing.assert_close(res.eigenvectors.norm(dim=1), torch.ones(3), rtol=1e-5, atol=0)
    assert float(res.residuals.max()) < 1e-4
