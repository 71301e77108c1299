"""PLD's pure rule: probabilities against a naive float64 softmax, selection law, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_losses import reduce_loss
from lightning_losses.weighting.infobatch import _MASK64, _splitmix64
from lightning_losses.weighting.pld import (
    _splitmix64_tensor,
    pld_draws,
    pld_probabilities,
    pld_select,
)


def _naive_probabilities(losses: list[float], pools: list[int], tau: float) -> list[float]:
    """softmax(-l/τ) over each pool, with Python floats (shifted by the pool's minimum)."""
    out = []
    for i, pool in enumerate(pools):
        members = [losses[j] for j, q in enumerate(pools) if q == pool]
        low = min(members)
        total = sum(math.exp(-(v - low) / tau) for v in members)
        out.append(math.exp(-(losses[i] - low) / tau) / total)
    return out


def _inclusion_probabilities(p: list[float], s: int) -> list[float]:
    """P(i drawn) for s successive draws without replacement, by enumerating ordered draws."""
    out = [0.0] * len(p)
    for seq in itertools.permutations(range(len(p)), s):
        prob, left = 1.0, 1.0
        for j in seq:
            prob *= p[j] / left
            left -= p[j]
        for j in seq:
            out[j] += prob
    return out


def _frequencies(losses, pools, tau, s, draws, uniform=False) -> torch.Tensor:
    counts = torch.zeros(losses.shape[0], dtype=torch.float64)
    for b in range(draws):
        w = pld_select(losses, pools, tau, s, draws=pld_draws(pools, 7, 3, b), uniform=uniform)
        counts += (w > 0).double()
    return counts / draws


def _assert_within_standard_errors(freq, p, draws, z=5.0):
    p = torch.as_tensor(p, dtype=torch.float64)
    se = (p * (1 - p) / draws).sqrt().clamp_min(1.0 / draws)
    assert bool(((freq - p).abs() <= z * se).all()), (freq, p)


# -- probabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0, 7.0])
def test_probabilities_match_a_naive_float64_softmax_per_pool(tau):
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(40, generator=g) * 3
    pools = torch.tensor([-4, 9, 9, 0, 2] * 8)[torch.randperm(40, generator=g)]  # any int ids
    p = pld_probabilities(losses, pools, tau)
    assert p.dtype == torch.float64
    expected = _naive_probabilities(losses.double().tolist(), pools.tolist(), tau)
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    for pool in pools.unique():
        assert p[pools == pool].sum().item() == pytest.approx(1.0, abs=1e-12)


def test_probabilities_are_stable_for_huge_loss_gaps():
    losses = torch.tensor([1e4, 1e4 + 1e-3, 0.0, 3e4])
    p = pld_probabilities(losses, torch.tensor([0, 0, 1, 1]), 1e-3)
    expected = _naive_probabilities(losses.double().tolist(), [0, 0, 1, 1], 1e-3)
    assert bool(torch.isfinite(p).all())
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert p[2] == 1.0 and p[3] == 0.0


def test_large_temperature_approaches_uniform_and_small_the_minimum():
    losses = torch.tensor([0.3, 2.0, 0.1, 5.0, 1.0])
    pools = torch.tensor([0, 0, 0, 1, 1])
    uniform = torch.tensor([1 / 3] * 3 + [1 / 2] * 2, dtype=torch.float64)
    errors = [
        (pld_probabilities(losses, pools, tau) - uniform).abs().max().item()
        for tau in (1.0, 10.0, 1e3, 1e6)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 2e-6
    sharp = pld_probabilities(losses, pools, 1e-3)
    torch.testing.assert_close(sharp, torch.tensor([0.0, 0, 1, 0, 1], dtype=torch.float64))


# -- selection ------------------------------------------------------------------------------


def test_selection_frequencies_match_the_softmax():
    losses = torch.tensor([0.10, 0.25, 0.30, 0.55, 0.80, 0.0, 0.2, 0.1, 1.5])
    pools = torch.tensor([3, 3, 3, 3, 3, 8, 8, 8, 1])  # sizes 5, 3 and a single candidate
    draws = 4000
    freq = _frequencies(losses, pools, 0.1, 1, draws)
    _assert_within_standard_errors(freq, pld_probabilities(losses, pools, 0.1), draws)
    assert freq[-1] == 1.0  # a pool of one is always drawn


def test_drawing_two_without_replacement_follows_successive_sampling():
    losses = torch.tensor([0.0, 0.1, 0.3, 0.6])
    pools = torch.zeros(4, dtype=torch.long)
    p = pld_probabilities(losses, pools, 0.2).tolist()
    draws = 4000
    freq = _frequencies(losses, pools, 0.2, 2, draws)
    _assert_within_standard_errors(freq, _inclusion_probabilities(p, 2), draws)


def test_warmup_draws_uniformly_whatever_the_losses():
    losses = torch.tensor([0.0, 5.0, 9.0, 0.0, 30.0])
    pools = torch.tensor([0, 0, 0, 1, 1])
    draws = 3000
    freq = _frequencies(losses, pools, 0.1, 1, draws, uniform=True)
    _assert_within_standard_errors(freq, [1 / 3] * 3 + [1 / 2] * 2, draws)


@pytest.mark.parametrize("s", [1, 2, 3])
def test_weights_give_the_pool_size_weighted_mean_of_the_drawn_losses(s):
    g = torch.Generator().manual_seed(1)
    sizes = [3, 5, 4, 7]
    pools = torch.repeat_interleave(torch.tensor([10, 11, 12, 13]), torch.tensor(sizes))
    pools = pools[torch.randperm(pools.numel(), generator=g)]
    losses = torch.rand(pools.numel(), generator=g, dtype=torch.float64)
    w = pld_select(losses, pools, 0.5, s, draws=pld_draws(pools, 0, 0, 0))
    n = pools.numel()
    expected = 0.0
    for pool, size in zip([10, 11, 12, 13], sizes, strict=True):
        members = pools == pool
        drawn = members & (w > 0)
        assert int(drawn.sum()) == s
        torch.testing.assert_close(w[drawn], torch.full((s,), size / s, dtype=torch.float64))
        expected += size * losses[drawn].mean().item()
    assert bool((w[w != 0] > 0).all())
    torch.testing.assert_close(
        reduce_loss(losses, "mean", w), torch.tensor(expected / n, dtype=torch.float64)
    )


def test_a_tiny_temperature_draws_the_lowest_loss_of_every_pool():
    losses = torch.tensor([0.5, 0.2, 0.9, 3.0, 1.0, 2.0])
    pools = torch.tensor([0, 0, 0, 1, 1, 1])
    for b in range(20):
        w = pld_select(losses, pools, 1e-3, draws=pld_draws(pools, 0, 0, b))
        assert w.tolist() == [0.0, 3.0, 0.0, 0.0, 3.0, 0.0]


def test_draws_are_keyed_and_leave_the_global_rng_alone():
    losses = torch.rand(200, generator=torch.Generator().manual_seed(2))
    pools = torch.arange(200) // 5
    state = torch.get_rng_state()

    def draw(*key):
        return pld_select(losses, pools, 1.0, draws=pld_draws(pools, *key))

    reference = draw(0, 1, 2, 0)
    assert torch.equal(draw(0, 1, 2, 0), reference)
    for other in [(1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1)]:
        assert not torch.equal(draw(*other), reference), other
    assert torch.equal(torch.get_rng_state(), state)


def test_a_pools_draws_do_not_depend_on_the_other_pools_or_their_order():
    # What makes DDP exact: a rank holding half the pools draws what one process draws for them.
    pools = torch.tensor([3, 3, 3, 8, 8, 8, 1, 1, 1, 6, 6, 6])
    joint = pld_draws(pools, 4, 2, 9, 1)
    half = torch.tensor([1, 1, 1, 8, 8, 8])
    torch.testing.assert_close(
        pld_draws(half, 4, 2, 9, 1), joint[[6, 7, 8, 3, 4, 5]], rtol=0, atol=0
    )
    interleaved = torch.tensor([6, 3, 6, 3, 6, 3])  # members keep their order inside a pool
    expected = joint[[9, 0, 10, 1, 11, 2]]
    assert torch.equal(pld_draws(interleaved, 4, 2, 9, 1), expected)


def test_draws_are_uniform_and_independent_across_positions_and_pools():
    pools = torch.arange(20_000).repeat_interleave(5)
    u = pld_draws(pools, 0, 0, 0)
    assert u.dtype == torch.float64 and bool(((u > 0) & (u < 1)).all())
    n = u.numel()
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    chi2 = float(((counts - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    grid = u.view(-1, 5)
    corr = torch.corrcoef(grid.t())
    off = corr - torch.eye(5, dtype=corr.dtype)
    assert float(off.abs().max()) < 4.0 / (grid.shape[0] ** 0.5)
    neighbours = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(float(neighbours)) < 4.0 / (n**0.5)


def test_the_tensor_splitmix64_equals_the_integer_one():
    values = [0, 1, 2, 12345, 2**40 + 7, 2**63 - 1, -1, -(2**63), -987654321]
    out = _splitmix64_tensor(torch.tensor(values, dtype=torch.int64)).tolist()
    for v, o in zip(values, out, strict=True):
        assert o & _MASK64 == _splitmix64(v & _MASK64), v


def test_dtype_device_and_empty_batch():
    losses = torch.tensor([0.1, 0.2], dtype=torch.float16)
    pair = torch.tensor([0, 0])
    w = pld_select(losses, pair, draws=pld_draws(pair, 0, 0, 0))
    assert w.dtype == torch.float16 and sorted(w.tolist()) == [0.0, 2.0]
    none = torch.zeros(0, dtype=torch.long)
    empty = pld_select(torch.zeros(0), none, draws=pld_draws(none, 0, 0, 0))
    assert empty.shape == (0,)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, r"`temperature` must be > 0; got 0.0"),
        ({"temperature": -1.0}, ValueError, r"`temperature` must be > 0"),
        ({"temperature": float("nan")}, ValueError, r"`temperature` must be finite"),
        ({"num_selected": 0}, ValueError, r"`num_selected` must be an integer >= 1; got 0"),
        (
            {"num_selected": 3, "pools": torch.tensor([5, 5, 5, 5, 1, 1])},
            ValueError,
            r"at least `num_selected`=3 candidates; pools \[1\] have sizes \[2\]",
        ),
        ({"pools": torch.tensor([0, 0, 0, 1, 1])}, ValueError, r"`pools` must have shape \(6,\)"),
        ({"pools": torch.zeros(6)}, ValueError, r"`pools` must hold integer.*float32"),
        ({"pools": [0] * 6}, TypeError, r"`pools` must be a torch.Tensor; got list"),
        ({"losses": torch.ones(2, 3)}, ValueError, r"`losses` must be a 1-D.*\(2, 3\)"),
        ({"losses": torch.ones(6, dtype=torch.long)}, ValueError, r"`losses`.*int64"),
        ({"losses": torch.tensor([0, 1, 2, 3, 4, float("nan")])}, ValueError, r"1 NaN"),
        ({"draws": 0.5}, TypeError, r"`draws` must be a torch.Tensor; got float"),
        ({"draws": torch.full((5,), 0.5)}, ValueError, r"`draws` must be .* shape \(6,\).*\(5,\)"),
        ({"draws": torch.ones(6)}, ValueError, r"`draws` must lie in the open interval \(0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    call = {
        "losses": torch.arange(6.0),
        "pools": torch.tensor([0, 0, 0, 1, 1, 1]),
        "temperature": 0.1,
        "num_selected": 1,
        "draws": torch.full((6,), 0.5),
    }
    call.update(kwargs)
    with pytest.raises(error, match=match):
        pld_select(**call)


def test_pool_id_dtype_bool_and_draw_keys_are_checked():
    with pytest.raises(
        ValueError, match=r"`pools` must hold integer pool ids; got dtype torch.bool"
    ):
        pld_probabilities(torch.zeros(2), torch.tensor([True, False]), 0.1)
    pools = torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"`epoch` must be an integer >= 0; got -1"):
        pld_draws(pools, 0, -1, 0)
    with pytest.raises(ValueError, match=r"`call` must be an integer >= 0; got 1.5"):
        pld_draws(pools, 0, 0, 0, 1.5)
    with pytest.raises(ValueError, match=r"`pools` must have shape \(N,\); got \(1, 2\)"):
        pld_draws(pools[None], 0, 0, 0)
