r"""The diffusion loss per timestep bucket, so a user sees where a weighting moves the loss.

The T timesteps of a schedule are cut into B equal buckets (bucket b holds
:math:`\lfloor bT/B \rfloor \le t < \lfloor (b+1)T/B \rfloor`, the last one absorbing the
remainder). :func:`bucket_sums` returns, per bucket, the sum of the per-sample losses and the
number of samples, as tensors on the loss's device (a ``scatter_add``; no host read, unlike
``bincount``). :class:`TimestepBucketLoss` accumulates them over an epoch (and across processes,
as a torchmetrics ``Metric``) and gives the per-bucket mean, ready to log as
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
from torchmetrics import Metric

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


class TimestepBucketLoss(Metric):
    """Mean loss per timestep bucket, accumulated over steps (and processes).

    Args:
        num_timesteps: T, the steps of the schedule (1000 for diffusers' defaults).
        num_buckets: B, 10 by default.

    :meth:`update` takes per-sample losses (N,) and their integer timesteps (N,); it runs on the
    device without a host read. :meth:`compute` returns the B means (NaN for a bucket no sample
    fell in); :meth:`as_dict` names them ``{prefix}{b}`` for ``log_dict`` and leaves out empty
    buckets (it reads the counts: call it at epoch end, not on every step).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_timesteps: int = 1000, num_buckets: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_timesteps = check_int(num_timesteps, "num_timesteps", minimum=1)
        self.num_buckets = check_int(num_buckets, "num_buckets", minimum=1)
        zeros = torch.zeros(self.num_buckets, dtype=torch.float32)
        self.add_state("sums", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("counts", default=zeros.clone(), dist_reduce_fx="sum")

    def update(self, values: Tensor, timesteps: Tensor) -> None:
        sums, counts = bucket_sums(
            values.detach().to(self.sums.dtype), timesteps, self.num_timesteps, self.num_buckets
        )
        self.sums += sums
        self.counts += counts

    def compute(self) -> Tensor:
        empty = torch.full_like(self.sums, float("nan"))
        return torch.where(self.counts > 0, self.sums / self.counts.clamp_min(1), empty)

    def as_dict(self, prefix: str = "train/loss_t") -> dict[str, Tensor]:
        means = self.compute()
        filled = (self.counts > 0).tolist()
        return {f"{prefix}{b}": means[b] for b in range(self.num_buckets) if filled[b]}


__all__ = ["TimestepBucketLoss", "bucket_sums", "timestep_buckets"]
