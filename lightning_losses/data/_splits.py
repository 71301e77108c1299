"""The dataloaders every datamodule here builds the same way from its three split datasets."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


class SplitDataModule(L.LightningDataModule):
    """Base for datamodules with ``train_dataset``, ``val_dataset`` and ``test_dataset``.

    Subclasses set ``batch_size``, ``num_workers`` and ``seed`` and build the datasets in
    ``setup``. Training batches are shuffled with a generator seeded from ``seed`` (the same order
    on every run); workers persist across epochs when there are any.
    """

    batch_size: int
    num_workers: int
    seed: int

    def _loader(self, split: str) -> DataLoader[Any]:
        self.setup()
        shuffle = split == "train"
        return DataLoader(
            getattr(self, f"{split}_dataset"),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled with a generator seeded from ``seed``: the same order on every run."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")
