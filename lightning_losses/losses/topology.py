"""Topology losses for thin structures on the dense contract: clDice and Skeleton Recall.

Both are dense losses (:mod:`lightning_losses.losses.segmentation._dense`): logits
``(N, C, H, W)`` or ``(N, C, D, H, W)``, the three modes, ``ignore_index``, ``reduce_over``,
``empty_target`` and one value per image. Their skeletons come from
:mod:`lightning_losses.topology`: clDice skeletonises on the fly with a pluggable
:class:`~lightning_losses.topology.Skeletonizer`; Skeleton Recall reads a ground-truth skeleton
that :class:`~lightning_losses.topology.SkeletonTransform` computed once in the data pipeline.

Channel 0 is left out by default in multiclass mode only (``include_background=None``): a
skeleton of the background is meaningless, but binary and multilabel channels are all
foreground. Any channel choice is available through ``include_background``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from .._checks import check_int, check_positive, check_range, check_tensor
from .._reduce import PerSample
from ..registry import register_loss
from ..topology.soft_skeleton import Skeletonizer, SoftSkeletonizer
from .segmentation._dense import DenseInput, DenseLoss, prepare_dense, safe_ratio

__all__ = ["ClDiceLoss", "SkeletonRecallLoss"]


def _foreground_default(include_background: bool | None, mode: str) -> bool:
    return mode != "multiclass" if include_background is None else bool(include_background)


def _check_image_dims(input: Tensor, loss: str) -> None:
    check_tensor(input, "input")
    if input.ndim not in (4, 5):
        raise ValueError(
            f"`input` of {loss} must be (N, C, H, W) or (N, C, D, H, W) logits (skeletons are "
            f"2-D or 3-D); got shape {tuple(input.shape)}."
        )


class _TopologyLoss(DenseLoss):
    """The dense options with the foreground-channel default of this module."""

    min_spatial_dims: ClassVar[int] = 2

    def __init__(self, *, mode: str, include_background: bool | None, **dense: Any) -> None:
        super().__init__(
            mode=mode, include_background=_foreground_default(include_background, mode), **dense
        )

    def total(self, x: Tensor) -> Tensor:
        """Sum of ``(N, C, S)`` over pixels, per image ``(N, C)`` or over the batch ``(1, C)``."""
        if self.reduce_over == "image":
            return x.sum(2)
        return x.sum((0, 2)).unsqueeze(0)

    def masked(self, d: DenseInput, x: Tensor) -> Tensor:
        return x if d.mask is None else x * d.mask


@register_loss(
    "cldice",
    family="topology",
    paper="Shit et al., clDice - a Novel Topology-Preserving Loss Function for Tubular Structure "
    "Segmentation, CVPR 2021",
)
class ClDiceLoss(_TopologyLoss):
    r"""Soft Dice mixed with soft clDice, per image and class, averaged over classes.

    With probabilities :math:`P` and target :math:`L` of one class in one image, soft skeletons
    :math:`S_P = \mathrm{skel}(P)`, :math:`S_L = \mathrm{skel}(L)` and smoothing :math:`s`:

    .. math::
        T_{prec} = \frac{\sum S_P L + s}{\sum S_P + s},\qquad
        T_{sens} = \frac{\sum S_L P + s}{\sum S_L + s},\qquad
        \mathrm{clDice} = \frac{2\,T_{prec}\,T_{sens}}{T_{prec} + T_{sens}},

    .. math::
        D = \frac{2 \sum P L + s}{\sum P + \sum L + s},\qquad
        \ell = (1 - \alpha)\,(1 - D) + \alpha\,(1 - \mathrm{clDice}).

    The skeleton is the soft morphological one of
    :func:`~lightning_losses.topology.soft_skeleton` with ``num_iter`` iterations, honoured as
    given (the reference code ignores its ``iter_`` argument and runs 10, its issue #31), or any
    :class:`~lightning_losses.topology.Skeletonizer` (for example the topology-preserving
    :class:`~lightning_losses.topology.SimplePointSkeletonizer`). Input comes first, then the
    target (MONAI's former ``(y_true, y_pred)`` order is a pitfall, METHODS.md).

    The paper defines clDice for one foreground class. With several, this takes the mean of
    per-class values, as the Dice term does; the reference code and MONAI's
    ``SoftDiceclDiceLoss`` pool all foreground channels into one ratio, and MONAI adds
    :math:`10^{-4}` to the harmonic mean's denominator. With one foreground channel they agree
    (tested).

    Ignored pixels (``ignore_index``) are zeroed in the prediction and the target before
    skeletonisation and left out of every sum; unlike the region losses, a skeleton depends on
    the neighbourhood, so ignoring is not the same as slicing the pixels away.

    Args:
        alpha: weight :math:`\alpha \in [0, 1]` of the clDice term; 0.5 (paper's experiments,
            reference code).
        num_iter: skeleton iterations :math:`k`; 3 (reference code's default, METHODS 7.1).
            It should reach the largest structure radius in pixels; memory grows with it.
        smooth: :math:`s` in every ratio; 1 (reference code; MONAI's ``smooth_nr/smooth_dr``).
        skeletonizer: a :class:`~lightning_losses.topology.Skeletonizer` used instead of the
            soft skeleton (``num_iter`` then does not apply).
        include_background: ``None`` (default) leaves out channel 0 in multiclass mode and
            keeps every channel in binary and multilabel mode; True / False as in the dense
            contract.
        mode, from_logits, ignore_index, reduce_over, empty_target: the dense contract, see
            :mod:`lightning_losses.losses.segmentation._dense`.

    Shape: input (N, C, H, W) or (N, C, D, H, W) logits; target (N, *spatial) class indices or
    (N, C, *spatial) one-hot / soft (see ``mode``); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = ClDiceLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 64, 64), torch.randint(0, 2, (2, 64, 64)))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        num_iter: int = 3,
        smooth: float = 1.0,
        skeletonizer: Skeletonizer | None = None,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            mode=mode,
            include_background=include_background,
            from_logits=from_logits,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.alpha = check_range(alpha, "alpha", 0.0, 1.0)
        self.num_iter = check_int(num_iter, "num_iter", 0)
        self.smooth = check_positive(smooth, "smooth", allow_zero=True)
        if skeletonizer is not None and not callable(skeletonizer):
            raise TypeError(
                "`skeletonizer` must be a callable on probabilities (N, C, *spatial); got "
                f"{type(skeletonizer).__name__}."
            )
        self.skeletonizer = SoftSkeletonizer(num_iter) if skeletonizer is None else skeletonizer

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        _check_image_dims(input, type(self).__name__)
        d = self.prepare(input, target)
        n, c = d.probs.shape[:2]
        spatial = input.shape[2:]
        p, g = d.probs, d.target
        skel_p = self.skeletonizer(p.reshape(n, c, *spatial)).reshape(n, c, -1)
        skel_g = self.skeletonizer(g.reshape(n, c, *spatial)).reshape(n, c, -1)
        skel_p, skel_g = self.masked(d, skel_p), self.masked(d, skel_g)
        s = self.smooth
        t_prec = (self.total(skel_p * g) + s) / (self.total(skel_p) + s)
        t_sens = (self.total(skel_g * p) + s) / (self.total(skel_g) + s)
        cl_dice = safe_ratio(2 * t_prec * t_sens, t_prec + t_sens)
        target_sum = self.total(g)
        dice = safe_ratio(2 * self.total(p * g) + s, self.total(p) + target_sum + s)
        per_class = (1 - self.alpha) * (1 - dice) + self.alpha * (1 - cl_dice)
        return self.mean_over_classes(d, per_class, target_sum > 0)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, num_iter={self.num_iter}, smooth={self.smooth}, "
            f"{super().extra_repr()}"
        )


@register_loss(
    "skeleton_recall",
    family="topology",
    paper="Kirchhoff et al., Skeleton Recall Loss for Connectivity Conserving and Resource "
    "Efficient Segmentation of Thin Tubular Structures, ECCV 2024",
)
class SkeletonRecallLoss(_TopologyLoss):
    r"""Skeleton Recall: the soft recall of a precomputed ground-truth skeleton tube.

    With probabilities :math:`p_c` and the tube :math:`T_c` of class :math:`c` (the
    ground-truth skeleton dilated and masked by the ground truth, batch entry ``"skeleton"``,
    from :class:`~lightning_losses.topology.SkeletonTransform`) over one image's pixels:

    .. math::
        R_c = \frac{\sum p_c\,T_c + \varepsilon}{\sum T_c + \varepsilon},\qquad
        \ell = \frac{1}{C} \sum_c (1 - R_c).

    The reference returns :math:`-\frac{1}{C}\sum_c R_c` (nnU-Net's negative convention);
    :math:`1 - R` has the same gradient and stays non-negative. The paper adds it to the
    segmentation loss with weight :math:`\lambda = 1`: CE (or CE + Dice)
    :math:`+\ \lambda\,\ell`, as two terms of the training loss. The skeleton costs one CPU
    skeletonisation per sample in the data loader and nothing on the training step.

    The loss declares the context ``"skeleton"``: :class:`~lightning_losses.LossMixin` passes the
    batch's ``"skeleton"`` entry; a direct call passes ``skeleton=``. A class whose tube is empty
    in an image has :math:`R_c = 1` (``empty_target="keep"``).

    Args:
        eps: :math:`\varepsilon`; 1e-5 (reference code's ``smooth``).
        include_background: ``None`` (default) leaves out channel 0 in multiclass mode (the
            reference drops it always) and keeps every channel in binary and multilabel mode.
        mode, from_logits, ignore_index, reduce_over, empty_target: the dense contract, see
            :mod:`lightning_losses.losses.segmentation._dense`; ``reduce_over="batch"`` is the
            reference's ``batch_dice``.

    Shape: input (N, C, H, W) or (N, C, D, H, W) logits; target and ``skeleton`` in the same
    layout, (N, *spatial) class indices or (N, C, *spatial) (see ``mode``); output (N,) with
    ``reduction="none"``.

    Example:
        >>> loss = SkeletonRecallLoss()
        >>> loss(logits, target, skeleton=batch["skeleton"])  # doctest: +SKIP
    """

    context: ClassVar[tuple[str, ...]] = ("skeleton",)

    def __init__(
        self,
        *,
        eps: float = 1e-5,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            mode=mode,
            include_background=include_background,
            from_logits=from_logits,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.eps = check_positive(eps, "eps")

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        _check_image_dims(input, type(self).__name__)
        skeleton = check_tensor(context["skeleton"], "skeleton")
        if skeleton.shape != target.shape:
            raise ValueError(
                f"`skeleton` must have the target's shape {tuple(target.shape)} (the same "
                f"layout, from SkeletonTransform); got {tuple(skeleton.shape)}."
            )
        d = self.prepare(input, target)
        # The skeleton in the target's layout, one-hot like the target (same channels kept).
        tube = prepare_dense(
            input,
            skeleton,
            mode=self.mode,
            from_logits=self.from_logits,
            include_background=self.include_background,
        ).target
        tube = self.masked(d, tube)
        tube_sum = self.total(tube)
        recall = (self.total(d.probs * tube) + self.eps) / (tube_sum + self.eps)
        return self.mean_over_classes(d, 1 - recall, tube_sum > 0)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"
