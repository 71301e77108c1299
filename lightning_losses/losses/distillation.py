r"""Knowledge-distillation losses: the student matches a teacher's outputs.

Calling convention. ``input`` is the student's tensor that is compared (logits, an adapted
feature map, ranking scores or regression outputs), ``target`` is the batch's ground truth, and
the teacher's outputs arrive as **keyword context**, named after what they hold:

=====================  =========================================================================
keyword                what it holds
=====================  =========================================================================
``teacher_logits``     the teacher's logits, the student's shape ``(N, K, *d)`` (multi-teacher:
                       ``(M, N, K, *d)``, one row of teachers first)
``teacher_features``   the teacher's feature map at the matched layer, ``(N, *)``
``teacher_scores``     the teacher's ranking scores ``(N, 1 + P)`` (column 0 the positive)
``teacher_outputs``    the teacher's regression outputs, the student's shape (or ``(M, N, *)``)
``aux_logits``         the student's *auxiliary* head (Dual-Head KD), the student's shape
=====================  =========================================================================

Every teacher tensor is detached inside the loss (no gradient reaches the teacher), checked for
shape against ``input`` (a mismatch is a ``ValueError`` that shows both shapes), and, with
``validate_args=True``, checked for NaN like ``input``. The registry context token of these
losses is ``"teacher"`` (plus ``"epoch"`` for DKD); the keyword names are in each class's
``teacher_keys``. The distillation callback runs the teacher and passes them; a direct call must.

Losses on logits validate ``target`` as class indices (``ignore_index`` marks samples, or pixels
of dense logits, to skip); the feature, score and regression losses do not use ``target`` (their
``target_kind`` is ``"none"``): it may be None, and a tensor must have one row per sample.

Mixing with cross-entropy is the pipeline's job (``LossMixin`` term weights, e.g. CE 0.1 / KD
0.9 for KD in mdistiller): each loss here is the distillation term alone, unless the method's
target itself contains the labels (self-distillation).

Batch-relational losses (DIST, RKD) set ``batch_statistic``: each sample's value contains a
statistic of the whole batch, defined so that the mean over samples is the paper's objective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float,
    check_int,
    check_positive,
    check_range,
    check_tensor,
)
from .._reduce import PerSample
from ..registry import register_loss
from ._base import Loss
from ._inputs import (
    Categorical,
    per_sample_reduce,
    prepare_categorical,
    target_mask,
    upcast,
)

#: The teacher keywords the distillation losses accept, and what each holds.
TEACHER_CONTEXT = {
    "teacher_logits": "the teacher's logits, the student's shape (multi-teacher: (M, *shape))",
    "teacher_features": "the teacher's features at the matched layer, (N, *)",
    "teacher_scores": "the teacher's ranking scores (N, 1 + P), column 0 the positive",
    "teacher_outputs": "the teacher's regression outputs, the student's shape",
    "aux_logits": "the student's auxiliary-head logits (Dual-Head KD), the student's shape",
}


def _no_autocast(x: Tensor):
    """Matrix products of relational losses run in the computed dtype, not autocast's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return nullcontext()


def _common_dtype(*xs: Tensor) -> torch.dtype:
    dtype = upcast(xs[0]).dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, upcast(x).dtype)
    return dtype


def kl_rows(log_p_teacher: Tensor, log_p_student: Tensor, dim: int = 1) -> Tensor:
    r""":math:`\mathrm{KL}(p_t \,\|\, p_s) = \sum_k p_{t,k} (\log p_{t,k} - \log p_{s,k})`."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim)


def average_teacher_probs(
    teacher_logits: Tensor | Sequence[Tensor],
    weights: Sequence[float] | Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    r"""The weighted mean of several teachers' softened probabilities.

    .. math::
        \bar p = \sum_{m=1}^{M} w_m\, \mathrm{softmax}(z_m / T), \qquad
        w_m \ge 0,\ \textstyle\sum_m w_m = 1

    The weights are normalised to sum to 1 (uniform when None). The result is detached: it is a
    target. Because :math:`\sum_m w_m \mathrm{KL}(p_m\|p_s) = \mathrm{KL}(\bar p\|p_s) + c` with
    :math:`c` free of the student, KD toward :math:`\bar p` has the gradient of
    :class:`MultiTeacherKDLoss`.

    Args:
        teacher_logits: a stack ``(M, N, K, *d)`` or a sequence of M tensors ``(N, K, *d)``.
        weights: :math:`w` (M,), or None for uniform.
        temperature: :math:`T > 0`.

    Returns:
        :math:`\bar p` of shape ``(N, K, *d)``.
    """
    stack = _stack_teachers(teacher_logits, "teacher_logits")
    t = check_positive(temperature, "temperature")
    w = _normalised_weights(weights, stack.shape[0], "weights", stack)
    probs = torch.softmax(upcast(stack.detach()) / t, dim=2)
    return torch.tensordot(w.to(probs.dtype), probs, dims=1)


def _stack_teachers(teachers: Tensor | Sequence[Tensor], arg: str) -> Tensor:
    if isinstance(teachers, Tensor):
        stack = teachers
    else:
        items = list(teachers)
        if not items:
            raise ValueError(f"`{arg}` must hold at least one teacher; got none.")
        shapes = {tuple(check_tensor(x, arg).shape) for x in items}
        if len(shapes) > 1:
            raise ValueError(f"every teacher in `{arg}` must have the same shape; got {shapes}.")
        stack = torch.stack(items)
    check_float(stack, arg)
    if stack.ndim < 3:
        raise ValueError(
            f"`{arg}` must stack M teachers' logits as (M, N, K, *d); got shape "
            f"{tuple(stack.shape)}."
        )
    return stack


def _normalised_weights(
    weights: Sequence[float] | Tensor | None, m: int, arg: str, like: Tensor | None = None
) -> Tensor:
    if weights is None:
        w = torch.full((m,), 1.0 / m, dtype=torch.float64)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        if w.ndim != 1 or w.numel() != m:
            raise ValueError(
                f"`{arg}` must have one weight per teacher ({m}); got shape {tuple(w.shape)}."
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"`{arg}` must be finite, non-negative, not all 0; got {w.tolist()}.")
        w = w / w.sum()
    return w if like is None else w.to(like.device)


class DistillationLoss(Loss):
    """Base of the distillation losses: teacher keywords, their checks and their detaching.

    A subclass lists the keywords it needs in ``teacher_keys`` and reads them with
    :meth:`teacher`, which detaches, validates the shape against the student's and checks for
    NaN when ``validate_args`` is set.
    """

    context: ClassVar[tuple[str, ...]] = ("teacher",)
    teacher_keys: ClassVar[tuple[str, ...]] = ("teacher_logits",)

    def _check_context(self, context: dict[str, Any]) -> None:
        missing = [k for k in self.teacher_keys if k not in context]
        if missing:
            raise TypeError(
                f"{type(self).__name__} needs the keyword argument(s) {missing} "
                f"({'; '.join(TEACHER_CONTEXT[k] for k in missing)}); the distillation callback "
                "passes them, a direct call must."
            )
        super()._check_context({k: v for k, v in context.items() if k not in self.teacher_keys})

    def teacher(
        self,
        value: object,
        arg: str,
        input: Tensor,
        *,
        same_shape: bool = True,
        detach: bool = True,
    ) -> Tensor:
        """``value`` checked to be a float tensor with ``input``'s shape, and detached (a
        student-side keyword such as ``aux_logits`` passes ``detach=False``)."""
        t = check_float(check_tensor(value, arg), arg)
        t = t.detach() if detach else t
        if same_shape and t.shape != input.shape:
            raise ValueError(
                f"`{arg}` must have the student's shape: `input` has shape {tuple(input.shape)} "
                f"but `{arg}` has shape {tuple(t.shape)}."
            )
        if t.device != input.device:
            raise ValueError(f"`{arg}` is on {t.device} but `input` is on {input.device}.")
        if self.validate_args:
            check_finite(t, arg)
        return t

    def check_unused_target(self, target: object, n: int) -> None:
        """A target these losses do not read must at least belong to the same batch."""
        if target is None:
            return
        check_tensor(target, "target")
        if target.ndim == 0 or target.shape[0] != n:
            raise ValueError(
                f"`target` must have one row per sample ({n}) or be None (this loss does not "
                f"use it); got shape {tuple(target.shape)}."
            )

    def check_input(self, input: object, min_ndim: int = 1) -> Tensor:
        check_float(check_tensor(input, "input"), "input")
        if input.ndim < min_ndim:
            raise ValueError(
                f"`input` must have at least {min_ndim} dimension(s) (N first); got shape "
                f"{tuple(input.shape)}."
            )
        if self.validate_args:
            check_finite(input, "input")
        return input


class _LogitDistillationLoss(DistillationLoss):
    """Logits ``(N, K, *d)`` against ``teacher_logits`` of the same shape, a row per element."""

    allow_soft_target: ClassVar[bool] = True
    #: Most of these losses read the labels only for ``ignore_index`` (or through comparisons),
    #: so no kernel range-checks them: :meth:`rows` checks them on the device. A loss that
    #: gathers at the labels sets this to True.
    labels_checked_by_kernel: ClassVar[bool] = False

    def __init__(
        self,
        temperature: float | None,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        # None: a loss without a temperature (DeiT's hard labels).
        self.temperature = (
            None if temperature is None else check_positive(temperature, "temperature")
        )
        self.ignore_index = ignore_index

    def rows(
        self, input: Tensor, target: Tensor, teacher_logits: object, arg: str = "teacher_logits"
    ) -> tuple[Categorical, Tensor]:
        """Student rows (a :class:`Categorical`) and the matching teacher rows ``(M, K)``."""
        c = prepare_categorical(
            input,
            target,
            ignore_index=self.ignore_index,
            allow_soft=self.allow_soft_target,
            validate_args=self.validate_args or not self.labels_checked_by_kernel,
        )
        t = self.teacher(teacher_logits, arg, input)
        dtype = _common_dtype(c.logits, t)
        rows = upcast(t).movedim(1, -1).reshape(-1, input.shape[1]).to(dtype)
        soft = None if c.soft is None else c.soft.to(dtype)
        return c._replace(logits=c.logits.to(dtype), soft=soft), rows

    def extra_repr(self) -> str:
        temp = "" if self.temperature is None else f"temperature={self.temperature}, "
        return f"{temp}ignore_index={self.ignore_index}, {super().extra_repr()}"


@register_loss(
    "kd",
    family="distillation",
    paper="Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, NeurIPS 2014 "
    "Deep Learning Workshop (arXiv:1503.02531)",
)
class KDLoss(_LogitDistillationLoss):
    r"""Knowledge distillation (KD): KL from the teacher's softened distribution, times T².

    .. math::
        \ell = T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t/T) \,\|\, \mathrm{softmax}(z_s/T)\big)
             = T^2 \sum_k p^T_{t,k} \big(\log p^T_{t,k} - \log p^T_{s,k}\big)

    The :math:`T^2` keeps the gradient's scale independent of :math:`T` (Hinton et al.); the
    batch mean of :math:`\ell` is the ``batchmean`` KL of the common implementations
    (mdistiller ``kd_loss``). The CE term of the KD objective (CE 0.1 / KD 0.9 in mdistiller) is
    a separate pipeline term.

    Pixel-wise KD: dense logits ``(N, K, *d)`` (segmentation) take the KL at every pixel and
    average it over the sample's pixels whose ``target`` is not ``ignore_index``.

    Args:
        temperature: :math:`T > 0`; 4 (mdistiller's CIFAR-100 setting).
        ignore_index: target value of samples / pixels to skip.

    Context: ``teacher_logits``, the student's shape; detached inside.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) indices or soft (N, K, *d) (read
    only for ``ignore_index``).

    Example:
        >>> kd = KDLoss(temperature=4.0)
        >>> kd(student(x), y, teacher_logits=teacher(x))  # doctest: +SKIP
    """

    def __init__(
        self,
        temperature: float = 4.0,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )

    def per_sample(self, input: Tensor, target: Tensor, teacher_logits: Tensor) -> PerSample:
        c, t = self.rows(input, target, teacher_logits)
        temp = self.temperature
        kl = kl_rows(torch.log_softmax(t / temp, 1), torch.log_softmax(c.logits / temp, 1))
        return per_sample_reduce(temp**2 * kl, c.valid, c.batch_size)


def _log_one_minus(log_p: Tensor, target: Tensor) -> Tensor:
    """``log(1 - p_y)`` from the row's log-probabilities, as a logsumexp over k != y."""
    is_target = target_mask(log_p, target)
    return torch.logsumexp(log_p.masked_fill(is_target, torch.finfo(log_p.dtype).min), dim=1)


@register_loss(
    "dkd",
    family="distillation",
    paper="Zhao, Cui, Song, Qiu, Liang, Decoupled Knowledge Distillation, CVPR 2022",
)
class DKDLoss(_LogitDistillationLoss):
    r"""Decoupled KD (DKD): target-class (TCKD) and non-target-class (NCKD) terms, weighted.

    On :math:`T`-softened probabilities :math:`p = \mathrm{softmax}(z/T)` with label :math:`y`:
    the binary distribution :math:`b = (p_y,\ 1 - p_y)` and the non-target distribution
    :math:`\hat p_k = p_k / (1 - p_y)` for :math:`k \ne y`

    .. math::
        \mathrm{TCKD} = \mathrm{KL}(b_t \,\|\, b_s), \qquad
        \mathrm{NCKD} = \mathrm{KL}(\hat p_t \,\|\, \hat p_s),

        \ell = \min\Big(\frac{e + 1}{E_w}, 1\Big)\, T^2
               \big(\alpha\, \mathrm{TCKD} + \beta\, \mathrm{NCKD}\big)

    with :math:`e` the 0-based epoch (``trainer.current_epoch``): the first epoch has factor
    :math:`1/E_w`, as epoch 1 of mdistiller (which counts from 1). The paper's objective adds
    CE (weight 1), which is a separate pipeline term. Everything is computed in log space
    (:math:`\log(1 - p_y)` as a logsumexp over :math:`k \ne y`), where mdistiller takes the log
    of probabilities and masks with :math:`-1000`; the values agree where both are finite.

    Args:
        alpha: TCKD weight :math:`\alpha`; 1 (paper).
        beta: NCKD weight :math:`\beta`; 8 (paper's CIFAR-100 default; it is tuned per
            teacher-student pair, e.g. 6 for WRN-40-2 → WRN-16-2, mdistiller issue #6).
        temperature: :math:`T > 0`; 4 (paper).
        warmup: :math:`E_w`, epochs of linear warm-up; 20 (paper). 0 disables it.
        ignore_index: target value of samples / pixels to skip.

    Context: ``teacher_logits`` (the student's shape, detached inside) and ``epoch`` (int).

    Shape: input (N, K) or (N, K, *d) with K >= 2; target (N,) / (N, *d) class indices.
    """

    context = ("teacher", "epoch")
    allow_soft_target = False

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.warmup = check_int(warmup, "warmup", minimum=0)

    def warmup_factor(self, epoch: int) -> float:
        epoch = check_int(epoch, "epoch", minimum=0)
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def per_sample(
        self, input: Tensor, target: Tensor, teacher_logits: Tensor, epoch: int
    ) -> PerSample:
        factor = self.warmup_factor(epoch)
        c, t = self.rows(input, target, teacher_logits)
        k = c.logits.shape[1]
        if k < 2:
            raise ValueError(f"`input` must have at least 2 classes for DKD; got {k}.")
        temp = self.temperature
        ls = torch.log_softmax(c.logits / temp, 1)
        lt = torch.log_softmax(t / temp, 1)
        y = c.target[:, None]
        bin_s = torch.stack([ls.gather(1, y)[:, 0], _log_one_minus(ls, c.target)], 1)
        bin_t = torch.stack([lt.gather(1, y)[:, 0], _log_one_minus(lt, c.target)], 1)
        tckd = kl_rows(bin_t, bin_s)
        is_target = target_mask(c.logits, c.target)
        low = torch.finfo(ls.dtype).min
        hat_s = torch.log_softmax((c.logits / temp).masked_fill(is_target, low), 1)
        hat_t = torch.log_softmax((t / temp).masked_fill(is_target, low), 1)
        nckd = (hat_t.exp() * (hat_t - hat_s)).masked_fill(is_target, 0.0).sum(1)
        values = factor * temp**2 * (self.alpha * tckd + self.beta * nckd)
        return per_sample_reduce(values, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, warmup={self.warmup}, {super().extra_repr()}"


def _masked_pearson(a: Tensor, b: Tensor, mask: Tensor, dim: int, eps: float) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` over the entries where ``mask``."""
    m = mask.to(a.dtype)
    count = m.sum(dim, keepdim=True).clamp_min(1)
    ac = (a - (a * m).sum(dim, keepdim=True) / count) * m
    bc = (b - (b * m).sum(dim, keepdim=True) / count) * m
    norms = torch.linalg.vector_norm(ac, dim=dim) * torch.linalg.vector_norm(bc, dim=dim)
    return (ac * bc).sum(dim) / norms.clamp_min(eps)


@register_loss(
    "dist",
    family="distillation",
    paper="Huang, You, Wang, Qian, Xu, Knowledge Distillation from A Stronger Teacher, "
    "NeurIPS 2022",
)
class DISTLoss(_LogitDistillationLoss):
    r"""DIST: match the teacher's relations (Pearson correlations) rather than its probabilities.

    With :math:`Y = \mathrm{softmax}(z/\tau)` row-wise for student (:math:`Y^s`) and teacher
    (:math:`Y^t`), :math:`\rho` the Pearson correlation and :math:`d(a, b) = 1 - \rho(a, b)`:

    .. math::
        \mathcal L = \tau^2 \Big(\beta\, \frac1N \sum_i d(Y^s_{i,:}, Y^t_{i,:})
                     + \gamma\, \frac1K \sum_k d(Y^s_{:,k}, Y^t_{:,k})\Big)

    The first is the paper's *inter-class* relation (a sample's classes), the second its
    *intra-class* relation (a class across the batch). Per sample,
    :math:`\ell_i = \tau^2 (\beta\, d(Y^s_{i,:}, Y^t_{i,:}) + \gamma\, R)` with the batch term
    :math:`R = \frac1K \sum_k d(Y^s_{:,k}, Y^t_{:,k})` broadcast (``batch_statistic``), so that
    the mean over samples is :math:`\mathcal L`. :math:`R` runs over the non-ignored samples and
    is not weighted by ``sample_weight``; a zero-variance vector gets :math:`\rho = 0`
    (correlation's denominator clamped at ``eps`` = 1e-8, like the official code's cosine
    similarity).

    Args:
        beta: inter-class weight :math:`\beta`; 1 (paper).
        gamma: intra-class weight :math:`\gamma`; 1 (paper).
        temperature: :math:`\tau > 0`; 1 (paper).
        ignore_index: target value of samples to skip.

    Context: ``teacher_logits`` (N, K), detached inside.

    Shape: input (N, K) only (the relation across the batch has no dense form here); target
    (N,) indices or soft (N, K), read only for ``ignore_index``.
    """

    batch_statistic: ClassVar[bool] = True
    eps: ClassVar[float] = 1e-8

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)

    def per_sample(self, input: Tensor, target: Tensor, teacher_logits: Tensor) -> PerSample:
        if input.ndim != 2:
            raise ValueError(
                f"`input` must be logits of shape (N, K) for DIST; got shape {tuple(input.shape)}."
            )
        c, t = self.rows(input, target, teacher_logits)
        temp = self.temperature
        ys = torch.softmax(c.logits / temp, 1)
        yt = torch.softmax(t / temp, 1)
        rows = torch.ones_like(ys, dtype=torch.bool)
        inter = 1.0 - _masked_pearson(ys, yt, rows, 1, self.eps)
        cols = rows if c.valid is None else c.valid[:, None].expand_as(ys)
        intra = (1.0 - _masked_pearson(ys, yt, cols, 0, self.eps)).mean()
        values = temp**2 * (self.beta * inter + self.gamma * intra)
        return PerSample(values, c.valid)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, {super().extra_repr()}"


@register_loss(
    "dual_head_kd",
    family="distillation",
    paper="Yang, Zong, Huang, Feng, An, Dual-Head Knowledge Distillation: Enhancing Logits "
    "Utilization with an Auxiliary Head, arXiv:2411.08937 (2024)",
)
class DualHeadKDLoss(_LogitDistillationLoss):
    r"""Dual-Head KD: probability-level KD on the main head, logit-level BinaryKL on an auxiliary.

    Two linear heads share the backbone: the main head's logits :math:`z_s` (``input``) get
    KD, the auxiliary head's logits :math:`a_s` (``aux_logits``) get a sigmoid, per-class,
    logit-level loss; the auxiliary head is dropped at inference. With
    :math:`\sigma` the sigmoid and the Bernoulli KL
    :math:`\mathrm{KL}_B(p\|q) = p \log\frac pq + (1-p)\log\frac{1-p}{1-q}`:

    .. math::
        \ell = T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\big)
             + \lambda\, T_b^2 \sum_k D_k

    where ``binary="kl"`` (BinaryKL) uses
    :math:`D_k = \mathrm{KL}_B\big(\sigma(z_{t,k}/T_b)\,\|\,\sigma(a_{s,k}/T_b)\big)` and
    ``binary="kl_norm"`` (BinaryKL-Norm, the stabilised form) uses
    :math:`D_k = \mathrm{KL}_B\big(\tfrac12\,\|\,\sigma((a_{s,k} - z_{t,k})/T_b)\big)`, both as in
    the authors' ``distiller_zoo`` (sum over classes, mean over the batch, times
    :math:`T_b^2`; computed here with log-sigmoids instead of clamping at 1e-8). CE on the main
    head is a separate pipeline term.

    Args:
        temperature: KD temperature :math:`T > 0`; 4.
        aux_temperature: BinaryKL temperature :math:`T_b > 0`; 2 (authors' code default).
        aux_weight: :math:`\lambda \ge 0`; 1. The paper's per-setting weights were not checked.
        binary: ``"kl"`` (default) or ``"kl_norm"``.
        ignore_index: target value of samples / pixels to skip.

    Context: ``teacher_logits`` and ``aux_logits`` (the student's auxiliary head, which keeps
    its gradient), both the student's shape; the teacher's is detached inside.

    Shape: input (N, K) or (N, K, *d); target indices or soft, read only for ``ignore_index``.
    """

    teacher_keys = ("teacher_logits", "aux_logits")
    BINARY = ("kl", "kl_norm")

    def __init__(
        self,
        temperature: float = 4.0,
        aux_temperature: float = 2.0,
        aux_weight: float = 1.0,
        binary: str = "kl",
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.aux_temperature = check_positive(aux_temperature, "aux_temperature")
        self.aux_weight = check_positive(aux_weight, "aux_weight", allow_zero=True)
        self.binary = check_choice(binary, self.BINARY, "binary")

    def per_sample(
        self, input: Tensor, target: Tensor, teacher_logits: Tensor, aux_logits: Tensor
    ) -> PerSample:
        c, t = self.rows(input, target, teacher_logits)
        a = self.teacher(aux_logits, "aux_logits", input, detach=False)
        a = upcast(a).movedim(1, -1).reshape_as(c.logits).to(c.logits.dtype)
        temp, tb = self.temperature, self.aux_temperature
        kd = kl_rows(torch.log_softmax(t / temp, 1), torch.log_softmax(c.logits / temp, 1))
        if self.binary == "kl":
            p = torch.sigmoid(t / tb)
            log_p, log_1p = F.logsigmoid(t / tb), F.logsigmoid(-t / tb)
            log_q, log_1q = F.logsigmoid(a / tb), F.logsigmoid(-a / tb)
            d = p * (log_p - log_q) + (1.0 - p) * (log_1p - log_1q)
        else:
            diff = (a - t) / tb
            d = -math.log(2.0) - 0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff))
        values = temp**2 * kd + self.aux_weight * tb**2 * d.sum(1)
        return per_sample_reduce(values, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return (
            f"aux_temperature={self.aux_temperature}, aux_weight={self.aux_weight}, "
            f"binary={self.binary!r}, {super().extra_repr()}"
        )


@register_loss(
    "self_distillation",
    family="distillation",
    paper="Borup, Andersen, Even your Teacher Needs Guidance: Ground-Truth Targets Dampen "
    "Regularization Imposed by Self-Distillation, NeurIPS 2021",
)
class SelfDistillationLoss(_LogitDistillationLoss):
    r"""Self-distillation with ground-truth weighting: soft CE to a blend of labels and teacher.

    The previous generation's outputs :math:`z_t` (the same architecture, trained one round
    earlier) are blended with the labels :math:`y` (one-hot, or a soft target):

    .. math::
        q = \alpha\, y + (1 - \alpha)\, \mathrm{softmax}(z_t / T), \qquad
        \ell = -\sum_k q_k \log \mathrm{softmax}(z_s)_k

    :math:`\alpha = 0` is pure self-distillation, :math:`\alpha = 1` plain CE. The paper's
    :math:`\ell_2` term is weight decay (the optimiser's); its closed-form optimal :math:`\alpha`
    (kernel regression) and its estimate for deep nets are not implemented: choose
    :math:`\alpha` by hand (0.5 here, no default in the paper).

    Args:
        alpha: :math:`\alpha \in [0, 1]`; 0.5.
        temperature: :math:`T > 0` applied to the teacher; 1.
        ignore_index: target value of samples / pixels to skip.

    Context: ``teacher_logits`` (the previous generation's logits), the student's shape;
    detached inside.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) indices or soft (N, K, *d).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 1.0,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.alpha = check_range(alpha, "alpha", 0.0, 1.0)

    def per_sample(self, input: Tensor, target: Tensor, teacher_logits: Tensor) -> PerSample:
        c, t = self.rows(input, target, teacher_logits)
        y = c.soft if c.soft is not None else target_mask(c.logits, c.target).to(c.logits.dtype)
        q = self.alpha * y + (1.0 - self.alpha) * torch.softmax(t / self.temperature, 1)
        values = -(q * torch.log_softmax(c.logits, 1)).sum(1)
        return per_sample_reduce(values, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, {super().extra_repr()}"


@register_loss(
    "deit_hard_distillation",
    family="distillation",
    paper="Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, Training data-efficient image "
    "transformers & distillation through attention, ICML 2021",
)
class HardDistillationLoss(_LogitDistillationLoss):
    r"""DeiT hard distillation: cross-entropy to the teacher's argmax label.

    .. math::
        \ell = \mathrm{CE}\big(z_s,\ \arg\max_k z_{t,k}\big) = -\log \mathrm{softmax}(z_s)_{y_t}

    DeiT's objective is :math:`\tfrac12 \mathrm{CE}(z_{cls}, y) + \tfrac12 \mathrm{CE}(z_{dist},
    y_t)`: this loss is the second term, on the distillation token's logits (``input``); the
    class-token CE and the ½ / ½ weights are pipeline terms. At inference DeiT averages the two
    heads' softmax outputs. There is no temperature (the argmax does not depend on one).

    Args:
        ignore_index: target value of samples / pixels to skip (the teacher's label is used
            everywhere else).

    Context: ``teacher_logits``, the student's shape; detached inside.

    Shape: input (N, K) or (N, K, *d); target indices or soft, read only for ``ignore_index``.
    """

    def __init__(
        self,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            None, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )

    def per_sample(self, input: Tensor, target: Tensor, teacher_logits: Tensor) -> PerSample:
        c, t = self.rows(input, target, teacher_logits)
        y_t = t.argmax(1, keepdim=True)
        values = -torch.log_softmax(c.logits, 1).gather(1, y_t)[:, 0]
        return per_sample_reduce(values, c.valid, c.batch_size)


@register_loss(
    "multi_teacher_kd",
    family="distillation",
    paper="Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network (ensembles of "
    "teachers), 2015; You, Xu, Xu, Tao, Learning from Multiple Teacher Networks, KDD 2017",
)
class MultiTeacherKDLoss(_LogitDistillationLoss):
    r"""KD from several teachers: a weighted sum of per-teacher KD terms.

    .. math::
        \ell = T^2 \sum_{m=1}^{M} w_m\, \mathrm{KL}\big(\mathrm{softmax}(z_m/T)
               \,\|\, \mathrm{softmax}(z_s/T)\big), \qquad \textstyle\sum_m w_m = 1

    Its student gradient equals KD toward the averaged teacher distribution
    :func:`average_teacher_probs` (the two differ by a constant, the teachers' mean entropy
    minus the average's).

    Args:
        weights: :math:`w` (M,), normalised to sum to 1; None: uniform over the teachers given.
        temperature: :math:`T > 0`; 4.
        ignore_index: target value of samples / pixels to skip.

    Context: ``teacher_logits``, the M teachers stacked first: ``(M, N, K, *d)``; detached.

    Shape: input (N, K) or (N, K, *d); target indices or soft, read only for ``ignore_index``.
    """

    def __init__(
        self,
        weights: Sequence[float] | None = None,
        temperature: float = 4.0,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            temperature, ignore_index=ignore_index, reduction=reduction, validate_args=validate_args
        )
        self.weights = (
            None
            if weights is None
            else _normalised_weights(weights, len(weights), "weights").tolist()
        )

    def per_sample(self, input: Tensor, target: Tensor, teacher_logits: Tensor) -> PerSample:
        stack = self.teacher(teacher_logits, "teacher_logits", input, same_shape=False)
        if stack.ndim != input.ndim + 1 or stack.shape[1:] != input.shape:
            raise ValueError(
                f"`teacher_logits` must stack M teachers as (M, *input.shape): `input` has shape "
                f"{tuple(input.shape)} but `teacher_logits` has shape {tuple(stack.shape)}."
            )
        m = stack.shape[0]
        if self.weights is not None and len(self.weights) != m:
            raise ValueError(
                f"`weights` has {len(self.weights)} entries but `teacher_logits` stacks {m} "
                "teachers."
            )
        w = self.weights or [1.0 / m] * m
        temp = self.temperature
        c, _ = self.rows(input, target, stack[0])
        log_s = torch.log_softmax(c.logits / temp, 1)
        total = torch.zeros_like(log_s[:, 0])
        for i in range(m):
            t = upcast(stack[i]).movedim(1, -1).reshape_as(c.logits).to(c.logits.dtype)
            total = total + w[i] * kl_rows(torch.log_softmax(t / temp, 1), log_s)
        return per_sample_reduce(temp**2 * total, c.valid, c.batch_size)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, {super().extra_repr()}"


# -- features, scores, regression outputs ------------------------------------------------------


class _PairedDistillationLoss(DistillationLoss):
    """A student tensor against one teacher tensor; ``target`` is not read."""

    target_kind: ClassVar[str] = "none"

    def pair(
        self,
        input: Tensor,
        target: object,
        arg: str,
        value: object,
        *,
        min_ndim: int = 1,
        same_shape: bool = True,
    ) -> tuple[Tensor, Tensor]:
        self.check_input(input, min_ndim)
        self.check_unused_target(target, input.shape[0])
        t = self.teacher(value, arg, input, same_shape=same_shape)
        if t.ndim < 1 or t.shape[0] != input.shape[0]:
            raise ValueError(
                f"`{arg}` must have one row per sample: `input` has shape {tuple(input.shape)} "
                f"but `{arg}` has shape {tuple(t.shape)}."
            )
        dtype = _common_dtype(input, t)
        return input.to(dtype), t.to(dtype)


@register_loss(
    "fitnet",
    family="distillation",
    paper="Romero, Ballas, Kahou, Chassang, Gatta, Bengio, FitNets: Hints for Thin Deep Nets, "
    "ICLR 2015",
)
class FitNetLoss(_PairedDistillationLoss):
    r"""FitNet hint loss: mean squared error between the adapted student and the teacher feature.

    .. math::
        \ell_i = \frac{1}{D} \sum_{j=1}^{D} \big(r(F_s)_{ij} - F_{t,ij}\big)^2

    over the :math:`D` elements of a sample's feature map. The regressor :math:`r` (a 1x1 conv
    or linear layer fitted to the two shapes) belongs to the student side: ``input`` is
    :math:`r(F_s)`. The paper writes :math:`\tfrac12\|\cdot\|^2` summed; the mean (as in
    mdistiller, with its feature weight 100 as a pipeline weight) keeps the scale independent of
    the layer's size.

    Context: ``teacher_features``, the adapted student's shape; detached inside.

    Shape: input (N, *) (e.g. (N, C, H, W)); target not used (None, or one row per sample).
    """

    input_kind: ClassVar[str] = "features"
    teacher_keys = ("teacher_features",)

    def per_sample(self, input: Tensor, target: Any, teacher_features: Tensor) -> PerSample:
        s, t = self.pair(input, target, "teacher_features", teacher_features)
        n = s.shape[0]
        return PerSample((s - t).reshape(n, -1).pow(2).mean(1))


@register_loss(
    "attention_transfer",
    family="distillation",
    paper="Zagoruyko, Komodakis, Paying More Attention to Attention: Improving the Performance "
    "of Convolutional Neural Networks via Attention Transfer, ICLR 2017",
)
class AttentionTransferLoss(_PairedDistillationLoss):
    r"""Attention transfer (AT): match normalised spatial attention maps of a feature pair.

    For a feature map :math:`A \in \mathbb R^{C \times P}` (P spatial positions), the attention
    map and its normalisation are

    .. math::
        Q_j = \frac1C \sum_{c} |A_{c,j}|^p, \qquad q = \frac{Q}{\max(\|Q\|_2, 10^{-12})},
        \qquad \ell_i = \frac{\beta}{2}\, \frac1P \sum_j (q_{s,ij} - q_{t,ij})^2

    This is the authors' code (``at_loss``: squared difference of the normalised maps, averaged,
    times :math:`\beta/2`); the paper's text writes the :math:`\ell_2` distance itself. The mean
    over channels does not change :math:`q`. Student and teacher may differ in channels but not
    in spatial size. Several layers: one loss per pair, summed by the pipeline.

    Args:
        p: the exponent :math:`p > 0`; 2 (paper).
        beta: :math:`\beta \ge 0`; 1000 (paper's code, ``--beta 1e3``).

    Context: ``teacher_features`` (N, C_t, *d), same N and *d as ``input``; detached inside.

    Shape: input (N, C, *d) with at least one spatial dim; target not used.
    """

    input_kind: ClassVar[str] = "features"
    teacher_keys = ("teacher_features",)
    min_spatial_dims: ClassVar[int] = 1

    def __init__(
        self,
        p: float = 2.0,
        beta: float = 1000.0,
        *,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.p = check_positive(p, "p")
        self.beta = check_positive(beta, "beta", allow_zero=True)

    def attention(self, x: Tensor) -> Tensor:
        """The normalised attention map q (N, P) of a feature map (N, C, *d)."""
        q = x.abs().pow(self.p).mean(1).reshape(x.shape[0], -1)
        return q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)

    def per_sample(self, input: Tensor, target: Any, teacher_features: Tensor) -> PerSample:
        s, t = self.pair(
            input, target, "teacher_features", teacher_features, min_ndim=3, same_shape=False
        )
        if t.ndim != s.ndim or t.shape[2:] != s.shape[2:]:
            raise ValueError(
                "`teacher_features` must have the student's batch and spatial size (channels may "
                f"differ): `input` has shape {tuple(input.shape)} but `teacher_features` has "
                f"shape {tuple(teacher_features.shape)}."
            )
        diff = self.attention(s) - self.attention(t)
        return PerSample(self.beta / 2.0 * diff.pow(2).mean(1))

    def extra_repr(self) -> str:
        return f"p={self.p}, beta={self.beta}, {super().extra_repr()}"


def _rkd_distances(x: Tensor) -> Tensor:
    """Pairwise distances (N, N) divided by their mean over pairs i != j."""
    n = x.shape[0]
    d = torch.linalg.vector_norm(x[:, None, :] - x[None, :, :], dim=2)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    mean = (d * off).sum() / max(n * (n - 1), 1)
    return d / mean.clamp_min(torch.finfo(d.dtype).tiny)


def _rkd_angles(x: Tensor) -> Tensor:
    """cos of the angle at vertex i between j and k: (N, N, N), 0 where j or k equals i."""
    e = x[None, :, :] - x[:, None, :]  # e[i, j] = x_j - x_i
    e = e / torch.linalg.vector_norm(e, dim=2, keepdim=True).clamp_min(1e-12)
    return torch.bmm(e, e.transpose(1, 2))


@register_loss(
    "rkd",
    family="distillation",
    paper="Park, Kim, Lu, Cho, Relational Knowledge Distillation, CVPR 2019",
)
class RKDLoss(_PairedDistillationLoss):
    r"""Relational KD (RKD): match the batch's distance and angle structure, with a Huber loss.

    With :math:`h` the Huber loss (:math:`\delta = 1`, ``smooth_l1``), the distance potential
    :math:`\psi_D(i, j) = \|x_i - x_j\| / \mu` (:math:`\mu` the mean distance over pairs
    :math:`i \ne j` of the batch) and the angle potential
    :math:`\psi_A(i, j, k) = \langle e_{ij}, e_{ik}\rangle`,
    :math:`e_{ij} = (x_j - x_i)/\|x_j - x_i\|` (0 when :math:`j = i`):

    .. math::
        \ell_i = \frac{w_D}{N} \sum_{j} h\big(\psi^s_D(i,j) - \psi^t_D(i,j)\big)
               + \frac{w_A}{N^2} \sum_{j,k} h\big(\psi^s_A(i,j,k) - \psi^t_A(i,j,k)\big)

    Per sample this is the **per-anchor row mean** (anchor :math:`i`, the angle's vertex); the
    mean over anchors is the batch objective of the official code and mdistiller, which
    average the Huber loss over the full :math:`N \times N` and :math:`N \times N \times N`
    tensors (diagonal terms are 0 on both sides). Every value depends on the whole batch
    (``batch_statistic``); a batch of one gives 0, the angle term needs N >= 3 to be non-zero.
    Features are flattened per sample; student and teacher widths may differ. Memory is
    :math:`O(N^2 D + N^3)` (``angle_weight=0`` skips the angle term and its :math:`N^3`).

    Args:
        distance_weight: :math:`w_D \ge 0`; 25 (paper, and mdistiller / official code).
        angle_weight: :math:`w_A \ge 0`; 50 (same sources).

    Context: ``teacher_features`` (N, *); detached inside.

    Shape: input (N, *) embeddings or feature maps; target not used.
    """

    input_kind: ClassVar[str] = "features"
    teacher_keys = ("teacher_features",)
    batch_statistic: ClassVar[bool] = True

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        *,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.distance_weight = check_positive(distance_weight, "distance_weight", allow_zero=True)
        self.angle_weight = check_positive(angle_weight, "angle_weight", allow_zero=True)

    def per_sample(self, input: Tensor, target: Any, teacher_features: Tensor) -> PerSample:
        s, t = self.pair(input, target, "teacher_features", teacher_features, same_shape=False)
        n = s.shape[0]
        s, t = s.reshape(n, -1), t.reshape(n, -1)
        with _no_autocast(s):
            values = self.distance_weight * F.smooth_l1_loss(
                _rkd_distances(s), _rkd_distances(t), reduction="none"
            ).mean(1)
            if self.angle_weight:
                angle = F.smooth_l1_loss(_rkd_angles(s), _rkd_angles(t), reduction="none")
                values = values + self.angle_weight * angle.reshape(n, -1).mean(1)
        return PerSample(values)

    def extra_repr(self) -> str:
        return (
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
            f"{super().extra_repr()}"
        )


@register_loss(
    "margin_mse",
    family="distillation",
    paper="Hofstätter, Althammer, Schröder, Sertkan, Hanbury, Improving Efficient Neural Ranking "
    "Models with Cross-Architecture Knowledge Distillation, arXiv:2010.02666 (2020)",
)
class MarginMSELoss(_PairedDistillationLoss):
    r"""Margin-MSE: distil the score margin between a positive and negatives, not the scores.

    For a query with student scores :math:`s_0` (the positive) and :math:`s_1 \dots s_P`
    (negatives) and teacher scores :math:`t_0 \dots t_P`:

    .. math::
        \ell = \frac1P \sum_{j=1}^{P} \big((s_0 - s_j) - (t_0 - t_j)\big)^2

    :math:`P = 1` is the paper's loss, MSE of :math:`s(q,p^+) - s(q,p^-)`; it is invariant to a
    shift of the teacher's scores (not to their scale, which the student must then match). The
    use for re-ID (a gallery positive and negatives per anchor) is this library's extension.

    Context: ``teacher_scores`` (N, 1 + P); detached inside.

    Shape: input (N, 1 + P) with P >= 1, column 0 the positive; target not used.
    """

    input_kind: ClassVar[str] = "scores"
    teacher_keys = ("teacher_scores",)

    def per_sample(self, input: Tensor, target: Any, teacher_scores: Tensor) -> PerSample:
        s, t = self.pair(input, target, "teacher_scores", teacher_scores)
        if s.ndim != 2 or s.shape[1] < 2:
            raise ValueError(
                "`input` must be scores of shape (N, 1 + P) (column 0 the positive, P >= 1 "
                f"negatives); got shape {tuple(input.shape)}."
            )
        margins_s = s[:, :1] - s[:, 1:]
        margins_t = t[:, :1] - t[:, 1:]
        return PerSample((margins_s - margins_t).pow(2).mean(1))


@register_loss(
    "regression_distillation",
    family="distillation",
    paper="Fard, Mahoor, Facial Landmark Points Detection Using Knowledge Distillation-Based "
    "Neural Networks, CVIU 2022 (tolerant and tough teachers; title from memory, verify)",
)
class RegressionDistillationLoss(_PairedDistillationLoss):
    r"""Regression distillation: MSE or L1 to one teacher's outputs, or a weighted sum over several.

    .. math::
        \ell_i = \sum_{m=1}^{M} w_m\, \frac1D \sum_{j=1}^{D} \rho\big(s_{ij} - t_{m,ij}\big),
        \qquad \rho(u) = u^2 \ (\text{"mse"}) \text{ or } |u| \ (\text{"l1"}),
        \quad \textstyle\sum_m w_m = 1

    over the :math:`D` outputs of a sample (landmark coordinates, boxes, depth values). This is
    the generic :math:`\sum_m w_m D_m` of multi-teacher regression KD with :math:`D_m` the MSE or
    L1; the landmark paper's own assistive, teacher-dependent loss shaping is not implemented.

    Args:
        distance: ``"mse"`` (default) or ``"l1"``.
        teacher_weights: :math:`w` (M,), normalised to sum to 1; None (default): one teacher and
            ``teacher_outputs`` has ``input``'s shape. Given: ``teacher_outputs`` stacks the M
            teachers first, ``(M, *input.shape)``.

    Context: ``teacher_outputs``; detached inside.

    Shape: input (N, *) predictions; target not used (the task loss against the ground truth
    is a separate pipeline term).
    """

    input_kind: ClassVar[str] = "predictions"
    teacher_keys = ("teacher_outputs",)
    DISTANCES = ("mse", "l1")

    def __init__(
        self,
        distance: str = "mse",
        teacher_weights: Sequence[float] | None = None,
        *,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.distance = check_choice(distance, self.DISTANCES, "distance")
        self.teacher_weights = (
            None
            if teacher_weights is None
            else _normalised_weights(
                teacher_weights, len(teacher_weights), "teacher_weights"
            ).tolist()
        )

    def per_sample(self, input: Tensor, target: Any, teacher_outputs: Tensor) -> PerSample:
        self.check_input(input)
        self.check_unused_target(target, input.shape[0])
        if self.teacher_weights is None:
            stack = self.teacher(teacher_outputs, "teacher_outputs", input)[None]
            w = [1.0]
        else:
            stack = self.teacher(teacher_outputs, "teacher_outputs", input, same_shape=False)
            m = len(self.teacher_weights)
            if stack.shape != (m, *input.shape):
                raise ValueError(
                    f"`teacher_outputs` must stack the {m} teachers as (M, *input.shape): "
                    f"`input` has shape {tuple(input.shape)} but `teacher_outputs` has shape "
                    f"{tuple(stack.shape)}."
                )
            w = self.teacher_weights
        dtype = _common_dtype(input, stack)
        s, stack = input.to(dtype), stack.to(dtype)
        n = s.shape[0]
        total = None
        for i, wi in enumerate(w):
            u = (s - stack[i]).reshape(n, -1)
            d = (u.pow(2) if self.distance == "mse" else u.abs()).mean(1)
            total = wi * d if total is None else total + wi * d
        return PerSample(total)

    def extra_repr(self) -> str:
        return (
            f"distance={self.distance!r}, teacher_weights={self.teacher_weights}, "
            f"{super().extra_repr()}"
        )
