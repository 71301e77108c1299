"""Classification losses on logits: cross-entropy, focal, and the noise-robust and
calibration-minded variants of METHODS.md section 3.

Every loss here follows the contract of :class:`~lightning_losses.losses.Loss`: logits ``(N, K)``
(or dense ``(N, K, *d)``), class indices or soft targets, ``ignore_index``, an optional per-class
``weight`` (a constructor argument, multiplying each element's loss by ``w[y]``), and a per-sample
output under ``reduction="none"``. Everything is computed from ``log_softmax`` (log space).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_class_weight, check_positive, check_range
from .._reduce import PerSample
from ..registry import register_loss
from ._base import Loss
from ._inputs import Categorical, per_sample_reduce, prepare_binary, prepare_categorical


class CategoricalLoss(Loss):
    """Shared plumbing for softmax losses: shape checks, ``ignore_index``, per-class ``weight``.

    Subclasses implement :meth:`element_loss` on flattened rows ``(M, K)``; the result is
    multiplied by the class weight of each row's target and folded into one value per sample
    (the mean over the sample's non-ignored elements).
    """

    allow_soft_target = False

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, check_finite=check_finite)
        self.ignore_index = ignore_index
        w = check_class_weight(weight)
        self.register_buffer("weight", w if w is not None else torch.empty(0), persistent=True)

    def element_loss(self, c: Categorical) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement element_loss")

    def class_weight(self, c: Categorical) -> Tensor | None:
        """Per-row weight ``w[y]`` (or ``sum_k w_k q_k`` for soft targets), None if unweighted."""
        if self.weight.numel() == 0:
            return None
        k = c.logits.shape[1]
        if self.weight.numel() != k:
            raise ValueError(
                f"`weight` has {self.weight.numel()} entries but the input has {k} classes."
            )
        w = self.weight.to(c.logits.dtype)
        return c.soft @ w if c.soft is not None else w[c.target]

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        c = prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=self.allow_soft_target,
            check_nan=self.check_finite,
        )
        loss = self.element_loss(c)
        w = self.class_weight(c)
        if w is not None:
            loss = loss * w
        return per_sample_reduce(loss, c.valid, c.batch_size)


def log_one_minus_p_target(logits: Tensor, target: Tensor) -> Tensor:
    """``log(1 - p_y)`` computed as ``logsumexp_{k != y} z_k - logsumexp_k z_k``.

    Stable where ``p_y`` rounds to 1 (it stays finite, and so do its gradients), unlike
    ``log1p(-p_y)``.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"`input` must have at least 2 classes; got {logits.shape[1]}.")
    is_target = F.one_hot(target, logits.shape[1]).bool()
    others = logits.masked_fill(is_target, torch.finfo(logits.dtype).min)
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)


@register_loss(
    "cross_entropy",
    family="classification",
    paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016 "
    "(label smoothing)",
)
class CrossEntropyLoss(CategoricalLoss):
    r"""Cross-entropy with label smoothing, soft targets, class weights and ``ignore_index``.

    With :math:`\log p = \mathrm{log\_softmax}(z)`, class weights :math:`w` (all ones by
    default) and smoothing :math:`\varepsilon`, for an index target :math:`y`:

    .. math::
        \ell = (1-\varepsilon)\, w_y\,(-\log p_y)
               + \frac{\varepsilon}{K} \sum_k w_k\,(-\log p_k)

    and for a soft target :math:`q` (mixup, cutmix):
    :math:`\ell = -\sum_k w_k\, q'_k \log p_k` with :math:`q' = (1-\varepsilon) q + \varepsilon/K`.
    These equal ``torch.nn.functional.cross_entropy(..., reduction="none")`` element-wise;
    ``reduction="mean"`` divides by the number of samples (not by the sum of class weights), see
    :mod:`lightning_losses._reduce`.

    Args:
        label_smoothing: :math:`\varepsilon \in [0, 1]`; 0 by default (0.1 in the paper).
        weight: per-class weights :math:`w` (K,), or None.
        ignore_index: index targets equal to it are skipped.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) indices, or soft (N, K, *d).

    Example:
        >>> loss = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss(torch.randn(4, 10), torch.tensor([1, 0, 9, 3]))  # doctest: +SKIP
    """

    allow_soft_target = True

    def __init__(
        self,
        label_smoothing: float = 0.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weight=weight, ignore_index=ignore_index, reduction=reduction, check_finite=check_finite
        )
        self.label_smoothing = check_range(label_smoothing, "label_smoothing", 0.0, 1.0)

    def class_weight(self, c: Categorical) -> Tensor | None:
        return None  # the weight enters the formula itself, per class

    def element_loss(self, c: Categorical) -> Tensor:
        logp = F.log_softmax(c.logits, dim=1)
        k = logp.shape[1]
        w = self.weight.to(logp.dtype) if self.weight.numel() else None
        if w is not None and w.numel() != k:
            raise ValueError(f"`weight` has {w.numel()} entries but the input has {k} classes.")
        wlogp = logp * w if w is not None else logp
        eps = self.label_smoothing
        if c.soft is not None:
            q = c.soft * (1 - eps) + eps / k if eps > 0 else c.soft
            return -(q * wlogp).sum(1)
        nll = -wlogp.gather(1, c.target[:, None]).squeeze(1)
        if eps == 0:
            return nll
        return (1 - eps) * nll - eps * wlogp.mean(1)


@register_loss(
    "focal",
    family="classification",
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
)
class FocalLoss(CategoricalLoss):
    r"""Multiclass (softmax) focal loss: down-weights easy, well-classified samples.

    .. math::
        \ell = -\alpha_y\, (1 - p_y)^{\gamma} \log p_y

    computed in log space: :math:`(1-p_y)^\gamma = \exp(\gamma \log(1-p_y))` with
    :math:`\log(1-p_y) = \mathrm{logsumexp}_{k\ne y} z_k - \mathrm{logsumexp}_k z_k`, so it stays
    finite, with finite gradients, at saturated logits. :math:`\gamma = 0` gives cross-entropy.

    Args:
        gamma: focusing parameter :math:`\gamma \ge 0`; 2 (the paper's default).
        alpha: a scalar multiplying every class, a per-class sequence
            :math:`\alpha_k`, or None (no factor, the default for softmax).
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    For sigmoid (binary / multi-label) outputs use :class:`BinaryFocalLoss`.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weight=weight, ignore_index=ignore_index, reduction=reduction, check_finite=check_finite
        )
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        a = torch.as_tensor(alpha if alpha is not None else [], dtype=torch.float32)
        if a.ndim > 1 or bool((a < 0).any()):
            raise ValueError(f"`alpha` must be a non-negative scalar or 1-D sequence; got {alpha}.")
        self.register_buffer("alpha", a.reshape(-1) if a.ndim == 0 else a)
        self._alpha_is_scalar = a.ndim == 0

    def element_loss(self, c: Categorical) -> Tensor:
        logp_t = F.log_softmax(c.logits, dim=1).gather(1, c.target[:, None]).squeeze(1)
        loss = -logp_t
        if self.gamma > 0:
            loss = torch.exp(self.gamma * log_one_minus_p_target(c.logits, c.target)) * loss
        if self.alpha.numel():
            a = self.alpha.to(loss.dtype)
            loss = loss * (a[0] if self._alpha_is_scalar else a[c.target])
        return loss


@register_loss(
    "binary_focal",
    family="classification",
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
)
class BinaryFocalLoss(Loss):
    r"""Sigmoid focal loss for binary and multi-label targets.

    With :math:`p = \sigma(x)`, :math:`p_t = p` where :math:`t = 1` and :math:`1 - p` where
    :math:`t = 0`, and :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)`:

    .. math::
        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t,\qquad
        (1-p_t)^\gamma = \exp\big(\gamma\, \mathrm{logsigmoid}(-x(2t-1))\big)

    The modulating factor is computed in log space (never as a power of a clamped
    probability), and :math:`-\log p_t` is ``binary_cross_entropy_with_logits``. The per-sample
    value is the mean over the sample's elements (so ``"mean"`` equals torchvision's
    ``sigmoid_focal_loss(..., reduction="mean")``).

    Args:
        gamma: :math:`\gamma \ge 0`; 2 (paper).
        alpha: :math:`\alpha \in [0, 1]` for positives, 0.25 (paper); None disables it.
        ignore_index: target elements equal to it are skipped.

    Shape: input (N,), (N, K) or (N, K, *d); target of the same shape, values in [0, 1].
    """

    target_kind = "multilabel"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, check_finite=check_finite)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.alpha = None if alpha is None else check_range(alpha, "alpha", 0.0, 1.0)
        self.ignore_index = ignore_index

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        b = prepare_binary(
            input, target, ignore_index=self.ignore_index, check_nan=self.check_finite
        )
        x, t = b.logits, b.target
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if self.gamma > 0:
            loss = torch.exp(self.gamma * F.logsigmoid(-x * (2 * t - 1))) * loss
        if self.alpha is not None:
            loss = (self.alpha * t + (1 - self.alpha) * (1 - t)) * loss
        return per_sample_reduce(loss, b.valid, x.shape[0])


def per_class_factor(weight: Tensor, input_shape: torch.Size, n: int) -> Tensor:
    """Broadcast a per-class vector (K,) over the flattened (N, P) layout of a binary loss."""
    if len(input_shape) < 2 or weight.numel() != input_shape[1]:
        raise ValueError(
            f"a per-class vector of {weight.numel()} entries needs input of shape (N, K, *d) with "
            f"K = {weight.numel()}; got input of shape {tuple(input_shape)}."
        )
    view = weight.reshape(1, -1, *([1] * (len(input_shape) - 2)))
    return view.expand(n, *input_shape[1:]).reshape(n, -1)


@register_loss(
    "binary_cross_entropy",
    family="classification",
    paper="Standard binary cross-entropy on logits (Bernoulli likelihood)",
)
class BinaryCrossEntropyLoss(Loss):
    r"""Binary / multi-label cross-entropy on logits, with per-class and positive weights.

    With :math:`p = \sigma(x)`, per-class weights :math:`w_k` and positive weights :math:`v_k`:

    .. math::
        \ell_{k} = -w_k \big[v_k\, t_k \log p_k + (1 - t_k) \log(1 - p_k)\big]

    computed with ``logsigmoid`` (log space). The per-sample value is the mean over the
    sample's non-ignored elements, so ``"mean"`` equals
    ``torch.nn.functional.binary_cross_entropy_with_logits(..., reduction="mean")`` when nothing
    is ignored.

    Args:
        weight: per-class weights :math:`w` (K,), applied along dim 1; None for all ones.
        pos_weight: per-class positive weights :math:`v` (K,); None for all ones.
        ignore_index: target elements equal to it are skipped.

    Shape: input (N,), (N, K) or (N, K, *d); target of the same shape with values in [0, 1].
    """

    target_kind = "multilabel"

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        pos_weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        check_finite: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, check_finite=check_finite)
        self.ignore_index = ignore_index
        w = check_class_weight(weight, "weight")
        v = check_class_weight(pos_weight, "pos_weight")
        self.register_buffer("weight", w if w is not None else torch.empty(0))
        self.register_buffer("pos_weight", v if v is not None else torch.empty(0))

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        b = prepare_binary(
            input, target, ignore_index=self.ignore_index, check_nan=self.check_finite
        )
        x, t = b.logits, b.target
        n = x.shape[0]
        pos = -F.logsigmoid(x) * t
        if self.pos_weight.numel():
            pos = pos * per_class_factor(self.pos_weight.to(x.dtype), input.shape, n)
        loss = pos - F.logsigmoid(-x) * (1 - t)
        if self.weight.numel():
            loss = loss * per_class_factor(self.weight.to(x.dtype), input.shape, n)
        return per_sample_reduce(loss, b.valid, n)
