r"""``InfoBatch``: unbiased dynamic data pruning as a Lightning callback.

Qin et al., *InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning*, ICLR 2024
(arXiv 2303.04947; code NUS-HPC-AI-Lab/InfoBatch). The rule is the pure
:func:`~lightning_losses.weighting.infobatch_plan`; the per-sample scores live in a
:class:`~lightning_losses.weighting.ScoreStore`; the epoch order is owned through
:class:`~lightning_losses.callbacks.sampler_owner.TrainSamplerOwner`. This module joins them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from .._checks import check_int
from ..mixins import LossMixin
from ..weighting.infobatch import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    _check_delta,
    _check_prune_ratio,
    epoch_generator,
    expected_total_steps,
    infobatch_active,
    infobatch_plan,
    infobatch_stop_epoch,
)
from ..weighting.score_store import ScoreStore, gather_updates
from ._train_loader import check_map_style, current_train_loader
from .sampler_owner import TrainSamplerOwner, _batch_size, _drop_last


class InfoBatch(TrainSamplerOwner):
    r"""Skip part of the well-learned samples each epoch and rescale the rest (InfoBatch).

    Add it to the ``Trainer`` of a module that uses :class:`~lightning_losses.LossMixin`;
    nothing else changes (not the dataset, not the DataModule, not ``training_step``).

    **What it does, per epoch** :math:`e` of :math:`T` (``max_epochs``):

    .. code-block:: text

        s_i = last training loss of sample i (its score; 3.0 until first seen)
        E   = {i : s_i < mean(s)}                            well-learned candidates
        keep m = max(1, round((1 - r)·|E|)) of E at random, weight |E|/m   (≈ 1/(1 - r))
        drop the other |E| - m for this epoch; every sample not in E is kept with weight 1
        train on the kept samples, in a random order, with loss mean(w·ℓ) per batch

    Epoch 0 (no score yet) and the epochs from :math:`\lfloor \delta T \rfloor` on (annealing)
    train on all data with weight 1. Every candidate is kept with probability :math:`m/|E|`
    and weighted :math:`|E|/m`, so :math:`\mathbb{E}[w_i] = 1` for every sample and the
    expected gradient is the full-data gradient (see :mod:`lightning_losses.weighting.infobatch`
    for the exact rule and where it differs from the reference code).

    **Scores** are the detached per-sample totals of the loss pipeline (every term, before the
    sample weights), recorded in a :class:`~lightning_losses.weighting.ScoreStore` (available
    as :attr:`store`) after every step; under DDP every rank's ``(index, loss)`` pairs are
    all-gathered first, so all ranks hold the same table and plan the same epoch. The store and
    the epoch's weights live on the module's device (moved there when training starts), so a
    step reads nothing back to the host; the plan is made on the CPU at each epoch start, from
    a host copy of the scores.

    **Randomness.** The kept subset and the epoch order come from a generator seeded by
    ``(seed, epoch)`` (:func:`~lightning_losses.weighting.epoch_generator`): the same on every
    rank, independent of the global RNG and of ``seed_everything``, and the same again after a
    resume.

    **Epoch length, schedulers, DDP.** The training loader is rebuilt around the library's
    sampler (see :mod:`~lightning_losses.callbacks.sampler_owner`), so the progress bar, the
    validation interval and the end of the epoch follow the pruned length; under DDP the kept
    samples are split evenly across ranks with at most ``world_size - 1`` repeats, never padded
    back to the full size. A step-based learning-rate schedule must be given the pruned number
    of steps: :meth:`estimated_stepping_batches` (or the module-level
    :func:`estimated_stepping_batches`, which falls back to Lightning's count without InfoBatch)
    estimates it before the scores exist.

    **Logging.** Each epoch, ``train/infobatch/trained`` (samples in the epoch),
    ``train/infobatch/pruned``, ``train/infobatch/saving`` (pruned / dataset size, the fraction
    of per-sample forward and backward passes saved) and ``train/infobatch/candidates``;
    :attr:`history` keeps them per epoch for reports and benchmarks. With ``verbose=True`` (the
    default) rank zero also prints one line per epoch (samples trained, pruned, saving, or why
    nothing was pruned) and, at the end of fit, the run's total saving, or that no epoch was
    pruned and which epochs would have been.

    **Cost.** Per step: a copy of the batch's indices to the device (non-blocking), an index
    gather of the weights, the store's update (a sort of the batch's indices and O(batch)
    scatters) and, under DDP, one all-gather of the batch's indices and losses. Per epoch: one
    copy of the :math:`N` scores to the host, a mean, a ``randperm`` of the candidates and one of
    the kept samples, on the CPU, and one copy of the :math:`N` weights to the device. Memory:
    4 per-sample buffers of the store and the :math:`N` weights on the device, the order on the
    host. Saving: a pruning epoch trains
    :math:`N - |E| + m` samples, about :math:`N(1 - r\,|E|/N)`; with :math:`r = 0.5` and half
    the samples below the mean, a quarter of each pruning epoch, and over the whole run about
    :math:`\delta` times that (epoch 0 and the annealing epochs prune nothing).

    **Defaults** (the paper's and the reference code's): ``prune_ratio`` :math:`r = 0.5`, the
    fraction of *below-mean* samples pruned (not of all samples); ``delta``
    :math:`\delta = 0.875`, the share of epochs after which pruning stops so the last epochs
    anneal on the full data. ``seed = 0``.

    Args:
        prune_ratio: :math:`r \in [0, 1)`.
        delta: :math:`\delta \in (0, 1]`.
        seed: seed of the per-epoch generators.
        num_epochs: the planned number of epochs :math:`T`; default ``trainer.max_epochs``.
        verbose: print the per-epoch line and the end-of-fit summary (rank zero).

    Example:
        >>> trainer = L.Trainer(max_epochs=20, callbacks=[InfoBatch(prune_ratio=0.5)])
        >>> trainer.fit(model, datamodule=dm)  # model uses LossMixin
    """

    def __init__(
        self,
        prune_ratio: float = DEFAULT_PRUNE_RATIO,
        delta: float = DEFAULT_DELTA,
        seed: int = 0,
        num_epochs: int | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.verbose = bool(verbose)
        self.prune_ratio = _check_prune_ratio(prune_ratio)
        self.delta = _check_delta(delta)
        self.seed = check_int(seed, "seed")
        self.num_epochs = None if num_epochs is None else check_int(num_epochs, "num_epochs", 1)
        self.store: ScoreStore | None = None
        self.weights: Tensor | None = None
        self.history: list[dict[str, float]] = []
        self._pending: tuple[Tensor, Tensor] | None = None
        self._restored_store: dict[str, Tensor] | None = None

    # -- planning -----------------------------------------------------------------------------

    def total_epochs(self, trainer: L.Trainer) -> int:
        """:math:`T`: ``num_epochs`` if given, else the trainer's ``max_epochs``."""
        if self.num_epochs is not None:
            return self.num_epochs
        t = trainer.max_epochs
        if t is None or t < 1:
            raise ValueError(
                "InfoBatch stops pruning after `delta` of the planned epochs, so it needs them: "
                f"set `Trainer(max_epochs=...)` or `InfoBatch(num_epochs=...)`; got "
                f"max_epochs={t!r}."
            )
        return t

    def on_dataset_size(self, num_samples: int) -> None:
        if self.store is None or self.store.num_samples != num_samples:
            self.store = ScoreStore(num_samples)
        if self._restored_store is not None:
            self.store.load_state_dict(self._restored_store)
            self._restored_store = None

    def epoch_order(self, trainer: L.Trainer, epoch: int) -> Tensor:
        assert self.store is not None
        generator = epoch_generator(self.seed, epoch)
        active = infobatch_active(epoch, self.total_epochs(trainer), self.delta)
        scores = self.store.last_loss.cpu()  # the epoch boundary: the plan is made on the host
        plan = infobatch_plan(scores, self.prune_ratio, generator=generator, prune=active)
        self.weights = plan.weights.to(self.store.last_loss.device)
        n = plan.weights.shape[0]
        self.history.append(
            {
                "epoch": epoch,
                "trained": n - plan.num_pruned,
                "pruned": plan.num_pruned,
                "saving": plan.saving,
                "candidates": plan.num_candidates,
            }
        )
        shuffle = torch.randperm(plan.kept_indices.numel(), generator=generator)
        return plan.kept_indices[shuffle]

    # -- Lightning hooks ----------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            prune_ratio=self.prune_ratio, delta=self.delta, seed=self.seed
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"InfoBatch needs LossMixin: {type(pl_module).__name__} does not use it, so the "
                "kept samples could not be reweighted (and the pruning would bias training). Mix "
                "`lightning_losses.LossMixin` into the module and return "
                "`self.compute_loss(outputs, target, batch=batch)` from training_step."
            )
        self.total_epochs(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._place(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._place(pl_module.device)

    def _place(self, device: torch.device) -> None:
        """Move the store and the epoch's weights to the device the losses are computed on."""
        if self.store is not None:
            self.store.to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.store is not None:  # own copies: spawned workers share CPU tensors' memory
            state = {k: v.clone() for k, v in self.store.state_dict().items()}
            self.store = ScoreStore(self.store.num_samples)
            self.store.load_state_dict(state)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history:
            return
        last = self.history[-1]
        for key in ("trained", "pruned", "saving", "candidates"):
            pl_module.log(f"train/infobatch/{key}", float(last[key]), on_epoch=True, on_step=False)
        if self.verbose and not trainer.sanity_checking:
            rank_zero_info(self._epoch_line(trainer, last))

    def _epoch_line(self, trainer: L.Trainer, last: dict[str, float]) -> str:
        epoch, trained = int(last["epoch"]), int(last["trained"])
        total = trained + int(last["pruned"])
        if last["pruned"]:
            return (
                f"InfoBatch epoch {epoch}: trained {trained:,} of {total:,} samples "
                f"({int(last['pruned']):,} pruned, saving {last['saving']:.1%})"
            )
        if epoch == 0:
            why = "epoch 0 has no scores yet"
        elif epoch >= self._stop(trainer):
            why = f"annealing: epochs from floor(delta * T) = {self._stop(trainer)} on use all data"
        else:
            why = "no sample's score was below the mean"
        return f"InfoBatch epoch {epoch}: trained all {total:,} samples ({why})"

    def _stop(self, trainer: L.Trainer) -> int:
        return infobatch_stop_epoch(self.total_epochs(trainer), self.delta)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.verbose and self.history:
            rank_zero_info(self.summary(trainer))

    def summary(self, trainer: L.Trainer) -> str:
        """One sentence on the run so far: the sample passes saved, or why none were."""
        passes = sum(int(h["trained"]) + int(h["pruned"]) for h in self.history)
        pruned = sum(int(h["pruned"]) for h in self.history)
        epochs = sum(1 for h in self.history if h["pruned"])
        if pruned:
            return (
                f"InfoBatch: {epochs} of {len(self.history)} epochs pruned; {pruned:,} of "
                f"{passes:,} sample passes saved ({pruned / passes:.1%})"
            )
        stop, total = self._stop(trainer), self.total_epochs(trainer)
        window = (
            f"it prunes epochs 1 to {stop - 1} of T = {total} (delta = {self.delta})"
            if stop > 1
            else f"with T = {total} and delta = {self.delta} no epoch is in its pruning window "
            f"(epochs 1 to floor(delta * T) - 1 = {stop - 1})"
        )
        return f"InfoBatch pruned no epoch in {len(self.history)}: {window}"

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["store"] = (
            None
            if self.store is None
            else {k: v.to("cpu", copy=True) for k, v in self.store.state_dict().items()}
        )
        state["weights"] = None if self.weights is None else self.weights.to("cpu", copy=True)
        state["history"] = [dict(h) for h in self.history]
        state["config"] = {"prune_ratio": self.prune_ratio, "delta": self.delta, "seed": self.seed}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_store = state_dict["store"]
        self.store = None
        super().load_state_dict(state_dict)
        self.weights = None if state_dict["weights"] is None else state_dict["weights"].clone()
        self.history = [dict(h) for h in state_dict["history"]]

    # -- LossMixin protocol -------------------------------------------------------------------

    @torch.no_grad()
    def sample_weights(self, pl_module: Any, batch: Any, losses: Tensor) -> Tensor:
        """The plan's weight of each sample of the batch (and keep the losses as scores)."""
        assert self.weights is not None
        if self.weights.device != losses.device:  # called outside fit: follow the losses
            self._place(losses.device)
        # the sampler's indices are host memory: a copy to the device, not a read back
        indices = self._indices(losses.shape[0]).to(losses.device, non_blocking=True)
        self._pending = (indices, losses.detach())
        return self.weights[indices].to(losses.dtype)

    @torch.no_grad()
    def observe_losses(
        self, pl_module: Any, batch: Any, losses: Any, sample_weight: Tensor | None
    ) -> None:
        """Record the step's per-sample totals (gathered over ranks) in the score store."""
        if self._pending is None:
            return
        indices, totals = self._pending
        self._pending = None
        indices, totals = gather_updates(indices, totals)
        assert self.store is not None
        self.store.update(indices, totals, epoch=pl_module.trainer.current_epoch)

    def _indices(self, n: int) -> Tensor:
        if self.batch_indices is None:
            raise RuntimeError(
                "InfoBatch has no sample indices for this batch: its sampler was not installed "
                "(is compute_loss called outside the training loop of Trainer.fit?)."
            )
        if self.batch_indices.numel() != n:
            raise ValueError(
                f"InfoBatch's sampler put {self.batch_indices.numel()} samples in this batch, "
                f"but the loss has {n} per-sample values: the loss must return one value per "
                "sample of the batch (reduction 'none' gives shape (N,))."
            )
        return self.batch_indices

    # -- step counts --------------------------------------------------------------------------

    def estimated_stepping_batches(
        self, trainer: L.Trainer, candidate_fraction: float = 0.5
    ) -> int:
        """Optimizer steps of the whole run with pruning, before the scores exist.

        :func:`~lightning_losses.weighting.expected_total_steps` with the training set's size,
        the loader's batch size and ``drop_last``, ``max_epochs``, the world size, and
        ``candidate_fraction`` (the assumed share of samples below the mean loss; see there why
        0.5 errs on the long side), the gradient accumulation and ``limit_train_batches``; capped
        by ``max_steps``.
        """
        loader = current_train_loader(trainer)
        steps = expected_total_steps(
            check_map_style(loader, "InfoBatch"),
            _batch_size(loader, "InfoBatch"),
            self.total_epochs(trainer),
            self.prune_ratio,
            self.delta,
            _drop_last(loader),
            candidate_fraction=candidate_fraction,
            world_size=trainer.world_size,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            limit_batches=trainer.limit_train_batches,
        )
        return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)


def estimated_stepping_batches(trainer: L.Trainer) -> int:
    """Optimizer steps of the run: InfoBatch's estimate when it is attached, else Lightning's.

    Use it for the total of step-based schedulers in ``configure_optimizers``.
    """
    for cb in trainer.callbacks:
        if isinstance(cb, InfoBatch):
            return cb.estimated_stepping_batches(trainer)
    return int(trainer.estimated_stepping_batches)


__all__ = ["InfoBatch", "estimated_stepping_batches"]
