"""Soft Jaccard loss and the Jaccard metric losses on the dense contract (:mod:`._dense`)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..._checks import check_choice
from ...registry import register_loss
from ._dense import RegionSums, SmoothedRegionLoss, overlap_loss, safe_ratio, tp_fp_fn


@register_loss(
    "jaccard",
    family="segmentation",
    paper="Rahman & Wang, Optimizing Intersection-Over-Union in Deep Neural Networks for Image "
    "Segmentation, ISVC 2016",
)
class JaccardLoss(SmoothedRegionLoss):
    r"""Soft Jaccard (IoU) loss, per image and class, averaged over classes.

    .. math::
        J_c = \frac{\sum_i p_{ic} g_{ic} + s_{nr}}
                   {\sum_i p_{ic} + \sum_i g_{ic} - \sum_i p_{ic} g_{ic} + s_{dr}},
        \qquad \ell = \frac{1}{C} \sum_c (1 - J_c)
        \quad\text{or}\quad \frac{1}{C} \sum_c -\log J_c \ (\texttt{log\_loss=True}).

    This is the product form; on soft labels it is not minimised by :math:`p = g` (the
    Jaccard metric losses of :class:`JaccardMetricLoss` are). smp ``JaccardLoss`` computes its
    counts in the L1 form, so on soft labels it equals JML1, not this loss (tested); on hard
    labels they agree with ``reduce_over="batch", empty_target="zero"`` and
    ``smooth_nr = smooth_dr``.

    Args:
        smooth_nr, smooth_dr: 1e-5 each (as :class:`DiceLoss`; the paper has none).
        log_loss: the :math:`-\log J_c` form; False.
        mode, from_logits, include_background, ignore_index, reduce_over, empty_target: the
            dense contract, see :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices or (N, C, *spatial)
    one-hot / soft; output (N,) with ``reduction="none"``.

    Example:
        >>> loss = JaccardLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        log_loss: bool = False,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.log_loss = bool(log_loss)

    def class_loss(self, s: RegionSums) -> Tensor:
        tp, fp, fn = tp_fp_fn(s)
        score = safe_ratio(tp + self.smooth_nr, tp + fp + fn + self.smooth_dr)
        return overlap_loss(score, self.log_loss)


@register_loss(
    "jaccard_metric",
    family="segmentation",
    paper="Wang & Blaschko, Jaccard Metric Losses: Optimizing the Jaccard Index with Soft "
    "Labels, NeurIPS 2023",
)
class JaccardMetricLoss(SmoothedRegionLoss):
    r"""Jaccard metric losses JML1 / JML2: soft Jaccard that stays correct on soft labels.

    With :math:`x = p_{\cdot c}`, :math:`y = g_{\cdot c}` over the pixels of an image, the L1
    norms :math:`\|x\|_1 = \sum_i p_{ic}`, :math:`\|y\|_1`, :math:`\|x - y\|_1` and
    :math:`\langle x, y\rangle = \sum_i p_{ic} g_{ic}`:

    .. math::
        \mathrm{JML1}_c = 1 - \frac{\|x\|_1 + \|y\|_1 - \|x-y\|_1 + 2 s_{nr}}
                                   {\|x\|_1 + \|y\|_1 + \|x-y\|_1 + 2 s_{dr}},
        \qquad
        \mathrm{JML2}_c = 1 - \frac{\langle x, y\rangle + s_{nr}}
                                   {\langle x, y\rangle + \|x-y\|_1 + s_{dr}},

    averaged over classes (``log_loss=True`` takes :math:`-\log` of the score). Both equal the
    soft Jaccard loss on hard labels and are 0 exactly when :math:`p = g`, for soft labels too
    (label smoothing, knowledge distillation), which the product-form soft Jaccard is not. JML1
    is soft Jaccard with the counts in the L1 form (``(x + y - |x - y|)/2`` for the intersection).

    Defaults follow the authors' code (zifuwanggg/JDTLosses): ``variant="jml1"`` and the
    classes present in the target (``empty_target="skip"``, their ``classes="present"``); their
    ``per_image=False`` corresponds to ``reduce_over="batch"``, but the default here is per image
    so that ``reduction="none"`` gives one value per image. Their smoothing is 1 on the doubled
    counts; here :math:`s_{nr} = s_{dr} = 10^{-5}` as for the other region losses.

    Args:
        variant: ``"jml1"`` or ``"jml2"``.
        smooth_nr, smooth_dr: 1e-5 each.
        log_loss: the :math:`-\log` form; False.
        mode, from_logits, include_background, ignore_index, reduce_over: the dense contract.
        empty_target: ``"skip"`` (present classes, the authors' default), or see
            :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices or (N, C, *spatial)
    one-hot / soft; output (N,) with ``reduction="none"``.

    Example:
        >>> loss = JaccardMetricLoss("jml1")
        >>> soft = torch.softmax(torch.randn(2, 3, 8, 8), 1)  # e.g. a teacher's prediction
        >>> loss(torch.randn(2, 3, 8, 8), soft)  # doctest: +SKIP
    """

    VARIANTS: ClassVar[tuple[str, ...]] = ("jml1", "jml2")
    needs_difference: ClassVar[bool] = True

    def __init__(
        self,
        variant: str = "jml1",
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        log_loss: bool = False,
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
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.variant = check_choice(variant, self.VARIANTS, "variant")
        self.log_loss = bool(log_loss)

    def class_loss(self, s: RegionSums) -> Tensor:
        if self.variant == "jml1":
            tp, fp, fn = tp_fp_fn(s)  # L1 form: s.difference is set
            score = safe_ratio(tp + self.smooth_nr, tp + fp + fn + self.smooth_dr)
        else:
            score = safe_ratio(
                s.intersection + self.smooth_nr, s.intersection + s.difference + self.smooth_dr
            )
        return overlap_loss(score, self.log_loss)
