r"""Losses for imbalanced and long-tailed data.

Class-balanced re-weighting, LDAM with deferred re-weighting, logit adjustment, balanced softmax,
the asymmetric loss and the distribution-balanced loss. The losses that depend on the class
counts :math:`n_c` of the training set derive from
:class:`~lightning_losses.losses.ClassCountsLoss`: give the counts to the constructor, or let
:class:`~lightning_losses.LossMixin` read ``class_counts`` from the datamodule. Everything that is
derived from the counts (weights, margins, log-priors) is a persistent buffer, computed once in
float64 when the counts are set.

**Zero counts.** A class with count 0 (absent from the training set) would give an infinite
weight, margin or log-prior. Every loss here treats it as if it had the smallest non-zero count of
the other classes, so the values of the observed classes do not change and nothing becomes
infinite.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_choice,
    check_class_counts,
    check_positive,
    check_range,
    check_tensor,
)
from .._reduce import PerSample
from ..registry import build_loss, register_loss
from ._base import ClassCountsLoss
from ._inputs import Binary, per_sample_reduce, prepare_binary, prepare_categorical, target_mask
from .classification import BinaryLoss

Counts = Sequence[float] | Tensor


def _filled_counts(counts: Counts) -> Tensor:
    """Counts as float64 on the CPU, with zero entries replaced by the smallest non-zero count."""
    n = check_class_counts(counts)
    smallest = n[n > 0].min()
    return torch.where(n > 0, n, smallest)


def class_balanced_weights(class_counts: Counts, beta: float = 0.9999) -> Tensor:
    r"""Effective-number class weights :math:`w_c \propto (1-\beta)/(1-\beta^{n_c})`, sum :math:`K`.

    The effective number of samples of a class is :math:`E_n = (1-\beta^n)/(1-\beta)`; the weight
    is :math:`1/E_{n_c}`, normalised so that :math:`\sum_c w_c = K` (Cui et al., CVPR 2019).
    :math:`\beta = 0` gives uniform weights, :math:`\beta \to 1` inverse-frequency weights.
    :math:`1-\beta^n` is computed as ``-expm1(n log beta)`` in float64, so :math:`\beta = 0.9999`
    keeps full precision. Zero counts are treated as the smallest non-zero count.

    Returns:
        float64 tensor (K,) on the CPU.
    """
    check_range(beta, "beta", 0.0, 1.0, closed="left")
    n = _filled_counts(class_counts)
    w = torch.ones_like(n) if beta == 0.0 else (1.0 - beta) / -torch.expm1(n * math.log(beta))
    return w * (n.numel() / w.sum())


def _log_prior(class_counts: Counts) -> Tensor:
    n = _filled_counts(class_counts)
    return torch.log(n / n.sum())


def logit_adjust(logits: Tensor, class_counts: Counts, tau: float = 1.0) -> Tensor:
    r"""Post-hoc logit adjustment: :math:`z_k - \tau \log \pi_k` with :math:`\pi = n / \sum n`.

    The argmax of the result is the balanced-error (Fisher-consistent) prediction of a model
    trained with plain cross-entropy (Menon et al., ICLR 2021). The class dimension is dim 1, so
    logits (N, K) and dense logits (N, K, *d) both work.

    Example:
        >>> pred = logit_adjust(model(x), datamodule.class_counts).argmax(1)  # doctest: +SKIP
    """
    check_tensor(logits, "logits")
    check_positive(tau, "tau", allow_zero=True)
    log_pi = _log_prior(class_counts)
    if logits.ndim < 2 or logits.shape[1] != log_pi.numel():
        raise ValueError(
            f"`class_counts` has {log_pi.numel()} entries but `logits` of shape "
            f"{tuple(logits.shape)} has {logits.shape[1] if logits.ndim >= 2 else 'no'} classes "
            "along dim 1."
        )
    shift = log_pi.to(device=logits.device, dtype=logits.dtype)
    shift = shift.reshape(1, -1, *([1] * (logits.ndim - 2)))
    return logits - tau * shift


def _num_classes(input: Tensor) -> int:
    check_tensor(input, "input")
    if input.ndim < 2:
        raise ValueError(
            f"`input` must be logits of shape (N, K) or (N, K, *d); got shape {tuple(input.shape)}."
        )
    return input.shape[1]


class _CountsDerived(ClassCountsLoss):
    """A counts loss with buffers derived from the counts (not saved: derived again on load)."""

    derived_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, reduction: str, validate_args: bool) -> None:
        super().__init__(None, reduction=reduction, validate_args=validate_args)
        for name in self.derived_buffers:
            self.register_buffer(name, torch.empty(0), persistent=False)  # derived from counts

    def _store(self, name: str, value: Tensor) -> None:
        setattr(self, name, value.to(device=self.class_counts.device, dtype=torch.float32))


# -- class-balanced ------------------------------------------------------------------------------


class _ClassBalanced(ClassCountsLoss):
    """Wraps a registered base loss and sets its per-class ``weight`` from the class counts."""

    bases: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        beta: float = 0.9999,
        base: str = "",
        base_kwargs: dict[str, Any] | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(None, reduction=reduction, validate_args=validate_args)
        self.beta = check_range(beta, "beta", 0.0, 1.0, closed="left")
        self.base = check_choice(base, self.bases, "base")
        kwargs = dict(base_kwargs or {})
        taken = [k for k in ("weight", "reduction", "validate_args") if k in kwargs]
        if taken:
            raise ValueError(
                f"`base_kwargs` must not set {taken}: the class-balanced loss sets the base's "
                "`weight` from the counts and passes its own `reduction` and `validate_args`."
            )
        self.base_loss = build_loss(base, validate_args=validate_args, **kwargs)
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def on_class_counts(self) -> None:
        w = class_balanced_weights(self.class_counts, self.beta)
        self.base_loss.weight = w.to(device=self.class_counts.device, dtype=torch.float32)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        self.require_counts(_num_classes(input))
        return self.base_loss.per_sample(input, target)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, base={self.base!r}, reduction={self.reduction!r}"


_CB_PAPER = "Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019"


@register_loss("class_balanced", family="imbalance", paper=_CB_PAPER)
class ClassBalancedLoss(_ClassBalanced):
    r"""Class-balanced softmax loss: a base loss re-weighted by the effective number of samples.

    With class counts :math:`n_c` and :math:`\beta \in [0, 1)`:

    .. math::
        w_c = \frac{1-\beta}{1-\beta^{n_c}}\ \text{normalised so that}\ \sum_c w_c = K,
        \qquad \ell = w_y\, \ell_{\text{base}}(z, y)

    where the base is ``"cross_entropy"`` (default) or the softmax ``"focal"`` loss, built with
    :func:`~lightning_losses.build_loss` and given ``weight = w`` (see
    :func:`class_balanced_weights`). As everywhere in this library, ``reduction="mean"`` divides
    by the number of samples, not by :math:`\sum_i w_{y_i}` as ``torch``'s weighted mean does.

    Args:
        class_counts: training-set counts (K,); or None, to be set by ``LossMixin`` /
            :meth:`set_class_counts`. Zero counts count as the smallest non-zero count.
        beta: :math:`\beta`; 0.9999 (the paper's best value on long-tailed CIFAR and
            iNaturalist). 0 gives uniform weights, values near 1 inverse-frequency weights.
        base: ``"cross_entropy"`` or ``"focal"``. For sigmoid / multi-label bases use
            :class:`ClassBalancedBCELoss`.
        base_kwargs: extra constructor arguments of the base (e.g. ``{"gamma": 1.0}`` for focal,
            ``{"ignore_index": 255}``); not ``weight`` or ``reduction``.

    Shape: as the base: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices.

    Example:
        >>> loss = ClassBalancedLoss([500, 50, 5], beta=0.999, base="focal")
        >>> loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 2]))  # doctest: +SKIP
    """

    bases = ("cross_entropy", "focal")

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        beta: float = 0.9999,
        base: str = "cross_entropy",
        base_kwargs: dict[str, Any] | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            class_counts,
            beta=beta,
            base=base,
            base_kwargs=base_kwargs,
            reduction=reduction,
            validate_args=validate_args,
        )


@register_loss("class_balanced_bce", family="imbalance", paper=_CB_PAPER)
class ClassBalancedBCELoss(_ClassBalanced):
    r"""Class-balanced sigmoid loss for multi-label targets: per-class effective-number weights.

    With :math:`w_c = (1-\beta)/(1-\beta^{n_c})` normalised to :math:`\sum_c w_c = K` (see
    :func:`class_balanced_weights`), every binary term of class :math:`k` is multiplied by
    :math:`w_k`:

    .. math::
        \ell = \frac{1}{K}\sum_k w_k\, \ell_{\text{base}}(x_k, t_k)

    with base ``"binary_cross_entropy"`` (default) or ``"binary_focal"``; the per-sample value is
    the base's mean over elements. Here :math:`n_k` counts the samples where class :math:`k` is
    positive. (The paper's sigmoid variant is single-label: it multiplies every binary term of a
    sample by :math:`w_y` of its one class; a per-column weight is the multi-label reading.)

    Args:
        class_counts, beta, base_kwargs: as in :class:`ClassBalancedLoss`; 0.9999.
        base: ``"binary_cross_entropy"`` or ``"binary_focal"`` (whose default
            :math:`\alpha = 0.25` still applies; pass ``base_kwargs={"alpha": None}`` for the
            paper's class-balanced focal loss).

    Shape: input (N, K) or (N, K, *d); target of the same shape with values in [0, 1].
    """

    target_kind = "multilabel"
    bases = ("binary_cross_entropy", "binary_focal")

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        beta: float = 0.9999,
        base: str = "binary_cross_entropy",
        base_kwargs: dict[str, Any] | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            class_counts,
            beta=beta,
            base=base,
            base_kwargs=base_kwargs,
            reduction=reduction,
            validate_args=validate_args,
        )


# -- LDAM + DRW ----------------------------------------------------------------------------------


@register_loss(
    "ldam",
    family="imbalance",
    paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, "
    "NeurIPS 2019",
)
class LDAMLoss(_CountsDerived):
    r"""Label-distribution-aware margin loss with optional deferred re-weighting (DRW).

    The target logit is lowered by a class-dependent margin, larger for rare classes, and the
    result is scaled before the softmax:

    .. math::
        \Delta_c = \frac{C}{n_c^{1/4}},\quad C\ \text{such that}\ \max_c \Delta_c = m,
        \qquad z'_k = z_k - \Delta_y [k = y],
        \qquad \ell = w_y\, \mathrm{CE}(s\, z', y)

    With DRW, :math:`w = 1` before epoch ``drw_epoch`` and the class-balanced weights
    :math:`w_c \propto (1-\beta)/(1-\beta^{n_c})` (sum :math:`K`) from that epoch on, as in the
    authors' code. The epoch is a Python int given at call time (``LossMixin`` passes
    ``trainer.current_epoch``), so the switch is not a data-dependent branch.

    Args:
        class_counts: training-set counts (K,), or None to be set later.
        max_margin: :math:`m`, the largest margin; 0.5 (paper).
        scale: :math:`s`; 30 (authors' code, needed because the margins are on the logit scale
            of normalised features: pair it with a cosine classifier head, as the authors do;
            with a plain linear head the logits are unbounded and a scale near 1 fits).
        drw_epoch: first epoch with class-balanced weights; None (no DRW). The paper uses 160
            of 200 epochs on CIFAR.
        drw_beta: :math:`\beta` of the DRW weights; 0.9999 (paper).
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices. Call with
    ``loss(input, target, epoch=current_epoch)``.

    Example:
        >>> loss = LDAMLoss([5000, 500, 50], drw_epoch=160)
        >>> loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 2]), epoch=0)  # doctest: +SKIP
    """

    context = ("counts", "epoch")
    derived_buffers = ("margins", "drw_weight")

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        drw_beta: float = 0.9999,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.max_margin = check_positive(max_margin, "max_margin")
        self.scale = check_positive(scale, "scale")
        if drw_epoch is not None:
            if isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int):
                raise TypeError(f"`drw_epoch` must be an int or None; got {drw_epoch!r}.")
            check_positive(drw_epoch, "drw_epoch", allow_zero=True)
        self.drw_epoch = drw_epoch
        self.drw_beta = check_range(drw_beta, "drw_beta", 0.0, 1.0, closed="left")
        self.ignore_index = ignore_index
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def on_class_counts(self) -> None:
        n = _filled_counts(self.class_counts)
        inv = n.pow(-0.25)
        self._store("margins", inv * (self.max_margin / inv.max()))
        self._store("drw_weight", class_balanced_weights(n, self.drw_beta))

    def drw_active(self, epoch: int) -> bool:
        """Whether the class-balanced weights apply at ``epoch``."""
        return self.drw_epoch is not None and epoch >= self.drw_epoch

    def per_sample(self, input: Tensor, target: Tensor, epoch: int) -> PerSample:
        try:
            epoch = operator.index(epoch)
        except TypeError:
            raise TypeError(f"`epoch` must be an int; got {type(epoch).__name__}.") from None
        c = prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=False,
            validate_args=self.validate_args,
        )
        k = c.logits.shape[1]
        self.require_counts(k)
        margins = self.margins.to(c.logits.dtype)
        is_target = target_mask(c.logits, c.target).to(c.logits.dtype)
        z = self.scale * (c.logits - is_target * margins)
        loss = -F.log_softmax(z, dim=1).gather(1, c.target[:, None]).squeeze(1)
        if self.drw_active(epoch):
            loss = loss * self.drw_weight.to(loss.dtype)[c.target]
        return per_sample_reduce(loss, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return (
            f"max_margin={self.max_margin}, scale={self.scale}, drw_epoch={self.drw_epoch}, "
            f"drw_beta={self.drw_beta}, reduction={self.reduction!r}"
        )


# -- logit adjustment / balanced softmax ---------------------------------------------------------


@register_loss(
    "logit_adjusted",
    family="imbalance",
    paper="Menon et al., Long-tail learning via logit adjustment, ICLR 2021",
)
class LogitAdjustedLoss(_CountsDerived):
    r"""Logit-adjusted cross-entropy: the logits are shifted by the scaled log-prior.

    .. math::
        \ell = -\log \frac{e^{z_y + \tau \log \pi_y}}{\sum_k e^{z_k + \tau \log \pi_k}},
        \qquad \pi = \frac{n}{\sum_k n_k}

    Minimising it gives a model whose plain argmax targets the balanced error. The post-hoc
    alternative (train with cross-entropy, predict with :math:`\arg\max_k z_k - \tau\log\pi_k`)
    is :func:`logit_adjust`.

    Args:
        class_counts: training-set counts (K,), or None to be set later. Only their ratios
            matter, so frequencies work too.
        tau: :math:`\tau \ge 0`; 1 (the paper's choice, Fisher-consistent for the balanced
            error); 0 gives cross-entropy.
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices.
    """

    derived_buffers = ("log_prior",)

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        tau: float = 1.0,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.tau = check_positive(tau, "tau", allow_zero=True)
        self.ignore_index = ignore_index
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def on_class_counts(self) -> None:
        self._store("log_prior", _log_prior(self.class_counts))

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        c = prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=False,
            validate_args=self.validate_args,
        )
        self.require_counts(c.logits.shape[1])
        z = c.logits + self.tau * self.log_prior.to(c.logits.dtype)
        loss = -F.log_softmax(z, dim=1).gather(1, c.target[:, None]).squeeze(1)
        return per_sample_reduce(loss, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"


@register_loss(
    "balanced_softmax",
    family="imbalance",
    paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
)
class BalancedSoftmaxLoss(LogitAdjustedLoss):
    r"""Balanced softmax: cross-entropy on logits shifted by the log class counts.

    .. math::
        \ell = -\log \frac{n_y\, e^{z_y}}{\sum_k n_k\, e^{z_k}}
             = \mathrm{CE}(z + \log n,\ y)

    :math:`\log n` and :math:`\log \pi` differ by a constant, so this equals
    :class:`LogitAdjustedLoss` with :math:`\tau = 1` (tested).

    Args:
        class_counts: training-set counts (K,), or None to be set later.
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices.
    """

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            class_counts,
            tau=1.0,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )

    def on_class_counts(self) -> None:
        self._store("log_prior", torch.log(_filled_counts(self.class_counts)))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


# -- asymmetric loss -----------------------------------------------------------------------------


@register_loss(
    "asl",
    family="imbalance",
    paper="Ridnik et al., Asymmetric Loss For Multi-Label Classification, ICCV 2021",
)
class AsymmetricLoss(BinaryLoss):
    r"""Asymmetric loss (ASL) for multi-label classification.

    With :math:`p = \sigma(x)` and the shifted probability :math:`p_m = \max(p - m, 0)`:

    .. math::
        \ell = -\sum_k \Big[\, y_k (1-p_k)^{\gamma_+} \log p_k
               + (1-y_k)\, p_{m,k}^{\gamma_-} \log(1 - p_{m,k}) \Big]

    The per-sample value is the **sum** over classes, as in the paper (so ``reduction="sum"``
    equals the authors' and timm's ``AsymmetricLossMultiLabel`` sum). Everything is in log space:
    :math:`\log p = \mathrm{logsigmoid}(x)`, :math:`(1-p)^{\gamma_+} = e^{\gamma_+
    \mathrm{logsigmoid}(-x)}` and, for :math:`m > 0`,
    :math:`\log(1-p_m) = \min\big(0, \mathrm{logaddexp}(\mathrm{logsigmoid}(-x), \log m)\big)`,
    never a clamp followed by a log. It stays finite, with finite gradients, in fp16 / bf16 and at
    logits of :math:`\pm 100`; negatives with :math:`p \le m` contribute exactly 0.

    Args:
        gamma_pos: :math:`\gamma_+ \ge 0`; 0 (paper; timm and some code use 1).
        gamma_neg: :math:`\gamma_- \ge 0`; 4 (paper).
        clip: probability margin :math:`m \in [0, 1)`; 0.05 (paper).
        ignore_index: target elements equal to it are skipped; None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d); target of the same shape with values in [0, 1].
    """

    fold = "sum"

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.gamma_pos = check_positive(gamma_pos, "gamma_pos", allow_zero=True)
        self.gamma_neg = check_positive(gamma_neg, "gamma_neg", allow_zero=True)
        self.clip = check_range(clip, "clip", 0.0, 1.0, closed="left")

    def element_loss(self, b: Binary) -> Tensor:
        x, t = b.logits, b.target
        log_q = F.logsigmoid(-x)  # log(1 - p)
        pos = -F.logsigmoid(x)
        if self.gamma_pos > 0:
            pos = torch.exp(self.gamma_pos * log_q) * pos
        if self.clip > 0:
            log_m = x.new_tensor(math.log(self.clip))
            log_one_minus_pm = torch.logaddexp(log_q, log_m).clamp(max=0.0)
            shifted = torch.sigmoid(x) - self.clip
            if self.gamma_neg >= 1:  # the power's gradient is finite (0 or 1) at p_m = 0
                focus = shifted.clamp_min(0.0) ** self.gamma_neg
            else:  # where() on both sides keeps the gradient finite where p_m = 0
                above = shifted > 0
                focus = torch.where(above, torch.where(above, shifted, 1.0) ** self.gamma_neg, 0.0)
        else:
            log_one_minus_pm = log_q
            focus = torch.exp(self.gamma_neg * F.logsigmoid(x))
        neg = -focus * log_one_minus_pm
        return neg + t * (pos - neg)  # t * pos + (1 - t) * neg

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, "
            f"reduction={self.reduction!r}"
        )


# -- distribution-balanced loss ------------------------------------------------------------------


@register_loss(
    "distribution_balanced",
    family="imbalance",
    paper="Wu et al., Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed "
    "Datasets, ECCV 2020",
)
class DistributionBalancedLoss(_CountsDerived):
    r"""Distribution-balanced loss: re-balanced weights plus negative-tolerant regularisation.

    **Re-balanced weighting.** For a sample with positive labels :math:`P`, every class
    :math:`k` (positive or negative) gets

    .. math::
        r_k = \frac{1/n_k}{\sum_{j \in P} 1/n_j},\qquad
        \hat r_k = \alpha + \sigma\big(\beta (r_k - \mu)\big)

    (the ratio :math:`P^C_k / P^I(x)` of the class-level to the instance-level sampling
    probability; the :math:`1/K` factors cancel). A sample without positive labels has
    :math:`P^I = 0`, :math:`r = \infty` and so :math:`\hat r = \alpha + 1`, the limit the authors'
    code reaches.

    **Negative-tolerant regularisation.** With the class prior :math:`p_k = n_k / N`, its logit
    :math:`\hat b_k = -\log(1/p_k - 1)` and :math:`z'_k = z_k + \kappa \hat b_k / \lambda`:

    .. math::
        \ell = \frac{1}{K}\sum_k \hat r_k \Big[ y_k \log(1 + e^{-z'_k})
               + \frac{1 - y_k}{\lambda} \log(1 + e^{\lambda z'_k}) \Big]

    i.e. the paper's :math:`\log(1+e^{\lambda(z-\nu)})/\lambda` with
    :math:`\nu_k = -\kappa \hat b_k / \lambda`, which is how the authors' code
    (``ResampleLoss`` with ``logit_reg=dict(init_bias=κ, neg_scale=λ)``) applies the prior; a
    rare class (:math:`\hat b_k < 0`) gets its logits lowered, so its negatives are penalised
    less. The per-sample value is the mean over classes (the code's ``"mean"`` over elements).
    The weights depend on the labels only and carry no gradient.

    Args:
        class_counts: the number of training samples in which each class is positive (K,).
        num_samples: :math:`N`, the number of training samples, for the prior. None uses
            :math:`\sum_k n_k`, exact for single-label data and an over-estimate for multi-label
            data; pass it for multi-label data. A class positive in every sample
            (:math:`n_k = N`) counts :math:`N - n_k` as 1/2 so that :math:`\hat b_k` stays finite.
        neg_scale: :math:`\lambda > 0`; 5 (the authors' VOC-LT config; 2 for COCO-LT).
        init_bias_scale: :math:`\kappa \ge 0`; 0.05 (authors' configs).
        alpha, beta, mu: the smoothing map's :math:`\alpha = 0.1`, :math:`\beta = 10`,
            :math:`\mu = 0.3` (VOC-LT config; :math:`\mu = 0.2` for COCO-LT).
        ignore_index: target elements equal to it are skipped (and count as not positive).

    The authors' best variant adds a focal factor (``DB-Focal``); this is the plain DB loss.

    Shape: input (N, K); target (N, K) with values in [0, 1].
    """

    target_kind = "multilabel"
    derived_buffers = ("inv_freq", "logit_shift")

    def __init__(
        self,
        class_counts: Counts | None = None,
        *,
        num_samples: float | None = None,
        neg_scale: float = 5.0,
        init_bias_scale: float = 0.05,
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.3,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.num_samples = (
            None if num_samples is None else check_positive(num_samples, "num_samples")
        )
        self.neg_scale = check_positive(neg_scale, "neg_scale")
        self.init_bias_scale = check_positive(init_bias_scale, "init_bias_scale", allow_zero=True)
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta")
        self.mu = mu
        self.ignore_index = ignore_index
        if class_counts is not None:
            self.set_class_counts(class_counts)

    def on_class_counts(self) -> None:
        raw = check_class_counts(self.class_counts)
        total = float(raw.sum()) if self.num_samples is None else float(self.num_samples)
        if float(raw.max()) > total:
            raise ValueError(
                f"`num_samples` ({total:g}) must be at least the largest class count "
                f"({float(raw.max()):g}): a class cannot be positive in more samples than exist."
            )
        n = _filled_counts(raw)
        b_hat = torch.log(n) - torch.log((total - n).clamp_min(0.5))
        self._store("inv_freq", 1.0 / n)
        self._store("logit_shift", self.init_bias_scale * b_hat / self.neg_scale)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_tensor(input, "input")
        if input.ndim != 2:
            raise ValueError(
                "`input` must be multi-label logits of shape (N, K) for the distribution-balanced "
                f"loss; got shape {tuple(input.shape)}."
            )
        b = prepare_binary(
            input, target, ignore_index=self.ignore_index, validate_args=self.validate_args
        )
        x, t = b.logits, b.target
        self.require_counts(x.shape[1])
        inv = self.inv_freq.to(x.dtype)
        instance = (t * inv).sum(1, keepdim=True)
        has_pos = instance > 0
        r = inv / torch.where(has_pos, instance, torch.ones_like(instance))
        smooth = self.alpha + torch.sigmoid(self.beta * (r - self.mu))
        r_hat = torch.where(has_pos, smooth, torch.full_like(smooth, self.alpha + 1.0))
        z = x + self.logit_shift.to(x.dtype)
        lam = self.neg_scale
        loss = r_hat * (t * F.softplus(-z) + (1 - t) * F.softplus(lam * z) / lam)
        return per_sample_reduce(loss, b.valid, x.shape[0])

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, neg_scale={self.neg_scale}, "
            f"init_bias_scale={self.init_bias_scale}, alpha={self.alpha}, beta={self.beta}, "
            f"mu={self.mu}, reduction={self.reduction!r}"
        )
