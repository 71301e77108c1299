"""InfoBatch's keep-and-rescale rule as pure functions (no Lightning).

InfoBatch (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning",
ICLR 2024, arXiv 2303.04947) prunes, at the start of each epoch, part of the samples whose last
loss is below the mean, and scales the loss of the kept ones up so that the expected gradient
is unchanged:

.. code-block:: text

    s_i   = last observed loss of sample i                 (ScoreStore.last_loss)
    E     = {i : s_i < mean(s)}                            candidates ("well learned")
    m     = max(1, round((1 - r)·|E|))   if |E| > 0        kept candidates
    K     = uniform random subset of E of size m           (drawn from the given generator)
    w_i   = |E| / m   for i ∈ K                            (= 1/(1 - r) when (1 - r)|E| is whole)
    w_i   = 0         for i ∈ E \\ K                        pruned
    w_i   = 1         for i ∉ E                             always kept
    loss  = mean(w·ℓ) over each batch drawn from the kept samples

Every sample of E is kept with probability m/|E| and then weighted |E|/m, so **E[w_i] = 1 for
every i, exactly**, and the expected gradient of ``mean(w·ℓ)`` equals the full-data gradient.
Pruning runs for epochs ``1 ≤ e < floor(δ·T)`` (see :func:`infobatch_active`); the last epochs
use all the data with weight 1.

Fixed-size subset rather than a coin per sample: the reference (NUS-HPC-AI-Lab/InfoBatch,
``infobatch/infobatch.py``, ``InfoBatch.prune``) draws ``np.random.choice(E, int(keep·|E|),
replace=False)`` — a fixed-size subset — and weights it ``1/keep``. A fixed size makes the epoch
length a known function of the scores (the sampler, the step count and the progress bar agree
before the epoch starts, on every rank), and sampling without replacement has lower variance
than independent coins. Two differences from the reference, both for exact unbiasedness: the
reference keeps ``floor(keep·|E|)`` samples but weights them ``1/keep``, so E[w_i] =
floor(keep·|E|)/(keep·|E|) < 1 (for |E| = 5, r = 0.5: 0.8; for |E| = 1: 0, the sample's
gradient is lost); here the weight is the inverse of the realised keep fraction, ``|E|/m``, and
at least one candidate is kept.

The reference also clamps the keep ratio to ``max(0.1, 1 - r)``: any ``r > 0.9`` silently acts as
0.9, which caps the weight at 10 (and the variance it adds). Here ``prune_ratio`` is used as
given, in [0, 1), and never clamped; values near 1 give weights near ``1/(1 - r)`` and a noisy
gradient — choose them knowingly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_finite, check_int, check_number, check_tensor

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_PRUNE_RATIO",
    "InfoBatchPlan",
    "epoch_generator",
    "expected_epoch_size",
    "expected_total_steps",
    "infobatch_active",
    "infobatch_plan",
    "infobatch_stop_epoch",
    "num_kept_candidates",
]

DEFAULT_PRUNE_RATIO = 0.5
"""r: the fraction of the *below-mean* samples pruned each epoch (paper and reference default)."""
DEFAULT_DELTA = 0.875
"""δ: pruning stops at epoch floor(δ·T); the last (1 − δ)·T epochs anneal on full data (paper
and reference default)."""


class InfoBatchPlan(NamedTuple):
    """One epoch's plan.

    Attributes:
        kept_indices: int64 (M,), the samples to train on this epoch, **ascending** (the sampler
            shuffles them with its own seeded generator).
        weights: float32 (N,), per-sample loss weight: ``|E|/m`` for kept candidates, 1 for
            samples above the mean, 0 for pruned ones.
        num_pruned: samples left out this epoch, ``N - M``.
        num_candidates: ``|E|``, samples below the mean score (0 when nothing was considered).
    """

    kept_indices: Tensor
    weights: Tensor
    num_pruned: int
    num_candidates: int

    @property
    def saving(self) -> float:
        """Fraction of the epoch's samples left out, ``num_pruned / N``."""
        return self.num_pruned / self.weights.shape[0]


def _check_prune_ratio(prune_ratio: float) -> float:
    r = check_number(prune_ratio, "prune_ratio")
    if not 0.0 <= r < 1.0:
        raise ValueError(
            f"`prune_ratio` must lie in [0, 1) (the fraction of below-mean samples pruned each "
            f"epoch); got {prune_ratio!r}."
        )
    return r


def _check_delta(delta: float) -> float:
    d = check_number(delta, "delta")
    if not 0.0 < d <= 1.0:
        raise ValueError(
            f"`delta` must lie in (0, 1] (pruning stops at epoch floor(delta·max_epochs)); got "
            f"{delta!r}."
        )
    return d


def _check_scores(scores: object) -> Tensor:
    check_tensor(scores, "scores")
    if scores.ndim != 1 or scores.numel() == 0 or not scores.is_floating_point():
        raise ValueError(
            "`scores` must be a non-empty 1-D floating-point tensor (N,), one score per sample; "
            f"got shape {tuple(scores.shape)} and dtype {scores.dtype}."
        )
    check_finite(scores, "scores")
    return scores.detach()


def num_kept_candidates(num_candidates: int, prune_ratio: float) -> int:
    """``m = max(1, round((1 - r)·|E|))`` candidates kept out of ``|E|`` (0 when |E| = 0).

    Halves round up. At least one candidate stays so that the candidates' gradient is carried
    by someone (the weight ``|E|/m`` is then finite and E[w_i] = 1 holds).
    """
    check_int(num_candidates, "num_candidates", 0)
    r = _check_prune_ratio(prune_ratio)
    if num_candidates == 0:
        return 0
    return max(1, math.floor((1.0 - r) * num_candidates + 0.5))


def infobatch_plan(
    scores: Tensor,
    prune_ratio: float = DEFAULT_PRUNE_RATIO,
    *,
    generator: torch.Generator,
    prune: bool = True,
) -> InfoBatchPlan:
    """Which samples to train on this epoch and with what weight (rule in the module docstring).

    Args:
        scores: (N,) per-sample scores, the store's ``last_loss``; finite.
        prune_ratio: r in [0, 1), the fraction of below-mean samples to prune. Default 0.5.
        generator: the only source of randomness (see :func:`epoch_generator`); the global RNG
            is never touched. Every rank must pass an identically seeded generator.
        prune: False (epoch 0, the annealing epochs) keeps every sample with weight 1 and
            draws nothing.

    Returns:
        An :class:`InfoBatchPlan`; tensors on ``scores``' device.

    The mean is taken in float64, so that the set E does not depend on the device's reduction
    order. Ties with the mean are not candidates (strict ``<``, as the reference): when all
    scores are equal (nothing seen yet), nothing is pruned.

    Example:
        >>> s = torch.tensor([0.1, 0.2, 0.3, 0.4, 2.0, 3.0])
        >>> plan = infobatch_plan(s, 0.5, generator=epoch_generator(0, 1))
        >>> plan.num_candidates, plan.num_pruned, len(plan.kept_indices)
        (4, 2, 4)
    """
    scores = _check_scores(scores)
    r = _check_prune_ratio(prune_ratio)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be a torch.Generator (see epoch_generator); got "
            f"{type(generator).__name__}."
        )
    n, device = scores.shape[0], scores.device
    weights = torch.ones(n, dtype=torch.float32, device=device)
    if not prune:
        return InfoBatchPlan(torch.arange(n, device=device), weights, 0, 0)

    s = scores.double()
    candidates = torch.nonzero(s < s.mean()).flatten()
    e = candidates.numel()
    m = num_kept_candidates(e, r)
    if m < e:
        order = torch.randperm(e, generator=generator, device=generator.device).to(device)
        weights[candidates[order[m:]]] = 0.0
    if m > 0:
        weights[candidates] *= e / m  # pruned ones stay 0
    kept = torch.nonzero(weights > 0).flatten()
    return InfoBatchPlan(kept, weights, n - kept.numel(), e)


def infobatch_stop_epoch(max_epochs: int, delta: float = DEFAULT_DELTA) -> int:
    """The first epoch (0-based) without pruning: ``floor(δ·T)``.

    The reference prunes while its sampler's counter, which equals epoch + 1, satisfies
    ``counter <= num_epochs * delta`` (``IBSampler.reset``), i.e. for ``epoch < floor(δ·T)``.
    δ·T is rounded to 9 decimals first, so that 0.29 × 100 counts as 29, not 28.999….
    """
    check_int(max_epochs, "max_epochs", 1)
    d = _check_delta(delta)
    return math.floor(round(d * max_epochs, 9))


def infobatch_active(epoch: int, max_epochs: int, delta: float = DEFAULT_DELTA) -> bool:
    """Whether epoch ``epoch`` (0-based) prunes: ``1 <= epoch < floor(δ·T)``.

    Epoch 0 never prunes: no score has been observed (the reference prunes nothing there either,
    since all its scores equal the initial 3.0 and none is below the mean). With T = 200 and
    δ = 0.875, epochs 1–174 prune and epochs 175–199 train on all data.
    """
    check_int(epoch, "epoch", 0)
    stop = infobatch_stop_epoch(max_epochs, delta)
    return 1 <= epoch < stop


def expected_epoch_size(scores: Tensor, prune_ratio: float = DEFAULT_PRUNE_RATIO) -> int:
    """Samples a pruning epoch will train on, given the scores: ``N - |E| + m``.

    Exact, not only expected: the rule keeps a fixed number of candidates, so the size depends
    on the scores alone, not on the draw.
    """
    scores = _check_scores(scores)
    s = scores.double()
    e = int((s < s.mean()).sum())
    return scores.shape[0] - e + num_kept_candidates(e, prune_ratio)


def expected_total_steps(
    num_samples: int,
    batch_size: int,
    max_epochs: int,
    prune_ratio: float = DEFAULT_PRUNE_RATIO,
    delta: float = DEFAULT_DELTA,
    drop_last: bool = False,
    *,
    candidate_fraction: float = 0.5,
    world_size: int = 1,
    accumulate_grad_batches: int = 1,
    limit_batches: int | float = 1.0,
) -> int:
    """Estimated number of optimizer steps over the whole run, before the scores exist.

    Epoch 0 and epochs ``>= floor(δ·T)`` see all ``N`` samples; each pruning epoch sees
    ``N - |E| + m`` with ``|E| = round(candidate_fraction·N)``. Each epoch's samples are split
    evenly across ranks (``ceil(size / world_size)`` per rank) and batched with
    ``ceil`` (``floor`` with ``drop_last``).

    The assumption is ``candidate_fraction``, the share of samples below the mean loss. It is
    unknown before training; 0.5 (a symmetric loss distribution) is the default. Training losses
    are usually right-skewed (many small, few large), which puts *more* than half below the mean,
    so 0.5 tends to **over**-estimate the steps: a step-based schedule then ends slightly early
    in its curve rather than being stepped past its end (``OneCycleLR`` raises there). Once
    scores exist, pass the measured ``|E|/N`` (or recompute per epoch with
    :func:`expected_epoch_size`) for a tighter number. Optimiser steps are these batches divided
    by gradient accumulation, per epoch and rounded up (Lightning steps on an epoch's last
    batch), so with ``accumulate_grad_batches=1`` they are the batches per rank.
    ``limit_batches`` caps each epoch as Lightning's ``limit_train_batches`` does: an int is a
    maximum number of batches, a float the fraction of them kept (rounded down).
    """
    n = check_int(num_samples, "num_samples", 1)
    bs = check_int(batch_size, "batch_size", 1)
    check_int(world_size, "world_size", 1)
    accumulate = check_int(accumulate_grad_batches, "accumulate_grad_batches", 1)
    if isinstance(limit_batches, bool) or not (
        (isinstance(limit_batches, int) and limit_batches >= 0)
        or (isinstance(limit_batches, float) and 0.0 <= limit_batches <= 1.0)
    ):
        raise ValueError(
            "`limit_batches` must be an int >= 0 (batches per epoch) or a float in [0, 1] (the "
            f"fraction kept); got {limit_batches!r}."
        )
    f = check_number(candidate_fraction, "candidate_fraction")
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"`candidate_fraction` must lie in [0, 1]; got {candidate_fraction!r}.")
    stop = infobatch_stop_epoch(max_epochs, delta)
    e = math.floor(f * n + 0.5)
    pruned_size = n - e + num_kept_candidates(e, prune_ratio)

    def batches(size: int) -> int:
        per_rank = -(-size // world_size)
        b = per_rank // bs if drop_last else -(-per_rank // bs)
        b = min(b, limit_batches) if isinstance(limit_batches, int) else int(b * limit_batches)
        return -(-b // accumulate)

    pruning_epochs = max(0, stop - 1)  # epochs 1 .. stop-1
    return (max_epochs - pruning_epochs) * batches(n) + pruning_epochs * batches(pruned_size)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)``: the same on every rank and every resume.

    The two integers are mixed with SplitMix64, so neighbouring seeds and epochs give unrelated
    streams (``seed + epoch`` would give seed 1 / epoch 2 the stream of seed 2 / epoch 1).
    """
    check_int(seed, "seed")
    check_int(epoch, "epoch", 0)
    mixed = _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64))
    return torch.Generator(device="cpu").manual_seed(mixed & (_MASK64 >> 1))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
