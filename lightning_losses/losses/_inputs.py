"""Shape rules shared by the classification-style losses, in one place.

Categorical (softmax) losses take logits ``(N, K)`` or dense logits ``(N, K, *d)`` and either class
indices ``(N,)`` / ``(N, *d)`` (integers; ``ignore_index`` marks elements to skip) or, where the
loss allows it, soft targets with the input's shape (mixup / cutmix / distillation). Binary
(sigmoid, multi-label) losses take logits and a target of the same shape, ``(N,)``, ``(N, K)`` or
``(N, K, *d)``, with values in [0, 1] or ``ignore_index``.

Elements are flattened to ``(M, K)`` rows; :func:`per_sample_reduce` folds element losses back to
one value per sample (mean or sum over the sample's valid elements), so a dense loss meets the
same ``(N,)`` contract as a plain classifier. Low-precision logits are computed in float32.

**Checks without host reads.** Shapes and dtypes are checked on every call (metadata only).
Class indices are checked by the kernels that read them (``cross_entropy``, ``nll_loss``,
``gather``): on a CPU they raise at once and :func:`explain_categorical` turns the kernel's error
into a message naming the bad labels; on a GPU they fail in the kernel queue, without a
synchronisation. Checks that cost a pass over the data (finite input, binary targets in [0, 1])
run, on the device, when a loss is built with ``validate_args=True``.

**No mask unless asked.** ``ignore_index=None`` (the default) is a constructor-level fact: no
element can be ignored, so no validity mask is built and ``valid`` is ``None``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_finite, check_float, check_on_device, check_tensor
from .._reduce import PerSample

#: ``ignore_index`` handed to torch's kernels when nothing is ignored: no class index can equal
#: it, so every label reaches the kernel's own range check.
NO_IGNORE = torch.iinfo(torch.int64).min


class Categorical(NamedTuple):
    logits: Tensor  # (M, K), float32 or float64
    target: Tensor  # (M,) class indices, ignored elements set to 0
    soft: Tensor | None  # (M, K) soft target, or None for index targets
    valid: Tensor | None  # (M,) bool, or None when nothing can be ignored
    batch_size: int


class Binary(NamedTuple):
    logits: Tensor  # (N, P)
    target: Tensor  # (N, P) float in [0, 1], ignored elements set to 0
    valid: Tensor | None  # (N, P) bool, or None when nothing can be ignored
    shape: torch.Size  # the input's shape, (N,), (N, K) or (N, K, *d)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in: float32 for half-precision input, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kernel_ignore_index(ignore_index: int | None) -> int:
    """The ``ignore_index`` to hand torch's kernels (``NO_IGNORE`` when none is set)."""
    return NO_IGNORE if ignore_index is None else ignore_index


def target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean (M, K) mask of each row's target class (``scatter`` range-checks the indices)."""
    mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return mask.scatter_(1, target[:, None], True)


def check_categorical(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    allow_soft: bool = True,
    validate_args: bool = False,
) -> Tensor | None:
    """Validate logits and an index or soft target; return the element validity mask.

    The mask has the target's layout without the class dimension, ``(N, *d)``: False where an
    index target equals ``ignore_index``. It is ``None`` when nothing can be ignored (soft
    targets, or ``ignore_index=None``). Label values are left to the kernels (see the module
    docstring); ``validate_args`` adds on-device checks of finite input and label range.
    """
    # One combined test for the common case; the checks that name the culprit run on failure.
    if not (isinstance(input, Tensor) and isinstance(target, Tensor) and input.is_floating_point()):
        check_tensor(input, "input")
        check_tensor(target, "target")
        check_float(input, "input")
    shape = input.shape
    if len(shape) < 2:
        raise ValueError(
            f"`input` must be logits of shape (N, K) or (N, K, *d); got shape {tuple(shape)}."
        )
    if validate_args:
        check_finite(input, "input")
    if target.is_floating_point():
        if not allow_soft:
            raise TypeError(
                "`target` must hold integer class indices for this loss; got a floating-point "
                f"tensor of shape {tuple(target.shape)} (soft targets are not supported here)."
            )
        if target.shape != input.shape:
            raise ValueError(
                f"a soft `target` must have the input's shape {tuple(input.shape)}; got "
                f"{tuple(target.shape)}."
            )
        return None
    tshape = target.shape
    if len(tshape) != len(shape) - 1 or tshape[0] != shape[0] or tshape[1:] != shape[2:]:
        expected = (shape[0], *shape[2:])
        raise ValueError(
            f"`target` of class indices must have shape {expected} for input of shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)}."
        )
    if target.dtype == torch.bool:
        raise TypeError("`target` must hold integer class indices; got a bool tensor.")
    valid = None if ignore_index is None else target != ignore_index
    if validate_args:
        k = input.shape[1]
        check_on_device(
            ~_bad_labels(target, k, ignore_index).any(),
            f"`target` holds labels outside [0, {k - 1}] (input has {k} classes).",
            lambda: _label_message(input, target, ignore_index),
        )
    return valid


def _bad_labels(target: Tensor, k: int, ignore_index: int | None) -> Tensor:
    """Where an index target lies outside ``[0, k)`` and is not ``ignore_index``."""
    bad = (target < 0) | (target >= k)
    return bad if ignore_index is None else bad & (target != ignore_index)


def _label_message(input: Tensor, target: Tensor, ignore_index: int | None) -> str:
    k = input.shape[1]
    vals = sorted(set(target[_bad_labels(target, k, ignore_index)].tolist()))[:5]
    hint = ""
    if ignore_index is None and any(v < 0 for v in vals):
        hint = (
            f" To skip elements labelled {vals[0]}, build the loss with `ignore_index={vals[0]}` "
            "(nothing is ignored by default)."
        )
    kept = "" if ignore_index is None else f" that are not `ignore_index`={ignore_index}"
    return (
        f"`target` holds labels outside [0, {k - 1}] (input has {k} classes){kept}: {vals}.{hint}"
    )


def explain_categorical(input: Tensor, target: Tensor, ignore_index: int | None) -> None:
    """After a kernel failed: raise a ``ValueError`` naming the bad labels, if there are any.

    This is the error path, so it may read values; it raises nothing when the labels are fine
    (the caller then re-raises the kernel's own error).
    """
    if not (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and input.ndim >= 2
        and not target.is_floating_point()
        and target.dtype != torch.bool
    ):
        return
    if bool(_bad_labels(target, input.shape[1], ignore_index).any()):
        raise ValueError(_label_message(input, target, ignore_index))


def prepare_categorical(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    allow_soft: bool = True,
    validate_args: bool = False,
) -> Categorical:
    """Validate (see :func:`check_categorical`) and flatten to rows ``(M, K)``."""
    valid = check_categorical(
        input, target, ignore_index=ignore_index, allow_soft=allow_soft, validate_args=validate_args
    )
    n, k = input.shape[0], input.shape[1]
    x = upcast(input)
    logits = x if x.ndim == 2 else x.movedim(1, -1).reshape(-1, k)
    if target.is_floating_point():
        t = upcast(target).to(logits.dtype)
        soft = t if t.ndim == 2 else t.movedim(1, -1).reshape(-1, k)
        return Categorical(logits, soft.argmax(-1), soft, None, n)
    flat = target.reshape(-1)
    if valid is None:
        return Categorical(logits, flat, None, None, n)
    valid = valid.reshape(-1)
    return Categorical(logits, torch.where(valid, flat, 0), None, valid, n)


def check_binary_shapes(input: Tensor, target: Tensor) -> None:
    """Logits with a batch dimension and a target of the same shape (metadata only)."""
    check_tensor(input, "input")
    check_tensor(target, "target")
    check_float(input, "input")
    if input.ndim < 1:
        raise ValueError(f"`input` must have a batch dimension; got shape {tuple(input.shape)}.")
    if target.shape != input.shape:
        raise ValueError(
            f"`target` must have the input's shape {tuple(input.shape)} (one 0/1 label per "
            f"logit); got {tuple(target.shape)}."
        )


def prepare_binary(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    validate_args: bool = False,
) -> Binary:
    """Validate logits and a same-shape target in [0, 1]; flatten both to ``(N, P)``.

    ``validate_args`` checks, on the device, that the input is finite and the target lies in
    [0, 1] (or equals ``ignore_index``).
    """
    check_binary_shapes(input, target)
    n = input.shape[0]
    logits = upcast(input).reshape(n, -1)
    t = target.reshape(n, -1)
    valid = None if ignore_index is None else t != ignore_index
    if valid is not None:
        t = torch.where(valid, t, torch.zeros_like(t))
    t = t.to(logits.dtype)
    if validate_args:
        check_finite(input, "input")
        in_range = (t >= 0) & (t <= 1)
        check_on_device(
            (in_range if valid is None else in_range | ~valid).all(),
            "`target` of a binary / multi-label loss must lie in [0, 1].",
            lambda: _binary_message(t, valid, ignore_index),
        )
    return Binary(logits, t, valid, input.shape)


def _binary_message(t: Tensor, valid: Tensor | None, ignore_index: int | None) -> str:
    bad = (t < 0) | (t > 1)
    if valid is not None:
        bad &= valid
    vals = sorted(set(t[bad].tolist()))[:5]
    kept = "" if ignore_index is None else f" (or equal `ignore_index`={ignore_index})"
    return f"`target` of a binary / multi-label loss must lie in [0, 1]{kept}; got {vals}."


def per_sample_reduce(
    element_loss: Tensor, valid: Tensor | None, batch_size: int, how: str = "mean"
) -> PerSample:
    """Fold element losses (M,) or (N, P) into one value per sample over its valid elements."""
    if valid is None and element_loss.numel() == batch_size:  # one element per sample
        return PerSample(element_loss.reshape(batch_size))
    elem = element_loss.reshape(batch_size, -1)
    if valid is None:
        return PerSample(elem.sum(1) if how == "sum" else elem.mean(1))
    mask = valid.reshape(batch_size, -1)
    total = torch.where(mask, elem, torch.zeros_like(elem)).sum(1)
    values = total if how == "sum" else total / mask.sum(1).clamp_min(1).to(total.dtype)
    return PerSample(values, mask.any(1))


def reduce_elements_fused(
    element_loss: Tensor, batch_size: int, reduction: str, how: str = "mean"
) -> Tensor:
    """``reduce_loss(per_sample_reduce(element_loss, None, n, how), reduction)`` in one sum."""
    return fold_total(element_loss.sum(), element_loss.numel(), batch_size, reduction, how)


def fold_total(total: Tensor, numel: int, batch_size: int, reduction: str, how: str = "mean"):
    """The ``"mean"`` or ``"sum"`` over samples of per-sample values, from the element total.

    Every sample holds the same number ``P = numel / N`` of elements and none is ignored, so
    with per-sample means (``how="mean"``) the mean over samples is ``total / numel`` and the
    sum is ``total / P``; with per-sample sums they are ``total / N`` and ``total`` (equal to
    the per-sample path up to the order of the floating-point summation).
    """
    if how == "mean":
        divisor = numel if reduction == "mean" else numel // batch_size if batch_size else 1
    else:
        divisor = batch_size if reduction == "mean" else 1
    return total / divisor if divisor > 1 else total
