"""Distributionally robust losses that act on the labels of one sample.

The batch-level DRO best responses (CVaR, chi-square, KL, spectral risk, group DRO) are weights,
not losses: they live in :mod:`lightning_losses.weighting.dro` and reach training through the
``sample_weights`` protocol of :class:`~lightning_losses.LossMixin`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_positive
from ..registry import register_loss
from ._inputs import Categorical
from .classification import CategoricalLoss


@register_loss(
    "ldr_kl",
    family="dro",
    paper="Zhu, Ying, Yang, Label Distributionally Robust Losses for Multi-class Classification: "
    "Consistency, Robustness and Adaptivity, ICML 2023",
)
class LDRKLLoss(CategoricalLoss):
    r"""Label-distributionally robust loss with a KL penalty (LDR-KL).

    The worst case over label distributions :math:`p \in \Delta_K` of the margin-shifted logit
    gaps, penalised by :math:`\lambda\,\mathrm{KL}(p\,\|\,\mathbf{1}/K)`, in closed form:

    .. math::
        \ell(z, y) = \max_{p \in \Delta_K} \sum_k p_k \big(z_k - z_y + c\,[k \ne y]\big)
                     - \lambda\,\mathrm{KL}(p \,\|\, \mathbf{1}/K)
                   = \lambda \log \frac{1}{K} \sum_{k=1}^{K}
                     \exp\!\Big(\frac{z_k - z_y + c\,[k \ne y]}{\lambda}\Big)

    computed as a log-sum-exp. Special cases: :math:`c = 0` gives temperature-scaled
    cross-entropy, :math:`\ell = \lambda\,\mathrm{CE}(z/\lambda, y) - \lambda \log K`;
    :math:`\lambda \to 0` gives the Crammer–Singer multi-class hinge
    :math:`\max\big(0, \max_{k \ne y} (z_k + c) - z_y\big)`, approached from below within
    :math:`\lambda \log K`.

    Logit transform (``transform_logits=True``, the default): the official code replaces the
    logits by :math:`s = \mathrm{softplus}(z)/\overline{\mathrm{softplus}(z)}` (row mean) before
    the formula. The scores are then positive with mean 1, so :math:`c` and :math:`\lambda` have
    a fixed scale whatever the network's logit scale; the defaults below were chosen with it, and
    results differ without it. ``False`` applies the formula to the raw logits (the paper's
    definition, and the form in which the limits above hold).

    Args:
        margin: :math:`c \ge 0`; 2.0, the default of ``LDRLoss_V1`` in the official code.
        lam: :math:`\lambda > 0`; 1.0, the same source (the paper tunes it in
            :math:`\{0.1, 1, 10\}`).
        transform_logits: apply the official softplus / mean transform first; True.
        weight, ignore_index: as in :class:`~lightning_losses.losses.CrossEntropyLoss`.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices.

    Example:
        >>> loss = LDRKLLoss(margin=2.0, lam=1.0)
        >>> loss(torch.randn(4, 10), torch.tensor([1, 0, 9, 3]))  # doctest: +SKIP
    """

    def __init__(
        self,
        margin: float = 2.0,
        lam: float = 1.0,
        transform_logits: bool = True,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weight=weight, ignore_index=ignore_index, reduction=reduction, check_finite=check_finite
        )
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.lam = check_positive(lam, "lam")
        if not isinstance(transform_logits, bool):
            raise TypeError(
                f"`transform_logits` must be a bool; got {type(transform_logits).__name__}."
            )
        self.transform_logits = transform_logits

    def element_loss(self, c: Categorical) -> Tensor:
        z = c.logits
        if self.transform_logits:
            z = F.softplus(z)
            z = z / z.mean(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        k = z.shape[1]
        not_target = 1.0 - F.one_hot(c.target, k).to(z.dtype)
        gaps = z - z.gather(1, c.target[:, None]) + self.margin * not_target
        return self.lam * (torch.logsumexp(gaps / self.lam, dim=1) - math.log(k))

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, lam={self.lam}, transform_logits={self.transform_logits}, "
            f"{super().extra_repr()}"
        )
