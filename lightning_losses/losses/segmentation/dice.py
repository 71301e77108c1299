"""Soft Dice and generalized Dice losses on the dense contract (:mod:`._dense`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..._reduce import PerSample
from ...registry import register_loss
from ._dense import (
    DenseInput,
    RegionSums,
    SmoothedRegionLoss,
    overlap_loss,
    region_sums,
    safe_ratio,
    tp_fp_fn,
)


@register_loss(
    "dice",
    family="segmentation",
    paper="Milletari et al., V-Net: Fully Convolutional Neural Networks for Volumetric Medical "
    "Image Segmentation, 3DV 2016",
)
class DiceLoss(SmoothedRegionLoss):
    r"""Soft Dice loss, per image and class, averaged over classes.

    With soft counts :math:`TP_c = \sum_i p_{ic} g_{ic}`, :math:`FP_c = \sum_i p_{ic} - TP_c`,
    :math:`FN_c = \sum_i g_{ic} - TP_c` over the pixels :math:`i` of one image (of the batch
    with ``reduce_over="batch"``):

    .. math::
        D_c = \frac{2\,TP_c + s_{nr}}{2\,TP_c + FP_c + FN_c + s_{dr}}
            = \frac{2 \sum_i p_{ic} g_{ic} + s_{nr}}{\sum_i p_{ic} + \sum_i g_{ic} + s_{dr}},
        \qquad
        \ell = \frac{1}{C} \sum_c (1 - D_c) \quad\text{or}\quad
        \ell = \frac{1}{C} \sum_c -\log D_c \ (\texttt{log\_loss=True}).

    V-Net's denominator has squared terms :math:`\sum p^2 + \sum g^2` (``squared_pred=True``,
    as MONAI's option of that name); the default is the linear form of MONAI's default, smp and
    nnU-Net. ``soft_label=True`` takes
    :math:`TP_c = (\sum p + \sum g - \sum |p - g|)/2` instead (Wang & Blaschko, NeurIPS 2023):
    equal on hard labels, and minimised by :math:`p = g` on soft labels, where the product form
    is not.

    Agreement: equal to MONAI ``DiceLoss`` (``softmax=True, to_onehot_y=True``, same
    smoothing; ``batch=True`` for ``reduce_over="batch"``). smp ``DiceLoss`` reduces over the
    batch, zeroes classes absent from the batch and uses a single smoothing term, so it equals
    ``reduce_over="batch", empty_target="zero", smooth_nr=smooth_dr=smooth, soft_label=True``.

    Args:
        smooth_nr, smooth_dr: :math:`s_{nr}`, :math:`s_{dr}`; 1e-5 each (MONAI's defaults;
            the V-Net paper has none). Keeping both equal keeps an empty target with an empty
            prediction at loss 0; numerator-only smoothing made training collapse (MONAI #807).
        log_loss: the :math:`-\log D_c` form (smp's ``log_loss``); False.
        squared_pred: the V-Net denominator :math:`\sum p^2 + \sum g^2`; False.
        soft_label: the L1 form of the counts, for soft targets; False (not with
            ``squared_pred``).
        mode, from_logits, include_background, ignore_index, reduce_over, empty_target: the
            dense contract, see :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices or (N, C, *spatial)
    one-hot / soft (see ``mode``); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = DiceLoss(ignore_index=255)
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        log_loss: bool = False,
        squared_pred: bool = False,
        soft_label: bool = False,
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
            soft_label=soft_label,
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
        self.squared_pred = bool(squared_pred)
        if self.squared_pred and self.soft_label:
            raise ValueError(
                "`squared_pred=True` and `soft_label=True` are two different denominators; "
                "choose one."
            )

    def sums(self, d: DenseInput, *, difference: bool = False) -> RegionSums:
        s = super().sums(d, difference=difference)
        if not self.squared_pred:
            return s
        # V-Net: sum p^2 and sum g^2 stand in for sum p and sum g (FP and FN follow from them)
        squared = d._replace(probs=d.probs.square(), target=d.target.square())
        squares = region_sums(squared, self.reduce_over)
        return s._replace(prediction=squares.prediction, target=squares.target)

    def class_loss(self, s: RegionSums) -> Tensor:
        tp, fp, fn = tp_fp_fn(s)
        score = safe_ratio(2 * tp + self.smooth_nr, 2 * tp + fp + fn + self.smooth_dr)
        return overlap_loss(score, self.log_loss)


def generalized_dice_weights(target_sum: Tensor, present: Tensor, empty_target: str) -> Tensor:
    r"""Class weights :math:`w_c \propto 1/G_c^2` of each row ``(N, C)``, scaled so the largest
    is 1.

    An absent class (:math:`G_c = 0`, infinite weight) gets the row's largest finite weight
    (``empty_target="keep"``) or 0 (``"skip"``), by ``torch.where`` on tensors that carry no
    gradient: no in-place edit of a weight (MONAI #3618), and the weights never cancel, since
    absent classes still count in the denominator (MONAI #369, #6765). A row with no present
    class gets equal weights under ``"keep"`` (it is then plain Dice over all classes).
    """
    g = target_sum.clamp_min(torch.finfo(target_sum.dtype).tiny)
    raw = torch.where(present, g.reciprocal().square(), torch.zeros_like(g))
    largest = raw.amax(1, keepdim=True)
    if empty_target == "keep":
        raw = torch.where(present, raw, largest)
    # Scale-free: the ratio of weighted sums does not change, but the smoothing terms stay
    # small next to it (unscaled weights of large regions are ~1/G, comparable to 1e-5).
    scaled = raw / largest.clamp_min(torch.finfo(raw.dtype).tiny)
    if empty_target == "keep":
        scaled = torch.where(largest > 0, scaled, torch.ones_like(scaled))
    return scaled


@register_loss(
    "generalized_dice",
    family="segmentation",
    paper="Sudre et al., Generalised Dice overlap as a deep learning loss function for highly "
    "unbalanced segmentations, DLMIA 2017",
)
class GeneralizedDiceLoss(SmoothedRegionLoss):
    r"""Generalized Dice loss: Dice with inverse squared volume class weights.

    With :math:`G_c = \sum_i g_{ic}` and :math:`w_c = 1/G_c^2` per image (per batch with
    ``reduce_over="batch"``):

    .. math::
        \ell = 1 - \frac{2 \sum_c w_c \sum_i p_{ic} g_{ic} + s_{nr}}
                        {\sum_c w_c \sum_i (p_{ic} + g_{ic}) + s_{dr}}.

    An absent class has :math:`w_c = \infty`; it gets the largest finite weight of the image
    (MONAI's rule, here without in-place edits, see :func:`generalized_dice_weights`), or weight 0
    with ``empty_target="skip"`` (then an image with no present class is not valid).

    The weights are scaled so that the largest is 1. The paper's ratio has no smoothing and is
    invariant to that scale, so this changes only how much :math:`s_{nr}, s_{dr}` weigh: with
    unscaled weights (MONAI), :math:`\sum_c w_c (P_c + G_c) \approx \sum_c 2/G_c` is about
    2e-5 for a class of 1e5 voxels, the size of the default smoothing, and the loss drifts
    towards 0 whatever the prediction. With smoothing 0 both give the paper's value.

    Args:
        smooth_nr, smooth_dr: 1e-5 each (MONAI's defaults; the paper has none).
        soft_label: the L1 form of the counts (see :class:`DiceLoss`); False.
        mode, from_logits, include_background, ignore_index, reduce_over: the dense contract.
        empty_target: ``"keep"`` (largest finite weight, the default) or ``"skip"``.

    Shape: as :class:`DiceLoss`.

    Example:
        >>> loss = GeneralizedDiceLoss(include_background=False)
        >>> loss(torch.randn(2, 4, 8, 8, 8), torch.randint(0, 4, (2, 8, 8, 8)))  # doctest: +SKIP
    """

    empty_target_choices: ClassVar[tuple[str, ...]] = ("keep", "skip")

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        d = self.prepare(input, target)
        s = self.sums(d, difference=self.soft_label)
        tp, fp, fn = tp_fp_fn(s)
        present = s.present
        w = generalized_dice_weights(s.target, present, self.empty_target)
        num = 2 * (w * tp).sum(1) + self.smooth_nr
        den = (w * (2 * tp + fp + fn)).sum(1) + self.smooth_dr
        values = 1.0 - safe_ratio(num, den)
        valid = present.any(1) if self.empty_target == "skip" else None
        return self.per_sample_result(d, values, valid)
