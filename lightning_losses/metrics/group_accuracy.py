"""Accuracy per group and the worst group's, as a torchmetrics ``Metric`` (DDP-safe sums)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from .._checks import check_int


class GroupAccuracy(Metric):
    r"""Top-1 accuracy within each group, the worst group's and their unweighted mean.

    .. math::
        \mathrm{acc}_g = \frac{\sum_{i: g_i = g} 1[\hat y_i = y_i]}{|\{i: g_i = g\}|},\qquad
        \mathrm{worst} = \min_{g\ \text{seen}} \mathrm{acc}_g

    Groups with no sample are left out of the worst and mean values (their accuracy is NaN).
    The states are per-group sums, reduced across processes by addition.

    Example:
        >>> metric = GroupAccuracy(num_groups=4)
        >>> metric.update(logits, labels, groups)
        >>> metric.compute()["worst"]  # doctest: +SKIP
    """

    full_state_update = False

    def __init__(self, num_groups: int, **kwargs) -> None:
        super().__init__(**kwargs)
        check_int(num_groups, "num_groups", 1)
        self.num_groups = num_groups
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor, groups: Tensor) -> None:
        if logits.ndim != 2 or labels.shape != (logits.shape[0],) or groups.shape != labels.shape:
            raise ValueError(
                "`logits` must be (N, K) with `labels` and `groups` of shape (N,); got "
                f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(groups.shape)}."
            )
        groups = groups.long()
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= self.num_groups):
            raise ValueError(
                f"`groups` must lie in [0, {self.num_groups - 1}]; got values from "
                f"{int(groups.min())} to {int(groups.max())}."
            )
        hit = (logits.argmax(1) == labels).long()
        self.correct += torch.bincount(groups, weights=hit, minlength=self.num_groups).long()
        self.total += torch.bincount(groups, minlength=self.num_groups)

    def compute(self) -> dict[str, Tensor]:
        acc = self.correct.double() / self.total.double()  # NaN where a group is empty
        seen = self.total > 0
        return {
            "per_group": acc,
            "worst": acc[seen].min() if bool(seen.any()) else acc.new_tensor(float("nan")),
            "mean": acc[seen].mean() if bool(seen.any()) else acc.new_tensor(float("nan")),
        }
