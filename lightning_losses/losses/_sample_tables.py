"""Per-sample tables indexed by dataset index: the index check, the last-write rule and the
cross-rank gather that ALDR-KL's temperatures and iSogCLR's moving averages share."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_on_device, check_tensor


def check_sample_index(
    index: object,
    n: int,
    *,
    device: torch.device,
    num_samples: int | None,
    training: bool,
    per: str = "sample",
) -> Tensor:
    """``index`` as ``(n,)`` long dataset indices on ``device``; in training, each must lie in
    ``[0, num_samples)`` (``>= 0`` without a size), checked on the device."""
    check_tensor(index, "index")
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(f"`index` must hold integer dataset indices; got dtype {index.dtype}.")
    if index.shape != (n,):
        raise ValueError(
            f"`index` must have shape ({n},), one dataset index per {per}; got "
            f"{tuple(index.shape)}."
        )
    index = index.to(device=device, dtype=torch.long)
    if training and n > 0:
        bad = index < 0 if num_samples is None else (index < 0) | (index >= num_samples)
        where = ">= 0" if num_samples is None else f"in [0, {num_samples})"
        check_on_device(
            ~bad.any(),
            f"`index` must be {where} (`num_samples`={num_samples}).",
            lambda: (
                f"`index` must be {where} (`num_samples`={num_samples}); got "
                f"{index[bad].unique()[:5].tolist()}."
            ),
        )
    return index


def last_write(index: Tensor, valid: Tensor | None = None) -> Tensor:
    """For each row, the position of the last (valid) row with the same index, -1 where none
    is valid: writing row ``last_write(index)[i]`` at every ``index[i]`` makes colliding
    writes agree. O(n^2) on the batch, no table-sized scratch."""
    position = torch.arange(index.numel(), device=index.device)
    same = index[:, None] == index[None, :]
    if valid is not None:
        same = same & valid[None, :]
    return torch.where(same, position[None, :], -1).amax(1)


def all_gather_rows(index: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's ``(index, rows)`` (rows ``(n, k)``) concatenated in rank order. Ranks may
    hold different numbers of rows, so the sizes are exchanged and read on the host (under
    DDP only, once per write)."""
    world = dist.get_world_size()
    count = torch.tensor([index.numel()], dtype=torch.long, device=index.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    packed = torch.zeros(max(sizes), 1 + rows.shape[1], dtype=torch.float64, device=index.device)
    packed[: index.numel(), 0] = index.double()
    packed[: index.numel(), 1:] = rows.double()
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed)
    joint = torch.cat([g[:k] for g, k in zip(gathered, sizes, strict=True)])
    return joint[:, 0].long(), joint[:, 1:].to(rows.dtype)
