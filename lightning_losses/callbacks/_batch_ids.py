"""Per-sample integer ids (groups, pools) read from a batch by key or position, checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def batch_ids(
    batch: Any,
    key: str | int,
    n: int,
    *,
    owner: str,
    what: str,
    key_arg: str,
    device: torch.device | str | None = None,
) -> Tensor:
    """``batch[key]`` as an int64 tensor ``(n,)``; clear errors name ``key_arg`` and ``owner``.

    A ``str`` key reads a mapping batch, an ``int`` key a position of a tuple or list batch.
    """
    where = f"`{key_arg}`={key!r}"
    if isinstance(key, str):
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"{owner} reads {what} from batch[{key!r}] ({where}), but the batch is a "
                f"{type(batch).__name__}, not a mapping. Pass `batch=batch` to compute_loss, "
                f"and use an int `{key_arg}` for tuple/list batches."
            )
        if key not in batch:
            raise ValueError(
                f"{owner} reads {what} from batch[{key!r}] ({where}), but the batch has no such "
                f"key; it has {sorted(map(str, batch.keys()))}."
            )
    else:
        if not isinstance(batch, tuple | list):
            raise ValueError(
                f"{owner} reads {what} from position {key} of a tuple/list batch ({where}), but "
                f"the batch is a {type(batch).__name__}. Pass `batch=batch` to compute_loss, and "
                f"use a str `{key_arg}` for mapping batches."
            )
        if not -len(batch) <= key < len(batch):
            raise ValueError(
                f"{owner} reads {what} from position {key} ({where}), but the batch has only "
                f"{len(batch)} entries."
            )
    raw = batch[key]
    try:
        ids = torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{what} at {where} must be an integer tensor of shape ({n},); got "
            f"{type(raw).__name__}."
        ) from err
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} at {where} must be integers; got dtype {ids.dtype}.")
    if ids.shape != (n,):
        raise ValueError(
            f"{what} at {where} must have shape ({n},), one id per sample; got {tuple(ids.shape)}."
        )
    return ids.to(device=device, dtype=torch.int64)
