"""MIP loss (SPOCKMIP): a base loss on the volume plus the same loss on its max projections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor

from .._checks import check_int, check_positive, check_tensor
from .._reduce import PerSample
from ..registry import loss_info, register_loss
from .segmentation._dense import DenseLoss

__all__ = ["MIPLoss"]

#: The dense options the MIP loss passes on to both copies of its base loss.
_DENSE_OPTIONS = ("ignore_index", "reduce_over", "empty_target")


@register_loss(
    "mip",
    family="topology",
    paper="Radhakrishna et al., SPOCKMIP: Segmentation of Vessels in MRAs with Enhanced "
    "Continuity using Maximum Intensity Projection as Loss, arXiv 2407.08655, 2024",
)
class MIPLoss(DenseLoss):
    r"""A dense base loss on the prediction plus the same loss on its maximum intensity
    projections, for vessel continuity.

    With probabilities :math:`P`, target :math:`L` (one-hot per class), a base loss
    :math:`\mathcal{L}`, projection axes :math:`A` and :math:`\max_a` the maximum over spatial
    axis :math:`a`:

    .. math::
        \ell = \mathcal{L}(P, L) + \lambda \sum_{a \in A}
               \mathcal{L}\bigl(\max_a P,\; \max_a L\bigr).

    A vessel broken in the volume but continuous in a projection of the target costs twice, and
    a projection sees every slice at once. SPOCKMIP uses the slice axis only (``axes=[0]`` for
    ``(N, C, D, H, W)``, "single axis") or all three (the default, "multi-axis", their best
    result); in 2-D the projections are 1-D profiles. The paper does not state which loss it
    projects (METHODS 7.6 marks it for verification), so ``base`` is any registered dense loss
    (Dice by default); each is built with the given options.

    Projections are taken of the activated probabilities and of the one-hot target, per channel.
    A projected target of several classes is no longer one class per pixel, and a projected
    softmax is no longer a distribution, so the projection term runs its base loss in
    ``"multilabel"`` mode on probabilities (``from_logits=False``) whatever the volume's mode.
    Ignored pixels are zeroed in both before the maximum (a column of ignored pixels projects to
    0 in both, an ignored pixel never wins a maximum over a kept one).

    Args:
        base: a registered dense loss name; ``"dice"`` (METHODS 7.6: the base is not stated).
        base_kwargs: options of the base loss (both copies), e.g. ``{"smooth_nr": 1.0}``.
        axes: the spatial axes to project along, 0-based over the spatial dims; ``None``
            (default) projects along every spatial axis.
        projection_weight: :math:`\lambda`; 1 (the paper adds the terms).
        mode, from_logits, include_background, ignore_index, reduce_over, empty_target: the
            dense contract, see :mod:`lightning_losses.losses.segmentation._dense`; passed to
            the volume term, and (but ``mode`` / ``from_logits``) to the projection terms.

    Shape: input (N, C, H, W) or (N, C, D, H, W) logits; target (N, *spatial) class indices or
    (N, C, *spatial) (see ``mode``); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = MIPLoss(mode="binary", axes=[0])  # SPOCKMIP's single (slice) axis
        >>> x, y = torch.randn(2, 1, 16, 32, 32), torch.randint(0, 2, (2, 16, 32, 32))
        >>> loss(x, y)  # doctest: +SKIP
    """

    min_spatial_dims: ClassVar[int] = 2

    def __init__(
        self,
        *,
        base: str = "dice",
        base_kwargs: Mapping[str, Any] | None = None,
        axes: Sequence[int] | None = None,
        projection_weight: float = 1.0,
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
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        info = loss_info(base)
        if not issubclass(info.cls, DenseLoss) or info.cls.context:
            raise ValueError(
                f"`base` must name a dense loss without context (dice, tversky, jaccard, ...); "
                f"got {base!r} ({info.cls.__name__})."
            )
        kwargs = dict(base_kwargs or {})
        clash = [k for k in kwargs if k in ("mode", "from_logits", "reduction", *_DENSE_OPTIONS)]
        if clash:
            raise ValueError(
                f"`base_kwargs` must not set {clash}: give them to the MIP loss itself, which "
                "passes them to both terms."
            )
        shared = {k: getattr(self, k) for k in _DENSE_OPTIONS}
        self.base = base
        self.volume = info.cls(
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            validate_args=validate_args,
            **shared,
            **kwargs,
        )
        # the projections: channels already chosen, probabilities already activated
        projected = {**shared, "ignore_index": None}
        self.projection = info.cls(
            mode="multilabel", from_logits=False, include_background=True, **projected, **kwargs
        )
        self.axes = None if axes is None else tuple(check_int(a, "axes", 0) for a in axes)
        if self.axes is not None and not self.axes:
            raise ValueError("`axes` must name at least one spatial axis, or be None for all.")
        self.projection_weight = check_positive(
            projection_weight, "projection_weight", allow_zero=True
        )

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        check_tensor(input, "input")
        if input.ndim not in (4, 5):
            raise ValueError(
                f"`input` of {type(self).__name__} must be (N, C, H, W) or (N, C, D, H, W) logits; "
                f"got shape {tuple(input.shape)}."
            )
        spatial = tuple(input.shape[2:])
        axes = tuple(range(len(spatial))) if self.axes is None else self.axes
        bad = [a for a in axes if a >= len(spatial)]
        if bad:
            raise ValueError(
                f"`axes` must be spatial axes in [0, {len(spatial) - 1}] for input of shape "
                f"{tuple(input.shape)}; got {list(axes)}."
            )
        volume = self.volume.sample_losses(input, target)
        d = self.prepare(input, target)
        n, c = d.probs.shape[:2]
        p = d.probs.reshape(n, c, *spatial)
        g = d.target.reshape(n, c, *spatial)
        total = volume.values
        valid = volume.valid
        for a in axes:
            term = self.projection.sample_losses(p.amax(2 + a), g.amax(2 + a))
            total = total + self.projection_weight * term.values
            if term.valid is not None:
                valid = term.valid if valid is None else valid & term.valid
        return PerSample(total, valid)

    def extra_repr(self) -> str:
        return (
            f"base={self.base!r}, axes={self.axes}, projection_weight={self.projection_weight}, "
            f"{super().extra_repr()}"
        )
