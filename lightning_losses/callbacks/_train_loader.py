"""The one place that swaps the training ``DataLoader`` inside Lightning's fit loop.

A callback that owns the training order must replace the sampler of the user's loader, and
Lightning fixes the epoch length when it sets the loader up (``FitLoop.setup_data``), before any
callback hook of the epoch runs. So the swap rebuilds the loader with the new batch sampler (the
same dataset, collate function, workers and memory pinning; never a patch of ``DataLoader``)
and then corrects what Lightning derived from the old length: the number of batches per epoch
(which the progress bar, ``val_check_interval`` and the end of the epoch read) and, on the first
epoch of a ``fit`` call, the iterator that ``setup_data`` already started.

These are private attributes of Lightning's ``FitLoop`` (``_combined_loader``,
``_data_fetcher``, ``max_batches``, and ``_data_source`` for the one-batch dry run of
:func:`first_train_batch`); the tests of the sampler-owning callbacks exercise every
one of them, so a change in Lightning fails there, loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, IterableDataset, Sampler


def current_train_loader(trainer: L.Trainer) -> DataLoader[Any]:
    """The training ``DataLoader`` the fit loop iterates (set up if it is not yet)."""
    loop = trainer.fit_loop
    if loop._combined_loader is None:
        loop.setup_data()
    combined = loop._combined_loader
    if combined is None:
        raise ValueError("the Trainer has no training dataloader to take the sampler of.")
    loaders = combined.flattened
    if len(loaders) != 1 or not isinstance(loaders[0], DataLoader):
        raise ValueError(
            "a sampler-owning callback needs exactly one training torch DataLoader; got "
            f"{[type(dl).__name__ for dl in loaders]}."
        )
    return loaders[0]


def first_train_batch(trainer: L.Trainer) -> Any:
    """One batch of the training dataloader, drawn from a fresh iterator (for dry runs)."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    loaders = source.dataloader() if source is not None else None
    if loaders is None:
        raise RuntimeError(
            "Distillation needs one training batch at setup to size the feature adapters, but "
            "no training dataloader was found; pass `adapters=False` or give fit a dataloader."
        )
    if isinstance(loaders, Mapping | list | tuple):
        batch, _, _ = next(iter(CombinedLoader(loaders, "max_size_cycle")))
        return batch
    return next(iter(loaders))


def check_map_style(loader: DataLoader[Any], owner: str) -> int:
    """The dataset's length; an error for iterable or unsized datasets."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"{owner} chooses which samples each epoch trains on, so it needs a map-style "
            f"dataset with a length; the train dataloader's dataset is an IterableDataset "
            f"({type(dataset).__name__})."
        )
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(
            f"{owner} needs a training dataset of known length; {type(dataset).__name__} has "
            "no __len__."
        ) from err
    if n < 1:
        raise ValueError(f"{owner} needs a non-empty training dataset; it has {n} samples.")
    return n


def rebuild_loader(loader: DataLoader[Any], batch_sampler: Sampler[list[int]]) -> DataLoader[Any]:
    """A new ``DataLoader`` over the same dataset with ``batch_sampler`` deciding the batches."""
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = True  # the index channel relies on batches arriving in order
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **kwargs)


def install_train_loader(
    trainer: L.Trainer, loader: DataLoader[Any], *, restart_iterator: bool
) -> None:
    """Make ``loader`` the fit loop's training loader and fix the epoch length to its length.

    ``restart_iterator`` drops the iterator (and the batch it prefetched) that ``setup_data``
    created from the old loader; needed on the first epoch of a ``fit`` call, where Lightning
    does not create a new one before the epoch runs.
    """
    loop = trainer.fit_loop
    combined = loop._combined_loader
    assert combined is not None
    combined.flattened = [loader]
    num_batches = _parse_num_batches(
        RunningStage.TRAINING, len(loader), trainer.limit_train_batches
    )
    combined.limits = [num_batches]
    loop.max_batches = num_batches
    interval = trainer.val_check_interval
    if isinstance(interval, float) and getattr(trainer, "_val_check_time_interval", None) is None:
        trainer.val_check_batch = max(1, int(num_batches * interval))
    if restart_iterator and loop._data_fetcher is not None:
        loop._data_fetcher.setup(combined)
        iter(loop._data_fetcher)
