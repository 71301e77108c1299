"""The one place where per-sample weights, ignored samples and the reduction are applied.

Every loss computes a vector of per-sample values and hands it here, and so does
:class:`~lightning_losses.LossMixin` after it has added the callback terms and weights.

* ``"none"``: ``sample_weight * l`` (shape ``(N,)``; fully ignored samples are 0).
* ``"sum"``: ``sum_i sample_weight_i * l_i``.
* ``"mean"``: ``sum_i sample_weight_i * l_i / N_valid`` where ``N_valid`` counts the samples that
  are not fully ignored. Weights do not enter the denominator: this is the unbiased form that
  importance weights such as InfoBatch's ``1/(1-r)`` need. With no ignored samples,
  ``reduction="none"`` followed by ``.mean()`` equals ``"mean"`` bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ._checks import check_reduction, check_sample_weight


class PerSample(NamedTuple):
    """Per-sample loss values ``(N,)`` and, where a loss can ignore samples, which are valid."""

    values: Tensor
    valid: Tensor | None = None


def reduce_loss(
    losses: Tensor | PerSample,
    reduction: str = "mean",
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Apply ``sample_weight`` and ``reduction`` to per-sample losses (see module docstring)."""
    check_reduction(reduction)
    values, valid = losses if isinstance(losses, PerSample) else (losses, None)
    if values.ndim != 1:
        raise ValueError(
            f"per-sample losses must have shape (N,); got {tuple(values.shape)}. "
            "A loss must reduce every non-batch dimension before the reduction step."
        )
    check_sample_weight(sample_weight, values.shape[0])
    weighted = values if sample_weight is None else values * sample_weight.to(values.dtype)
    if valid is not None:
        # Zero (not drop) ignored samples: shapes stay static and the graph stays connected.
        weighted = weighted * valid.to(weighted.dtype)
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    if valid is None:
        return total / values.shape[0] if values.shape[0] > 0 else total
    return total / valid.sum().clamp_min(1).to(total.dtype)
