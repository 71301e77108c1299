"""Input validation shared by every loss and callback.

Each check raises a ``ValueError`` (or ``TypeError``) that names the argument, says what was
expected and shows what came, so that a wrong call is fixed from the message alone.
Value checks (label range, NaN, negative weights) never read a tensor back to the host on the
normal path: :func:`check_on_device` hands a boolean scalar to ``torch._assert_async``, which a
GPU evaluates in its queue and a CPU evaluates at once; only when the check fails does the CPU
path read values, to name them in the message. They are skipped while ``torch.compile`` traces,
so compiled graphs stay free of data-dependent branches.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The registered names that look most like ``name`` (for "did you mean" messages)."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


def check_choice(value: str, choices: Sequence[str], arg: str) -> str:
    """``value`` must be one of ``choices``; otherwise name the closest ones."""
    if value not in choices:
        hint = closest(str(value), choices)
        suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
        raise ValueError(
            f"`{arg}` must be one of {', '.join(map(repr, choices))}; got {value!r}.{suggestion}"
        )
    return value


def check_reduction(reduction: str) -> str:
    return check_choice(reduction, REDUCTIONS, "reduction")


def check_tensor(x: object, arg: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{arg}` must be a torch.Tensor; got {type(x).__name__}.")
    return x


def check_float(x: Tensor, arg: str) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"`{arg}` must be a floating-point tensor of logits; got dtype {x.dtype}.")
    return x


def check_on_device(ok: Tensor, summary: str, detail: Callable[[], str] | None = None) -> None:
    """Fail unless the boolean scalar tensor ``ok`` is True, without a device-to-host read.

    ``torch._assert_async`` checks ``ok`` where it lives. On a CPU it fails at once, and the
    ``ValueError`` raised here carries ``detail()`` (which may read values: this is the error
    path) or ``summary``. On a GPU the assertion fails inside the kernel queue with ``summary``,
    and the error surfaces at the next synchronisation. Skipped while ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return
    try:
        torch._assert_async(ok, summary)
    except RuntimeError:
        raise ValueError(detail() if detail is not None else summary) from None


def check_finite(x: Tensor, arg: str) -> None:
    """Raise if ``x`` holds NaN or infinity, checked on the device (see :func:`check_on_device`).

    It costs a pass over ``x`` (an ``isfinite`` and an ``all``), so the losses run it only when
    asked (``validate_args=True``).
    """
    check_on_device(
        torch.isfinite(x).all(),
        f"`{arg}` must be finite (NaN or infinity found).",
        lambda: (
            f"`{arg}` must be finite; got {int(torch.isnan(x).sum())} NaN and "
            f"{int(torch.isinf(x).sum())} infinite values out of {x.numel()}."
        ),
    )


def check_int(value: object, arg: str, minimum: int | None = None) -> int:
    """``value`` must be an int (not a bool), at least ``minimum`` when given."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
    ):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"`{arg}` must be an integer{bound}; got {value!r}.")
    return value


def check_number(value: object, arg: str) -> float:
    """``value`` must be a finite real number (not a bool); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{arg}` must be a real number; got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{arg}` must be finite; got {value!r}.")
    return float(value)


def check_positive(value: float, arg: str, *, allow_zero: bool = False) -> float:
    value = check_number(value, arg)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{arg}` must be {bound}; got {value!r}.")
    return value


def check_range(value: float, arg: str, low: float, high: float, *, closed: str = "both") -> float:
    """``value`` in [low, high], (low, high], [low, high) or (low, high) as ``closed`` says."""
    value = check_number(value, arg)
    lo_ok = value >= low if closed in ("both", "left") else value > low
    hi_ok = value <= high if closed in ("both", "right") else value < high
    if not (lo_ok and hi_ok):
        left = "[" if closed in ("both", "left") else "("
        right = "]" if closed in ("both", "right") else ")"
        raise ValueError(f"`{arg}` must lie in {left}{low}, {high}{right}; got {value!r}.")
    return value


def check_class_counts(counts: Tensor | Sequence[float], arg: str = "class_counts") -> Tensor:
    """Class counts as a float tensor (K,): one entry per class, none negative, not all zero."""
    t = torch.as_tensor(counts, dtype=torch.float64).detach().cpu()
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError(
            f"`{arg}` must be a 1-D sequence with one count per class; got shape {tuple(t.shape)}."
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{arg}` must be finite; got {t.tolist()}.")
    if bool((t < 0).any()):
        neg = [i for i, v in enumerate(t.tolist()) if v < 0]
        raise ValueError(
            f"`{arg}` must be non-negative; classes {neg} have negative counts ({t[neg].tolist()})."
        )
    if float(t.sum()) <= 0:
        raise ValueError(f"`{arg}` must count at least one sample; got all zeros.")
    return t


def check_class_weight(
    weight: Tensor | Sequence[float] | None, arg: str = "weight"
) -> Tensor | None:
    if weight is None:
        return None
    t = torch.as_tensor(weight, dtype=torch.float32).detach().clone()
    if t.ndim != 1:
        raise ValueError(f"`{arg}` must be 1-D, one weight per class; got shape {tuple(t.shape)}.")
    if bool((t < 0).any()) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{arg}` must be finite and non-negative; got {t.tolist()}.")
    return t


def check_sample_weight(sample_weight: Tensor | None, n: int) -> Tensor | None:
    if sample_weight is None:
        return None
    check_tensor(sample_weight, "sample_weight")
    if sample_weight.shape != (n,):
        raise ValueError(
            f"`sample_weight` must have shape ({n},), one weight per sample; got "
            f"{tuple(sample_weight.shape)}."
        )
    if sample_weight.dtype == torch.bool or sample_weight.is_complex():
        raise TypeError(
            f"`sample_weight` must hold real numbers; got dtype {sample_weight.dtype} (a mask "
            "of kept samples is `mask.float()`)."
        )
    # A negative weight turns a loss into a reward, NaN poisons the step: refuse both, on the
    # device (a pass over N weights, no host read).
    w = sample_weight
    check_on_device(
        (torch.isfinite(w) & (w >= 0)).all() if w.is_floating_point() else (w >= 0).all(),
        "`sample_weight` must be finite and >= 0.",
        lambda: (
            f"`sample_weight` must be finite and >= 0; got {int((w < 0).sum())} negative, "
            f"{int(w.isnan().sum()) if w.is_floating_point() else 0} NaN and "
            f"{int(w.isinf().sum()) if w.is_floating_point() else 0} infinite values out of "
            f"{w.numel()}."
        ),
    )
    return sample_weight
