r"""PLD's per-pool loss-distribution resampling as pure functions (no Lightning).

PLD (Zhang, Cao, Wu, Sun, Shen, Cheng, "Personalized Denoising Implicit Feedback for Robust
Recommender System", WWW 2025, arXiv 2502.00348; code Kaike-Zhang/PLD) observes that a user's
noisy interactions sit in the high-loss tail of *that user's* loss distribution, while a global
loss threshold fails because clean and noisy losses of different users overlap. So, within each
group of candidates (a user's positives; by extension the samples of a class or an identity),
it trains on the low-loss, likely clean ones:

.. code-block:: text

    P          = a pool of candidates (the samples of the batch sharing one pool id)
    ℓ_i        = detached loss of candidate i (BPR: softplus(s_neg − s_pos))
    p_i        = exp(−ℓ_i/τ) / Σ_{j∈P} exp(−ℓ_j/τ)         i ∈ P   (uniform 1/|P| in warm-up)
    S_P        = s members of P drawn without replacement with probabilities p
    w_i        = |P| / s   for i ∈ S_P,   0 otherwise
    loss       = (1/N) Σ_i w_i ℓ_i = (1/N) Σ_P |P| · mean_{i∈S_P} ℓ_i

With pools of equal size ``k`` and ``s = 1`` the loss is the mean over pools of the one picked
candidate's loss, exactly what the reference trains on (``SelfDenoiseCFTrainer._train_epoch``
in ``utls/trainer.py``: ``softmax(-temp_loss / temp)`` over ``item_num`` positives, then
``torch.multinomial(..., 1)``). Pools of unequal sizes are weighted by their size, so every
candidate keeps the same share of the loss as under plain averaging.

**Numerics.** Probabilities are computed in float64 (float32 on MPS, which has no float64) with
the pool's smallest loss subtracted first, so ``exp`` never overflows and the pool's best
candidate has an unnormalised mass of exactly 1. The selection never exponentiates at all: it
ranks ``log p_i − log E_i`` with ``E_i ~ Exp(1)`` (the Gumbel-top-k / exponential-race trick),
which draws ``s`` members without replacement with the same law as successive
``torch.multinomial(p, s, replacement=False)``, for any pool layout in one vectorised pass
(two stable sorts, no Python loop over pools). Pool ids are arbitrary integers; only equality
matters.

**Randomness** comes only from the variates passed in: :func:`pld_draws` derives one uniform
variate per candidate by hashing ``(seed, epoch, batch index, call, pool id, position of the
candidate in its pool)`` with SplitMix64. A candidate's draw therefore depends on where it is in
training and in its pool, never on the other pools of the batch or on the rank that holds it:
two DDP processes draw, pool by pool, exactly what one process with their joint batch draws,
and a resumed run draws what the uninterrupted one does. The global RNG is never touched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_finite, check_int, check_on_device, check_positive, check_tensor
from .infobatch import _MASK64, _splitmix64

__all__ = [
    "DEFAULT_NUM_CANDIDATES",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WARMUP_EPOCHS",
    "pld_draws",
    "pld_probabilities",
    "pld_select",
]

DEFAULT_TEMPERATURE = 0.1
"""τ: the reference's ``--temp`` default (``meta_config.py``)."""
DEFAULT_WARMUP_EPOCHS = 5
"""Uniform choice for the first epochs: the reference's ``begin_adv = 5`` (``model_config.py``)."""
DEFAULT_NUM_CANDIDATES = 5
"""k, the candidates per pool (a user's positives): the reference's ``--item_num`` default."""


class _Pools(NamedTuple):
    inverse: Tensor  # (N,) int64, pool index of every sample, in ascending order of the pool ids
    counts: Tensor  # (N,) int64, pool sizes; one slot per possible pool, the unused ones 0


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_losses(losses: object) -> Tensor:
    check_tensor(losses, "losses")
    if losses.ndim != 1 or not losses.is_floating_point():
        raise ValueError(
            "`losses` must be a 1-D floating-point tensor (N,), one detached loss per candidate; "
            f"got shape {tuple(losses.shape)} and dtype {losses.dtype}."
        )
    check_finite(losses, "losses")
    return losses.detach()


def _pools(pools: object, n: int, device: torch.device) -> _Pools:
    check_tensor(pools, "pools")
    if pools.is_floating_point() or pools.is_complex() or pools.dtype == torch.bool:
        raise ValueError(f"`pools` must hold integer pool ids; got dtype {pools.dtype}.")
    if pools.shape != (n,):
        raise ValueError(
            f"`pools` must have shape ({n},), one pool id per candidate; got {tuple(pools.shape)}."
        )
    # What torch.unique(return_inverse, return_counts) gives, with n slots instead of one per
    # distinct id: the number of pools depends on the data, and a GPU would read it back.
    ids = pools.to(device)
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    starts = torch.ones(n, dtype=torch.bool, device=device)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    inverse = torch.empty(n, dtype=torch.int64, device=device)
    inverse[order] = torch.cumsum(starts, 0) - 1
    counts = torch.zeros(n, dtype=torch.int64, device=device)
    counts.index_add_(0, inverse, torch.ones_like(inverse))
    return _Pools(inverse, counts)


def _log_mass(losses: Tensor, pools: _Pools, temperature: float) -> Tensor:
    """``−(ℓ_i − min_{j∈P} ℓ_j)/τ`` in the working dtype: log of the unnormalised mass, <= 0."""
    dtype = _work_dtype(losses.device)
    ell = losses.to(dtype)
    lowest = torch.full((pools.counts.numel(),), torch.inf, dtype=dtype, device=ell.device)
    lowest = lowest.scatter_reduce(0, pools.inverse, ell, reduce="amin")
    return -(ell - lowest[pools.inverse]) / temperature


def pld_probabilities(losses: Tensor, pools: Tensor, temperature: float) -> Tensor:
    r"""Per-pool selection probabilities :math:`p_i = \mathrm{softmax}_{j \in P}(-\ell_j/\tau)_i`.

    Args:
        losses: (N,) detached per-candidate losses, finite.
        pools: (N,) integer pool ids; candidates with equal ids form one pool.
        temperature: τ > 0. Small τ concentrates on the pool's lowest loss; τ → ∞ gives the
            uniform ``1/|P|``. Default 0.1 (reference), on the scale of the losses: with BPR
            losses of order 1, a loss gap of 0.23 halves a candidate's odds.

    Returns:
        (N,) float64 (float32 on MPS) probabilities; they sum to 1 over each pool.

    Example:
        >>> pld_probabilities(torch.tensor([0.0, 0.1, 5.0]), torch.tensor([7, 7, 3]), 0.1)
        tensor([0.7311, 0.2689, 1.0000], dtype=torch.float64)
    """
    losses = _check_losses(losses)
    tau = check_positive(temperature, "temperature")
    p = _pools(pools, losses.shape[0], losses.device)
    mass = _log_mass(losses, p, tau).exp()  # the pool's best candidate has mass exactly 1
    total = torch.zeros(p.counts.numel(), dtype=mass.dtype, device=mass.device)
    total = total.index_add(0, p.inverse, mass)
    return mass / total[p.inverse]


def pld_select(
    losses: Tensor,
    pools: Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    num_selected: int = 1,
    *,
    draws: Tensor,
    uniform: bool = False,
) -> Tensor:
    r"""Draw ``num_selected`` candidates per pool and return the weights that train on them.

    Every pool :math:`P` draws :math:`s` members without replacement with probabilities
    :func:`pld_probabilities` (uniformly when ``uniform``, i.e. during warm-up), and

    .. math::
        w_i = \frac{|P|}{s}\ \text{if } i \text{ is drawn}, \qquad w_i = 0\ \text{otherwise},

    so that :math:`\frac{1}{N}\sum_i w_i \ell_i = \frac{1}{N}\sum_P |P| \cdot
    \operatorname{mean}_{i \in S_P} \ell_i`, the pool-size-weighted mean of the drawn losses.
    Every pool keeps its share :math:`|P|/N` of the loss.

    Args:
        losses: (N,) detached per-candidate losses, finite.
        pools: (N,) integer pool ids.
        temperature: τ > 0 (ignored when ``uniform``). Default 0.1 (reference).
        num_selected: s ≥ 1 members drawn per pool; every pool must have at least s members.
            Default 1 (the reference trains on one positive per user).
        draws: (N,) independent Uniform(0, 1) variates, one per candidate, the only source of
            randomness (see :func:`pld_draws`).
        uniform: draw uniformly within each pool (the warm-up epochs).

    Returns:
        (N,) weights with ``losses``' dtype and device.

    Example:
        >>> pools = torch.tensor([0, 0, 1, 1])
        >>> w = pld_select(torch.tensor([0.1, 3.0, 0.2, 4.0]), pools,
        ...                draws=pld_draws(pools, 0, epoch=5, batch_idx=0))
        >>> w  # the low-loss candidate of each pool, weighted by the pool size
        tensor([2., 0., 2., 0.])
    """
    losses = _check_losses(losses)
    tau = check_positive(temperature, "temperature")
    s = check_int(num_selected, "num_selected", 1)
    n, device = losses.shape[0], losses.device
    p = _pools(pools, n, device)
    if n > 0:
        _check_pool_sizes(pools, p, s)
    dtype = _work_dtype(device)
    race = -_check_draws(draws, n).to(device, dtype).log()  # E_i ~ Exp(1)
    log_mass = torch.zeros(n, dtype=dtype, device=device) if uniform else _log_mass(losses, p, tau)
    key = log_mass - race.log()  # log p_i − log E_i, up to a per-pool constant

    # Group by pool (ascending) with keys descending inside each pool; rank = position - start.
    by_key = torch.argsort(key, descending=True, stable=True)
    order = by_key[torch.argsort(p.inverse[by_key], stable=True)]
    start = torch.cumsum(p.counts, 0) - p.counts
    rank = torch.arange(n, device=device) - start[p.inverse[order]]
    drawn = torch.empty(n, dtype=torch.bool, device=device)
    drawn[order] = rank < s
    scale = (p.counts[p.inverse].to(losses.dtype)) / s
    return torch.where(drawn, scale, torch.zeros((), dtype=losses.dtype, device=device))


def _check_pool_sizes(pools: Tensor, p: _Pools, s: int) -> None:
    small = (p.counts > 0) & (p.counts < s)  # the slots of no pool count 0

    def detail() -> str:  # the error path: reads the small pools' ids and sizes
        ids = torch.unique(pools.to(p.counts.device))
        bad = small[: ids.numel()]
        shown, sizes = ids[bad][:5].tolist(), p.counts[small][:5].tolist()
        more = f" and {int(bad.sum()) - 5} more" if int(bad.sum()) > 5 else ""
        return (
            f"every pool must have at least `num_selected`={s} candidates; pools {shown}{more} "
            f"have sizes {sizes}. Build batches from whole pools of k >= {s} candidates."
        )

    check_on_device(
        ~small.any(),
        f"every pool must have at least `num_selected`={s} candidates; a smaller pool was "
        f"found. Build batches from whole pools of k >= {s} candidates.",
        detail,
    )


def _check_draws(draws: object, n: int) -> Tensor:
    check_tensor(draws, "draws")
    if draws.shape != (n,) or not draws.is_floating_point():
        raise ValueError(
            f"`draws` must be a floating-point tensor of shape ({n},), one Uniform(0, 1) variate "
            f"per candidate (see pld_draws); got shape {tuple(draws.shape)} and dtype "
            f"{draws.dtype}."
        )
    if n:
        check_on_device(
            ((draws > 0) & (draws < 1)).all(), "`draws` must lie in the open interval (0, 1)."
        )
    return draws


# SplitMix64 on int64 tensors: wrapping multiplication, logical shifts by masking the sign bits.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: Tensor, k: int) -> Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64_tensor(x: Tensor) -> Tensor:
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def pld_draws(pools: Tensor, seed: int, epoch: int, batch_idx: int, call: int = 0) -> Tensor:
    """One Uniform(0, 1) variate per candidate, keyed on where the candidate is in training.

    The variate of candidate ``i`` hashes ``(seed, epoch, batch_idx, call)``, its pool id and
    its position among the members of its pool (in batch order) through SplitMix64, as
    :func:`~lightning_losses.weighting.epoch_generator` does for its seeds. It depends on
    nothing else: not on the other pools of the batch, their order, or the rank holding the
    pool. ``batch_idx`` is the batch index within the epoch (distinct for each micro-batch of
    gradient accumulation, unlike the global step); ``call`` tells apart several loss
    computations of one batch.

    Args:
        pools: (N,) integer pool ids.
        seed, epoch, batch_idx, call: the key; integers, all but ``seed`` >= 0.

    Returns:
        (N,) float64 variates in (0, 1) on ``pools``' device (53 random bits each).
    """
    state = 0
    for name, value, low in (
        ("seed", seed, None),
        ("epoch", epoch, 0),
        ("batch_idx", batch_idx, 0),
        ("call", call, 0),
    ):
        state = _splitmix64(state ^ (check_int(value, name, low) & _MASK64))
    check_tensor(pools, "pools")
    if pools.ndim != 1:
        raise ValueError(f"`pools` must have shape (N,); got {tuple(pools.shape)}.")
    ids = _pools(pools, pools.shape[0], pools.device)
    # position of each candidate among the earlier members of its pool
    order = torch.argsort(ids.inverse, stable=True)
    start = torch.cumsum(ids.counts, 0) - ids.counts
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device) - start[ids.inverse[order]]
    x = _splitmix64_tensor(pools.to(torch.int64) ^ _signed(state))
    x = _splitmix64_tensor(x ^ position)
    return (_shr(x, 11).to(torch.float64) + 0.5) / float(1 << 53)
