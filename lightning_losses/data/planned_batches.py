"""``PlannedBatchSampler``: one rank's batches of an epoch's planned sample order, and the index
channel that tells the loss pipeline which dataset indices each batch holds.

A callback that owns the training order (InfoBatch, ...) decides, once per epoch and identically
on every rank, the global order of the samples to train on. This sampler turns that order into
this rank's batches:

.. code-block:: text

    order (M,)            the epoch's samples, already shuffled (same on every rank)
    padded                order + its first (-M mod R) entries (cycled), so R ranks get equal
                          shares
    share of rank r       padded[r::R]                         ceil(M / R) samples
    batches               consecutive chunks of ``batch_size`` (the last may be short, or is
                          dropped with ``drop_last``)

Every rank therefore runs the same number of steps (DDP's collectives need it) and at most
``R - 1`` samples are repeated per epoch; nothing is padded up to the full dataset size, so a
pruned epoch stays short on every rank.

**The index channel.** The ``DataLoader`` draws batches from this sampler in the main process,
in order (``in_order=True``, the default), and hands them to the training loop in the same order,
also with workers and prefetching. The sampler records each batch it hands out in a queue, and
:meth:`pop_batch` returns them in that order, one per training step: the user's dataset and
batches stay exactly as they are.

Pure PyTorch; no Lightning import.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from .._checks import check_int


class PlannedBatchSampler(Sampler[list[int]]):
    """Batches of this rank's share of a planned epoch order (see the module docstring).

    Args:
        batch_size: samples per batch on this rank, >= 1.
        drop_last: drop this rank's last batch when it is short.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of ranks, >= 1.

    Call :meth:`set_order` before each epoch. ``skip_batches`` resumes an epoch part-way: the
    first batches of the plan are not produced again.

    Example:
        >>> s = PlannedBatchSampler(batch_size=2, drop_last=False, rank=1, world_size=2)
        >>> s.set_order(torch.tensor([5, 3, 8, 1, 0]))
        >>> list(s), len(s)
        ([[3, 1], [5]], 2)
    """

    def __init__(self, batch_size: int, drop_last: bool, rank: int = 0, world_size: int = 1):
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.drop_last = bool(drop_last)
        self.world_size = check_int(world_size, "world_size", 1)
        self.rank = check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"`rank` must lie in [0, {self.world_size}); got {rank}.")
        self._share: list[int] = []
        self._skip = 0
        self._handed_out: deque[list[int]] = deque()

    def set_order(self, order: Tensor, skip_batches: int = 0) -> None:
        """Plan the next epoch: ``order`` (M,) holds the dataset indices, in training order."""
        if not isinstance(order, Tensor) or order.ndim != 1 or order.is_floating_point():
            raise ValueError(
                "`order` must be a 1-D integer tensor of dataset indices (M,); got "
                f"{type(order).__name__} {getattr(order, 'shape', '')}."
            )
        m = order.numel()
        pad = -m % self.world_size if m else 0
        padded = torch.cat([order, order.repeat(pad // m + 1)[:pad]]) if pad else order
        self._share = padded[self.rank :: self.world_size].tolist()
        self._skip = check_int(skip_batches, "skip_batches", 0)

    @property
    def share(self) -> int:
        """Samples this rank trains on in the planned epoch (before ``drop_last``)."""
        return len(self._share)

    def _num_batches(self) -> int:
        n = len(self._share)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self._num_batches() - self._skip)

    def __iter__(self) -> Iterator[list[int]]:
        self._handed_out.clear()  # a new pass: batches of an abandoned one never reach a step
        bs = self.batch_size
        for b in range(self._skip, self._num_batches()):
            batch = self._share[b * bs : (b + 1) * bs]
            self._handed_out.append(batch)
            yield batch

    def pop_batch(self) -> Tensor:
        """The dataset indices of the next batch the training loop consumes, int64 (n,)."""
        if not self._handed_out:
            raise RuntimeError(
                "the training loop consumed a batch that this sampler did not produce: the "
                "train dataloader is not the one the sampler-owning callback installed (was it "
                "replaced or wrapped after the epoch started?)."
            )
        return torch.tensor(self._handed_out.popleft(), dtype=torch.int64)
