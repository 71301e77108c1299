"""The dataloaders every datamodule here builds the same way from its three split datasets."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler


class SplitDataModule(L.LightningDataModule):
    """Base for datamodules with ``train_dataset``, ``val_dataset`` and ``test_dataset``.

    Subclasses set ``batch_size``, ``num_workers`` and ``seed`` and build the datasets in
    ``setup``. Training batches are shuffled with a generator seeded from ``seed`` (the same order
    on every run), unless :meth:`_train_sampler` returns a sampler, which then decides the
    training order; workers persist across epochs when there are any.
    """

    batch_size: int
    num_workers: int
    seed: int

    def _train_sampler(self) -> Sampler[int] | None:
        """The training sampler, called after ``setup``; ``None`` shuffles with ``seed``."""
        return None

    def _loader(self, split: str) -> DataLoader[Any]:
        self.setup()
        sampler = self._train_sampler() if split == "train" else None
        shuffle = split == "train" and sampler is None
        return DataLoader(
            getattr(self, f"{split}_dataset"),
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled with a generator seeded from ``seed`` (the same order on every run), or
        ordered by the subclass's training sampler."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")
