"""The base class every loss derives from: one calling convention for all families.

``loss(input, target, *, sample_weight=None, **context) -> Tensor``

A subclass implements :meth:`Loss.per_sample`, which returns one value per sample (and which
samples are valid); the reduction is applied in exactly one place, :func:`~lightning_losses._reduce.
reduce_loss`. A subclass may also implement :meth:`Loss.reduced`, the same reduction computed by
a fused kernel (``F.cross_entropy(..., reduction="mean")``); it is used when no per-sample value
is needed (no ``sample_weight``, ``reduction`` not ``"none"``) and equals the per-sample path up
to the order of the floating-point summation.

The class attributes ``input_kind``, ``target_kind`` and ``context`` declare what the loss
consumes; the registry, the :class:`~lightning_losses.LossMixin` and the tests read them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_class_counts, check_reduction
from .._reduce import PerSample, reduce_loss
from ._inputs import explain_categorical

#: Context tokens a loss may declare, and what the mixin passes for each at call time.
CALL_CONTEXT = {
    "epoch": "the current epoch (int), from trainer.current_epoch",
    "index": "dataset indices of the samples (N,), from the batch",
    "skeleton": "ground-truth skeletons, the target's layout, from the batch's 'skeleton' entry",
    "distance": "signed distance maps of the ground truth, from the batch's 'distance' entry",
    "timesteps": "diffusion timesteps of the samples (N,), from the batch's 'timesteps' entry",
}
#: Call context read from a mapping batch under the token's own name (a data transform or the
#: training step puts it there).
BATCH_CONTEXT = ("skeleton", "distance", "timesteps")
#: Context a loss receives once, before training, through a setter (kept in a buffer).
SETUP_CONTEXT = {
    "counts": "class counts (K,), from the datamodule's `class_counts`",
}


@functools.cache
def _call_context(cls: type) -> tuple[str, ...]:
    return tuple(c for c in cls.context if c in CALL_CONTEXT)


def _is_empty_batch(input: Any, target: Any) -> bool:
    """True for an input with no sample (N = 0); a target of another length is an error."""
    if not (isinstance(input, Tensor) and input.ndim > 0 and input.shape[0] == 0):
        return False
    if isinstance(target, Tensor) and target.ndim > 0 and target.shape[0] != 0:
        raise ValueError(
            f"`target` must have as many samples as the input (0, an empty batch); got shape "
            f"{tuple(target.shape)}."
        )
    return True


def _empty_values(input: Tensor) -> Tensor:
    """Per-sample values of an empty batch: shape (0,), connected to the input's graph."""
    return (input.sum() * 0).expand(0)


class Loss(nn.Module):
    """Base class: validates, calls :meth:`per_sample`, applies weights and the reduction.

    An empty batch (N = 0) is defined, not an error: ``"mean"`` and ``"sum"`` give 0 (with a
    zero gradient, so a training step still runs) and ``"none"`` gives an empty (0,) tensor.
    """

    input_kind: ClassVar[str] = "logits"
    #: "index": class indices (N, *) or soft targets (N, K, *) where the loss allows them;
    #: "multilabel": a {0, 1} target with the input's shape.
    target_kind: ClassVar[str] = "index"
    context: ClassVar[tuple[str, ...]] = ()
    #: True when a per-sample value includes a batch-level statistic (MDCA, DCA): it is then
    #: broadcast so that the mean over samples equals the batch objective, and a sample's value
    #: depends on the rest of the batch.
    batch_statistic: ClassVar[bool] = False
    registered_name: ClassVar[str] = ""

    def __init__(self, *, reduction: str = "mean", validate_args: bool = False) -> None:
        """``validate_args=True`` adds the value checks that cost a pass over the data (finite
        input, targets in range), run on the device without a host read. Shape and dtype
        checks always run, and so does the label-range check that the kernels make anyway."""
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.validate_args = bool(validate_args)

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        """Per-sample loss values (N,) and the validity mask; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_sample")

    def reduced(self, input: Tensor, target: Tensor, **context: Any) -> Tensor | None:
        """The ``"mean"`` or ``"sum"`` of :meth:`per_sample` by a faster route, or ``None``.

        Called only without ``sample_weight`` and with ``reduction`` in ``("mean", "sum")``.
        Subclasses that can reduce inside a fused kernel override it; ``None`` falls back to the
        per-sample path.
        """
        return None

    def sample_losses(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        """:meth:`per_sample` with the context and error checks of a call (what LossMixin uses)."""
        self._check_context(context)
        if _is_empty_batch(input, target):
            return PerSample(_empty_values(input))
        try:
            return self.per_sample(input, target, **context)
        except (IndexError, RuntimeError):
            self.explain_error(input, target)
            raise

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        sample_weight: Tensor | None = None,
        **context: Any,
    ) -> Tensor:
        self._check_context(context)
        if _is_empty_batch(input, target):
            # mean and sum over no sample are 0 (still connected to the graph); "none" is (0,)
            return reduce_loss(_empty_values(input), self.reduction, sample_weight)
        try:
            if sample_weight is None and self.reduction != "none":
                fused = self.reduced(input, target, **context)
                if fused is not None:
                    return fused
            values = self.per_sample(input, target, **context)
        except (IndexError, RuntimeError):
            self.explain_error(input, target)
            raise
        return reduce_loss(values, self.reduction, sample_weight)

    def explain_error(self, input: Tensor, target: Tensor) -> None:
        """After a kernel raised: raise a ``ValueError`` that names the bad input, if any.

        Labels are range-checked by the kernels that read them (a CPU kernel raises
        ``IndexError`` or ``RuntimeError``); this reads the values, on the error path only, and
        says which labels are out of range. It returns when the input explains nothing, and the
        kernel's error propagates.
        """
        if self.target_kind == "index":
            explain_categorical(input, target, getattr(self, "ignore_index", None))

    def _check_context(self, context: dict[str, Any]) -> None:
        if not context and not self.context:  # most losses declare none: nothing to check
            return
        call_context = _call_context(type(self))
        unknown = [k for k in context if k not in call_context]
        if unknown:
            accepted = ", ".join(call_context) or "none"
            raise TypeError(
                f"{type(self).__name__} got unexpected context argument(s) {unknown}; "
                f"it accepts: {accepted}."
            )
        missing = [c for c in call_context if c not in context]
        if missing:
            raise TypeError(
                f"{type(self).__name__} needs the context argument(s) {missing} "
                f"({'; '.join(CALL_CONTEXT[c] for c in missing)}). LossMixin fills them; "
                "a direct call must pass them."
            )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class ClassCountsLoss(Loss):
    """A loss that depends on the class counts ``n_c`` of the training set.

    The counts are a persistent buffer, so they move with ``.to()`` and are saved in checkpoints.
    Give them to the constructor, or leave them out and let :class:`~lightning_losses.LossMixin`
    read ``class_counts`` from the datamodule before training starts.
    """

    context: ClassVar[tuple[str, ...]] = ("counts",)

    def __init__(
        self,
        class_counts: Sequence[float] | Tensor | None = None,
        *,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.register_buffer("class_counts", torch.empty(0))
        if class_counts is not None:
            self.set_class_counts(class_counts)

    @property
    def has_class_counts(self) -> bool:
        return self.class_counts.numel() > 0

    def set_class_counts(self, class_counts: Sequence[float] | Tensor) -> None:
        counts = check_class_counts(class_counts)
        device = self.class_counts.device
        self.class_counts = counts.to(device=device, dtype=self.class_counts.dtype)
        self.on_class_counts()

    def on_class_counts(self) -> None:
        """Hook for subclasses that derive buffers (margins, weights, log-priors) from counts."""

    def require_counts(self, num_classes: int) -> Tensor:
        if not self.has_class_counts:
            raise ValueError(
                f"{type(self).__name__} needs class counts: pass `class_counts=[...]`, or train "
                "with LossMixin and a datamodule that has a `class_counts` attribute."
            )
        if self.class_counts.numel() != num_classes:
            raise ValueError(
                f"`class_counts` has {self.class_counts.numel()} entries but the input has "
                f"{num_classes} classes."
            )
        return self.class_counts

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The counts buffer takes its size from the data: resize it to the saved one, load, and
        # derive the dependent buffers again from the loaded counts.
        saved = state_dict.get(prefix + "class_counts")
        if saved is not None and saved.shape != self.class_counts.shape:
            self.class_counts = torch.empty(
                saved.shape, device=self.class_counts.device, dtype=self.class_counts.dtype
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if saved is not None and saved.numel() > 0:
            self.on_class_counts()
