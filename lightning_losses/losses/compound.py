"""A weighted sum of registered losses, with deep supervision, scheduled weights and late terms.

:class:`CompoundLoss` is the one way to combine losses in this library (cross-entropy + Dice,
a region loss + the boundary loss on a schedule, clDice switched on late in training): each term
is computed per sample, weighted and summed per sample, so ``reduction="none"`` gives ``(N,)``
and sample weights, InfoBatch and the DRO callbacks act on the total. Each term's value is kept
by name for logging (:attr:`CompoundLoss.last_terms`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_number, check_range, check_tensor
from .._reduce import PerSample, reduce_loss
from ..registry import build_loss, register_loss
from ._base import CALL_CONTEXT, Loss

__all__ = ["CompoundLoss", "LinearSchedule", "deep_supervision_weights", "resize_target"]

#: A term's weight as a function of the epoch (a float epoch for a per-step schedule).
Schedule = Callable[[float], float]


class LinearSchedule:
    r"""A weight that moves linearly from ``start`` to ``end`` over ``epochs`` epochs.

    .. math::
        s(e) = \mathrm{start} + (\mathrm{end} - \mathrm{start})\,
               \min\!\Bigl(1, \max\!\bigl(0, \tfrac{e - \mathrm{begin}}{\mathrm{epochs}}\bigr)\Bigr)

    The boundary loss's rebalancing (Kervadec et al., MIDL 2019: the region weight
    :math:`\alpha` starts at 1 and drops by 0.01 per epoch down to 0.01, the boundary term gets
    :math:`1 - \alpha`) is ``LinearSchedule(1.0, 0.01, 99)`` on the region term and
    ``LinearSchedule(0.0, 0.99, 99)`` on the boundary term. A float epoch (``epoch +
    batch / batches``) gives a per-step schedule.
    """

    def __init__(self, start: float, end: float, epochs: float, begin: float = 0.0) -> None:
        self.start = check_number(start, "start")
        self.end = check_number(end, "end")
        self.epochs = check_number(epochs, "epochs")
        if self.epochs <= 0:
            raise ValueError(f"`epochs` of a schedule must be > 0; got {epochs!r}.")
        self.begin = check_number(begin, "begin")

    def __call__(self, epoch: float) -> float:
        t = min(1.0, max(0.0, (float(epoch) - self.begin) / self.epochs))
        return self.start + (self.end - self.start) * t

    def __repr__(self) -> str:
        return (
            f"LinearSchedule(start={self.start}, end={self.end}, epochs={self.epochs}, "
            f"begin={self.begin})"
        )


def _schedule(spec: Any, name: str) -> Schedule:
    if isinstance(spec, Mapping):  # from a config: {"start": 1.0, "end": 0.01, "epochs": 99}
        try:
            return LinearSchedule(**spec)
        except TypeError as err:
            raise ValueError(
                f"`schedules[{name!r}]` must be a callable epoch -> weight or a mapping of "
                f"LinearSchedule arguments (start, end, epochs, begin); got {dict(spec)}: {err}."
            ) from None
    if not callable(spec):
        raise TypeError(
            f"`schedules[{name!r}]` must be a callable epoch -> weight or a mapping of "
            f"LinearSchedule arguments; got {type(spec).__name__}."
        )
    return spec


def deep_supervision_weights(n: int) -> list[float]:
    r"""nnU-Net's deep-supervision weights: :math:`v_k \propto 2^{-k}` for output :math:`k`
    (0 = full resolution), normalised to sum to 1."""
    raw = [0.5**k for k in range(n)]
    total = sum(raw)
    return [r / total for r in raw]


def resize_target(target: Tensor, size: Sequence[int], *, dense: bool) -> Tensor:
    """``target`` resized to the spatial ``size`` of a side output.

    Class indices (integer or bool, ``(N, *spatial)`` or ``(N, 1, *spatial)``) by nearest
    neighbour, so labels (``ignore_index`` too) stay labels, as nnU-Net's order-0 resampling of
    its deep-supervision targets; float targets by area averaging (``adaptive_avg_pool``), so
    one-hot and soft targets stay distributions. ``dense`` says whether dim 1 is a channel dim.
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-len(size) :]) == size:
        return target
    x = target if dense else target.unsqueeze(1)
    if target.is_floating_point():
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(size) - 1]
        out = pool(x, size)
    else:
        out = F.interpolate(x.to(torch.float32), size=size, mode="nearest").to(target.dtype)
    return out if dense else out.squeeze(1)


def _build_terms(
    terms: Mapping[str, Any] | Sequence[str], validate_args: bool
) -> dict[str, nn.Module]:
    if isinstance(terms, str):
        terms = [terms]
    if not isinstance(terms, Mapping):
        names = list(terms)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"`terms` names each loss once (give it a weight); got {duplicates}.")
        terms = {n: None for n in names}
    if not terms:
        raise ValueError("`terms` must hold at least one loss; got none.")
    built: dict[str, nn.Module] = {}
    for name, spec in terms.items():
        if isinstance(spec, nn.Module):
            if not isinstance(spec, Loss):
                raise TypeError(
                    f"`terms[{name!r}]` must be a lightning_losses Loss (one value per sample); "
                    f"got {type(spec).__name__}."
                )
            built[name] = spec
        elif spec is None or isinstance(spec, Mapping):
            kwargs = {"validate_args": validate_args, **dict(spec or {})}
            built[name] = build_loss(name, **kwargs)
        else:
            raise TypeError(
                f"`terms[{name!r}]` must be a built loss or a mapping of its options; got "
                f"{type(spec).__name__}."
            )
    return built


def _per_term(value: Any, names: Sequence[str], arg: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"`{arg}` must map term names to values; got {type(value).__name__}.")
    stray = [k for k in value if k not in names]
    if stray:
        raise ValueError(f"`{arg}` is keyed by the term names {list(names)}; got {stray}.")
    return dict(value)


@register_loss(
    "compound",
    family="segmentation",
    paper="Lee et al., Deeply-Supervised Nets, AISTATS 2015; Isensee et al., nnU-Net: a "
    "self-configuring method for deep learning-based biomedical image segmentation, Nature "
    "Methods 2021 (deep-supervision weights)",
)
class CompoundLoss(Loss):
    r"""Weighted sum of loss terms per sample, over the main output and its side outputs.

    With terms :math:`\ell_t`, fixed weights :math:`w_t`, schedules :math:`s_t(e)` (1 when
    none) at epoch :math:`e`, start epochs :math:`e_t` (``activate_when``), and outputs
    :math:`\hat y^{(0)}` (full resolution) to :math:`\hat y^{(K)}` with weights :math:`v_k` and
    targets :math:`y^{(k)}` resized to each output:

    .. math::
        \ell_i = \sum_t \mathbb{1}[e \ge e_t]\; w_t\, s_t(e)
                 \sum_{k=0}^{K} v_k\, \ell_t\bigl(\hat y^{(k)}_i, y^{(k)}_i\bigr).

    **Terms** are registered loss names (built with their defaults, or with the options in a
    mapping), or built losses. Each keeps its own options and reduces over pixels itself; the
    sum is per sample. After each call :attr:`last_terms` holds every active term's detached,
    unweighted batch mean by name (``{stage}/loss/{name}`` in the segmentation recipe); a term
    not yet active is not computed and not listed.

    **Deep supervision.** ``input`` may be a list or tuple of outputs, the full-resolution one
    first. Targets are resized to each side output (:func:`resize_target`: nearest neighbour for
    class indices, as nnU-Net; area averaging for one-hot / soft targets). The output weights
    :math:`v_k` default to nnU-Net's :math:`2^{-k}`, normalised to sum to 1
    (:func:`deep_supervision_weights`); BASNet weights its outputs equally (``[1.0] * K``).
    Terms that read context (a skeleton, a distance map, computed at full resolution) are
    applied to the full-resolution output only.

    **Schedules** map a term to a callable ``epoch -> factor`` or to the arguments of
    :class:`LinearSchedule`; the factor multiplies :math:`w_t`. **activate_when** maps an
    expensive term to the fraction of training after which it is computed (TopoMortar starts
    slow topology losses at 0.7): active from epoch :math:`\lceil f \cdot \text{max\_epochs}
    \rceil`. ``max_epochs`` is set by the segmentation module from the trainer when left None.
    With either option the loss declares the context ``"epoch"``, which
    :class:`~lightning_losses.LossMixin` fills from the trainer.

    Args:
        terms: names, or name -> options / built loss; default cross-entropy + Dice
            (METHODS 6.1's compound, :math:`\lambda_{ce} = \lambda_{dice} = 1`).
        weights: one weight per term (a sequence in term order, or a mapping); default 1 each.
        schedules: term name -> schedule (see above); default none.
        activate_when: term name -> fraction of training in [0, 1]; default none.
        max_epochs: the training length that ``activate_when`` fractions refer to.
        deep_supervision_weights: :math:`v_k` for ``K + 1`` outputs; ``None`` (default) gives
            nnU-Net's halving weights for however many outputs come.
        reduction, validate_args: as every loss; ``validate_args`` is passed to the terms built
            by name.

    Shape: input (N, C, *spatial) logits, or a sequence of them (full resolution first); target
    as the terms expect at full resolution; output (N,) with ``reduction="none"``.

    Example:
        >>> loss = CompoundLoss({"dice": {}, "boundary": {}}, schedules={
        ...     "dice": {"start": 1.0, "end": 0.01, "epochs": 99},
        ...     "boundary": {"start": 0.0, "end": 0.99, "epochs": 99}})
        >>> loss(logits, target, epoch=3, distance=batch["distance"])  # doctest: +SKIP
    """

    context: ClassVar[tuple[str, ...]] = ()
    #: the default terms (cross-entropy + Dice) are dense: the conformance suite gives a
    #: spatial dim
    min_spatial_dims: ClassVar[int] = 1

    def __init__(
        self,
        terms: Mapping[str, Any] | Sequence[str] = ("cross_entropy", "dice"),
        weights: Sequence[float] | Mapping[str, float] | None = None,
        *,
        schedules: Mapping[str, Any] | None = None,
        activate_when: Mapping[str, float] | None = None,
        max_epochs: int | None = None,
        deep_supervision_weights: Sequence[float] | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        built = _build_terms(terms, self.validate_args)
        names = list(built)
        self.terms = nn.ModuleDict(built)
        if weights is None:
            weights = [1.0] * len(names)
        if isinstance(weights, Mapping):
            weights = [float(_per_term(weights, names, "weights").get(n, 1.0)) for n in names]
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(
                f"`loss_weights` must have one weight per loss term ({len(names)}: {names}); got "
                f"{len(weights)}."
            )
        self.weights = [check_number(w, "weights") for w in weights]
        self.schedules = {
            n: _schedule(s, n) for n, s in _per_term(schedules, names, "schedules").items()
        }
        self.activate_when = {
            n: check_range(f, f"activate_when[{n!r}]", 0.0, 1.0)
            for n, f in _per_term(activate_when, names, "activate_when").items()
        }
        self.max_epochs = None if max_epochs is None else int(max_epochs)
        if deep_supervision_weights is not None:
            deep_supervision_weights = [
                check_number(v, "deep_supervision_weights") for v in deep_supervision_weights
            ]
        self.deep_supervision_weights = deep_supervision_weights
        # An instance attribute: the context depends on the terms and the options chosen.
        needs_epoch = ("epoch",) if self.schedules or self.activate_when else ()
        self.context = tuple(
            dict.fromkeys([*needs_epoch, *(c for t in built.values() for c in t.context)])
        )
        self.target_kind = _common_target_kind(built)
        self.last_terms: dict[str, Tensor] = {}

    def _check_context(self, context: dict[str, Any]) -> None:
        needed = [c for c in self.context if c in CALL_CONTEXT]
        unknown = [k for k in context if k not in needed]
        missing = [c for c in needed if c not in context]
        if unknown or missing:
            raise TypeError(
                f"the loss terms {list(self.terms)} need the context {needed}; got "
                f"{sorted(context)}."
            )

    def active(self, name: str, epoch: float | None) -> bool:
        """Whether term ``name`` is computed at ``epoch`` (``activate_when``)."""
        fraction = self.activate_when.get(name)
        if fraction is None:
            return True
        if self.max_epochs is None:
            raise ValueError(
                f"`activate_when[{name!r}]` is a fraction of training, but `max_epochs` is not "
                "set: pass `max_epochs=` (the segmentation module sets it from the trainer)."
            )
        start = fraction * self.max_epochs
        return float(epoch or 0) >= start - 1e-9 * max(1.0, start)

    def term_weight(self, name: str, epoch: float | None) -> float:
        """:math:`w_t\\,s_t(e)` of term ``name`` at ``epoch``."""
        weight = self.weights[list(self.terms).index(name)]
        schedule = self.schedules.get(name)
        return weight if schedule is None else weight * float(schedule(float(epoch or 0)))

    def output_weights(self, n: int) -> list[float]:
        if self.deep_supervision_weights is None:
            return deep_supervision_weights(n)
        if len(self.deep_supervision_weights) != n:
            raise ValueError(
                f"`deep_supervision_weights` has {len(self.deep_supervision_weights)} weights, "
                f"but `input` holds {n} outputs."
            )
        return self.deep_supervision_weights

    def per_sample(self, input: Any, target: Tensor, **context: Any) -> PerSample:
        outputs = _outputs(input)
        epoch = context.get("epoch")
        v = self.output_weights(len(outputs)) if len(outputs) > 1 else [1.0]
        total: Tensor | None = None
        valid: Tensor | None = None
        last: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            if not self.active(name, epoch):
                continue
            mine = {k: val for k, val in context.items() if k in term.context}
            # context maps are full-resolution: such terms see the main output only
            heads = outputs[:1] if mine else outputs
            term_values: Tensor | None = None
            term_valid: Tensor | None = None
            for k, (head, vk) in enumerate(zip(heads, v, strict=False)):
                y = target if k == 0 else _side_target(target, head)
                result = term.sample_losses(head, y, **mine)
                scaled = result.values if len(heads) == 1 else vk * result.values
                term_values = scaled if term_values is None else term_values + scaled
                if result.valid is not None:
                    term_valid = result.valid if term_valid is None else term_valid & result.valid
            assert term_values is not None
            if term_valid is not None:
                valid = term_valid if valid is None else valid & term_valid
            last[name] = reduce_loss(PerSample(term_values.detach(), term_valid))
            weighted = self.term_weight(name, epoch) * term_values
            total = weighted if total is None else total + weighted
        if total is None:  # every term still inactive: a zero that keeps the graph connected
            total = outputs[0].reshape(outputs[0].shape[0], -1).sum(1) * 0.0
        self.last_terms = last
        return PerSample(total, valid)

    def extra_repr(self) -> str:
        parts = [f"weights={self.weights}"]
        if self.schedules:
            parts.append(f"schedules={self.schedules}")
        if self.activate_when:
            parts.append(f"activate_when={self.activate_when}, max_epochs={self.max_epochs}")
        return ", ".join([*parts, super().extra_repr()])


def _outputs(input: Any) -> list[Tensor]:
    if isinstance(input, (list, tuple)):
        if not input:
            raise ValueError("`input` as a sequence of outputs must hold at least one tensor.")
        outs = [check_tensor(x, f"input[{i}]") for i, x in enumerate(input)]
        n = outs[0].shape[0]
        for i, x in enumerate(outs):
            if x.ndim != outs[0].ndim or x.shape[:2] != outs[0].shape[:2]:
                raise ValueError(
                    f"`input[{i}]` (a side output) must have the main output's batch size, "
                    f"channels and number of dims {tuple(outs[0].shape[:2])} + {outs[0].ndim - 2} "
                    f"spatial; got shape {tuple(x.shape)} (N = {n})."
                )
        return outs
    return [check_tensor(input, "input")]


def _side_target(target: Tensor, head: Tensor) -> Tensor:
    """The target resized to a side output's spatial size."""
    spatial = head.shape[2:]
    dense = target.ndim == head.ndim  # (N, C, *spatial) one-hot / soft or (N, 1, *spatial)
    return resize_target(target, spatial, dense=dense)


def _common_target_kind(terms: Mapping[str, nn.Module]) -> str:
    kinds = {getattr(t, "target_kind", "index") for t in terms.values()}
    return kinds.pop() if len(kinds) == 1 else "index"
