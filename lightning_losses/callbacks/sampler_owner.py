"""``TrainSamplerOwner``: the base of callbacks that decide which samples each epoch trains on.

Such a callback (InfoBatch, ...) implements one method, :meth:`TrainSamplerOwner.epoch_order`:
the global order of the dataset indices to train on in a given epoch, identical on every rank.
The base class does the rest, the same way for every owner:

* **Installation.** At the start of training and after every dataloader reload, the user's
  training loader is rebuilt around a :class:`~lightning_losses.data.PlannedBatchSampler`
  (same dataset, collate function and workers), and Lightning's epoch length, progress bar
  total and validation interval are set to the planned epoch's length.
* **Sharding.** Under DDP each rank takes its share of the planned order
  (``padded[rank::world]``, at most ``world - 1`` repeated samples), so a shorter epoch is
  shorter on every rank and every rank runs the same number of steps.
* **The index channel.** :attr:`batch_indices` holds the dataset indices of the batch being
  trained on, for the owner's weights and score updates and for losses that declare the
  ``index`` context.
* **Resume.** The plan of the current epoch and the number of batches already trained are part
  of the callback's state, so a run resumed from a checkpoint taken in the middle of an epoch
  trains the rest of that epoch's plan, and one resumed at an epoch boundary plans the next
  epoch from the restored state: both continue exactly like the uninterrupted run.
* **Conflicts.** Only one callback can own the order: a second one is an error at setup, and
  so is a training loader whose sampler is already a custom one (a weighted or group-balanced
  sampler would be silently replaced).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from ..data.planned_batches import PlannedBatchSampler
from ._train_loader import (
    check_map_style,
    current_train_loader,
    install_train_loader,
    rebuild_loader,
)

#: samplers that only shuffle or not: the owner may replace them without losing anything.
_REPLACEABLE = (RandomSampler, SequentialSampler, DistributedSampler)


class TrainSamplerOwner(L.Callback):
    """Base class: owns the training order (see the module docstring).

    Subclasses implement :meth:`epoch_order` and may override :meth:`on_dataset_size` (called
    once the training set's size is known, before the first plan).
    """

    def __init__(self) -> None:
        self._sampler: PlannedBatchSampler | None = None
        self._installed: DataLoader[Any] | None = None
        self._planned_epoch = -1
        self._order: Tensor | None = None
        self._consumed = 0
        self._resume: dict[str, Any] | None = None
        self.num_samples: int | None = None
        self.batch_indices: Tensor | None = None

    # -- for subclasses ---------------------------------------------------------------------

    def epoch_order(self, trainer: L.Trainer, epoch: int) -> Tensor:
        """The dataset indices to train on in ``epoch``, in order; the same on every rank."""
        raise NotImplementedError

    def on_dataset_size(self, num_samples: int) -> None:
        """Called once the training set's size is known."""

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        owners = [cb for cb in trainer.callbacks if isinstance(cb, TrainSamplerOwner)]
        if len(owners) > 1:
            names = ", ".join(type(cb).__name__ for cb in owners)
            raise ValueError(
                f"only one callback can own the training sampler, but {len(owners)} do: {names}. "
                "Each decides which samples an epoch trains on; keep one of them."
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        loader = current_train_loader(trainer)
        n = check_map_style(loader, type(self).__name__)
        self._check_replaceable(loader)
        if self.num_samples is None:
            self.num_samples = n
            self.on_dataset_size(n)
        elif self.num_samples != n:
            raise ValueError(
                f"{type(self).__name__} was set up for a training set of {self.num_samples} "
                f"samples; the train dataloader now has {n}."
            )
        resume, self._resume = self._resume, None
        if resume is not None and resume["planned_epoch"] == epoch and resume["order"] is not None:
            self._order = resume["order"]  # resumed mid-epoch: finish this epoch's plan
            self._planned_epoch, self._consumed = epoch, resume["consumed"]
        else:
            self._plan(trainer, epoch)
        self._install(trainer, loader, restart_iterator=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._planned_epoch != epoch:
            self._plan(trainer, epoch)
        loader = current_train_loader(trainer)
        if loader is not self._installed:  # reloaded by `reload_dataloaders_every_n_epochs`
            self._check_replaceable(loader)
        # Lightning creates this epoch's iterator after this hook (or did in on_train_start).
        self._install(trainer, loader, restart_iterator=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self._sampler is not None
        self.batch_indices = self._sampler.pop_batch()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._consumed += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "planned_epoch": self._planned_epoch,
            "order": None if self._order is None else self._order.clone(),
            "consumed": self._consumed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_samples = state_dict["num_samples"]
        if self.num_samples is not None:
            self.on_dataset_size(self.num_samples)
        self._resume = {k: state_dict[k] for k in ("planned_epoch", "order", "consumed")}

    # -- pieces -------------------------------------------------------------------------------

    def _plan(self, trainer: L.Trainer, epoch: int) -> None:
        order = self.epoch_order(trainer, epoch)
        self._order = torch.as_tensor(order, dtype=torch.int64).cpu()
        self._planned_epoch, self._consumed = epoch, 0

    def _install(self, trainer: L.Trainer, loader: DataLoader[Any], restart_iterator: bool) -> None:
        assert self._order is not None
        if loader is not self._installed:
            self._sampler = PlannedBatchSampler(
                batch_size=_batch_size(loader, type(self).__name__),
                drop_last=_drop_last(loader),
                rank=trainer.global_rank,
                world_size=trainer.world_size,
            )
            loader = rebuild_loader(loader, self._sampler)
            self._installed = loader
        assert self._sampler is not None
        self._sampler.set_order(self._order, skip_batches=self._consumed)
        install_train_loader(trainer, loader, restart_iterator=restart_iterator)

    def _check_replaceable(self, loader: DataLoader[Any]) -> None:
        if loader is self._installed:
            return
        sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else None
        # Lightning wraps a custom sampler in a DistributedSamplerWrapper under DDP.
        custom = isinstance(sampler, DistributedSamplerWrapper)
        if loader.batch_sampler is None or custom or not isinstance(sampler, _REPLACEABLE):
            used = type(sampler if loader.batch_sampler is not None else loader.sampler).__name__
            raise ValueError(
                f"{type(self).__name__} owns the training sampler, but the train dataloader "
                f"already uses a custom one ({used}); it would be replaced and its sampling "
                "lost. Use a plain shuffled DataLoader, or drop one of the two."
            )


def _batch_size(loader: DataLoader[Any], owner: str) -> int:
    size = loader.batch_size
    if size is None:
        size = getattr(loader.batch_sampler, "batch_size", None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{owner} needs the train dataloader's batch size; got {size!r}.")
    return size


def _drop_last(loader: DataLoader[Any]) -> bool:
    return bool(getattr(loader.batch_sampler, "drop_last", loader.drop_last))
