r"""``ReIDDataModule``: re-ID data for Lightning, embedded identities or a Market-1501 folder.

* ``data_dir=None``: the embedded synthetic identities
  (:func:`~lightning_losses.data.identities.synthetic_identities`, options in ``identities``);
  a path: a Market-1501 tree (:func:`~lightning_losses.data.market1501.market1501_splits`).
* Training batches come from a :class:`~lightning_losses.data.PKSampler` (``p`` identities
  :math:`\times` ``k`` instances), built for the trainer's ranks.
* Validation and test batches run over the **query and gallery together**
  (:class:`QueryGallery`): every sample has ``"is_query"`` and an ``"index"`` that is unique
  across both, to pass to :class:`~lightning_losses.metrics.ReIDMetrics`:
  ``metric.update(features, batch["id"], batch["camera"], batch["is_query"],
  indices=batch["index"])``. Under DDP each rank evaluates its share of them (a
  ``DistributedSampler`` without shuffling, whose padding repeats a few samples: the indices let
  the metric count them once).

Under DDP the trainer needs ``use_distributed_sampler=False`` (the P x K sampler shards by
identities itself); ``train_dataloader`` says so otherwise. A sampler-owning callback
(InfoBatch, ...) cannot be combined with the P x K sampler
(:mod:`lightning_losses.data.pk_sampler` says why): ``train_dataloader`` raises a
``ValueError`` naming it.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._checks import check_int
from .identities import ReIDSplits, synthetic_identities
from .market1501 import market1501_splits
from .pk_sampler import PKSampler

__all__ = ["QueryGallery", "ReIDDataModule"]


class QueryGallery(Dataset[dict[str, Any]]):
    """The query split followed by the gallery split, each sample marked ``"is_query"``.

    ``"index"`` is the position in this combined dataset (queries first), unique across both.
    """

    def __init__(self, query: Dataset[dict[str, Any]], gallery: Dataset[dict[str, Any]]) -> None:
        self.query, self.gallery = query, gallery
        self.num_queries = len(query)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_queries + len(self.gallery)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        is_query = index < self.num_queries
        source = self.query if is_query else self.gallery
        sample = dict(source[index if is_query else index - self.num_queries])
        sample["index"], sample["is_query"] = index, is_query
        return sample


class ReIDDataModule(L.LightningDataModule):
    """Re-ID data: P x K training batches, query + gallery evaluation (module docstring).

    Args:
        data_dir: ``None`` for the embedded identities, or the root of a Market-1501 tree.
        p: identities per training batch and rank. Default 16 (fast-reid's 64 = 16 x 4).
        k: instances per identity. Default 4.
        replace: fill identities with fewer than ``k`` images by repeats (True) or fail.
        eval_batch_size: batch size of the query + gallery loaders.
        num_workers: ``DataLoader`` workers (persistent when > 0).
        seed: seeds the P x K sampler (and, unless ``identities`` sets it, the embedded data).
        image_size: ``(H, W)``; default (64, 32) for the embedded data, (256, 128) for Market.
        identities: keyword arguments of
            :func:`~lightning_losses.data.identities.synthetic_identities` (embedded data only).

    Attributes:
        splits: the :class:`~lightning_losses.data.identities.ReIDSplits`, after ``setup``.
        num_classes: training identities (the classifier's size), after ``setup``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        p: int = 16,
        k: int = 4,
        replace: bool = True,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        image_size: tuple[int, int] | None = None,
        identities: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.p, self.k = check_int(p, "p", 1), check_int(k, "k", 1)
        self.replace = replace
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", 1)
        self.num_workers = check_int(num_workers, "num_workers", 0)
        self.seed = check_int(seed, "seed")
        self.image_size = image_size
        if identities is not None and data_dir is not None:
            raise ValueError("`identities` configures the embedded data; it needs data_dir=None.")
        self.identities = dict(identities or {})
        self.splits: ReIDSplits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self.data_dir is None:
            options = {"seed": self.seed} | self.identities
            if self.image_size is not None:
                options["image_size"] = self.image_size
            self.splits = synthetic_identities(**options)
        else:
            self.splits = market1501_splits(self.data_dir, image_size=self.image_size or (256, 128))

    @property
    def num_classes(self) -> int:
        """Training identities: the size of an identity classifier."""
        self.setup()
        assert self.splits is not None
        return int(self.splits.train.ids.max()) + 1  # type: ignore[attr-defined]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader[Any]:
        """P x K batches of the training identities, sharded by identity across ranks."""
        self.setup()
        assert self.splits is not None
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            from ..callbacks.sampler_owner import TrainSamplerOwner

            owners = [
                type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, TrainSamplerOwner)
            ]
            if owners:
                raise ValueError(
                    f"{', '.join(owners)} owns the training sampler, which ReIDDataModule's P x K "
                    "sampler needs: its per-sample plan would replace the P x K batches (and "
                    "pruning would leave identities without K instances). Drop the callback, or "
                    "reweight samples through the loss instead."
                )
            connector = getattr(trainer, "_accelerator_connector", None)
            if trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
                raise ValueError(
                    "ReIDDataModule shards its P x K batches by identity across ranks itself: "
                    "build the Trainer with use_distributed_sampler=False."
                )
        world, rank = self._world()
        sampler = PKSampler(
            self.splits.train.ids,  # type: ignore[attr-defined]
            p=self.p,
            k=self.k,
            replace=self.replace,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )
        return DataLoader(
            self.splits.train,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self) -> DataLoader[Any]:
        self.setup()
        assert self.splits is not None
        data = QueryGallery(self.splits.query, self.splits.gallery)
        world, rank = self._world()
        sampler = (
            DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
            if world > 1
            else None
        )
        return DataLoader(
            data,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[Any]:
        """Query then gallery, with ``"is_query"`` and combined ``"index"`` entries."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader()
