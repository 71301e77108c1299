"""InfoBatch's pure rule: unbiasedness, determinism, schedule boundaries, savings, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_losses.weighting import (
    InfoBatchPlan,
    epoch_generator,
    expected_epoch_size,
    expected_total_steps,
    infobatch_active,
    infobatch_plan,
    infobatch_stop_epoch,
    num_kept_candidates,
)


def _toy_regression(n: int = 40, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(
        n, generator=g, dtype=torch.float64
    )
    theta = torch.zeros(d, dtype=torch.float64)
    return x, y, theta


def _per_sample_loss(theta, x, y):
    return (x @ theta - y) ** 2


def _grad(weights, x, y, theta):
    theta = theta.clone().requires_grad_(True)
    (weights * _per_sample_loss(theta, x, y)).mean().backward()
    return theta.grad


def _keep_probabilities(scores: torch.Tensor, r: float) -> torch.Tensor:
    """P(sample i is kept) under the documented rule: m of the |E| candidates, uniformly."""
    s = scores.double()
    cand = s < s.mean()
    e = int(cand.sum())
    p = torch.ones_like(s)
    p[cand] = num_kept_candidates(e, r) / e if e else 1.0
    return p


# -- unbiasedness -----------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.3, 0.5, 0.9, 0.97])
def test_expected_gradient_equals_full_gradient_exactly(r):
    x, y, theta = _toy_regression()
    scores = _per_sample_loss(theta, x, y).float()
    plan = infobatch_plan(scores, r, generator=epoch_generator(0, 1))
    candidates = scores.double() < scores.double().mean()
    assert int(candidates.sum()) == plan.num_candidates > 0
    # the weight a sample gets when kept: the plan's candidate weight, or 1 above the mean
    kept_weight = plan.weights[candidates].max().double()
    weight_if_kept = torch.where(candidates, kept_weight, torch.ones_like(y))
    assert torch.equal(plan.weights[~candidates].double(), weight_if_kept[~candidates])
    # E[w_i] = P(kept) · weight-if-kept = 1 for every i
    expected_w = _keep_probabilities(scores, r) * weight_if_kept
    assert torch.allclose(expected_w, torch.ones_like(expected_w), rtol=0, atol=1e-6)
    full = _grad(torch.ones_like(y), x, y, theta)
    assert torch.allclose(_grad(expected_w, x, y, theta), full, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("num_candidates", "r"), [(5, 0.5), (1, 0.5), (7, 0.3), (6, 0.9)])
def test_exact_expectation_by_enumerating_every_kept_subset(num_candidates, r):
    """Average the weight vector over all equally likely kept subsets: exactly ones.

    (|E| = 5, r = 0.5) is where the reference's floor(keep·|E|) with weight 1/keep has
    E[w] = 0.8, and (|E| = 1, r = 0.5) where it prunes the only candidate.
    """
    scores = torch.cat([torch.linspace(0.0, 0.1, num_candidates), torch.full((8,), 10.0)])
    plan = infobatch_plan(scores, r, generator=epoch_generator(3, 1))
    assert plan.num_candidates == num_candidates
    m = num_kept_candidates(num_candidates, r)
    kept_weight = plan.weights[:num_candidates].max().item()
    assert kept_weight == pytest.approx(num_candidates / m)
    total = torch.zeros(scores.numel(), dtype=torch.float64)
    subsets = list(itertools.combinations(range(num_candidates), m))
    for subset in subsets:
        w = torch.ones(scores.numel(), dtype=torch.float64)
        w[:num_candidates] = 0.0
        w[list(subset)] = kept_weight
        total += w
    # exact up to the float32 rounding of the stored weight |E|/m
    assert torch.allclose(total / len(subsets), torch.ones_like(total), rtol=1e-6, atol=0)


def test_monte_carlo_gradient_over_seeded_plans_matches_full_gradient():
    x, y, theta = _toy_regression(n=60)
    scores = _per_sample_loss(theta, x, y).float()
    full = _grad(torch.ones_like(y), x, y, theta)
    draws = 2000
    grads = torch.stack(
        [
            _grad(
                infobatch_plan(scores, 0.5, generator=epoch_generator(7, e)).weights.double(),
                x,
                y,
                theta,
            )
            for e in range(draws)
        ]
    )
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(draws)
    # 5 standard errors per coordinate: a false alarm has probability < 2e-6 per coordinate
    assert ((mean - full).abs() <= 5 * stderr).all(), (mean, full, stderr)
    # and the sampling is doing something: single plans do differ from the full gradient
    assert (grads.std(0) > 0).all()


def test_every_candidate_is_kept_at_the_same_rate():
    scores = torch.cat(
        [torch.rand(12, generator=torch.Generator().manual_seed(1)), torch.ones(4) * 5]
    )
    draws = 3000
    kept = torch.zeros(16)
    for e in range(draws):
        kept += infobatch_plan(scores, 0.5, generator=epoch_generator(11, e)).weights > 0
    rate = kept / draws
    p = 6 / 12  # m = 6 of |E| = 12
    tol = 5 * math.sqrt(p * (1 - p) / draws)
    assert ((rate[:12] - p).abs() <= tol).all(), rate
    assert torch.equal(rate[12:], torch.ones(4))


# -- the plan itself ----------------------------------------------------------------------------


def test_plan_fields_and_saving():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 5.0, 6.0, 7.0, 8.0])  # mean 2.81
    plan = infobatch_plan(scores, 0.5, generator=epoch_generator(0, 1))
    assert isinstance(plan, InfoBatchPlan)
    assert plan.num_candidates == 6 and plan.num_pruned == 3
    assert plan.kept_indices.dtype == torch.int64
    assert torch.equal(plan.kept_indices, plan.kept_indices.sort().values)
    assert torch.equal(plan.kept_indices, (plan.weights > 0).nonzero().flatten())
    assert int((plan.weights == 0).sum()) == plan.num_pruned == 10 - len(plan.kept_indices)
    assert torch.equal(plan.weights[6:], torch.ones(4))
    assert torch.allclose(plan.weights[:6][plan.weights[:6] > 0], torch.full((3,), 2.0))
    assert plan.weights.dtype == torch.float32
    assert plan.saving == pytest.approx(0.3)
    assert expected_epoch_size(scores, 0.5) == len(plan.kept_indices)


def test_weight_is_one_over_one_minus_r_when_the_count_is_whole():
    scores = torch.cat([torch.zeros(8), torch.ones(8)])
    plan = infobatch_plan(scores, 0.75, generator=epoch_generator(0, 2))
    assert plan.num_pruned == 6
    assert torch.allclose(plan.weights[plan.weights > 1], torch.full((2,), 1 / (1 - 0.75)))


def test_saving_covers_below_mean_samples_only():
    """r = 0.5 prunes half of the candidates, not half of the data."""
    scores = torch.cat([torch.zeros(30), torch.full((70,), 2.0)])
    plan = infobatch_plan(scores, 0.5, generator=epoch_generator(0, 1))
    assert plan.num_candidates == 30 and plan.num_pruned == 15
    assert plan.saving == pytest.approx(0.15)


def test_prune_ratio_zero_and_prune_false_keep_everything_with_weight_one():
    scores = torch.rand(20, generator=torch.Generator().manual_seed(0))
    for plan in (
        infobatch_plan(scores, 0.0, generator=epoch_generator(0, 1)),
        infobatch_plan(scores, 0.5, generator=epoch_generator(0, 1), prune=False),
    ):
        assert torch.equal(plan.kept_indices, torch.arange(20))
        assert torch.equal(plan.weights, torch.ones(20))
        assert plan.num_pruned == 0 and plan.saving == 0.0


def test_equal_scores_have_no_candidates():
    plan = infobatch_plan(torch.full((9,), 3.0), 0.5, generator=epoch_generator(0, 1))
    assert plan.num_candidates == 0 and plan.num_pruned == 0
    assert torch.equal(plan.weights, torch.ones(9))


def test_deterministic_for_a_seed_and_epoch_and_different_across_epochs():
    scores = torch.rand(200, generator=torch.Generator().manual_seed(0))
    a = infobatch_plan(scores, 0.5, generator=epoch_generator(42, 3))
    b = infobatch_plan(scores, 0.5, generator=epoch_generator(42, 3))
    assert torch.equal(a.kept_indices, b.kept_indices) and torch.equal(a.weights, b.weights)
    others = [infobatch_plan(scores, 0.5, generator=epoch_generator(42, e)) for e in (4, 5)]
    others.append(infobatch_plan(scores, 0.5, generator=epoch_generator(43, 3)))
    for other in others:
        assert other.num_pruned == a.num_pruned
        assert not torch.equal(other.kept_indices, a.kept_indices)


def test_global_rng_is_untouched():
    state = torch.get_rng_state()
    infobatch_plan(
        torch.rand(50, generator=torch.Generator()), 0.5, generator=epoch_generator(0, 1)
    )
    assert torch.equal(torch.get_rng_state(), state)


def test_epoch_generator_mixes_seed_and_epoch():
    def first(seed, epoch):
        return torch.randint(0, 2**62, (1,), generator=epoch_generator(seed, epoch)).item()

    assert first(1, 2) != first(2, 1)
    assert first(0, 0) == first(0, 0)
    assert len({first(s, e) for s in range(5) for e in range(5)}) == 25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_give_the_cpu_plan():
    scores = torch.rand(100, generator=torch.Generator().manual_seed(0))
    cpu = infobatch_plan(scores, 0.5, generator=epoch_generator(0, 1))
    gpu = infobatch_plan(scores.cuda(), 0.5, generator=epoch_generator(0, 1))
    assert gpu.weights.device.type == "cuda"
    assert torch.equal(cpu.kept_indices, gpu.kept_indices.cpu())
    assert torch.equal(cpu.weights, gpu.weights.cpu())


# -- schedule -----------------------------------------------------------------------------------


def test_active_epochs_follow_the_reference_boundary():
    # reference: prune while epoch + 1 <= num_epochs * delta; epoch 0 has nothing to prune
    active = [e for e in range(200) if infobatch_active(e, 200, 0.875)]
    assert active == list(range(1, 175))
    assert infobatch_stop_epoch(10, 0.875) == 8  # 8.75 -> epochs 1..7 prune
    assert [infobatch_active(e, 10, 0.875) for e in (0, 1, 7, 8, 9)] == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert infobatch_stop_epoch(100, 0.29) == 29  # not 28 from 0.29 * 100 = 28.999...
    assert not any(infobatch_active(e, 1, 1.0) for e in range(1))
    assert [e for e in range(4) if infobatch_active(e, 4, 1.0)] == [1, 2, 3]


def test_expected_total_steps():
    n, bs, epochs = 1000, 32, 8
    full = math.ceil(n / bs)
    assert expected_total_steps(n, bs, epochs, 0.0, 0.875) == epochs * full
    # delta = 0.875 -> stop epoch 7: epochs 1..6 prune 250 of the 500 assumed candidates
    pruned = math.ceil(750 / bs)
    assert expected_total_steps(n, bs, epochs, 0.5, 0.875) == 2 * full + 6 * pruned
    assert expected_total_steps(n, bs, epochs, 0.5, 0.875, drop_last=True) == 2 * (n // bs) + 6 * (
        750 // bs
    )
    assert expected_total_steps(n, bs, epochs, 0.5, 0.875, candidate_fraction=0.8) == (
        2 * full + 6 * math.ceil(600 / bs)
    )
    per_rank = math.ceil(math.ceil(750 / 2) / bs)
    assert expected_total_steps(n, bs, epochs, 0.5, 0.875, world_size=2) == (
        2 * math.ceil(500 / bs) + 6 * per_rank
    )


def test_expected_epoch_size_matches_plans():
    scores = torch.rand(101, generator=torch.Generator().manual_seed(5)) ** 3
    for r in (0.0, 0.25, 0.5, 0.9):
        plan = infobatch_plan(scores, r, generator=epoch_generator(0, 1))
        assert expected_epoch_size(scores, r) == len(plan.kept_indices)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1.0, -0.1, 1.5, float("nan")])
def test_bad_prune_ratio(r):
    with pytest.raises(ValueError, match="prune_ratio"):
        infobatch_plan(torch.rand(4), r, generator=epoch_generator(0, 1))
    with pytest.raises(ValueError, match="prune_ratio"):
        expected_total_steps(10, 2, 5, r, 0.5)


@pytest.mark.parametrize("delta", [0.0, -0.5, 1.01])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        infobatch_active(1, 10, delta)
    with pytest.raises(ValueError, match=r"got -0\.5|got 0\.0|got 1\.01"):
        expected_total_steps(10, 2, 5, 0.5, delta)


def test_bad_scores_and_generator():
    gen = epoch_generator(0, 1)
    with pytest.raises(ValueError, match="scores"):
        infobatch_plan(torch.rand(2, 2), 0.5, generator=gen)
    with pytest.raises(ValueError, match="scores"):
        infobatch_plan(torch.tensor([1.0, float("nan")]), 0.5, generator=gen)
    with pytest.raises(ValueError, match="scores"):
        infobatch_plan(torch.tensor([1, 2]), 0.5, generator=gen)
    with pytest.raises(TypeError, match="generator"):
        infobatch_plan(torch.rand(3), 0.5, generator=0)
    with pytest.raises(ValueError, match="max_epochs"):
        infobatch_active(0, 0, 0.5)
    with pytest.raises(ValueError, match="epoch"):
        infobatch_active(-1, 10, 0.5)
