"""Lovász-softmax and Lovász-hinge losses on the dense contract (:mod:`._dense`), vectorised
over images and classes (one sort per call, no Python loop over classes)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..._reduce import PerSample
from ...registry import register_loss
from ._dense import DenseInput, DenseLoss, safe_ratio

PAPER = (
    "Berman, Rannen Triki & Blaschko, The Lovász-Softmax loss: A tractable surrogate for the "
    "optimization of the intersection-over-union measure in neural networks, CVPR 2018"
)


def lovasz_grad(target_sorted: Tensor) -> Tensor:
    r"""Gradient of the Lovász extension of the Jaccard loss at the sorted errors.

    ``target_sorted`` ``(..., S)`` holds the ground truth ordered by decreasing error. With
    :math:`G = \sum g` and prefix sums over the first :math:`k` pixels,
    :math:`J_k = 1 - (G - \sum_{j \le k} g_j) / (G + \sum_{j \le k} (1 - g_j))`, the gradient is
    :math:`J_1, J_2 - J_1, \ldots` (Berman et al., Algorithm 1), along the last dim.
    """
    total = target_sorted.sum(-1, keepdim=True)
    intersection = total - target_sorted.cumsum(-1)
    union = total + (1 - target_sorted).cumsum(-1)
    jaccard = 1 - safe_ratio(intersection, union)
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def _pixels(x: Tensor, reduce_over: str) -> Tensor:
    """``(N, C, S)`` as is per image, or the batch as one image ``(1, C, N * S)``."""
    return x if reduce_over == "image" else x.movedim(0, 1).reshape(1, x.shape[1], -1)


def lovasz_extension(errors: Tensor, target: Tensor, keep: Tensor | None) -> Tensor:
    r"""Per-row Lovász extension of the Jaccard loss, :math:`\sum_k e_{(k)}\, \Delta J_k`.

    ``errors``, ``target`` ``(R, C, S)``; ``keep`` (broadcastable 0/1) marks the kept pixels or
    is None. Ignored pixels sort after every kept one (their sort key is below any error) with
    error 0 and target 0, so they change no kept pixel's term: the result equals slicing them
    away. Returns ``(R, C)``.
    """
    key = errors if keep is None else torch.where(keep > 0, errors, torch.finfo(errors.dtype).min)
    key_sorted, perm = torch.sort(key, dim=-1, descending=True)
    values = key_sorted if keep is None else torch.gather(errors, -1, perm)
    grad = lovasz_grad(torch.gather(target, -1, perm))
    return (values * grad).sum(-1)


class LovaszLoss(DenseLoss):
    """Shared part of the Lovász losses: per-class errors, the extension, the class mean."""

    def errors(self, d: DenseInput) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement errors")

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        d = self.prepare(input, target)
        keep = None if d.mask is None else _pixels(d.mask.expand_as(d.probs), self.reduce_over)
        g = _pixels(d.target, self.reduce_over)
        per_class = lovasz_extension(_pixels(self.errors(d), self.reduce_over), g, keep)
        return self.mean_over_classes(d, per_class, g.sum(-1) > 0)


@register_loss("lovasz_softmax", family="segmentation", paper=PAPER)
class LovaszSoftmaxLoss(LovaszLoss):
    r"""Lovász-softmax loss: the Lovász extension of the per-class Jaccard loss at the errors
    :math:`e_{ic} = |g_{ic} - p_{ic}|`.

    For each class :math:`c`, sort the errors of the image's pixels in decreasing order
    :math:`e_{(1)} \ge e_{(2)} \ge \ldots` and take

    .. math::
        \ell_c = \sum_k e_{(k)}\,\big(J_c(k) - J_c(k-1)\big),
        \qquad J_c(k) = 1 - \frac{G_c - \sum_{j \le k} g_{(j)c}}{G_c + \sum_{j \le k}
        (1 - g_{(j)c})},

    the dot product with the gradient of the Lovász extension of the Jaccard loss (Berman et
    al., Eq. 9 and Algorithm 1); :math:`\ell` is the mean over classes. All classes of all images
    are sorted at once.

    Options of the paper's code mapped to the contract: ``per_image=True`` is
    ``reduce_over="image"`` (the default here, so that ``reduction="none"`` gives one value per
    image; the authors' ``lovasz_softmax`` defaults to ``per_image=False``, ``"batch"`` here);
    ``classes="present"`` (their default) is ``empty_target="skip"`` (the default), and
    ``classes="all"`` is ``"keep"``.

    Agreement: equal to smp ``LovaszLoss("multiclass", per_image=...)`` in values and gradients
    (tested), except that smp counts an image whose pixels are all ignored as 0 in its mean,
    while here it leaves the mean.

    Args:
        mode: ``"multiclass"`` (softmax, the paper) by default; ``"binary"`` / ``"multilabel"``
            take the errors of sigmoid probabilities per channel.
        from_logits, include_background, ignore_index, reduce_over, empty_target: the dense
            contract, see :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices (or one-hot
    (N, C, *spatial)); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = LovaszSoftmaxLoss(ignore_index=255)
        >>> loss(torch.randn(2, 5, 16, 16), torch.randint(0, 5, (2, 16, 16)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "skip",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )

    def errors(self, d: DenseInput) -> Tensor:
        return (d.target - d.probs).abs()  # 0 at ignored pixels (both are masked)


@register_loss("lovasz_hinge", family="segmentation", paper=PAPER)
class LovaszHingeLoss(LovaszLoss):
    r"""Lovász-hinge loss: the Lovász extension of the Jaccard loss at the hinge errors of
    binary logits.

    With signs :math:`s_i = 2 g_i - 1` and hinge errors :math:`m_i = \max(0, 1 - z_i s_i)`, sorted
    in decreasing order per image (and channel):

    .. math::
        \ell = \sum_k m_{(k)}\,\big(J(k) - J(k-1)\big)

    with :math:`J` as in :class:`LovaszSoftmaxLoss` (Berman et al., Section 3.1). It reads the
    logits themselves, so ``from_logits`` must stay True.

    ``mode="multilabel"`` (the default) treats each channel as its own binary problem and
    averages over channels; with one channel it is the paper's binary loss, and so is
    ``mode="binary"`` (which also takes a ``(N, *spatial)`` target). smp ``LovaszLoss`` in
    multilabel mode instead pools all channels of an image into one binary problem; for one
    channel the two agree (tested). The paper's ``per_image=True`` (its default for the hinge)
    is ``reduce_over="image"``. An image with no foreground keeps its term (``empty_target=
    "keep"``): the loss then pushes its largest logit below -1.

    Args:
        mode: ``"multilabel"`` (default) or ``"binary"``.
        include_background, ignore_index, reduce_over, empty_target: the dense contract.

    Shape: input (N, C, *spatial) logits; target (N, C, *spatial) in {0, 1} ((N, *spatial) in
    binary mode); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = LovaszHingeLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16)))  # doctest: +SKIP
    """

    target_kind: ClassVar[str] = "multilabel"

    def __init__(
        self,
        *,
        mode: str = "multilabel",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        if mode == "multiclass":
            raise ValueError(
                "`mode` of the Lovász-hinge loss must be 'binary' or 'multilabel' (it reads "
                "binary logits); got 'multiclass'. Use LovaszSoftmaxLoss for softmax outputs."
            )
        if not from_logits:
            raise ValueError(
                "`from_logits` must be True for the Lovász-hinge loss: its margins are logits."
            )
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )

    def errors(self, d: DenseInput) -> Tensor:
        margins = 1.0 - d.scores * (2.0 * d.target - 1.0)
        # ReLU before the sort: sorting max(0, m) ranks the positive errors as the paper does
        errors = torch.relu(margins)
        return errors if d.mask is None else errors * d.mask
