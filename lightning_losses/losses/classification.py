"""Classification losses on logits: cross-entropy, focal, and the noise-robust and
calibration-minded variants.

Every loss here follows the contract of :class:`~lightning_losses.losses.Loss`: logits ``(N, K)``
(or dense ``(N, K, *d)``), class indices or soft targets, ``ignore_index``, an optional per-class
``weight`` (a constructor argument, multiplying each element's loss by ``w[y]``), and a per-sample
output under ``reduction="none"``. Everything is computed from ``log_softmax`` (log space).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_class_weight, check_number, check_positive, check_range
from .._reduce import PerSample, reduce_loss
from ..registry import register_loss
from ._base import Loss
from ._inputs import (
    Binary,
    Categorical,
    check_binary_shapes,
    check_categorical,
    compute_dtype,
    fold_total,
    kernel_ignore_index,
    per_sample_reduce,
    prepare_binary,
    prepare_categorical,
    reduce_elements_fused,
    target_mask,
    upcast,
)


class CategoricalLoss(Loss):
    """Shared plumbing for softmax losses: shape checks, ``ignore_index``, per-class ``weight``.

    Subclasses implement :meth:`element_loss` on flattened rows ``(M, K)``; the result is
    multiplied by the class weight of each row's target and folded into one value per sample
    (the mean over the sample's non-ignored elements). With nothing to ignore, ``"mean"`` and
    ``"sum"`` reduce the element losses in one pass (:meth:`reduced`).
    """

    allow_soft_target = False
    #: Whether :meth:`element_loss` reads the labels through a kernel that range-checks them
    #: (``gather``, ``cross_entropy``, ``scatter``). A loss that reads them only through
    #: comparisons sets it to False and gets an on-device range check on every call instead.
    labels_checked_by_kernel: ClassVar[bool] = True

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.ignore_index = ignore_index
        w = check_class_weight(weight)
        self.register_buffer("weight", w if w is not None else torch.empty(0), persistent=True)

    @property
    def weighted(self) -> bool:
        """Whether a class weight is set (read from the buffer dict: ``Module.__getattr__`` is
        slow on a per-call path, and the weight may be set after construction)."""
        return self._buffers["weight"].numel() > 0

    def element_loss(self, c: Categorical) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement element_loss")

    def class_weight(self, c: Categorical) -> Tensor | None:
        """Per-row weight ``w[y]`` (or ``sum_k w_k q_k`` for soft targets), None if unweighted."""
        if not self.weighted:
            return None
        w = self.checked_weight(c.logits)
        return c.soft @ w if c.soft is not None else w[c.target]

    def checked_weight(self, logits: Tensor) -> Tensor | None:
        """The class weight in the logits' compute dtype (float32 for half-precision logits;
        None if unweighted), checked against K."""
        if not self.weighted:
            return None
        k = logits.shape[1]
        if self.weight.numel() != k:
            raise ValueError(
                f"`weight` has {self.weight.numel()} entries but the input has {k} classes."
            )
        return self.weight.to(compute_dtype(logits.dtype))

    def prepare(self, input: Tensor, target: Tensor) -> Categorical:
        """Validate and flatten to rows, with this loss's ``ignore_index`` and target rules."""
        return prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=self.allow_soft_target,
            validate_args=self.validate_args or not self.labels_checked_by_kernel,
        )

    def weighted_element_loss(self, c: Categorical) -> Tensor:
        """Element losses (M,) times the class weight of each row."""
        loss = self.element_loss(c)
        w = self.class_weight(c)
        return loss if w is None else loss * w

    def reduce_elements(self, c: Categorical) -> PerSample:
        """Element losses times the class weight, folded to one value per sample."""
        return per_sample_reduce(self.weighted_element_loss(c), c.valid, c.batch_size)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        return self.reduce_elements(self.prepare(input, target))

    def reduced(self, input: Tensor, target: Tensor, **context: Any) -> Tensor | None:
        # Only for losses that keep this class's per_sample: one that overrides it (context, a
        # batch statistic, a different fold) defines its own reduction, or uses the default.
        if context or type(self).per_sample is not CategoricalLoss.per_sample:
            return None
        c = self.prepare(input, target)
        if c.valid is not None:
            return reduce_loss(self.reduce_elements(c), self.reduction)
        return reduce_elements_fused(self.weighted_element_loss(c), c.batch_size, self.reduction)


def log_one_minus_p_target(logits: Tensor, target: Tensor, lse: Tensor | None = None) -> Tensor:
    """``log(1 - p_y)`` computed as ``logsumexp_{k != y} z_k - logsumexp_k z_k``.

    Stable where ``p_y`` rounds to 1 (it stays finite, and so do its gradients), unlike
    ``log1p(-p_y)``. ``lse`` is ``logsumexp_k z_k`` when the caller has it already.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"`input` must have at least 2 classes; got {logits.shape[1]}.")
    others = logits.masked_fill(target_mask(logits, target), torch.finfo(logits.dtype).min)
    lse = torch.logsumexp(logits, dim=1) if lse is None else lse
    return torch.logsumexp(others, dim=1) - lse


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
    These equal ``torch.nn.functional.cross_entropy(..., reduction="none")`` element-wise, and
    torch's fused kernel computes them (and, without ``sample_weight``, their reduction).
    ``reduction="mean"`` divides by the number of samples (not by the sum of class weights), see
    :mod:`lightning_losses._reduce`.

    Args:
        label_smoothing: :math:`\varepsilon \in [0, 1]`; 0 by default (0.1 in the paper).
        weight: per-class weights :math:`w` (K,), or None.
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

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
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.label_smoothing = check_range(label_smoothing, "label_smoothing", 0.0, 1.0)

    def _cross_entropy(self, input: Tensor, target: Tensor, reduction: str):
        # The formula is torch's own cross-entropy element for element; its fused kernel works on
        # the (N, K, *d) layout directly, with no copy to rows, and range-checks the labels.
        valid = check_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )
        # Under autocast torch's cross_entropy runs in float32 already; outside it, half-precision
        # logits are upcast here.
        half = input.dtype in (torch.float16, torch.bfloat16)
        x = input.float() if half and not torch.is_autocast_enabled(input.device.type) else input
        t = target.to(compute_dtype(x.dtype)) if target.is_floating_point() else target
        loss = F.cross_entropy(
            x,
            t,
            weight=self.checked_weight(x),
            ignore_index=kernel_ignore_index(self.ignore_index),
            label_smoothing=self.label_smoothing,
            reduction=reduction,
        )
        return loss, valid, x

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        loss, valid, x = self._cross_entropy(input, target, "none")
        return per_sample_reduce(loss, valid, x.shape[0])

    def reduced(self, input: Tensor, target: Tensor) -> Tensor | None:
        if self.ignore_index is not None and input.ndim > 2:
            return None  # a per-image mean over each image's own valid pixels
        if not self.weighted and self.ignore_index is None and self.reduction == "mean":
            return self._cross_entropy(input, target, "mean")[0]
        # torch's "mean" divides by the summed class weights; ours by the number of samples.
        total, valid, x = self._cross_entropy(input, target, "sum")
        if valid is not None:  # (N, K) input: one element per sample
            return total if self.reduction == "sum" else total / valid.sum().clamp_min(1)
        k = x.shape[1]
        return fold_total(total, x.numel() // k if k else 0, x.shape[0], self.reduction)


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
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        a = torch.as_tensor(alpha if alpha is not None else [], dtype=torch.float32)
        if a.ndim > 1 or bool((a < 0).any()):
            raise ValueError(f"`alpha` must be a non-negative scalar or 1-D sequence; got {alpha}.")
        self.register_buffer("alpha", a.reshape(-1) if a.ndim == 0 else a)
        self._alpha_is_scalar = a.ndim == 0

    def element_loss(self, c: Categorical) -> Tensor:
        # one logsumexp serves log p_y = z_y - lse and log(1 - p_y)
        lse = torch.logsumexp(c.logits, dim=1)
        loss = lse - c.logits.gather(1, c.target[:, None]).squeeze(1)  # -log p_y
        if self.gamma > 0:
            log_q = log_one_minus_p_target(c.logits, c.target, lse)
            loss = torch.exp(self.gamma * log_q) * loss
        if self.alpha.numel():
            a = self.alpha.to(loss.dtype)
            k = c.logits.shape[1]
            if not self._alpha_is_scalar and a.numel() != k:
                raise ValueError(f"`alpha` has {a.numel()} entries but the input has {k} classes.")
            loss = loss * (a[0] if self._alpha_is_scalar else a[c.target])
        return loss


class BinaryLoss(Loss):
    """Shared plumbing for sigmoid (binary / multi-label) losses: shapes, ``ignore_index``, fold.

    Subclasses implement :meth:`element_loss` on the flattened ``(N, P)`` layout; a sample's
    value is the mean (``fold = "mean"``) or the sum (``fold = "sum"``) of its non-ignored
    element losses. With nothing to ignore, ``"mean"`` and ``"sum"`` reduce the element losses
    in one pass (:meth:`reduced`).
    """

    target_kind = "multilabel"
    fold: ClassVar[str] = "mean"

    def __init__(
        self,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.ignore_index = ignore_index

    def element_loss(self, b: Binary) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement element_loss")

    def prepare(self, input: Tensor, target: Tensor) -> Binary:
        return prepare_binary(
            input, target, ignore_index=self.ignore_index, validate_args=self.validate_args
        )

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        b = self.prepare(input, target)
        return per_sample_reduce(self.element_loss(b), b.valid, b.shape[0], how=self.fold)

    def reduced(self, input: Tensor, target: Tensor, **context: Any) -> Tensor | None:
        if context or type(self).per_sample is not BinaryLoss.per_sample:
            return None
        b = self.prepare(input, target)
        loss = self.element_loss(b)
        if b.valid is not None:
            values = per_sample_reduce(loss, b.valid, b.shape[0], how=self.fold)
            return reduce_loss(values, self.reduction)
        return reduce_elements_fused(loss, b.shape[0], self.reduction, self.fold)


@register_loss(
    "binary_focal",
    family="classification",
    paper="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
)
class BinaryFocalLoss(BinaryLoss):
    r"""Sigmoid focal loss for binary and multi-label targets, hard or soft.

    With :math:`p = \sigma(x)` and a target :math:`t \in [0, 1]`, the loss is the focal loss
    of the paper averaged over a label :math:`y \sim \mathrm{Bernoulli}(t)`:

    .. math::
        \ell = -\alpha\, t\, (1 - p)^\gamma \log p
                - (1 - \alpha)(1 - t)\, p^\gamma \log(1 - p),

    with :math:`\log p = \mathrm{logsigmoid}(x)`, :math:`\log(1-p) = \mathrm{logsigmoid}(-x)`
    and the modulating factors :math:`\exp(\gamma \log p)`, :math:`\exp(\gamma\log(1-p))`
    computed in log space (never as a power of a clamped probability). For :math:`t \in
    \{0, 1\}` this is the paper's :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` and equals
    torchvision's ``sigmoid_focal_loss``; for soft targets it equals kornia's
    ``binary_focal_loss_with_logits``, while torchvision's multiplies the soft-target
    cross-entropy by :math:`(1 - p_t)^\gamma` with :math:`p_t = pt + (1-p)(1-t)`, which is not
    an expectation over labels. ``alpha=None`` drops the :math:`\alpha` factors (both terms
    weighted 1). The per-sample value is the mean over the sample's elements.

    Args:
        gamma: :math:`\gamma \ge 0`; 2 (paper).
        alpha: :math:`\alpha \in [0, 1]` for positives, 0.25 (paper); None disables it.
        weight: per-class weights :math:`w` (K,) multiplying each element's loss along dim 1;
            None for all ones.
        ignore_index: target elements equal to it are skipped; None (the default) skips nothing.

    Shape: input (N,), (N, K) or (N, K, *d); target of the same shape, values in [0, 1].
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.alpha = None if alpha is None else check_range(alpha, "alpha", 0.0, 1.0)
        w = check_class_weight(weight, "weight")
        self.register_buffer("weight", w if w is not None else torch.empty(0))

    def element_loss(self, b: Binary) -> Tensor:
        x, t = b.logits, b.target
        if self.gamma == 0 and self.alpha is None:
            return self._weighted(F.binary_cross_entropy_with_logits(x, t, reduction="none"), b)
        # log(1 - p) = log p - x: one logsigmoid for both logs. Where p is tiny this loses the
        # digits of log(1 - p) ~ -p, but with gamma > 0 that term is multiplied by p^gamma, so
        # the loss and its gradient keep theirs; with gamma = 0 it gets its own kernel.
        log_p = F.logsigmoid(x)
        log_q = log_p - x if self.gamma > 0 else F.logsigmoid(-x)
        if self.gamma > 0:
            hard_pos = torch.exp(self.gamma * log_q) * log_p  # the loss at y = 1, times -1
            hard_neg = torch.exp(self.gamma * log_p) * log_q  # the loss at y = 0, times -1
        else:
            hard_pos, hard_neg = log_p, log_q
        if self.alpha is not None:
            hard_pos, hard_neg = self.alpha * hard_pos, (1 - self.alpha) * hard_neg
        # the expectation over y ~ Bernoulli(t): (1 - t) * loss0 + t * loss1, in one kernel
        return self._weighted(-torch.lerp(hard_neg, hard_pos, t), b)

    def _weighted(self, loss: Tensor, b: Binary) -> Tensor:
        x = b.logits
        if self.weight.numel():
            loss = loss * per_class_factor(self.weight.to(x.dtype), b.shape, x.shape[0])
        return loss


def per_class_view(weight: Tensor, input_shape: torch.Size) -> Tensor:
    """A per-class vector (K,) shaped (1, K, 1, ...) to broadcast over input of ``input_shape``."""
    if len(input_shape) < 2 or weight.numel() != input_shape[1]:
        raise ValueError(
            f"a per-class vector of {weight.numel()} entries needs input of shape (N, K, *d) with "
            f"K = {weight.numel()}; got input of shape {tuple(input_shape)}."
        )
    return weight.reshape(1, -1, *([1] * (len(input_shape) - 2)))


def per_class_factor(weight: Tensor, input_shape: torch.Size, n: int) -> Tensor:
    """Broadcast a per-class vector (K,) over the flattened (N, P) layout of a binary loss."""
    return per_class_view(weight, input_shape).expand(n, *input_shape[1:]).reshape(n, -1)


@register_loss(
    "binary_cross_entropy",
    family="classification",
    paper="Standard binary cross-entropy on logits (Bernoulli likelihood)",
)
class BinaryCrossEntropyLoss(BinaryLoss):
    r"""Binary / multi-label cross-entropy on logits, with per-class and positive weights.

    With :math:`p = \sigma(x)`, per-class weights :math:`w_k` and positive weights :math:`v_k`:

    .. math::
        \ell_{k} = -w_k \big[v_k\, t_k \log p_k + (1 - t_k) \log(1 - p_k)\big]

    computed in log space by torch's fused ``binary_cross_entropy_with_logits``, which also
    reduces when no per-sample value is needed. The per-sample value is the mean over the
    sample's non-ignored elements, so ``"mean"`` equals
    ``torch.nn.functional.binary_cross_entropy_with_logits(..., reduction="mean")`` when nothing
    is ignored.

    Args:
        weight: per-class weights :math:`w` (K,), applied along dim 1; None for all ones.
        pos_weight: per-class positive weights :math:`v` (K,); None for all ones.
        ignore_index: target elements equal to it are skipped; None (the default) skips nothing.

    Shape: input (N,), (N, K) or (N, K, *d); target of the same shape with values in [0, 1].
    """

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        pos_weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        w = check_class_weight(weight, "weight")
        v = check_class_weight(pos_weight, "pos_weight")
        self.register_buffer("weight", w if w is not None else torch.empty(0))
        self.register_buffer("pos_weight", v if v is not None else torch.empty(0))

    @property
    def weighted(self) -> bool:
        """Whether a class or positive weight is set (see :attr:`CategoricalLoss.weighted`)."""
        return self._buffers["weight"].numel() > 0 or self._buffers["pos_weight"].numel() > 0

    def reduced(self, input: Tensor, target: Tensor, **context: Any) -> Tensor | None:
        if context or self.validate_args or self.ignore_index is not None:
            return super().reduced(input, target, **context)
        # Nothing to ignore or check: torch's kernel reduces on the input's own layout, with no
        # flattening (every sample has the same number of elements, so its mean is ours).
        check_binary_shapes(input, target)
        x = upcast(input)
        t = target if target.dtype == x.dtype else target.to(x.dtype)
        if self.reduction == "mean" and x.numel():  # torch's mean is over all elements, as ours
            return self._bce(x, t, x.shape, "mean")
        total = self._bce(x, t, x.shape, "sum")
        return fold_total(total, x.numel(), x.shape[0], self.reduction)

    def _bce(self, x: Tensor, t: Tensor, shape: torch.Size, reduction: str) -> Tensor:
        """torch's fused kernel, which computes exactly this formula stably (log-sum-exp form),
        on logits of the input's ``shape`` or on their ``(N, P)`` flattening."""
        w = _per_class(self._buffers["weight"], x, shape)
        v = _per_class(self._buffers["pos_weight"], x, shape)
        return F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=v, reduction=reduction)

    def element_loss(self, b: Binary) -> Tensor:
        return self._bce(b.logits, b.target, b.shape, "none")


def _per_class(vec: Tensor, x: Tensor, shape: torch.Size) -> Tensor | None:
    """A per-class vector broadcast over ``x``: logits of the input's ``shape`` or their
    ``(N, P)`` flattening; None for an empty (unset) vector."""
    if vec.numel() == 0:
        return None
    if x.shape == shape:
        return per_class_view(vec.to(x.dtype), shape)
    return per_class_factor(vec.to(x.dtype), shape, shape[0])


def _require_classes(c: Categorical, minimum: int = 2) -> int:
    k = c.logits.shape[1]
    if k < minimum:
        raise ValueError(f"`input` must have at least {minimum} classes; got {k}.")
    return k


#: Largest exponent an exponential-growth loss evaluates exactly (e^40 ~ 2.4e17). Beyond it the
#: exponential is continued by its tangent line, so values and gradients stay finite in float32
#: and bfloat16 while the loss keeps growing (and its gradient keeps pushing) past the cap.
_EXP_CAP = 40.0


def exp_cap(dtype: torch.dtype) -> float:
    """The exponent cap for inputs of ``dtype``: 40, or less where ``dtype`` cannot hold e^40.

    For float16 inputs the cap is ``log(65504) - 2 ~ 9.1`` so that gradients flowing back into
    the float16 logits stay finite.
    """
    return min(_EXP_CAP, math.log(torch.finfo(dtype).max) - 2.0)


def capped_expm1(x: Tensor, cap: float) -> Tensor:
    """``expm1(x)`` for ``x <= cap``, continued linearly (value and slope match) above ``cap``."""
    inside = torch.expm1(x.clamp(max=cap))
    outside = math.expm1(cap) + math.exp(cap) * (x - cap)
    return torch.where(x <= cap, inside, outside)


def _target_log_prob(c: Categorical) -> tuple[Tensor, Tensor]:
    """``log_softmax`` (M, K) and ``log p_y`` (M,) of the index target."""
    logp = F.log_softmax(c.logits, dim=1)
    return logp, logp.gather(1, c.target[:, None]).squeeze(1)


def _one_minus_p_target(c: Categorical) -> Tensor:
    """``1 - p_y`` as ``exp(log(1 - p_y))``: accurate (relative precision) where p_y -> 1."""
    return torch.exp(log_one_minus_p_target(c.logits, c.target))


@register_loss(
    "poly1",
    family="classification",
    paper="Leng et al., PolyLoss: A Polynomial Expansion Perspective of Classification Loss "
    "Functions, ICLR 2022",
)
class Poly1Loss(CategoricalLoss):
    r"""Poly-1 loss: cross-entropy plus a tunable first polynomial term in :math:`(1 - p_t)`.

    Cross-entropy expands as :math:`-\log p_t = \sum_{j\ge1} (1-p_t)^j / j`; Poly-1 perturbs the
    leading coefficient by :math:`\varepsilon`:

    .. math::
        \ell = w_y \big[-\log p_t + \varepsilon\,(1 - p_t)\big]

    For index targets :math:`p_t = p_y`; with :math:`\mathrm{ce} = -\log p_y` from torch's fused
    ``cross_entropy``, :math:`1 - p_y = -\mathrm{expm1}(-\mathrm{ce})`, exact in every regime up
    to the rounding of the cross-entropy itself. For soft targets :math:`q` (label smoothing,
    mixup) the paper's reference form is used:
    :math:`-\sum_k q_k \log p_k + \varepsilon (1 - \sum_k q_k p_k)`. The class weight :math:`w_y`
    (or :math:`\sum_k w_k q_k`) multiplies both terms. :math:`\varepsilon = 0` gives
    cross-entropy.

    Args:
        epsilon: :math:`\varepsilon \ge -1` (so the loss stays non-negative and monotone in
            :math:`p_t`); 1.0 by default, a moderate positive perturbation. The paper tunes it
            per task (2 for ImageNet classification, timm's default; negative for detection).
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) indices, or soft (N, K, *d).

    Example:
        >>> loss = build_loss("poly1", epsilon=2.0)  # doctest: +SKIP
    """

    allow_soft_target = True

    def __init__(
        self,
        epsilon: float = 1.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.epsilon = check_number(epsilon, "epsilon")
        if self.epsilon < -1:
            raise ValueError(f"`epsilon` must be >= -1; got {epsilon!r}.")

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        if c.soft is not None:
            logp = F.log_softmax(c.logits, dim=1)
            ce = -(c.soft * logp).sum(1)
            return ce + self.epsilon * (1 - (c.soft * logp.exp()).sum(1))
        # 1 - p_y = -expm1(-ce): as accurate as the cross-entropy itself, from its fused kernel
        ce = F.cross_entropy(c.logits, c.target, reduction="none")
        return ce - self.epsilon * torch.expm1(-ce)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, " + super().extra_repr()


@register_loss(
    "poly1_focal",
    family="classification",
    paper="Leng et al., PolyLoss: A Polynomial Expansion Perspective of Classification Loss "
    "Functions, ICLR 2022",
)
class Poly1FocalLoss(FocalLoss):
    r"""Poly-1 focal loss: the softmax focal loss plus :math:`\varepsilon (1-p_t)^{\gamma+1}`.

    .. math::
        \ell = w_y\big[-\alpha_y (1 - p_y)^{\gamma} \log p_y
                       + \varepsilon\,(1 - p_y)^{\gamma+1}\big]

    :math:`(1-p_y)^{\gamma+1} = \exp((\gamma+1)\log(1-p_y))` in log space, as in
    :class:`FocalLoss`. As in the paper's reference code, :math:`\alpha` scales the focal term
    only. :math:`\varepsilon = 0` gives :class:`FocalLoss`.

    Args:
        gamma: :math:`\gamma \ge 0`; 2 (focal loss default).
        epsilon: :math:`\varepsilon \ge -1`; 1.0, as for :class:`Poly1Loss` (the paper tunes it;
            negative values did better for detection).
        alpha, weight, ignore_index: as in :class:`FocalLoss`.

    Example:
        >>> loss = build_loss("poly1_focal", gamma=2.0, epsilon=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        gamma: float = 2.0,
        epsilon: float = 1.0,
        alpha: float | Sequence[float] | None = None,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            gamma=check_number(gamma, "gamma"),
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.epsilon = check_number(epsilon, "epsilon")
        if self.epsilon < -1:
            raise ValueError(f"`epsilon` must be >= -1; got {epsilon!r}.")

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        focal = super().element_loss(c)
        poly = torch.exp((self.gamma + 1) * log_one_minus_p_target(c.logits, c.target))
        return focal + self.epsilon * poly

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, epsilon={self.epsilon}, " + super().extra_repr()


@register_loss(
    "squentropy",
    family="classification",
    paper="Hui, Belkin and Wright, Cut your Losses with Squentropy, ICML 2023",
)
class SquentropyLoss(CategoricalLoss):
    r"""Squentropy: cross-entropy plus the mean squared logit of the incorrect classes.

    .. math::
        \ell = w_y\Big[-\log p_y + \frac{1}{K-1} \sum_{j \ne y} z_j^2\Big]

    The second term pulls the non-target logits towards 0, which the paper reports improves
    calibration (ECE) over cross-entropy. It has no hyperparameter; it needs :math:`K \ge 2`.

    Args:
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("squentropy")  # doctest: +SKIP
    """

    def element_loss(self, c: Categorical) -> Tensor:
        k = _require_classes(c)
        _, logp_t = _target_log_prob(c)
        sq = c.logits.square()
        others = sq.sum(1) - sq.gather(1, c.target[:, None]).squeeze(1)
        return -logp_t + others / (k - 1)


@register_loss(
    "comp_sum",
    family="classification",
    paper="Mao, Mohri and Zhong, Cross-Entropy Loss Functions: Theoretical Analysis and "
    "Applications, ICML 2023",
)
class CompSumLoss(CategoricalLoss):
    r"""Comp-sum losses: one :math:`\tau`-family covering sum-exponential, CE, GCE and MAE.

    With :math:`u = \sum_{k\ne y} e^{z_k - z_y} = 1/p_y - 1`:

    .. math::
        \Phi_\tau(u) = \frac{(1+u)^{1-\tau} - 1}{1-\tau}
                     = \frac{1 - p_y^{\tau-1}}{\tau - 1},\qquad \ell = w_y\,\Phi_\tau

    evaluated from :math:`s = -\log p_y` as :math:`\mathrm{expm1}((1-\tau)s)/(1-\tau)`, which is
    exact and accurate near :math:`\tau = 1`, where it tends to cross-entropy (:math:`\tau = 1`
    is computed as :math:`-\log p_y` exactly). :math:`\tau = 0`: sum-exponential
    (:math:`1/p_y - 1`); :math:`\tau = 1 + q \in (1, 2]`: generalized cross-entropy with
    parameter :math:`q`; :math:`\tau = 2`: :math:`1 - p_y` (MAE up to a factor 2).

    For :math:`\tau < 1` the loss grows like :math:`p_y^{-(1-\tau)}`; once the exponent
    :math:`(1-\tau)s` exceeds 40 (9.1 for float16 inputs) it is continued by its tangent line so
    that values and gradients stay finite at saturated logits (the loss is then above
    :math:`2\cdot10^{17}/(1-\tau)`, far outside any useful training regime).

    Args:
        tau: :math:`\tau \ge 0`; 1.0 by default (cross-entropy, the member the paper's analysis
            singles out as the common baseline).
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("comp_sum", tau=0.5)  # doctest: +SKIP
    """

    def __init__(
        self,
        tau: float = 1.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.tau = check_positive(tau, "tau", allow_zero=True)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        c = prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=self.allow_soft_target,
            validate_args=self.validate_args,
        )
        loss = self._phi(c, exp_cap(input.dtype))
        w = self.class_weight(c)
        if w is not None:
            loss = loss * w
        return per_sample_reduce(loss, c.valid, c.batch_size)

    def element_loss(self, c: Categorical) -> Tensor:
        return self._phi(c, exp_cap(c.logits.dtype))

    def _phi(self, c: Categorical, cap: float) -> Tensor:
        _require_classes(c)
        _, logp_t = _target_log_prob(c)
        s = -logp_t
        a = 1.0 - self.tau
        if a == 0:
            return s
        if a < 0:
            return torch.expm1(a * s) / a
        return capped_expm1(a * s, cap) / a

    def extra_repr(self) -> str:
        return f"tau={self.tau}, " + super().extra_repr()


@register_loss(
    "sum_exp",
    family="classification",
    paper="Mao, Mohri and Zhong, Cross-Entropy Loss Functions: Theoretical Analysis and "
    "Applications, ICML 2023",
)
class SumExpLoss(CompSumLoss):
    r"""Sum-exponential loss: the comp-sum loss with :math:`\tau = 0`.

    .. math::
        \ell = w_y \sum_{k \ne y} e^{z_k - z_y} = w_y\,(1/p_y - 1)

    Exponential in the margin (continued linearly beyond an exponent of 40, see
    :class:`CompSumLoss`). Args as in :class:`CompSumLoss`, without ``tau``.

    Example:
        >>> loss = build_loss("sum_exp")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            0.0,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )


@register_loss(
    "gce",
    family="classification",
    paper="Zhang and Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks "
    "with Noisy Labels, NeurIPS 2018",
)
class GCELoss(CompSumLoss):
    r"""Generalized cross-entropy (:math:`L_q` loss): the comp-sum loss with :math:`\tau = 1 + q`.

    .. math::
        \ell = w_y\,\frac{1 - p_y^{\,q}}{q}

    Interpolates between cross-entropy (:math:`q \to 0`) and :math:`1 - p_y` (:math:`q = 1`,
    MAE up to a factor 2); larger :math:`q` is more robust to label noise but fits more slowly.

    Args:
        q: :math:`q \in (0, 1]`; 0.7, the value the paper uses in its main experiments.
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("gce", q=0.7)  # doctest: +SKIP
    """

    def __init__(
        self,
        q: float = 0.7,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        q = check_range(q, "q", 0.0, 1.0, closed="right")
        super().__init__(
            1.0 + q,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.q = q

    def extra_repr(self) -> str:
        return f"q={self.q}, reduction={self.reduction!r}"


@register_loss(
    "mae",
    family="classification",
    paper="Ghosh, Kumar and Sastry, Robust Loss Functions under Label Noise for Deep Neural "
    "Networks, AAAI 2017 (as the tau = 2 comp-sum loss of Mao, Mohri and Zhong, ICML 2023)",
)
class MAELoss(CompSumLoss):
    r"""Mean absolute error on the softmax: the comp-sum loss with :math:`\tau = 2`.

    .. math::
        \ell = w_y\,(1 - p_y)

    This is half of :math:`\lVert e_y - p \rVert_1` as written by Ghosh et al.; the constant
    factor is dropped so that it equals ``gce(q=1)`` and ``comp_sum(tau=2)``. Bounded and
    symmetric, hence robust to label noise, but slow to fit. :math:`1 - p_y` is computed as
    :math:`-\mathrm{expm1}(\log p_y)`.

    Example:
        >>> loss = build_loss("mae")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            2.0,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )


def _check_rce_a(A: float) -> float:
    value = check_number(A, "A")
    if value >= 0:
        raise ValueError(
            f"`A` (the value of log 0 in the reverse cross-entropy) must be < 0; got {A!r}."
        )
    return value


@register_loss(
    "rce",
    family="classification",
    paper="Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019",
)
class ReverseCrossEntropyLoss(CategoricalLoss):
    r"""Reverse cross-entropy: the cross-entropy with prediction and label swapped.

    :math:`-\sum_k p_k \log q_k` for a one-hot label :math:`q`, with :math:`\log 0 := A`:

    .. math::
        \ell = w_y\,\big[-A\,(1 - p_y)\big]

    A bounded, noise-tolerant (symmetric) loss; on its own it fits slowly, so it is usually
    paired with an active loss (``sce``, ``nce_rce``).

    Args:
        A: the value given to :math:`\log 0`, :math:`A < 0`; -4 as in the SCE paper. (Much
            copied reference code clamps the one-hot label at 1e-4, i.e. :math:`A \approx -9.21`.)
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("rce", A=-4.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        A: float = -4.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.A = _check_rce_a(A)

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        return -self.A * _one_minus_p_target(c)

    def extra_repr(self) -> str:
        return f"A={self.A}, " + super().extra_repr()


@register_loss(
    "sce",
    family="classification",
    paper="Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019",
)
class SymmetricCrossEntropyLoss(CategoricalLoss):
    r"""Symmetric cross-entropy: :math:`\alpha\,\mathrm{CE} + \beta\,\mathrm{RCE}`.

    .. math::
        \ell = w_y\,\big[-\alpha \log p_y - \beta A\,(1 - p_y)\big]

    Cross-entropy fits the clean labels; the reverse term (:class:`ReverseCrossEntropyLoss`) adds
    noise tolerance.

    Args:
        alpha: weight of CE, :math:`\ge 0`; 0.1 (the paper's CIFAR-10 setting; it used 6.0 for
            CIFAR-100).
        beta: weight of RCE, :math:`\ge 0`; 1.0 (CIFAR-10; 0.1 for CIFAR-100).
        A: :math:`\log 0`, :math:`< 0`; -4 (paper).
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("sce", alpha=0.1, beta=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 1.0,
        A: float = -4.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.A = _check_rce_a(A)

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        _, logp_t = _target_log_prob(c)
        return -self.alpha * logp_t - self.beta * self.A * _one_minus_p_target(c)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, A={self.A}, " + super().extra_repr()


def _normalized_ce(c: Categorical) -> Tensor:
    logp = F.log_softmax(c.logits, dim=1)
    denom = -logp.sum(1)
    if c.soft is not None:
        return -(c.soft * logp).sum(1) / denom
    return -logp.gather(1, c.target[:, None]).squeeze(1) / denom


@register_loss(
    "nce",
    family="classification",
    paper="Ma et al., Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020",
)
class NormalizedCrossEntropyLoss(CategoricalLoss):
    r"""Normalized cross-entropy: CE divided by the sum of the CE over every possible label.

    .. math::
        \ell = w_y\,\frac{-\log p_y}{-\sum_{k=1}^K \log p_k}\in(0, 1]

    For soft targets the numerator is :math:`-\sum_k q_k \log p_k`. Normalization makes the loss
    robust to symmetric label noise but underfits on its own; see ``nce_rce``. Needs
    :math:`K \ge 2`.

    Args:
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("nce")  # doctest: +SKIP
    """

    allow_soft_target = True

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        return _normalized_ce(c)


@register_loss(
    "nce_rce",
    family="classification",
    paper="Ma et al., Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020",
)
class NCERCELoss(CategoricalLoss):
    r"""Active-passive loss NCE+RCE: :math:`\alpha\,\mathrm{NCE} + \beta\,\mathrm{RCE}`.

    .. math::
        \ell = w_y\Big[\alpha\,\frac{-\log p_y}{-\sum_k \log p_k} - \beta A\,(1 - p_y)\Big]

    The normalized (active) term and the reverse (passive) term are both noise-robust; together
    they fit well, unlike either alone.

    Args:
        alpha: weight of NCE, :math:`\ge 0`; 1.0 (the paper's CIFAR-10 setting).
        beta: weight of RCE, :math:`\ge 0`; 1.0 (CIFAR-10; the paper used
            :math:`\alpha = 10, \beta = 0.1` for CIFAR-100).
        A: :math:`\log 0` in RCE, :math:`< 0`; -4 as in the SCE paper (the authors' code clamps at
            1e-4, :math:`A \approx -9.21`).
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("nce_rce", alpha=1.0, beta=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        A: float = -4.0,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.A = _check_rce_a(A)

    def element_loss(self, c: Categorical) -> Tensor:
        _require_classes(c)
        return self.alpha * _normalized_ce(c) - self.beta * self.A * _one_minus_p_target(c)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, A={self.A}, " + super().extra_repr()


@register_loss(
    "spherical_z",
    family="classification",
    paper="de Brébisson and Vincent, The Z-loss: a shift and scale invariant classification loss "
    "belonging to the Spherical Family, arXiv 2016",
)
class SphericalZLoss(CategoricalLoss):
    r"""Z-loss of the spherical family: a softplus on the standardized target logit.

    Each sample's logits :math:`o` are standardized with the population statistics used in the
    paper, :math:`\mu = \frac1K\sum_k o_k`, :math:`\sigma^2 = \frac1K\sum_k (o_k-\mu)^2`,
    :math:`z = (o - \mu)/\max(\sigma, \epsilon)`, and

    .. math::
        \ell = \frac{w_y}{a}\,\mathrm{softplus}\big(a\,(b - z_y)\big)

    The loss is invariant to shifting and (positively) scaling the logits. :math:`z_y` lies in
    :math:`[-\sqrt{K-1}, \sqrt{K-1}]`, so :math:`b` sets the standardized score beyond which the
    loss saturates and :math:`a` how sharply (large :math:`a`: a hinge at :math:`b`). Not to be
    confused with the logit z-loss regulariser of PaLM (:class:`LogitZRegularizer`).

    Args:
        a: sharpness, :math:`a > 0`; 1.0.
        b: target standardized score; 3.0. The paper tunes :math:`a, b` per task and publishes
            no defaults; :math:`a = 1` is the plain softplus and :math:`b = 3` asks the target to
            sit three standard deviations above the mean logit, which for :math:`K = 10` is the
            largest reachable value (:math:`\sqrt{K-1}`) and for large :math:`K` roughly a top-1
            requirement. Tune both for your task (e.g. smaller :math:`b` for top-k metrics).
        eps: floor on :math:`\sigma` for constant logits (where :math:`z` is undefined); 1e-6.
        weight, ignore_index: as in :class:`CrossEntropyLoss`.

    Example:
        >>> loss = build_loss("spherical_z", a=1.0, b=3.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        a: float = 1.0,
        b: float = 3.0,
        eps: float = 1e-6,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.a = check_positive(a, "a")
        self.b = check_number(b, "b")
        self.eps = check_positive(eps, "eps")

    def element_loss(self, c: Categorical) -> Tensor:
        k = _require_classes(c)
        centered = c.logits - c.logits.mean(1, keepdim=True)
        sigma = torch.linalg.vector_norm(centered, dim=1) / math.sqrt(k)
        z_t = centered.gather(1, c.target[:, None]).squeeze(1) / sigma.clamp_min(self.eps)
        return F.softplus(self.a * (self.b - z_t)) / self.a

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, eps={self.eps}, " + super().extra_repr()


@register_loss(
    "logit_z_regularizer",
    family="classification",
    paper="Chowdhery et al., PaLM: Scaling Language Modeling with Pathways, JMLR 2023 (arXiv 2022)",
)
class LogitZRegularizer(CategoricalLoss):
    r"""Logit z-loss regulariser: keeps the softmax normaliser :math:`\log Z` near 0.

    .. math::
        \ell = \kappa\,\big(\mathrm{logsumexp}_k\, z_k\big)^2

    A term on its own: the target is only used for its shape and ``ignore_index`` (ignored
    elements do not count), never for its values, and soft targets are accepted. PaLM adds it to
    cross-entropy; do so by listing both losses in :class:`~lightning_losses.LossMixin` (which
    sums its terms) or by adding the two values yourself.

    Args:
        kappa: :math:`\kappa \ge 0`; 1e-4 (PaLM).
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

    Example:
        >>> loss = build_loss("logit_z_regularizer", kappa=1e-4)  # doctest: +SKIP
    """

    allow_soft_target = True

    # the penalty never reads the label, so no kernel range-checks it
    labels_checked_by_kernel = False

    def __init__(
        self,
        kappa: float = 1e-4,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)

    def element_loss(self, c: Categorical) -> Tensor:
        return self.kappa * torch.logsumexp(c.logits, dim=1).square()

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}, " + super().extra_repr()


#: Above this logit, log(1 - eta(z)) = -z - e^{-z}/2 + ... is taken as -z (error < 3e-18).
_GUMBEL_HIGH = 40.0


def gumbel_log_cdf_terms(x: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    r"""``(-log eta(x), -log(1 - eta(x)))`` for the Gumbel activation ``eta(x) = exp(-exp(-x))``.

    ``-log eta = e^{-x}``, continued linearly below ``x = -cap`` (see :func:`capped_expm1`).
    ``-log(1 - eta) = -log(1 - e^{-u})`` with ``u = e^{-x}``, as ``log(-expm1(-u))`` for
    ``u < log 2`` and ``log1p(-exp(-u))`` otherwise; ``x`` is clamped to ``[-cap, 40]`` there,
    outside which the term is ``0`` (to float precision) below and ``x`` above.
    """
    pos = capped_expm1(-x, cap) + 1.0
    xc = x.clamp(-cap, _GUMBEL_HIGH)
    u = torch.exp(-xc)
    small = u < math.log(2.0)
    u_small = torch.where(small, u, math.log(2.0))
    u_large = torch.where(small, math.log(2.0), u)
    log_1m = torch.where(
        small, torch.log(-torch.expm1(-u_small)), torch.log1p(-torch.exp(-u_large))
    )
    neg = -torch.where(x > _GUMBEL_HIGH, -x, log_1m)
    return pos, neg


@register_loss(
    "gumbel",
    family="classification",
    paper="Alexandridis et al., Long-tailed Instance Segmentation using Gumbel Optimized Loss, "
    "ECCV 2022",
)
class GumbelLoss(Loss):
    r"""Gumbel optimized loss: binary cross-entropy with the Gumbel activation for sigmoid heads.

    With :math:`\eta(z) = \exp(-e^{-z})` (the Gumbel CDF) in place of the sigmoid:

    .. math::
        \ell_k = w_k\big[-t_k \log \eta(z_k) - (1 - t_k) \log(1 - \eta(z_k))\big],\quad
        -\log\eta = e^{-z},\ \log(1-\eta) = \log(-\mathrm{expm1}(-e^{-z}))

    The asymmetric activation suits rare classes in long-tailed detection. The per-sample value
    is the mean over the sample's non-ignored elements (as in :class:`BinaryCrossEntropyLoss`).

    Saturation: :math:`e^{-z}` overflows float32 below :math:`z \approx -88`, so the positive term
    is continued by its tangent line below :math:`z = -40` (-9.1 for float16 inputs); the negative
    term is exactly :math:`z` (to float precision) above :math:`z = 40`, where
    :math:`\log(-\mathrm{expm1}(\cdot))` would otherwise have an infinite gradient, and 0 below
    :math:`z = -40`. Values and gradients are finite for all finite logits. (The authors' code
    instead clamps :math:`z` to :math:`[-4, 10]`, which zeroes the gradient outside.)

    Args:
        weight: per-class weights :math:`w` (K,), applied along dim 1; None for all ones.
        ignore_index: target elements equal to it are skipped; None (the default) skips nothing.

    Shape: input (N,), (N, K) or (N, K, *d); target of the same shape with values in [0, 1].

    Example:
        >>> loss = build_loss("gumbel")  # doctest: +SKIP
    """

    target_kind = "multilabel"

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.ignore_index = ignore_index
        w = check_class_weight(weight, "weight")
        self.register_buffer("weight", w if w is not None else torch.empty(0))

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        b = prepare_binary(
            input, target, ignore_index=self.ignore_index, validate_args=self.validate_args
        )
        x, t = b.logits, b.target
        n = x.shape[0]
        pos, neg = gumbel_log_cdf_terms(x, exp_cap(input.dtype))
        loss = t * pos + (1 - t) * neg
        if self.weight.numel():
            loss = loss * per_class_factor(self.weight.to(x.dtype), input.shape, n)
        return per_sample_reduce(loss, b.valid, n)
