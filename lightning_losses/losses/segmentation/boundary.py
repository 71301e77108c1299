"""Boundary loss (Kervadec et al.): probabilities weighted by the ground truth's signed distance."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..._checks import check_tensor
from ..._reduce import PerSample
from ...registry import register_loss
from ._dense import DenseInput, DenseLoss, safe_ratio


def foreground_default(include_background: bool | None, mode: str) -> bool:
    """``None`` leaves channel 0 out in multiclass mode only (binary / multilabel channels are
    all foreground)."""
    return mode != "multiclass" if include_background is None else bool(include_background)


def pixel_mean(d: DenseInput, values: Tensor, reduce_over: str) -> Tensor:
    """Mean of pixel terms ``(N, C, S)`` over each image's kept pixels ``(N, C)``, or over the
    batch's kept pixels ``(1, C)``; ignored pixels (``d.mask``) are left out of sum and count."""
    n, c, s = values.shape
    if d.mask is not None:
        values = values * d.mask
        count = d.mask.expand(n, c, s)
    dims = (2,) if reduce_over == "image" else (0, 2)
    total = values.sum(dims)
    if d.mask is None:
        count_total = torch.full_like(total, float(s if reduce_over == "image" else n * s))
    else:
        count_total = count.sum(dims)
    mean = safe_ratio(total, count_total)
    return mean if reduce_over == "image" else mean.unsqueeze(0)


@register_loss(
    "boundary",
    family="segmentation",
    paper="Kervadec et al., Boundary loss for highly unbalanced segmentation, MIDL 2019",
)
class BoundaryLoss(DenseLoss):
    r"""Boundary loss: the predicted probabilities weighted by the signed distance to the
    ground-truth boundary, averaged over pixels and classes.

    With :math:`\phi_c` the signed distance map of class :math:`c`'s ground truth (negative
    inside, positive outside, 0 on the region's boundary pixels) and :math:`p_c` the
    probabilities, over the :math:`|\Omega|` pixels of one image:

    .. math::
        \ell = \frac{1}{C} \sum_c \frac{1}{|\Omega|} \sum_{q \in \Omega} \phi_c(q)\, p_c(q).

    It is the paper's integral approximation of the distance between the boundaries (their
    eq. 5): minimal when the prediction fills exactly the pixels of negative distance, and
    negative there. Use it next to a region loss; the paper weights them
    :math:`\alpha\,\ell_{region} + (1 - \alpha)\,\ell_B` with :math:`\alpha` from 1 down by
    0.01 per epoch (to 0.01): :class:`~lightning_losses.losses.compound.CompoundLoss` with
    :class:`~lightning_losses.losses.compound.LinearSchedule` weights does that
    (``recipes/configs/segmentation_boundary.yaml``).

    **Distance maps** come from the data pipeline, never from the prediction and never with
    gradient: :class:`~lightning_losses.topology.DistanceTransform` adds them to each sample as
    ``"distance"`` (SciPy's exact Euclidean distance transform, once per sample on the CPU),
    and the loss declares the context ``"distance"``, which
    :class:`~lightning_losses.LossMixin` passes from the batch. The map has the logits' layout
    ``(N, C, *spatial)`` (all channels, before ``include_background`` drops any). A class absent
    from an image has the zero map, so its term is 0 whatever the prediction (the reference
    ``one_hot2dist`` does the same): false positives of absent classes are for the region term
    to punish. Ignored pixels (``ignore_index``) are left out of the pixel mean.

    Args:
        include_background: ``None`` (default) leaves channel 0 out in multiclass mode (the
            reference's ``idc=[1]`` for two classes) and keeps every channel in binary and
            multilabel mode.
        mode, from_logits, ignore_index, reduce_over, empty_target: the dense contract, see
            :mod:`lightning_losses.losses.segmentation._dense`; ``reduce_over="batch"`` takes
            the pixel mean over the whole batch.

    Shape: input (N, C, *spatial) logits; target (N, *spatial) class indices or (N, C, *spatial)
    (see ``mode``); ``distance`` (N, C, *spatial); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = BoundaryLoss()
        >>> loss(logits, batch["mask"], distance=batch["distance"])  # doctest: +SKIP
    """

    context: ClassVar[tuple[str, ...]] = ("distance",)

    def __init__(
        self,
        *,
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
            from_logits=from_logits,
            include_background=foreground_default(include_background, mode),
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        distance = check_tensor(context["distance"], "distance")
        d = self.prepare(input, target)
        if tuple(distance.shape) != tuple(input.shape):
            raise ValueError(
                f"`distance` must have the logits' shape {tuple(input.shape)} (one signed "
                f"distance map per channel, from DistanceTransform); got "
                f"{tuple(distance.shape)}."
            )
        n, c = input.shape[:2]
        phi = distance.detach().reshape(n, c, -1).to(d.probs.dtype)
        if not self.include_background:
            phi = phi[:, 1:]
        per_class = pixel_mean(d, phi * d.probs, self.reduce_over)
        sums = d.target.sum(2) if self.reduce_over == "image" else d.target.sum((0, 2))[None]
        return self.mean_over_classes(d, per_class, sums > 0)
