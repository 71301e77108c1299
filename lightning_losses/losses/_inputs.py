"""Shape rules shared by the classification-style losses, in one place.

Categorical (softmax) losses take logits ``(N, K)`` or dense logits ``(N, K, *d)`` and either class
indices ``(N,)`` / ``(N, *d)`` (integers; ``ignore_index`` marks elements to skip) or, where the
loss allows it, soft targets with the input's shape (mixup / cutmix / distillation). Binary
(sigmoid, multi-label) losses take logits and a target of the same shape, ``(N,)``, ``(N, K)`` or
``(N, K, *d)``, with values in [0, 1] or ``ignore_index``.

Elements are flattened to ``(M, K)`` rows; :func:`per_sample_reduce` folds element losses back to
one value per sample (mean or sum over the sample's valid elements), so a dense loss meets the
same ``(N,)`` contract as a plain classifier. Low-precision logits are computed in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_finite, check_float, check_tensor
from .._reduce import PerSample


class Categorical(NamedTuple):
    logits: Tensor  # (M, K), float32 or float64
    target: Tensor  # (M,) class indices, ignored elements set to 0
    soft: Tensor | None  # (M, K) soft target, or None for index targets
    valid: Tensor  # (M,) bool
    batch_size: int


class Binary(NamedTuple):
    logits: Tensor  # (N, P)
    target: Tensor  # (N, P) float in [0, 1], ignored elements set to 0
    valid: Tensor  # (N, P) bool


def upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _within(x: Tensor, low: float, high: float) -> bool:
    """One pass (and one host read) telling whether every element lies in [low, high]."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool((lo >= low) & (hi <= high))


def _values_known() -> bool:
    return not torch.compiler.is_compiling()


def check_categorical(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    allow_soft: bool = True,
    check_nan: bool = False,
) -> Tensor:
    """Validate logits and an index or soft target; return the element validity mask.

    The mask has the target's layout without the class dimension, ``(N, *d)``: False where an
    index target equals ``ignore_index``, all True for soft targets.
    """
    check_tensor(input, "input")
    check_tensor(target, "target")
    check_float(input, "input")
    if input.ndim < 2:
        raise ValueError(
            f"`input` must be logits of shape (N, K) or (N, K, *d); got shape {tuple(input.shape)}."
        )
    if check_nan:
        check_finite(input, "input")
    n, k = input.shape[0], input.shape[1]
    expected = (n, *input.shape[2:])
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
        return torch.ones(expected, dtype=torch.bool, device=input.device)
    if target.shape != expected:
        raise ValueError(
            f"`target` of class indices must have shape {expected} for input of shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)}."
        )
    if target.dtype == torch.bool:
        raise TypeError("`target` must hold integer class indices; got a bool tensor.")
    valid = target != ignore_index
    if _values_known() and not _within(target, 0, k - 1):
        bad = valid & ((target < 0) | (target >= k))
        if bool(bad.any()):
            vals = sorted(set(target[bad].tolist()))[:5]
            raise ValueError(
                f"`target` holds labels outside [0, {k - 1}] (input has {k} classes) that are not "
                f"`ignore_index`={ignore_index}: {vals}."
            )
    return valid


def prepare_categorical(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    allow_soft: bool = True,
    check_nan: bool = False,
) -> Categorical:
    """Validate (see :func:`check_categorical`) and flatten to rows ``(M, K)``."""
    valid = check_categorical(
        input, target, ignore_index=ignore_index, allow_soft=allow_soft, check_nan=check_nan
    ).reshape(-1)
    n, k = input.shape[0], input.shape[1]
    logits = upcast(input).movedim(1, -1).reshape(-1, k)
    if target.is_floating_point():
        soft = upcast(target).movedim(1, -1).reshape(-1, k).to(logits.dtype)
        return Categorical(logits, soft.argmax(-1), soft, valid, n)
    flat = target.reshape(-1).long()
    return Categorical(logits, torch.where(valid, flat, 0), None, valid, n)


def prepare_binary(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    check_nan: bool = False,
) -> Binary:
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
    if check_nan:
        check_finite(input, "input")
    n = input.shape[0]
    logits = upcast(input).reshape(n, -1)
    t = target.reshape(n, -1)
    valid = t != ignore_index
    t = torch.where(valid, t, torch.zeros_like(t)).to(logits.dtype)
    if _values_known() and not _within(t, 0, 1):
        bad = valid & ((t < 0) | (t > 1))
        if bool(bad.any()):
            vals = sorted(set(t[bad].tolist()))[:5]
            raise ValueError(
                f"`target` of a binary / multi-label loss must lie in [0, 1] (or equal "
                f"`ignore_index`={ignore_index}); got {vals}."
            )
    return Binary(logits, t, valid)


def per_sample_reduce(
    element_loss: Tensor, valid: Tensor, batch_size: int, how: str = "mean"
) -> PerSample:
    """Fold element losses (M,) or (N, P) into one value per sample over its valid elements."""
    elem = element_loss.reshape(batch_size, -1)
    mask = valid.reshape(batch_size, -1)
    total = torch.where(mask, elem, torch.zeros_like(elem)).sum(1)
    values = total if how == "sum" else total / mask.sum(1).clamp_min(1).to(total.dtype)
    return PerSample(values, mask.any(1))
