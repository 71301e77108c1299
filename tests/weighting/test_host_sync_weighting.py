"""The pure policies read nothing back to the host, and the rewritten parts equal the old ones.

Every function a callback calls per training step (score-store updates, DRO best responses,
the group DRO step, PLD's draws and selection) runs inside
:func:`~lightning_losses.testing.no_host_sync`. The spectral-risk oracle with a shift cost now
computes its isotonic fit with the min-max formula instead of pool adjacent violators; it is
compared here with a plain PAV loop written from the definition.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.testing import no_host_sync
from lightning_losses.weighting import (
    ScoreStore,
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
from lightning_losses.weighting.pld import pld_draws, pld_probabilities, pld_select


def _losses(m: int = 24, seed: int = 0, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 4, (m,), generator=g).double()
    return torch.randn(m, generator=g, dtype=torch.float64).exp()


ORACLES = [
    lambda v: cvar_weights(v, 0.3),
    lambda v: cvar_kl_weights(v, 0.3, 0.5),
    lambda v: chi_square_weights(v, 1.0),
    lambda v: chi_square_penalized_weights(v, 0.5),
    lambda v: kl_weights(v, 1.0),
    lambda v: spectral_risk_weights(v, spectrum_extremile(v.numel(), 2.0)),
    lambda v: spectral_risk_weights(v, spectrum_superquantile(v.numel(), 0.3), 0.5, "chi2"),
    lambda v: spectral_risk_weights(v, spectrum_esrm(v.numel(), 2.0), 0.5, "kl"),
]


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("ties", [False, True])
def test_dro_oracles_read_nothing_back(oracle, ties):
    v = _losses(ties=ties).float()
    with no_host_sync():
        p = oracle(v)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0), rtol=0, atol=1e-6)


def test_group_dro_step_reads_nothing_back():
    q = torch.full((3,), 1 / 3, dtype=torch.float64)
    with no_host_sync():
        new = group_dro_update(
            q,
            torch.tensor([0.5, 2.0, float("nan")]),  # group 2 absent: its 0/0 mean is not read
            torch.tensor([4.0, 4.0, 0.0]),
            step_size=0.1,
            adjustment=1.0,
            group_sizes=torch.tensor([10.0, 10.0, 5.0]),
        )
    assert new[2] == q[2] and new[1] > new[0]


def test_score_store_update_with_duplicates_reads_nothing_back():
    store = ScoreStore(6)
    with no_host_sync():
        store.update(torch.tensor([4, 1, 4, 0]), torch.tensor([1.0, 0.5, 3.0, 0.25]), epoch=2)
        store.update(torch.tensor([4]), torch.tensor([0.0]), epoch=3)
    torch.testing.assert_close(store.last_loss, torch.tensor([0.25, 0.5, 3.0, 3.0, 0.0, 3.0]))
    torch.testing.assert_close(store.ema[4], torch.tensor(0.9 * 2.0))
    assert store.visits.tolist() == [1, 1, 0, 0, 2, 0]
    assert store.last_epoch.tolist() == [2, 2, -1, -1, 3, -1]


def test_pld_draws_and_selection_read_nothing_back():
    pools = torch.tensor([7, 3, 7, 3, 9, 9, 7, 3, 9])
    losses = torch.rand(9, generator=torch.Generator().manual_seed(0))
    with no_host_sync():
        draws = pld_draws(pools, seed=1, epoch=2, batch_idx=3)
        w = pld_select(losses, pools, 0.5, 2, draws=draws)
        p = pld_probabilities(losses, pools, 0.5)
    for pool in (3, 7, 9):
        members = pools == pool
        assert sorted(w[members].tolist()) == [0.0, 1.5, 1.5]
        torch.testing.assert_close(p[members].sum(), torch.tensor(1.0, dtype=p.dtype))


def test_value_checks_keep_their_messages():
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 3\).*got \[5\]"):
        ScoreStore(3).update(torch.tensor([0, 5]), torch.tensor([1.0, 1.0]), epoch=0)
    with pytest.raises(ValueError, match=r"pools \[2\] have sizes \[1\]"):
        pools = torch.tensor([1, 1, 2])
        pld_select(torch.zeros(3), pools, num_selected=2, draws=pld_draws(pools, 0, 0, 0))
    with pytest.raises(ValueError, match=r"`spectrum` must sum to 1; got 0\.5"):
        spectral_risk_weights(torch.ones(2), torch.tensor([0.25, 0.25]))
    with pytest.raises(ValueError, match=r"`group_sizes` must be positive, shape \(2,\); got"):
        group_dro_update(
            torch.full((2,), 0.5),
            torch.ones(2),
            torch.ones(2),
            adjustment=1.0,
            group_sizes=torch.tensor([1.0, 0.0]),
        )


# ----------------------------------------------------------------------------- the isotonic fit


def _pav(states, combine, value):
    """Pool adjacent violators, from the definition: merge while a block is not below the next."""
    blocks = []  # (state, length, value)
    for st in states:
        blocks.append((st, 1, value(st)))
        while len(blocks) > 1 and blocks[-2][2] >= blocks[-1][2]:
            (s2, n2, _), (s1, n1, _) = blocks.pop(), blocks.pop()
            merged = combine(s1, s2)
            blocks.append((merged, n1 + n2, value(merged)))
    return [val for _, n, val in blocks for _ in range(n)]


def _logaddexp(a, b):
    return b if a == -math.inf else max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _spectral_by_pav(v, sigma, nu, penalty):
    """The oracle with the fit computed by PAV on the host (the implementation it replaced)."""
    m = v.numel()
    order = torch.argsort(v, stable=True)
    s = v[order] / nu
    if penalty == "chi2":
        y = (s + 1.0 / m - sigma).tolist()
        fit = _pav(
            [(yi, 1.0) for yi in y], lambda a, b: (a[0] + b[0], a[1] + b[1]), lambda t: t[0] / t[1]
        )
        q = (s + 1.0 / m - torch.tensor(fit, dtype=torch.float64)).clamp_min(0.0)
    else:
        log_m = math.log(m)
        states = list(zip(s.tolist(), torch.log(sigma).tolist(), strict=True))
        fit = _pav(
            states,
            lambda a, b: (_logaddexp(a[0], b[0]), _logaddexp(a[1], b[1])),
            lambda t: t[0] - t[1] - log_m,
        )
        q = torch.exp(s - torch.tensor(fit, dtype=torch.float64) - log_m)
    p = torch.empty_like(v).scatter(0, order, q)
    return p / p.sum()


SPECTRA = {
    "superquantile": lambda m: spectrum_superquantile(m, 0.3),  # leading zeros
    "extremile": lambda m: spectrum_extremile(m, 3.0),
    "esrm": lambda m: spectrum_esrm(m, 4.0),
}


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("penalty", ["chi2", "kl"])
@pytest.mark.parametrize("shift_cost", [0.01, 0.3, 3.0])
@pytest.mark.parametrize(("m", "seed", "ties"), [(1, 0, False), (7, 1, True), (40, 2, False)])
def test_the_vectorised_fit_equals_pool_adjacent_violators(
    spectrum, penalty, shift_cost, m, seed, ties
):
    v = _losses(m, seed, ties)
    sigma = SPECTRA[spectrum](m)
    expected = _spectral_by_pav(v, sigma, shift_cost, penalty)
    got = spectral_risk_weights(v, sigma, shift_cost, penalty)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_the_fit_works_in_bands_on_large_batches(monkeypatch):
    import lightning_losses.weighting.dro as dro

    v, sigma = _losses(300, 3), spectrum_superquantile(300, 0.1)
    whole = spectral_risk_weights(v, sigma, 0.2, "kl")
    monkeypatch.setattr(dro, "_ISOTONIC_BLOCK", 300 * 7)  # bands of 7 rows
    torch.testing.assert_close(spectral_risk_weights(v, sigma, 0.2, "kl"), whole, rtol=0, atol=0)
    torch.testing.assert_close(whole, _spectral_by_pav(v, sigma, 0.2, "kl"), rtol=0, atol=1e-12)
