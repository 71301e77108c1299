"""A per-sample table of training losses: the state every reweighting policy reads.

One :class:`ScoreStore` holds, for each index ``i`` of a training set of ``num_samples`` samples:

==============  =======  ===========================================================================
buffer          dtype    meaning
==============  =======  ===========================================================================
``last_loss``   float32  the last observed (detached) loss; ``initial_score`` until first seen
``ema``         float32  ``ema ← momentum·ema + (1 − momentum)·loss``; the first visit sets it to
                         the loss (``initial_score`` until then)
``visits``      int64    how many updates have observed the sample
``last_epoch``  int64    the epoch of the last update that observed it; ``-1`` = never
==============  =======  ===========================================================================

InfoBatch reads ``last_loss``; PLD, CVaR/χ² weights, selective backprop and diagnostics can read the
same table. Every buffer is persistent: ``state_dict`` / ``load_state_dict`` round-trip exactly and
``.to()`` moves them. Under DDP, pass each rank's ``(indices, losses)`` through
:func:`gather_updates` before :meth:`ScoreStore.update`, so every rank applies the same global
update and the tables stay identical.

This module is pure PyTorch; it imports nothing from Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._checks import check_finite, check_int, check_number, check_on_device, check_tensor

__all__ = ["ScoreStore", "gather_updates"]

DEFAULT_INITIAL_SCORE = 3.0
"""InfoBatch's reference initialises every score to 3.0 (``torch.ones(N) * 3`` in
NUS-HPC-AI-Lab/InfoBatch ``infobatch/infobatch.py``): above a typical loss, so samples that have
not been seen yet are never below the mean and never pruned."""


class ScoreStore(nn.Module):
    """Per-sample loss table for one training set (see the module docstring for the buffers).

    Args:
        num_samples: size of the training set; indices are ``0 .. num_samples - 1``.
        initial_score: value of ``last_loss`` and ``ema`` before a sample is first seen
            (default 3.0, as InfoBatch's reference).
        momentum: weight of the old value in the EMA, in [0, 1) (default 0.9).

    Duplicate indices within one :meth:`update` (a padded distributed sampler can put the same
    sample on two ranks in the same step) count as **one** observation whose loss is the mean
    of the duplicates' losses: the result does not depend on their order, so it is the same
    whichever rank gathered first.

    Example:
        >>> store = ScoreStore(5)
        >>> store.update(torch.tensor([0, 3]), torch.tensor([0.5, 2.0]), epoch=0)
        >>> store.last_loss
        tensor([0.5000, 3.0000, 3.0000, 2.0000, 3.0000])
        >>> store.seen_mask()
        tensor([ True, False, False,  True, False])
    """

    last_loss: Tensor
    ema: Tensor
    visits: Tensor
    last_epoch: Tensor

    def __init__(
        self,
        num_samples: int,
        *,
        initial_score: float = DEFAULT_INITIAL_SCORE,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        check_int(num_samples, "num_samples", 1)
        self.initial_score = check_number(initial_score, "initial_score")
        self.momentum = check_number(momentum, "momentum")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must lie in [0, 1); got {momentum!r}.")
        self.register_buffer("last_loss", torch.full((num_samples,), self.initial_score))
        self.register_buffer("ema", torch.full((num_samples,), self.initial_score))
        self.register_buffer("visits", torch.zeros(num_samples, dtype=torch.int64))
        self.register_buffer("last_epoch", torch.full((num_samples,), -1, dtype=torch.int64))

    @property
    def num_samples(self) -> int:
        return self.last_loss.shape[0]

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, initial_score={self.initial_score}, "
            f"momentum={self.momentum}"
        )

    @torch.no_grad()
    def update(self, indices: Tensor, losses: Tensor, epoch: int) -> None:
        """Record ``losses[k]`` as the latest loss of sample ``indices[k]``, seen at ``epoch``.

        Args:
            indices: dataset indices, integer tensor (n,), each in ``[0, num_samples)``.
            losses: their per-sample losses (n,), finite; detached and cast to float32 here.
            epoch: the current epoch, a non-negative int.

        An empty update (n = 0) changes nothing. Inputs may live on any device; they are moved
        to the store's device. With the inputs on the store's device the update reads nothing
        back to the host (the range and finiteness checks run on the device, see
        :func:`~lightning_losses._checks.check_on_device`), so keep the store where the losses
        are computed. Cost: a sort of the n indices and O(n) gathers and scatters.
        """
        indices, losses = _check_update(indices, losses)
        check_int(epoch, "epoch", 0)
        n = indices.numel()
        if n == 0:
            return
        size = self.num_samples
        check_on_device(
            ((indices >= 0) & (indices < size)).all(),
            f"`indices` must lie in [0, {size}) for a store of {size} samples; got an index "
            "out of range.",
            lambda: _out_of_range(indices, size),
        )
        device = self.last_loss.device
        indices = indices.to(device)
        losses = losses.to(device)

        # One observation per distinct index: the mean of its duplicates (order-free, in fp64).
        # Duplicates sit next to each other once sorted; each run of equal indices is a segment
        # (at most n of them), and every member of a segment writes the same values below.
        order = torch.argsort(indices, stable=True)
        index = indices[order]
        starts = torch.ones(n, dtype=torch.bool, device=device)
        starts[1:] = index[1:] != index[:-1]
        segment = torch.cumsum(starts, 0) - 1
        sums = torch.zeros(n, dtype=torch.float64, device=device)
        sums.index_add_(0, segment, losses[order].double())
        counts = torch.zeros(n, dtype=torch.float64, device=device)
        counts.index_add_(0, segment, torch.ones(n, dtype=torch.float64, device=device))
        loss = (sums / counts.clamp_min(1))[segment].to(self.last_loss.dtype)

        visits = self.visits[index]
        smoothed = self.momentum * self.ema[index] + (1 - self.momentum) * loss
        self.ema[index] = torch.where(visits == 0, loss, smoothed)
        self.last_loss[index] = loss
        self.visits[index] = visits + 1
        self.last_epoch[index] = epoch

    def seen_mask(self) -> Tensor:
        """Boolean (num_samples,): which samples at least one update has observed."""
        return self.visits > 0

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in ("last_loss", "ema", "visits", "last_epoch"):
            saved = state_dict.get(prefix + name)
            if saved is not None and tuple(saved.shape) != (self.num_samples,):
                raise ValueError(
                    f"cannot load a score store of {tuple(saved.shape)} samples "
                    f"({prefix + name!r}) into one with `num_samples`={self.num_samples}: the "
                    "checkpoint was made for a training set of a different size."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _check_update(indices: Any, losses: Any) -> tuple[Tensor, Tensor]:
    check_tensor(indices, "indices")
    check_tensor(losses, "losses")
    integer = not (
        indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool
    )
    if indices.ndim != 1 or not integer:
        raise ValueError(
            f"`indices` must be a 1-D integer tensor (n,); got shape {tuple(indices.shape)} and "
            f"dtype {indices.dtype}."
        )
    if losses.shape != indices.shape:
        raise ValueError(
            f"`losses` must have one value per index, shape {tuple(indices.shape)}; got "
            f"{tuple(losses.shape)}."
        )
    if not losses.is_floating_point():
        raise ValueError(f"`losses` must be a floating-point tensor; got dtype {losses.dtype}.")
    losses = losses.detach()
    check_finite(losses, "losses")
    return indices.detach().long(), losses


def _out_of_range(indices: Tensor, size: int) -> str:
    """The error message for indices outside ``[0, size)`` (reads them: the error path)."""
    bad = indices[(indices < 0) | (indices >= size)]
    more = " ..." if bad.numel() > 5 else ""
    return (
        f"`indices` must lie in [0, {size}) for a store of {size} samples; got "
        f"{bad[:5].tolist()}{more}."
    )


@torch.no_grad()
def gather_updates(indices: Tensor, losses: Tensor, group: Any = None) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's ``(indices, losses)``, in rank order; identity without DDP.

    Ranks may hold different numbers of samples (a variable-length sampler, a last short
    batch, zero): the sizes are gathered first, each rank pads its tensors to the largest
    size, ``all_gather`` runs once per tensor, and the padding is stripped. Every rank must call
    this the same number of times (it is a collective). ``losses`` are gathered as float32 and
    ``indices`` as int64, on the inputs' device (CUDA tensors for NCCL, any for gloo).

    Args:
        indices: this rank's dataset indices (n,).
        losses: this rank's detached per-sample losses (n,).
        group: the process group (default: the world).

    Returns:
        ``(indices, losses)`` of all ranks, shape (Σ n_r,), rank 0 first.
    """
    indices, losses = _check_update(indices, losses)
    losses = losses.float()
    if not (dist.is_available() and dist.is_initialized()):
        return indices, losses
    world = dist.get_world_size(group)
    device = indices.device
    size = torch.tensor([indices.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s) for s in sizes]
    largest = max(counts)
    if largest == 0:
        return indices, losses

    def gather(x: Tensor) -> list[Tensor]:
        padded = torch.zeros(largest, dtype=x.dtype, device=device)
        padded[: x.numel()] = x.to(device)
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded, group=group)
        return [part[:n] for part, n in zip(out, counts, strict=True)]

    return torch.cat(gather(indices)), torch.cat(gather(losses))
