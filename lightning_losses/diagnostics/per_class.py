"""The probe loss restricted to one class, so that every curvature diagnostic runs per class.

"Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data" (Rangwani et
al., NeurIPS 2022) computes the Hessian spectrum of each class's loss and finds the tail
classes at saddle points (negative eigenvalues). Here the per-class loss is

.. code-block:: text

    L_c(θ) = (1 / N_c) Σ_{i : y_i = c} ℓ_i(θ)

over the probe samples of class ``c`` only: each probe batch is cut down to its samples of
class ``c`` (batches without any are dropped), and :class:`~.hvp.LossFunction` weights the
remaining batch means by their sizes, so ``L_c`` is the mean over the class's samples however
they are spread over the batches. Any algorithm of this package then applies to ``L_c``
(top eigenvalues, trace, density with its negative mass).

Batches are cut by :func:`subset_batch` (every tensor whose leading dimension is the batch size
is indexed; other entries pass through) unless ``select`` is given; labels are read by
``labels`` (default: the second element of a ``(input, target, ...)`` batch, or the
``"target"`` / ``"label"`` / ``"y"`` entry of a dict batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int
from .hvp import LossFunction, ParamFilter

__all__ = ["class_batches", "class_loss_function", "default_labels", "subset_batch"]

LABEL_KEYS = ("target", "label", "y")


def default_labels(batch: Any) -> Tensor:
    """The class labels (N,) of a ``(input, target, ...)`` sequence or a dict batch."""
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                return batch[key]
        raise ValueError(
            f"a dict probe batch must hold the labels under one of {LABEL_KEYS}; got keys "
            f"{list(batch)} (or pass `labels=`)."
        )
    if isinstance(batch, Sequence) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise TypeError(
        f"cannot find the labels of a probe batch of type {type(batch).__name__}; expected "
        "(input, target, ...) or a dict, or pass `labels=` (batch -> Tensor (N,))."
    )


def subset_batch(batch: Any, mask: Tensor) -> Any:
    """``batch`` with every tensor of leading size ``len(mask)`` indexed by the boolean ``mask``."""
    n = mask.shape[0]

    def cut(item: Any) -> Any:
        if isinstance(item, Tensor) and item.ndim > 0 and item.shape[0] == n:
            return item[mask.to(item.device)]
        return item

    if isinstance(batch, Tensor):
        return cut(batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: cut(v) for k, v in batch.items()})
    if isinstance(batch, tuple | list):
        return type(batch)(cut(v) for v in batch)
    raise TypeError(
        f"cannot subset a probe batch of type {type(batch).__name__}; pass `select=` "
        "(batch, mask) -> batch."
    )


def class_batches(
    batches: Iterable[Any],
    cls: int,
    *,
    labels: Callable[[Any], Tensor] = default_labels,
    select: Callable[[Any, Tensor], Any] = subset_batch,
) -> list[Any]:
    """The probe batches cut down to their samples of class ``cls`` (empty ones dropped).

    Raises ``ValueError`` naming the class (and the classes present) when no probe sample has
    label ``cls``.
    """
    cls = check_int(cls, "cls")
    out, present = [], set()
    for batch in batches:
        y = labels(batch)
        if not isinstance(y, Tensor) or y.ndim != 1:
            raise ValueError(
                "the labels of a probe batch must be a 1-D tensor (N,) of class indices; got "
                f"{type(y).__name__} with shape {getattr(y, 'shape', None)}."
            )
        present.update(int(c) for c in torch.unique(y).tolist())
        mask = y == cls
        if bool(mask.any()):
            out.append(select(batch, mask))
    if not out:
        raise ValueError(
            f"`cls` = {cls} has no sample in the probe set; classes present: {sorted(present)}."
        )
    return out


def class_loss_function(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterable[Any],
    cls: int,
    *,
    labels: Callable[[Any], Tensor] = default_labels,
    select: Callable[[Any, Tensor], Any] = subset_batch,
    param_filter: ParamFilter = None,
) -> LossFunction:
    """A :class:`~.hvp.LossFunction` of the loss over the probe samples of class ``cls``.

    Args:
        model, loss_fn, param_filter: as for :class:`~.hvp.LossFunction`.
        batches: the probe batches (all classes); they are cut with :func:`class_batches`.
        cls: the class index.
        labels: ``batch -> Tensor (N,)`` of class indices (default :func:`default_labels`).
        select: ``(batch, mask) -> batch`` (default :func:`subset_batch`).

    Example:
        >>> net = nn.Linear(2, 3)
        >>> x, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> ce = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        >>> fn = class_loss_function(net, ce, [(x, y)], cls=2)
        >>> abs(fn.loss() - ce(net, (x[y == 2], y[y == 2])).item()) < 1e-6
        True
    """
    chosen = class_batches(batches, cls, labels=labels, select=select)
    return LossFunction(model, loss_fn, chosen, param_filter=param_filter)
