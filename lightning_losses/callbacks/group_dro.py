r"""``GroupDRO``: group distributionally robust optimisation as a ``LossMixin`` callback.

Sagawa, Koh, Hashimoto, Liang, *Distributionally Robust Neural Networks for Group Shifts: On the
Importance of Regularization for Worst-Case Generalization*, ICLR 2020 (code:
kohpangwei/group_DRO). The pure update rule is
:func:`lightning_losses.weighting.group_dro_update`; this module adds the Lightning side: group
ids from the batch, the DDP all-reduce, per-sample weights for the mixin, state and logging.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_on_device, check_positive, check_range
from ..mixins import LossMixin
from ..weighting.dro import group_dro_update
from ._batch_ids import batch_ids
from ._epoch_means import EpochMeans

#: dtype of the state (``q``, EMA of group losses) and of the group statistics.
_STATE = torch.float64


class GroupDRO(L.Callback):
    r"""Minimise the worst group's expected loss (online group DRO, Sagawa et al., ICLR 2020).

    Each sample carries a group id :math:`g_i \in \{0, \dots, G-1\}` (for example label ×
    spurious attribute). The callback keeps weights :math:`q` on the simplex over groups and, at
    every training step with batch group means :math:`L_g` (present groups only),

    .. math::
        \tilde L_g = L_g + \frac{C}{\sqrt{n_g}},\qquad
        q_g \leftarrow \frac{q_g\, e^{\eta \tilde L_g}}{\sum_h q_h\, e^{\eta \tilde L_h}},
        \qquad \mathcal{L} = \sum_g q_g L_g

    which is a stochastic mirror-ascent step on
    :math:`\min_\theta \max_{q \in \Delta_G} \sum_g q_g\, \mathbb{E}[\ell \mid g]`. The step
    uses the **updated** :math:`q`: ``loss.py`` of kohpangwei/group_DRO
    (``LossComputer.compute_robust_loss``) first sets
    ``adv_probs = adv_probs * exp(step_size * adjusted_loss)``, renormalises, and then returns
    ``group_loss @ adv_probs``. Groups absent from the (global) batch keep their weight (see
    :func:`~lightning_losses.weighting.group_dro_update` for why this differs from the
    reference, which treats them as loss 0). The adjustment :math:`C/\sqrt{n_g}` enters only the
    update of :math:`q`, never the training loss (the reference adds it in place to the group
    losses, so its logged robust loss includes the constant; the gradient is the same).

    **How the loss is formed.** The callback implements ``sample_weights`` of
    :class:`~lightning_losses.LossMixin`; the mixin's ``"mean"`` is
    :math:`\frac{1}{N}\sum_i w_i \ell_i`. With :math:`n_g` the number of samples of group
    :math:`g` in the batch and :math:`N = \sum_g n_g`, the weights
    :math:`w_i = q_{g_i} N / n_{g_i}` give

    .. math::
        \frac{1}{N}\sum_i w_i \ell_i = \sum_g \frac{q_g}{n_g} \sum_{i:\, g_i = g} \ell_i
        = \sum_g q_g L_g .

    :math:`q` is a constant in the backward pass (it is computed from detached losses), so by
    Danskin's theorem the gradient is that of the robust objective at the current :math:`q`.
    The identity needs the criterion's ``"mean"`` reduction and assumes no sample is fully
    ignored (a fully ignored sample counts in :math:`n_g` with loss 0). Weights from other
    callbacks multiply into :math:`w` as usual.

    **DDP.** Every rank computes per-group loss sums and counts of its local batch, and one
    ``all_reduce`` (sum) over the default process group turns them into global ones, so every
    rank takes the same step and holds the same :math:`q` (in the reference code, ranks drift
    apart). :math:`N` and :math:`n_g` above are then global counts. Rank :math:`r` divides by its
    local :math:`N_r` and DDP averages gradients over the :math:`R` ranks, so the gradient is
    :math:`\frac{1}{R}\sum_r \frac{N}{N_r}\sum_{i \in r} \frac{q_{g_i}}{n_{g_i}} \nabla\ell_i`,
    which equals the gradient of :math:`\sum_g q_g L_g` over the global batch **when every rank
    has the same batch size** :math:`N_r = N/R` (``drop_last=True`` or a dataset size divisible
    by the global batch). With unequal last batches the samples of small ranks weigh more in
    that step. Every rank must call the loss the same number of times (the all-reduce is
    collective). The logged ``train/loss`` of one rank is then its share times :math:`R`; the
    mean over ranks is the robust loss.

    **State.** ``q`` (float64, so that many multiplicative steps keep full precision; the
    update renormalises every step; float32 on MPS, which has no float64), the EMA of each
    group's batch loss, the number of batches in which each group was present and the number
    of samples seen per group. They live on the device of the losses (moved there when training
    starts, or at the first call on another device), so a step reads nothing back to the host:
    the group ids are checked on the device (:func:`~lightning_losses._checks.check_on_device`)
    and the update is tensor arithmetic. :meth:`state_dict` holds CPU copies, so a run resumed
    with ``Trainer.fit(..., ckpt_path=...)`` continues with the same :math:`q` and reproduces an
    uninterrupted run. :math:`q` is a step per ``training_step`` call (per micro-batch under
    gradient accumulation), as in the reference.

    **Logging.** ``train/group_dro/q_{g}`` and ``train/group_dro/loss_{g}`` (the EMA, over the
    steps since the group was first seen): means over the epoch's steps, weighted by the batch
    size, logged at the end of the epoch (``on_epoch=True``). The sums are kept on the device
    per step and read once per epoch (see :mod:`~lightning_losses.callbacks._epoch_means`); a
    group not seen yet has no ``loss_{g}``. The values are the same on every rank.

    **Cost.** Per step: two ``index_add`` over the batch, one all-reduce of :math:`2G` numbers
    under DDP and O(G) work on the device; no host synchronisation and no extra forward or
    backward pass. Per epoch: one read of :math:`4G + 2` numbers for the logs.

    **Defaults.**

    * ``step_size`` :math:`\eta = 0.01`: the paper's value and the reference's
      ``--robust_step_size`` default. With losses of order 1, :math:`q` moves by about 1 % per
      step; larger values react faster but are noisier.
    * ``adjustment`` :math:`C = 0`: the reference's ``--generalization_adjustment`` default; the
      paper tunes :math:`C` on validation data. :math:`C > 0` needs ``group_sizes`` (training-set
      samples per group), as in the reference, which divides by the training-set group counts.
    * ``ema`` :math:`\gamma = 0.1`: the reference's ``--gamma`` default, the weight of the
      newest batch in the logged moving average of each group's loss (the first observation
      initialises it). It affects logging only.
    * **Regularisation is essential.** An overparameterised network fits every group of the
      training set, and then the worst-group training loss vanishes as well and group DRO does
      nothing. Sagawa et al. find that only with strong :math:`\ell_2` (weight decay well above
      the usual) or early stopping does group DRO improve worst-group test accuracy
      (Sagawa et al., 2020). Tune weight decay and stop on worst-group validation
      accuracy.

    Args:
        num_groups: number of groups :math:`G \ge 1`.
        step_size: :math:`\eta \ge 0`.
        adjustment: :math:`C \ge 0`.
        group_key: where the batch keeps the group ids: a ``str`` key of a mapping batch, or an
            ``int`` position of a tuple or list batch. The ids are an integer tensor (or
            sequence) of shape ``(N,)`` with values in ``[0, num_groups)``.
        group_sizes: training-set samples per group, ``(G,)``; required when ``adjustment > 0``.
        ema: :math:`\gamma \in (0, 1]`.

    Example:
        >>> trainer = L.Trainer(callbacks=[GroupDRO(num_groups=4)])
        >>> # the module uses LossMixin and calls self.compute_loss(logits, y, batch=batch)
        >>> # on batches like {"x": ..., "y": ..., "group": ...}
    """

    def __init__(
        self,
        num_groups: int,
        step_size: float = 0.01,
        adjustment: float = 0.0,
        group_key: str | int = "group",
        group_sizes: Sequence[int] | Tensor | None = None,
        ema: float = 0.1,
    ) -> None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
            raise TypeError(
                f"`num_groups` must be an integer; got {type(num_groups).__name__} {num_groups!r}."
            )
        if num_groups < 1:
            raise ValueError(f"`num_groups` must be >= 1; got {num_groups!r}.")
        if isinstance(group_key, bool) or not isinstance(group_key, str | int):
            raise TypeError(
                "`group_key` must be a str (key of a mapping batch) or an int (position in a "
                f"tuple/list batch); got {type(group_key).__name__} {group_key!r}."
            )
        self.num_groups = int(num_groups)
        self.step_size = check_positive(step_size, "step_size", allow_zero=True)
        self.adjustment = check_positive(adjustment, "adjustment", allow_zero=True)
        self.ema = check_range(ema, "ema", 0.0, 1.0, closed="right")
        self.group_key = group_key
        self.group_sizes = None if group_sizes is None else self._check_sizes(group_sizes)
        if self.adjustment > 0 and self.group_sizes is None:
            raise ValueError(
                "`group_sizes` (training-set samples per group, one per group) is required when "
                f"`adjustment` > 0; got adjustment={self.adjustment!r} and group_sizes=None."
            )

        g = self.num_groups
        self.q = torch.full((g,), 1.0 / g, dtype=_STATE)
        self.ema_loss = torch.zeros(g, dtype=_STATE)
        self.batches_seen = torch.zeros(g, dtype=torch.int64)
        self.samples_seen = torch.zeros(g, dtype=torch.int64)
        self._means = EpochMeans()

    def _check_sizes(self, sizes: Sequence[int] | Tensor) -> Tensor:
        t = torch.as_tensor(sizes, dtype=_STATE).detach().cpu()
        if (
            t.shape != (self.num_groups,)
            or not bool(torch.isfinite(t).all())
            or bool((t <= 0).any())
        ):
            raise ValueError(
                f"`group_sizes` must hold one positive count per group, shape "
                f"({self.num_groups},); got {t.tolist()}."
            )
        return t

    # -- Lightning hooks ----------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(num_groups=self.num_groups, group_key=self.group_key)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Own private copies: spawned workers receive CPU tensors in shared memory.
        self.q, self.ema_loss = self.q.clone(), self.ema_loss.clone()
        self.batches_seen, self.samples_seen = self.batches_seen.clone(), self.samples_seen.clone()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._place(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._means.reset()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._means.log(pl_module)
        self._means.reset()

    def _place(self, device: torch.device) -> None:
        """Move the state to ``device`` (float32 on MPS, which has no float64)."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else _STATE
        self.q = self.q.to(device, dtype)
        self.ema_loss = self.ema_loss.to(device, dtype)
        self.batches_seen = self.batches_seen.to(device)
        self.samples_seen = self.samples_seen.to(device)
        if self.group_sizes is not None:
            self.group_sizes = self.group_sizes.to(device, dtype)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"GroupDRO needs LossMixin: {type(pl_module).__name__} does not use it, so no "
                "loss would be reweighted. Mix `lightning_losses.LossMixin` into the module and "
                "return `self.compute_loss(outputs, target, batch=batch)` from training_step."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_groups": self.num_groups,
            "q": self.q.to("cpu", _STATE, copy=True),
            "ema_loss": self.ema_loss.to("cpu", _STATE, copy=True),
            "batches_seen": self.batches_seen.to("cpu", copy=True),
            "samples_seen": self.samples_seen.to("cpu", copy=True),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        g = state_dict.get("num_groups")
        if g != self.num_groups:
            raise ValueError(
                f"GroupDRO state was saved with num_groups={g!r}; this callback has "
                f"num_groups={self.num_groups}."
            )
        self.q = torch.as_tensor(state_dict["q"]).detach().to("cpu", _STATE).clone()
        self.ema_loss = torch.as_tensor(state_dict["ema_loss"]).detach().to("cpu", _STATE).clone()
        self.batches_seen = torch.as_tensor(state_dict["batches_seen"]).to("cpu", torch.int64)
        self.samples_seen = torch.as_tensor(state_dict["samples_seen"]).to("cpu", torch.int64)

    # -- LossMixin protocol -------------------------------------------------------------------

    @torch.no_grad()
    def sample_weights(self, pl_module: Any, batch: Any, losses: Tensor) -> Tensor:
        """Step ``q`` on this step's global group losses; return ``q_g N / n_g`` per sample."""
        if self.q.device != losses.device:  # called outside fit, or on another device
            self._place(losses.device)
        groups = self.group_ids(batch, losses.shape[0], losses.device)
        stats = self._global_group_stats(groups, losses)  # (2, G) with q: sums, counts
        sums, counts = stats[0], stats[1]
        present = counts > 0
        means = torch.where(present, sums / counts.clamp_min(1), 0.0)

        self.q = group_dro_update(
            self.q,
            means,
            counts,
            step_size=self.step_size,
            adjustment=self.adjustment,
            group_sizes=self.group_sizes,
        )
        first = self.batches_seen == 0
        blended = torch.where(first, means, (1 - self.ema) * self.ema_loss + self.ema * means)
        self.ema_loss = torch.where(present, blended, self.ema_loss)
        # Never update state tensors in place: under ``ddp_spawn`` the callback reaches the
        # workers through torch's multiprocessing pickler, which shares CPU tensors' memory.
        self.batches_seen = self.batches_seen + present.to(torch.int64)
        self.samples_seen = self.samples_seen + counts.round().to(torch.int64)

        total = counts.sum()
        factor = torch.where(present, self.q * total / counts.clamp_min(1), 0.0)
        weights = factor.to(losses.dtype)[groups]
        self._observe(int(losses.shape[0]))
        return weights

    # -- pieces -------------------------------------------------------------------------------

    def group_ids(self, batch: Any, n: int, device: torch.device | str | None = None) -> Tensor:
        """The batch's group ids as an int64 tensor ``(n,)``, checked against ``num_groups``."""
        ids = batch_ids(
            batch,
            self.group_key,
            n,
            owner="GroupDRO",
            what="group ids",
            key_arg="group_key",
            device=device,
        )
        where = f"`group_key`={self.group_key!r}"
        bad = (ids < 0) | (ids >= self.num_groups)
        g = self.num_groups
        expected = f"group ids at {where} must lie in [0, {g}) (num_groups={g})"
        check_on_device(
            ~bad.any(),
            f"{expected}; got an id out of range.",
            lambda: f"{expected}; got {sorted(set(ids[bad].tolist()))}.",
        )
        return ids

    def _global_group_stats(self, groups: Tensor, losses: Tensor) -> Tensor:
        """Per-group loss sums and counts, summed over ranks under DDP; (2, G), ``q``'s dtype."""
        dtype = self.q.dtype
        stats = torch.zeros(2, self.num_groups, dtype=dtype, device=losses.device)
        stats[0].index_add_(0, groups, losses.detach().to(dtype))
        stats[1].index_add_(0, groups, torch.ones_like(groups, dtype=dtype))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return stats

    def _observe(self, batch_size: int) -> None:
        """Add this step's ``q`` and EMA to the epoch means (logged at the epoch's end)."""
        groups = range(self.num_groups)
        seen = (self.batches_seen > 0).to(self.q.dtype) * batch_size
        self._means.add([f"train/group_dro/q_{g}" for g in groups], self.q, batch_size)
        self._means.add([f"train/group_dro/loss_{g}" for g in groups], self.ema_loss, seen)


__all__ = ["GroupDRO"]
