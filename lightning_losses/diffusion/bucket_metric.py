"""The per-timestep-bucket loss as a torchmetrics ``Metric`` (see :mod:`.buckets`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from .._checks import check_int
from .buckets import bucket_sums


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


__all__ = ["TimestepBucketLoss"]
