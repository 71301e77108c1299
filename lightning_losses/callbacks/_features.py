"""Feature distillation plumbing: layers by name, forward hooks, and shape adapters.

:class:`FeatureTap` keeps the output of named submodules while it is *armed*: the callback arms
the student's tap from ``on_train_batch_start`` to ``on_train_batch_end`` (so validation forwards
record nothing) and the teacher's only around the teacher's forward. :func:`make_adapter` builds
the regressor between a student and a teacher feature shape (a 1x1 convolution for 4-D maps, a
linear layer on the last dimension for 2-D and 3-D features). :class:`TimmIntermediates` reads a
timm teacher's features by feature index through ``forward_intermediates`` instead of hooks, and
stops the teacher's forward after the deepest requested stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._checks import closest


def resolve_layers(root: nn.Module, names: Sequence[str], arg: str, owner: str) -> list[nn.Module]:
    """The submodules of ``root`` called ``names`` (as in ``named_modules()``)."""
    modules = dict(root.named_modules())
    found = []
    for name in names:
        if not isinstance(name, str) or name not in modules or not name:
            available = [n for n in modules if n]
            hint = closest(str(name), available, n=5)
            shown = ", ".join(map(repr, available[:30])) + (" ..." if len(available) > 30 else "")
            raise ValueError(
                f"`{arg}` names {name!r}, which is not a submodule of the {owner} "
                f"({type(root).__name__}; names as in named_modules())."
                + (f" Close matches: {', '.join(map(repr, hint))}." if hint else "")
                + f" Available: {shown}."
            )
        found.append(modules[name])
    return found


class FeatureTap:
    """Forward hooks that keep the latest output of each named layer while armed."""

    def __init__(self, root: nn.Module, names: Sequence[str], arg: str, owner: str) -> None:
        self.names = list(names)
        self.layers = resolve_layers(root, self.names, arg, owner)
        self.features: list[Tensor | None] = [None] * len(self.names)
        self.armed = False
        self._handles: list[RemovableHandle] = []

    def attach(self) -> None:
        if self._handles:
            return
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._hook(i)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
        self.armed = False

    def clear(self) -> None:
        self.features = [None] * len(self.names)

    def _hook(self, i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.armed:
                return
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"feature layer {self.names[i]!r} ({type(module).__name__}) must return a "
                    f"tensor to be distilled; it returned a {type(output).__name__}."
                )
            self.features[i] = output

        return hook

    def take(self, owner: str) -> list[Tensor]:
        """The captured features; every layer must have run since the tap was armed."""
        missing = [n for n, f in zip(self.names, self.features, strict=True) if f is None]
        if missing:
            raise RuntimeError(
                f"the {owner} layers {missing} did not run in this training step, so there is no "
                "feature to distil: check the layer names and that training_step runs the "
                "student's forward before compute_loss."
            )
        return list(self.features)  # type: ignore[arg-type]


class TimmIntermediates:
    """Features of a timm model by feature index (its ``feature_info``), in the order asked.

    One call runs ``model.forward_intermediates(x, indices=..., intermediates_only=True,
    stop_early=True)``: the stages after the deepest index and the head do not run. Indices may be
    negative (from the end). :attr:`fn` is the call, replaced by a compiled one under
    ``compile=True``.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int], arg: str) -> None:
        if not callable(getattr(model, "forward_intermediates", None)):
            raise ValueError(
                f"`{arg}` gives feature indices {list(indices)}, which index timm's "
                f"forward_intermediates, and the teacher ({type(model).__name__}) has no such "
                "method: name its layers as in named_modules() instead."
            )
        info = getattr(model, "feature_info", None)
        described = describe_feature_info(info)
        n = len(info) if isinstance(info, Sequence) else None
        normalised = []
        for i in indices:
            if n is not None and not -n <= i < n:
                raise ValueError(
                    f"`{arg}` asks for feature index {i}, and the teacher "
                    f"({type(model).__name__}) has {n} feature levels, indices 0 to {n - 1} (or "
                    f"-{n} to -1): {described}."
                )
            normalised.append(i % n if n is not None else i)
        self.indices = normalised
        self.take = sorted(set(normalised))
        self.fn: Callable[[Any], list[Tensor]] = partial(
            model.forward_intermediates, indices=self.take, intermediates_only=True, stop_early=True
        )

    def __call__(self, x: Any) -> list[Tensor]:
        out = self.fn(x)
        # timm returns the levels in network order, whatever the order of the indices asked
        by_index = dict(zip(self.take, out, strict=True))
        return [by_index[i] for i in self.indices]


def describe_feature_info(info: Any) -> str:
    """``"0: act1 (64 ch, /2), 1: layer1 (64 ch, /4), ..."`` from a timm ``feature_info``."""
    if not isinstance(info, Sequence):
        return "no feature_info to list"
    parts = []
    for i, level in enumerate(info):
        if isinstance(level, dict):
            parts.append(
                f"{i}: {level.get('module', '?')} ({level.get('num_chs', '?')} ch, "
                f"/{level.get('reduction', '?')})"
            )
    return ", ".join(parts) or "no feature_info to list"


def make_adapter(student: Sequence[int], teacher: Sequence[int], where: str) -> nn.Module:
    """A regressor from a student feature shape to a teacher's (shapes without the batch dim).

    ``(C, H, W)``: a 1x1 ``Conv2d(C_s, C_t)``, spatial sizes must agree. ``(D,)`` or ``(L, D)``:
    a ``Linear(D_s, D_t)`` on the last dimension, the other dimensions must agree.
    """
    s, t = tuple(student), tuple(teacher)
    if len(s) == 3 and len(t) == 3 and s[1:] == t[1:]:
        return nn.Conv2d(s[0], t[0], kernel_size=1)
    if len(s) in (1, 2) and len(s) == len(t) and s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])
    raise ValueError(
        f"cannot build an adapter for {where}: the student feature has shape (N, *{s}) and the "
        f"teacher's (N, *{t}). Adapters map (N, C, H, W) maps with the same H, W (1x1 conv) and "
        "(N, D) or (N, L, D) features with the same L (linear); pick layers whose shapes agree "
        "this way, or use a loss that allows different shapes (attention_transfer, rkd)."
    )
