r"""Barlow Twins: redundancy reduction between the embeddings of two views."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_finite, check_positive, check_tensor
from ..._reduce import PerSample
from ...registry import register_loss
from .._base import Loss
from ._pairs import _autocast_off, _common, _GatherWithGradient, distributed_world


def check_views(input: Tensor, target: Tensor, *, validate_args: bool = False) -> None:
    """Two views ``(N, D)`` of the same samples, floating point, row ``i`` of each from one
    sample; a finite check on the device when ``validate_args``."""
    check_tensor(input, "input")
    check_tensor(target, "target")
    if not input.is_floating_point():
        raise TypeError(
            f"`input` must be floating-point embeddings of shape (N, D); got dtype {input.dtype}."
        )
    if input.ndim != 2:
        raise ValueError(
            f"`input` must be embeddings of shape (N, D) (the first view); got shape "
            f"{tuple(input.shape)}. Flatten or pool the features to one vector per sample first."
        )
    if not target.is_floating_point():
        raise TypeError(
            "`target` must be the second view's floating-point embeddings, shape "
            f"{tuple(input.shape)}; got dtype {target.dtype}."
        )
    if target.shape != input.shape:
        raise ValueError(
            "`target` must be the second view's embeddings, the input's shape "
            f"{tuple(input.shape)} (row i of both from sample i); got {tuple(target.shape)}."
        )
    if validate_args:
        check_finite(input, "input")
        check_finite(target, "target")


def gather_views(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's rows of both views, in rank order, gradients flowing back to each rank's
    own rows (see :func:`~lightning_losses.losses.metric.gather_references`); a no-op outside
    a process group. Every rank must pass the same batch size."""
    if distributed_world()[1] == 1:
        return a, b
    return _GatherWithGradient.apply(a), _GatherWithGradient.apply(b)


@register_loss(
    "barlow_twins",
    family="metric",
    paper="Zbontar, Jing, Misra, LeCun & Deny, Barlow Twins: Self-Supervised Learning via "
    "Redundancy Reduction, ICML 2021",
)
class BarlowTwinsLoss(Loss):
    r"""Barlow Twins: the cross-correlation of two views' embeddings pushed to the identity.

    Each view is standardised over the batch, per dimension, as the reference code's
    ``BatchNorm1d(affine=False)`` does in training mode (biased variance, :math:`\epsilon`):
    :math:`\hat z = (z - \mu) / \sqrt{\sigma^2 + \epsilon}`. Then

    .. math::
        \mathcal{C}_{ij} = \frac{1}{N} \sum_{b=1}^{N} \hat z^A_{b,i} \hat z^B_{b,j},\qquad
        \mathcal{L}_{BT} = \sum_i (1 - \mathcal{C}_{ii})^2
                         + \lambda \sum_i \sum_{j \ne i} \mathcal{C}_{ij}^2

    The first term makes each dimension invariant to the augmentation, the second decorrelates
    the dimensions (redundancy reduction).

    Shapes: ``input`` the embeddings of the first view ``(N, D)``, ``target`` those of the
    second view ``(N, D)`` (row :math:`b` of both from the same image). The loss is one
    statistic of the batch: ``reduction="none"`` gives it to every sample, ``(N,)``, so the
    mean over samples is :math:`\mathcal{L}_{BT}` and ``sample_weight`` scales it by the mean
    weight. Memory: one ``(D, D)`` matrix (the paper's 8192-wide projector: 64M entries).
    Computed in float32 for half-precision input, with autocast off around the product. A
    batch of one sample has zero standardised embeddings, so :math:`\mathcal{C} = 0` and the
    loss is :math:`D`.

    Args:
        lambd: :math:`\lambda`, 5e-3 (the paper; the reference code's default is 0.0051).
        eps: :math:`\epsilon` of the standardisation, 1e-5 (``BatchNorm1d``'s default, which
            the reference code uses).
        gather_across_ranks: standardise and correlate over the embeddings of every rank
            (False). The reference code synchronises its batch norm across GPUs and sums
            :math:`\mathcal{C}` over them: this computes the same global statistics, with the
            gradient of the global loss reaching every rank's embeddings, so with DDP's
            averaging a step equals one process on the joint batch. Every rank must pass the
            same batch size.

    No established library side by side: pytorch-metric-learning 2.9 has no Barlow Twins
    loss (it has VICReg); the loss is checked against a float64 loop written from the formula
    and against the reference code's batch-norm formulation.

    Example:
        >>> loss = BarlowTwinsLoss()
        >>> value = loss(projector(backbone(aug1(x))), projector(backbone(aug2(x))))
    """

    input_kind = "embeddings"
    #: the second view's embeddings, a real-valued tensor of the input's shape
    target_kind = "regression"
    batch_statistic = True

    def __init__(
        self,
        lambd: float = 5e-3,
        *,
        eps: float = 1e-5,
        gather_across_ranks: bool = False,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.lambd = check_positive(lambd, "lambd", allow_zero=True)
        self.eps = check_positive(eps, "eps")
        self.gather_across_ranks = bool(gather_across_ranks)

    def cross_correlation(self, a: Tensor, b: Tensor) -> Tensor:
        """:math:`\\mathcal{C}` ``(D, D)`` of two views (already gathered when asked)."""
        with _autocast_off(a):
            a, b = _common(a, b)
            n = a.shape[0]
            za = (a - a.mean(0)) / (a.var(0, unbiased=False) + self.eps).sqrt()
            zb = (b - b.mean(0)) / (b.var(0, unbiased=False) + self.eps).sqrt()
            return za.T @ zb / n

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_views(input, target, validate_args=self.validate_args)
        a, b = (input, target)
        if self.gather_across_ranks:
            a, b = gather_views(a, b)
        c = self.cross_correlation(a, b)
        diagonal = c.diagonal()
        on_diagonal = (1.0 - diagonal).square().sum()
        # the off-diagonal entries themselves, not sum(C^2) - sum(diag^2), which cancels
        off_diagonal = (c - torch.diag_embed(diagonal)).square().sum()
        value = on_diagonal + self.lambd * off_diagonal
        return PerSample(value.expand(input.shape[0]))

    def extra_repr(self) -> str:
        return (
            f"lambd={self.lambd}, eps={self.eps}, gather_across_ranks={self.gather_across_ranks}, "
            f"{super().extra_repr()}"
        )
