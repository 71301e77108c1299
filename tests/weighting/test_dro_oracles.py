"""DRO best responses against generic solvers of their stated objectives.

Each oracle's docstring states a maximisation over the simplex; here scipy (``linprog`` for the
linear CVaR problem, ``SLSQP`` for the others) solves the same problem from scratch on small
batches, and the oracle must match its value and its maximiser. Permutahedron constraints are
enumerated over all subsets (m = 5).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from lightning_losses.weighting import (
    chi_square_penalized_weights,
    chi_square_weights,
    cvar_kl_weights,
    cvar_weights,
    group_dro_update,
    kl_weights,
    spectral_risk_weights,
    spectrum_esrm,
    spectrum_extremile,
    spectrum_superquantile,
)

ORACLES = {
    "cvar": lambda v: cvar_weights(v, 0.3),
    "cvar_kl": lambda v: cvar_kl_weights(v, 0.3, 0.5),
    "chi2": lambda v: chi_square_weights(v, 1.0),
    "chi2_penalized": lambda v: chi_square_penalized_weights(v, 0.5),
    "kl": lambda v: kl_weights(v, 0.7),
    "spectral": lambda v: spectral_risk_weights(v, spectrum_esrm(v.numel(), 2.0)),
    "spectral_chi2": lambda v: spectral_risk_weights(v, spectrum_esrm(v.numel(), 2.0), 0.5),
    "spectral_kl": lambda v: spectral_risk_weights(
        v, spectrum_esrm(v.numel(), 2.0), 0.5, penalty="kl"
    ),
}


def losses(m, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(m, generator=g, dtype=torch.float64) * scale


def slsqp(objective, m, *, bounds=(0.0, 1.0), constraints=()):
    """Maximise ``objective`` over the simplex (plus ``constraints``) from many starts."""
    cons = [{"type": "eq", "fun": lambda p: p.sum() - 1.0}, *constraints]
    best = None
    rng = np.random.default_rng(0)
    for start in [np.full(m, 1.0 / m), *rng.dirichlet(np.ones(m), size=4)]:
        res = minimize(
            lambda p: -objective(p),
            start,
            method="SLSQP",
            bounds=[bounds] * m,
            constraints=cons,
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x, -best.fun


def kl_to_uniform(p):
    p = np.clip(p, 1e-300, None)
    return float(np.sum(p * np.log(p * len(p))))


# ------------------------------------------------------------------------- against solvers


@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 0.62, 1.0])
@pytest.mark.parametrize("m", [1, 7, 16])
def test_cvar_matches_linprog(alpha, m):
    v = losses(m, seed=m)
    p = cvar_weights(v, alpha)
    res = linprog(-v.numpy(), A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, 1 / (alpha * m))] * m)
    assert res.status == 0
    torch.testing.assert_close(p, torch.from_numpy(res.x), atol=1e-9, rtol=0)
    # the value is the mean of the worst alpha-fraction (with the fractional remainder)
    k = alpha * m
    top = torch.sort(v, descending=True).values
    expected = sum(top[j] * (min(j + 1, k) - min(j, k)) for j in range(m)) / k
    torch.testing.assert_close((p * v).sum(), expected)


@pytest.mark.parametrize(("alpha", "reg"), [(0.2, 0.1), (0.5, 1.0), (0.3, 0.02), (1.0, 0.5)])
def test_cvar_kl_matches_slsqp(alpha, reg):
    m = 8
    v = losses(m, seed=3)
    p = cvar_kl_weights(v, alpha, reg)
    x, best = slsqp(
        lambda q: q @ v.numpy() - reg * kl_to_uniform(q), m, bounds=(0.0, 1 / (alpha * m))
    )
    value = float(p @ v) - reg * kl_to_uniform(p.numpy())
    assert value >= best - 1e-9
    np.testing.assert_allclose(p.numpy(), x, atol=2e-4)
    assert float(p.max()) <= 1 / (alpha * m) + 1e-12


def test_cvar_kl_tends_to_cvar_as_reg_vanishes():
    v = losses(20, seed=5)
    torch.testing.assert_close(
        cvar_kl_weights(v, 0.25, 1e-4), cvar_weights(v, 0.25), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("rho", [0.05, 0.5, 1.0, 2.5])
def test_chi_square_ball_matches_slsqp(rho):
    m = 8
    v = losses(m, seed=11)
    p = chi_square_weights(v, rho)
    div = lambda q: 0.5 * np.mean((m * q - 1.0) ** 2)  # noqa: E731
    x, best = slsqp(
        lambda q: q @ v.numpy(), m, constraints=[{"type": "ineq", "fun": lambda q: rho - div(q)}]
    )
    assert div(p.numpy()) <= rho + 1e-9
    assert float(p @ v) >= best - 1e-7
    np.testing.assert_allclose(p.numpy(), x, atol=1e-4)


def test_chi_square_ball_is_tight_when_active_and_closed_form_when_not():
    m = 10
    v = losses(m, seed=2)
    p = chi_square_weights(v, 0.3)
    torch.testing.assert_close(0.5 * ((m * p - 1) ** 2).mean(), torch.tensor(0.3, dtype=v.dtype))
    # p is proportional to (v - eta)_+ : constant ratio on the support
    support = p > 0
    vs, ps = v[support], p[support]
    scale = (vs - vs[0]) / (ps - ps[0])  # sum_j (v_j - eta)_+, the same for every pair
    torch.testing.assert_close(scale[1:], scale[1:2].expand(scale.numel() - 1))
    eta = vs[0] - scale[1] * ps[0]
    assert (v[~support] <= eta + 1e-12).all() and (~support).any()
    # m <= 1 + 2 rho: the ball contains every vertex, all mass on the largest loss
    q = chi_square_weights(v, (m - 1) / 2)
    assert q[v.argmax()] == 1.0 and q.sum() == 1.0
    # a large ball with a tie at the top splits the mass over the tie
    w = torch.tensor([1.0, 3.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(chi_square_weights(w, 50.0), torch.tensor([0, 0.5, 0, 0.5]).double())
    # in the linear regime (every weight positive) p_i = (v_i - eta)/sum, eta closed form
    small = chi_square_weights(v, 0.01)
    assert (small > 0).all()
    eta = v.mean() - v.std(correction=0) / math.sqrt(2 * 0.01)
    torch.testing.assert_close(small, (v - eta) / (v - eta).sum())


@pytest.mark.parametrize("reg", [0.05, 0.3, 1.0, 5.0])
def test_chi_square_penalized_matches_slsqp(reg):
    m = 8
    v = losses(m, seed=13)
    p = chi_square_penalized_weights(v, reg)
    obj = lambda q: q @ v.numpy() - reg * 0.5 * np.mean((m * q - 1.0) ** 2)  # noqa: E731
    x, best = slsqp(obj, m)
    assert obj(p.numpy()) >= best - 1e-9
    np.testing.assert_allclose(p.numpy(), x, atol=1e-5)
    eta_support = v[p > 0] - p[p > 0] * reg * m  # p_i = (v_i - eta)/(reg m) on the support
    torch.testing.assert_close(eta_support, eta_support[:1].expand_as(eta_support))


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_kl_weights_match_slsqp_and_value(temperature):
    m = 6
    v = losses(m, seed=17)
    p = kl_weights(v, temperature)
    obj = lambda q: q @ v.numpy() - temperature * kl_to_uniform(q)  # noqa: E731
    x, best = slsqp(obj, m)
    np.testing.assert_allclose(p.numpy(), x, atol=1e-4)
    value = temperature * (torch.logsumexp(v / temperature, 0) - math.log(m))
    torch.testing.assert_close(torch.tensor(obj(p.numpy()), dtype=v.dtype), value)
    assert float(value) >= best - 1e-9


# ------------------------------------------------------------------------- spectral risk


def deshift_superquantile(n, tail_prob):  # the formula of deshift, quantile level 1 - alpha
    s = np.zeros(n)
    idx = math.floor(n * tail_prob)
    frac = 1 - (n - idx - 1) / (n * (1 - tail_prob))
    if frac > 1e-12:
        s[idx] = frac
        s[idx + 1 :] = 1 / (n * (1 - tail_prob))
    else:
        s[idx:] = 1 / (n - idx)
    return s


@pytest.mark.parametrize("m", [1, 5, 12, 100])
def test_spectra_match_their_formulas(m):
    for alpha in (0.05, 0.3, 0.5, 0.99):
        np.testing.assert_allclose(
            spectrum_superquantile(m, alpha).numpy(),
            deshift_superquantile(m, 1 - alpha),
            atol=1e-12,
        )
    i = np.arange(m, dtype=np.float64)
    for r in (1.0, 2.0, 3.5):
        np.testing.assert_allclose(
            spectrum_extremile(m, r).numpy(), ((i + 1) ** r - i**r) / m**r, rtol=1e-12
        )
    for rho in (0.5, 1.0, 7.0):
        ref = (
            math.exp(-rho)
            * (np.exp(rho * (i + 1) / m) - np.exp(rho * i / m))
            / (1 - math.exp(-rho))
        )
        np.testing.assert_allclose(spectrum_esrm(m, rho).numpy(), ref, rtol=1e-12)
    for s in (spectrum_superquantile(m, 0.3), spectrum_extremile(m, 2.0), spectrum_esrm(m, 3.0)):
        assert s.shape == (m,) and s.dtype == torch.float64
        torch.testing.assert_close(s.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert (s[1:] >= s[:-1] - 1e-15).all() and (s >= 0).all()
    torch.testing.assert_close(
        spectrum_esrm(m, 0.0), torch.full((m,), 1.0 / m, dtype=torch.float64)
    )
    torch.testing.assert_close(spectrum_extremile(m, 1.0), torch.full((m,), 1.0 / m).double())


def test_spectral_risk_without_shift_cost_is_the_sorted_assignment():
    v = losses(9, seed=21)
    sigma = spectrum_extremile(9, 2.5)
    p = spectral_risk_weights(v, sigma)
    torch.testing.assert_close(p[torch.argsort(v)], sigma)
    torch.testing.assert_close(
        spectral_risk_weights(v, spectrum_superquantile(9, 0.4)), cvar_weights(v, 0.4)
    )


def permutahedron_constraints(sigma):
    """q in P(sigma) iff sum q = 1 and every k-subset sums to at most the top-k of sigma."""
    m = len(sigma)
    top = np.cumsum(np.sort(sigma)[::-1])
    cons = []
    for k in range(1, m):
        for subset in itertools.combinations(range(m), k):
            idx = list(subset)
            cons.append({"type": "ineq", "fun": lambda q, idx=idx, b=top[k - 1]: b - q[idx].sum()})
    return cons


@pytest.mark.parametrize("penalty", ["chi2", "kl"])
@pytest.mark.parametrize("shift_cost", [0.05, 0.5, 3.0])
@pytest.mark.parametrize("spectrum", ["esrm", "extremile", "superquantile"])
def test_spectral_risk_pav_matches_constrained_solver(penalty, shift_cost, spectrum):
    m = 5
    v = losses(m, seed=23, scale=1.0)
    sigma = {
        "esrm": spectrum_esrm(m, 2.0),
        "extremile": spectrum_extremile(m, 2.0),
        "superquantile": spectrum_superquantile(m, 0.5),
    }[spectrum]
    p = spectral_risk_weights(v, sigma, shift_cost, penalty)
    u = np.full(m, 1.0 / m)
    div = (lambda q: 0.5 * np.sum((q - u) ** 2)) if penalty == "chi2" else kl_to_uniform
    obj = lambda q: q @ v.numpy() - shift_cost * div(q)  # noqa: E731
    x, best = slsqp(obj, m, constraints=permutahedron_constraints(sigma.numpy()))
    # p lies in the permutahedron ...
    top_p = np.cumsum(np.sort(p.numpy())[::-1])
    top_s = np.cumsum(np.sort(sigma.numpy())[::-1])
    assert (top_p <= top_s + 1e-9).all() and abs(top_p[-1] - 1) < 1e-12
    # ... and is its maximiser
    assert obj(p.numpy()) >= best - 1e-8
    np.testing.assert_allclose(p.numpy(), x, atol=2e-4)


def test_spectral_risk_shift_cost_limits():
    v = losses(12, seed=29)
    sigma = spectrum_superquantile(12, 0.5)
    for penalty in ("chi2", "kl"):
        near_spectrum = spectral_risk_weights(v, sigma, 1e-6, penalty)
        torch.testing.assert_close(
            near_spectrum, spectral_risk_weights(v, sigma), atol=1e-6, rtol=0
        )
        near_uniform = spectral_risk_weights(v, sigma, 1e6, penalty)
        torch.testing.assert_close(near_uniform, torch.full_like(v, 1 / 12), atol=1e-5, rtol=0)
        # more shift cost, less weight on the worst loss (deshift's own test)
        w1 = spectral_risk_weights(v, sigma, 1.0, penalty)
        w2 = spectral_risk_weights(v, sigma, 2.0, penalty)
        assert w1[v.argmax()] >= w2[v.argmax()]


# ------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list(ORACLES))
@pytest.mark.parametrize("seed", [0, 1])
def test_simplex_permutation_and_shift(name, seed):
    oracle = ORACLES[name]
    v = losses(11, seed=seed, scale=3.0)
    p = oracle(v)
    assert p.shape == v.shape and p.dtype == v.dtype
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=v.dtype))
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(oracle(v[perm]), p[perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(oracle(v + 5.0), p, atol=1e-9, rtol=0)
    # larger loss never gets smaller weight (all these oracles are monotone)
    order = torch.argsort(v)
    assert (p[order][1:] >= p[order][:-1] - 1e-12).all()


@pytest.mark.parametrize("name", list(ORACLES))
def test_edge_cases(name):
    oracle = ORACLES[name]
    one = oracle(torch.tensor([0.7], dtype=torch.float64))
    torch.testing.assert_close(one, torch.tensor([1.0], dtype=torch.float64))
    flat = oracle(torch.full((6,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(flat, torch.full((6,), 1 / 6, dtype=torch.float64))
    tied = torch.tensor([1.0, 4.0, 2.0, 4.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    p = oracle(tied)
    assert float(p[1]) == pytest.approx(float(p[3]), abs=1e-12)
    assert float(p[2]) == pytest.approx(float(p[5]), abs=1e-12)
    # dtype and device preserved; float32 input is solved in float64 and cast back
    v32 = losses(9, seed=4).float()
    p32 = oracle(v32)
    assert p32.dtype == torch.float32
    torch.testing.assert_close(p32, oracle(v32.double()).float())
    # no gradient flows through the weights
    v = losses(9, seed=4).requires_grad_(True)
    assert not oracle(v).requires_grad


def test_cvar_ties_share_mass():
    v = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0], dtype=torch.float64)
    p = cvar_weights(v, 0.4)  # two slots of 1/2 for three tied maxima
    torch.testing.assert_close(p, torch.tensor([0, 1 / 3, 1 / 3, 1 / 3, 0]).double())


def test_large_losses_stay_finite():
    v = torch.tensor([1e4, -3e3, 2.0, 5e4], dtype=torch.float64)
    for oracle in ORACLES.values():
        p = oracle(v)
        assert torch.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-12


# ------------------------------------------------------------------------- group DRO


def test_group_dro_update_exponentiated_gradient():
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    losses_g = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    counts = torch.tensor([4, 2, 6])
    new = group_dro_update(q, losses_g, counts, step_size=0.1)
    ref = q * torch.exp(0.1 * losses_g)
    torch.testing.assert_close(new, ref / ref.sum())
    assert torch.equal(q, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))  # pure
    sizes = torch.tensor([100.0, 25.0, 400.0], dtype=torch.float64)
    adj = group_dro_update(q, losses_g, counts, step_size=0.1, adjustment=2.0, group_sizes=sizes)
    ref = q * torch.exp(0.1 * (losses_g + 2.0 / sizes.sqrt()))
    torch.testing.assert_close(adj, ref / ref.sum())


def test_group_dro_absent_groups_keep_their_weight():
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    losses_g = torch.tensor([2.0, float("nan"), 1.0, float("nan")])  # 0/0 means of absent groups
    counts = torch.tensor([3, 0, 5, 0])
    new = group_dro_update(q, losses_g, counts, step_size=0.5)
    assert new[1] == q[1] and new[3] == q[3]
    torch.testing.assert_close(new.sum(), torch.tensor(1.0))
    ref = q[[0, 2]] * torch.exp(0.5 * losses_g[[0, 2]])
    torch.testing.assert_close(new[[0, 2]], 0.4 * ref / ref.sum())
    assert torch.equal(group_dro_update(q, losses_g, torch.zeros(4)), q)
    assert group_dro_update(q, losses_g, counts).dtype == torch.float32


def test_group_dro_errors():
    q = torch.full((3,), 1 / 3)
    with pytest.raises(ValueError, match="group_losses"):
        group_dro_update(q, torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="group_sizes"):
        group_dro_update(q, torch.ones(3), torch.ones(3), adjustment=1.0)
    with pytest.raises(ValueError, match="step_size"):
        group_dro_update(q, torch.ones(3), torch.ones(3), step_size=-1.0)
    with pytest.raises(ValueError, match=r"group_losses.*NaN"):
        group_dro_update(q, torch.tensor([1.0, float("nan"), 1.0]), torch.ones(3))


# ------------------------------------------------------------------------- errors


def test_argument_errors_name_the_argument():
    v = losses(5)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            cvar_weights(v, bad)
        with pytest.raises(ValueError, match="alpha"):
            cvar_kl_weights(v, bad, 1.0)
    with pytest.raises(ValueError, match="reg"):
        cvar_kl_weights(v, 0.5, -1.0)
    with pytest.raises(ValueError, match="rho"):
        chi_square_weights(v, -0.1)
    with pytest.raises(ValueError, match="reg"):
        chi_square_penalized_weights(v, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        kl_weights(v, -1.0)
    with pytest.raises(ValueError, match="losses"):
        kl_weights(v[None], 1.0)
    with pytest.raises(ValueError, match="losses"):
        kl_weights(v[:0], 1.0)
    with pytest.raises(ValueError, match=r"losses.*NaN"):
        chi_square_weights(torch.tensor([1.0, float("nan")]), 1.0)
    with pytest.raises(TypeError, match="losses"):
        kl_weights([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="spectrum"):
        spectral_risk_weights(v, torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="spectrum"):
        spectral_risk_weights(v, torch.linspace(0.4, 0.0, 5))  # decreasing
    with pytest.raises(ValueError, match="penalty"):
        spectral_risk_weights(v, spectrum_esrm(5, 1.0), 1.0, penalty="l1")
    with pytest.raises(ValueError, match="shift_cost"):
        spectral_risk_weights(v, spectrum_esrm(5, 1.0), -1.0)
    with pytest.raises(ValueError, match="r"):
        spectrum_extremile(5, 0.5)
    with pytest.raises(ValueError, match="m"):
        spectrum_esrm(0, 1.0)
