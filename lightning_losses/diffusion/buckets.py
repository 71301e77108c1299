r"""The diffusion loss per timestep bucket, so a user sees where a weighting moves the loss.

The T timesteps of a schedule are cut into B equal buckets (bucket b holds
:math:`\lfloor bT/B \rfloor \le t < \lfloor (b+1)T/B \rfloor`, the last one absorbing the
remainder). :func:`bucket_sums` returns, per bucket, the sum of the per-sample losses and the
number of samples, as tensors on the loss's device (a ``scatter_add``; no host read, unlike
``bincount``). :class:`~.bucket_metric.TimestepBucketLoss` accumulates them over an epoch (and
across processes, as a torchmetrics ``Metric``) and gives the per-bucket mean, ready to log as
``train/loss_t{b}``.

The timesteps are integer indices into a schedule ordered by increasing noise (DDPM's). For a
continuous σ schedule (EDM), compute integer bucket ids yourself (say, from quantiles of
:math:`\log\sigma`) and pass them as the timesteps with ``num_timesteps`` equal to the number of
buckets.

Example (in a ``LightningModule``):

.. code-block:: python

    self.loss_by_t = TimestepBucketLoss(num_timesteps=1000, num_buckets=10)
    ...
    per_sample = self.criterion_none(pred, target, timesteps=t)       # (N,)
    self.loss_by_t.update(per_sample.detach(), t)
    ...
    def on_train_epoch_end(self):
        self.log_dict(self.loss_by_t.as_dict("train/loss_t"))
        self.loss_by_t.reset()
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int, check_tensor


def timestep_buckets(timesteps: Tensor, num_timesteps: int, num_buckets: int = 10) -> Tensor:
    """The bucket (0 .. B-1) of each integer timestep (N,); timesteps outside [0, T) are clamped
    into the first or last bucket."""
    check_int(num_timesteps, "num_timesteps", minimum=1)
    check_int(num_buckets, "num_buckets", minimum=1)
    check_tensor(timesteps, "timesteps")
    if timesteps.is_floating_point() or timesteps.dtype == torch.bool:
        raise TypeError(f"`timesteps` must hold integer indices; got dtype {timesteps.dtype}.")
    return torch.div(timesteps.long() * num_buckets, num_timesteps, rounding_mode="floor").clamp(
        0, num_buckets - 1
    )


def bucket_sums(
    values: Tensor, timesteps: Tensor, num_timesteps: int, num_buckets: int = 10
) -> tuple[Tensor, Tensor]:
    """Per-bucket sums of ``values`` (N,) and sample counts, each (B,), on ``values``' device.

    ``sums.sum()`` equals ``values.sum()`` and ``counts.sum()`` equals N.
    """
    check_tensor(values, "values")
    if values.ndim != 1 or timesteps.shape != values.shape:
        raise ValueError(
            f"`values` and `timesteps` must both have shape (N,); got {tuple(values.shape)} and "
            f"{tuple(timesteps.shape)}."
        )
    ids = timestep_buckets(timesteps, num_timesteps, num_buckets).to(values.device)
    sums = torch.zeros(num_buckets, dtype=values.dtype, device=values.device)
    counts = torch.zeros(num_buckets, dtype=values.dtype, device=values.device)
    sums.scatter_add_(0, ids, values)
    counts.scatter_add_(0, ids, torch.ones_like(values))
    return sums, counts


__all__ = ["bucket_sums", "timestep_buckets"]
