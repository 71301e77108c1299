"""Epoch means of per-step statistics, kept on the device and logged at the end of the epoch.

A callback that describes each training step (GroupDRO's group weights, PLD's drawn losses)
adds the step's value and weight here, as tensors; nothing is read back to the host until
:meth:`EpochMeans.log`, which runs in ``on_train_epoch_end``. Logging the same values per step
with ``pl_module.log`` would need their weights as Python numbers (Lightning's ``batch_size``)
and, for a value that exists only in some steps, a Python branch on a tensor: both host reads.

The logged value of ``name`` is :math:`\\sum_t w_t v_t / \\sum_t w_t` over the epoch's steps,
what ``pl_module.log(name, v_t, batch_size=w_t, on_step=False, on_epoch=True)`` gives; a name
whose weights sum to 0 in the epoch is not logged. Under DDP the sums are all-reduced first (one
all-reduce at the end of the epoch), so the value is the mean over the global batches and is the
same on every rank; it is logged with ``sync_dist=True`` all the same, which changes nothing for
equal values and keeps Lightning's distributed-logging warning quiet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class EpochMeans:
    """Weighted means over an epoch's steps (see the module docstring)."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    def reset(self) -> None:
        self._sums = {}

    def add(
        self, names: str | Sequence[str], values: Tensor, weights: Tensor | float = 1.0
    ) -> None:
        """Add one step's ``values`` (one per name) with their ``weights``, on the device.

        ``weights`` is a tensor of one weight per name (or one for all), or a Python number.
        """
        key = (names,) if isinstance(names, str) else tuple(names)
        dtype = torch.float32 if values.device.type == "mps" else torch.float64
        v = values.detach().to(dtype).reshape(len(key))
        # a Python weight stays a Python number: a tensor made from it would be a host copy
        w = weights.detach().to(v.device, dtype) if isinstance(weights, Tensor) else float(weights)
        total, weight = self._sums.get(key, (torch.zeros_like(v), torch.zeros_like(v)))
        self._sums[key] = (total + w * v, weight + w)

    def log(self, pl_module: Any) -> None:
        """Log every mean through ``pl_module.log`` (one host read: the end of the epoch)."""
        if not self._sums or getattr(pl_module, "_trainer", None) is None:
            return
        keys = list(self._sums)
        stacked = torch.cat([torch.stack(self._sums[key]) for key in keys], 1)  # (2, names)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        names = [name for key in keys for name in key]
        totals, weights = stacked.tolist()
        for name, total, weight in zip(names, totals, weights, strict=True):
            if weight > 0:
                pl_module.log(name, total / weight, on_step=False, on_epoch=True, sync_dist=True)
