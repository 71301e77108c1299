r"""``PLD``: personal loss-distribution resampling as a ``LossMixin`` callback.

Zhang, Cao, Wu, Sun, Shen, Cheng, *Personalized Denoising Implicit Feedback for Robust
Recommender System*, WWW 2025, arXiv 2502.00348 (code: Kaike-Zhang/PLD). The pure rule is
:func:`lightning_losses.weighting.pld.pld_select`; this module adds the Lightning side: pool ids
from the batch, the warm-up schedule, the keyed generator, per-sample weights for the mixin and
logging.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from .._checks import check_int, check_positive
from ..mixins import LossMixin
from ..weighting.pld import (
    DEFAULT_TEMPERATURE,
    DEFAULT_WARMUP_EPOCHS,
    _pools,
    pld_draws,
    pld_probabilities,
    pld_select,
)
from ._batch_ids import batch_ids


class PLD(L.Callback):
    r"""Train on the low-loss candidates of each pool (PLD, Zhang et al., WWW 2025).

    Each sample of a training batch carries a **pool id**; the samples of the batch that share
    an id form a pool of candidates, for example ``k`` positives of one user, each paired with a
    sampled negative, in BPR. At every training step the callback receives the detached
    per-sample losses :math:`\ell` from :class:`~lightning_losses.LossMixin` and, in each pool
    :math:`P`, draws ``num_selected`` :math:`= s` members without replacement with probabilities

    .. math::
        p_i = \frac{e^{-\ell_i/\tau}}{\sum_{j \in P} e^{-\ell_j/\tau}}
        \quad (\text{uniform } 1/|P| \text{ while } \text{epoch} < \text{warmup\_epochs}),

    and returns the weights :math:`w_i = |P|/s` for the drawn members and 0 for the others. The
    mixin's ``"mean"`` is then

    .. math::
        \frac{1}{N}\sum_i w_i \ell_i = \frac{1}{N}\sum_P |P|\,
        \operatorname{mean}_{i \in S_P} \ell_i ,

    the mean over pools of the drawn losses weighted by pool size (with equal pools of ``k``
    and :math:`s = 1`: the mean over pools of the one drawn loss, as in the reference). The
    choice is a constant of the backward pass. The noisy interactions of a user sit in the
    high-loss tail of that user's own loss distribution, so they are rarely drawn, whereas a
    global loss threshold would also drop clean interactions of users whose losses are all
    high (the paper's motivation).

    **Why a sample weighter and not a sampler.** The reference scores ``k`` positives per user
    in a no-grad forward, samples one, and runs a second forward and backward on it. Here the
    pools are whole in the batch and the callback only returns weights: it owns no sampler and
    no data loader, works with any model that uses ``LossMixin``, and composes with the other
    callbacks of the pipeline (their weights multiply into :math:`w`; loss terms such as
    distillation add to :math:`\ell` before the choice).

    **Cost.** The forward **and the backward** still run over all :math:`N` candidates: the
    zero-weighted ones contribute no gradient, but autograd still computes their (zero)
    contributions. Against the reference (a no-grad forward over :math:`N` plus a full step on
    :math:`N/k`) this costs the backward of :math:`N` instead of :math:`N/k` rows and saves
    the second forward; for embedding models such as MF the difference is small, for a large
    network per candidate it is up to :math:`k` times the backward. On top: a few stable sorts
    and :math:`O(N)` work per step and :math:`N` hashed uniform variates, all on the device:
    nothing is read back to the host (the pools are grouped with :math:`N` slots rather than
    ``unique``, whose output size depends on the data, and the checks that the losses are
    finite and every pool holds ``num_selected`` members run on the device). No extra forward
    pass.

    **Randomness and state.** Each candidate's variate hashes ``(seed, epoch, batch index in
    the epoch, call, pool id, position in the pool)``
    (:func:`~lightning_losses.weighting.pld.pld_draws`). The batch index rather than the
    global step, because the global step repeats across the micro-batches of gradient
    accumulation; ``call`` counts the loss computations within one batch. The global RNG is
    never touched. The callback is **stateless apart from its configuration**:
    :meth:`state_dict` is empty, and a run resumed from a checkpoint draws exactly what the
    uninterrupted run draws, because the key depends only on where a batch is in training.

    **DDP.** A pool's draw does not depend on the rank that holds it or on the other pools in
    the batch, so two processes draw, pool by pool, exactly what one process draws on their
    joint batch, with no communication. Pools must not be split across ranks, nor across
    batches: a pool is the set of samples with one id *in one batch on one rank*. That holds
    when the dataset returns one whole pool per item and the collate function flattens it (as
    :class:`~lightning_losses.tasks.recommendation.SyntheticImplicitFeedback` does), since
    samplers split the data by item; give the pools unique ids (the item index). Rank
    :math:`r` divides by its :math:`N_r` and DDP averages the gradients, so the step is the
    pool-size-weighted mean over the global batch when every rank has the same :math:`N_r`
    (``drop_last=True`` or equal pool sizes and batch counts): then 2 processes train to the
    weights of 1 process with the joint batch (tested).

    **Defaults** (reference ``meta_config.py`` and ``model_config.py``).

    * ``temperature`` :math:`\tau = 0.1` (``--temp``). It is on the scale of the losses: with
      BPR losses of order 1, a candidate whose loss is 0.23 higher has half the odds; τ → ∞
      is uniform choice, τ → 0 always the pool's lowest loss (no exploration). Check the
      logged ``effective_candidates`` against the pool size before trusting another loss scale.
    * ``warmup_epochs`` = 5 (``begin_adv``): losses of an untrained model say nothing about
      noise, so the first epochs choose uniformly (still one candidate per pool, as the
      reference trains on one random positive per user then).
    * ``num_selected`` = 1: the reference's ``torch.multinomial(probs, 1)``.
    * The pool size ``k`` (``--item_num`` = 5) is a property of the batches, not of the
      callback.

    **Logging** (``on_step=False, on_epoch=True``, ``sync_dist=True``): ``train/pld/selected_loss``
    (mean loss of the drawn candidates), ``train/pld/mean_pool_loss`` (mean loss of all
    candidates: the plain objective) and ``train/pld/effective_candidates`` (mean over pools of
    :math:`1/\sum_{i \in P} p_i^2` under the softmax, also during warm-up so that τ can be
    checked before selection starts: :math:`|P|` means no preference, 1 a single candidate).
    They are logged as tensors, and the epoch value weights each step by its number of
    candidates :math:`N` (a number the host knows; the number of pools is in the data), which
    for pools of one size is the mean over the epoch's pools.

    The identity above needs the criterion's ``"mean"`` reduction; a fully ignored sample
    counts in :math:`N` with loss 0.

    Args:
        temperature: τ > 0.
        warmup_epochs: epochs (0-based ``epoch < warmup_epochs``) of uniform choice, >= 0.
        num_selected: s >= 1 candidates drawn per pool; every pool needs at least s members.
        pool_key: where the batch keeps the pool ids: a ``str`` key of a mapping batch, or an
            ``int`` position of a tuple or list batch. Integer ids, shape ``(N,)``, any values.
        seed: seed of the keyed generator.

    Example:
        >>> trainer = L.Trainer(callbacks=[PLD(temperature=0.1, warmup_epochs=5)])
        >>> # the module uses LossMixin and returns self.compute_loss(scores, None, batch=batch)
        >>> # on batches like {"user": ..., "pos": ..., "neg": ..., "pool": ...}
    """

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        warmup_epochs: int = DEFAULT_WARMUP_EPOCHS,
        num_selected: int = 1,
        pool_key: str | int = "pool",
        seed: int = 0,
    ) -> None:
        if isinstance(pool_key, bool) or not isinstance(pool_key, str | int):
            raise TypeError(
                "`pool_key` must be a str (key of a mapping batch) or an int (position in a "
                f"tuple/list batch); got {type(pool_key).__name__} {pool_key!r}."
            )
        self.temperature = check_positive(temperature, "temperature")
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", 0)
        self.num_selected = check_int(num_selected, "num_selected", 1)
        self.pool_key = pool_key
        self.seed = check_int(seed, "seed")
        self._batch_idx = 0
        self._calls = 0

    # -- Lightning hooks ----------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(pool_key=self.pool_key, seed=self.seed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"PLD needs LossMixin: {type(pl_module).__name__} does not use it, so no "
                "candidate would be selected. Mix `lightning_losses.LossMixin` into the module "
                "and return `self.compute_loss(outputs, target, batch=batch)` from training_step."
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx, self._calls = batch_idx, 0

    def state_dict(self) -> dict[str, Any]:
        """Empty: the draws are keyed on (seed, epoch, batch index, pool), nothing accumulates."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    # -- LossMixin protocol -------------------------------------------------------------------

    def in_warmup(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) chooses uniformly: ``epoch < warmup_epochs``."""
        return epoch < self.warmup_epochs

    @torch.no_grad()
    def sample_weights(self, pl_module: Any, batch: Any, losses: Tensor) -> Tensor:
        """Draw ``num_selected`` candidates per pool; return ``|P|/s`` for them, 0 elsewhere."""
        pools = self.pool_ids(batch, losses.shape[0], losses.device)
        trainer = getattr(pl_module, "_trainer", None)
        epoch = int(trainer.current_epoch) if trainer is not None else 0
        draws = pld_draws(pools, self.seed, epoch, self._batch_idx, self._calls)
        self._calls += 1
        weights = pld_select(
            losses,
            pools,
            self.temperature,
            self.num_selected,
            draws=draws,
            uniform=self.in_warmup(epoch),
        )
        if trainer is not None and hasattr(pl_module, "log"):
            self._log(pl_module, losses, pools, weights)
        return weights

    # -- pieces -------------------------------------------------------------------------------

    def pool_ids(self, batch: Any, n: int, device: torch.device | str | None = None) -> Tensor:
        """The batch's pool ids as an int64 tensor ``(n,)``."""
        return batch_ids(
            batch, self.pool_key, n, owner="PLD", what="pool ids", key_arg="pool_key", device=device
        )

    def _log(self, pl_module: Any, losses: Tensor, pools: Tensor, weights: Tensor) -> None:
        n = losses.numel()
        if n == 0:
            return
        ell = losses.detach().float()
        drawn = weights > 0
        p = pld_probabilities(ell, pools, self.temperature)
        # the sum of p^2 over each pool, in one slot per pool (pools hold p summing to 1, so
        # a used slot is > 0 and the slots of no pool stay 0)
        slots = _pools(pools, n, p.device).inverse
        concentration = torch.zeros_like(p).index_add(0, slots, p.square())
        used = concentration > 0
        effective = torch.where(used, 1.0 / concentration, 0.0)
        values = {
            "selected_loss": torch.where(drawn, ell, 0.0).sum() / drawn.sum(),
            "mean_pool_loss": ell.mean(),
            "effective_candidates": (effective.sum() / used.sum()).float(),
        }
        for name, value in values.items():
            pl_module.log(
                f"train/pld/{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )


__all__ = ["PLD"]
