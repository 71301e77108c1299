"""Tversky and focal Tversky losses on the dense contract (:mod:`._dense`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_positive
from ...registry import register_loss
from ._dense import RegionSums, SmoothedRegionLoss, safe_ratio, tp_fp_fn


@register_loss(
    "tversky",
    family="segmentation",
    paper="Salehi et al., Tversky loss function for image segmentation using 3D fully "
    "convolutional deep networks, MLMI 2017",
)
class TverskyLoss(SmoothedRegionLoss):
    r"""Tversky loss: Dice with separate weights on false positives and false negatives.

    With the soft counts of :class:`~lightning_losses.losses.segmentation.DiceLoss`
    (:math:`FP_c = \sum_i p_{ic}(1 - g_{ic})`, :math:`FN_c = \sum_i (1 - p_{ic}) g_{ic}`), per
    image and class:

    .. math::
        TI_c = \frac{TP_c + s_{nr}}{TP_c + \alpha\,FP_c + \beta\,FN_c + s_{dr}},
        \qquad \ell = \frac{1}{C} \sum_c (1 - TI_c).

    :math:`\alpha = \beta = 0.5` is Dice and :math:`\alpha = \beta = 1` is soft Jaccard (both
    tested). :math:`\beta > \alpha` weighs false negatives more, trading precision for recall on
    small structures.

    Agreement: equal to MONAI ``TverskyLoss`` (``softmax=True, to_onehot_y=True``, same
    :math:`\alpha, \beta` and smoothing; its defaults are 0.5 / 0.5) and, with
    ``reduce_over="batch", empty_target="zero", soft_label=True`` and
    ``smooth_nr = smooth_dr``, to smp ``TverskyLoss`` with ``gamma=1``.

    Args:
        alpha: weight :math:`\alpha` of false positives; 0.3 (the paper's best, Salehi et al.).
        beta: weight :math:`\beta` of false negatives; 0.7 (idem).
        smooth_nr, smooth_dr: 1e-5 each (MONAI's defaults; the paper has none).
        soft_label: the L1 form of the counts, for soft targets (see
            :func:`~lightning_losses.losses.segmentation.soft_tp_fp_fn`); False.
        mode, from_logits, include_background, ignore_index, reduce_over, empty_target: the
            dense contract, see :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices or (N, C, *spatial)
    one-hot / soft; output (N,) with ``reduction="none"``.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7)
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))  # doctest: +SKIP
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
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
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.beta = check_positive(beta, "beta", allow_zero=True)

    def tversky_index(self, s: RegionSums) -> Tensor:
        tp, fp, fn = tp_fp_fn(s)
        den = tp + self.alpha * fp + self.beta * fn + self.smooth_dr
        return safe_ratio(tp + self.smooth_nr, den)

    def class_loss(self, s: RegionSums) -> Tensor:
        return 1.0 - self.tversky_index(s)


@register_loss(
    "focal_tversky",
    family="segmentation",
    paper="Abraham & Khan, A Novel Focal Tversky Loss Function with Improved Attention U-Net for "
    "Lesion Segmentation, ISBI 2019",
)
class FocalTverskyLoss(TverskyLoss):
    r"""Focal Tversky loss: the Tversky loss of each class raised to the power :math:`1/\gamma`.

    .. math::
        \ell = \frac{1}{C} \sum_c (1 - TI_c)^{1/\gamma}

    with :math:`TI_c` of :class:`TverskyLoss`. **Exponent convention**: the paper's,
    :math:`1/\gamma` with :math:`\gamma = 4/3` (exponent 0.75; the authors' code,
    nabsabraham/focal-tversky-unet ``losses.py``, uses ``K.pow(1 - tversky, 0.75)``). smp's
    ``TverskyLoss(gamma=g)`` uses :math:`g` itself as the exponent, so smp's ``gamma=g`` is
    ``gamma=1/g`` here, and smp raises the *class mean* to the power while the paper (and this
    class) raise each class's term before summing; they agree for one class (tested). The paper
    sums over classes; the mean is used here so that the scale does not grow with :math:`C`.

    With an exponent below 1 the gradient grows without bound as :math:`TI_c \to 1`: a term whose
    base :math:`1 - TI_c` is below the dtype's ``eps`` (a perfectly predicted class, or an absent
    class predicted empty) counts as 0 with a zero gradient, instead of an infinite one.

    Args:
        alpha, beta: 0.3 / 0.7 (the paper's code: false negatives 0.7, false positives 0.3).
        gamma: :math:`\gamma > 0`; 4/3 (the paper). :math:`\gamma = 1` is :class:`TverskyLoss`.
        smooth_nr, smooth_dr: 1e-5 each (the paper's code uses 1).
        soft_label, mode, from_logits, include_background, ignore_index, reduce_over,
            empty_target: as :class:`TverskyLoss`.

    Example:
        >>> loss = FocalTverskyLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8)))  # doctest: +SKIP
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
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
            alpha,
            beta,
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
        self.gamma = check_positive(gamma, "gamma")

    def class_loss(self, s: RegionSums) -> Tensor:
        base = 1.0 - self.tversky_index(s)
        # below eps the term is 0 with a zero gradient; the inner where keeps pow's infinite
        # derivative at 0 out of the backward pass
        live = base > torch.finfo(base.dtype).eps
        powered = torch.where(live, base, torch.ones_like(base)).pow(1.0 / self.gamma)
        return torch.where(live, powered, torch.zeros_like(base))
