"""The probe loss as a function of (some of) the model's parameters, and its Hessian-vector product.

Every curvature diagnostic in this package reads the Hessian only through products ``H·v``
(Pearlmutter's trick, as in PyHessian, Yao et al., "PyHessian: Neural Networks Through the Lens
of the Hessian", IEEE BigData 2020):

.. code-block:: text

    θ        = the selected parameters (``param_filter``), flattened to one vector (n,)
    L(θ)     = Σ_b (N_b / N) · L_b(θ)          L_b = loss_fn(model, batch_b), a batch *mean*
                                               N_b = batch size, N = Σ_b N_b
    ∇L(θ)    = Σ_b (N_b / N) · ∇L_b(θ)
    H·v      = Σ_b (N_b / N) · ∇_θ ⟨∇_θ L_b(θ), v⟩        (double backward, one per batch)

Weighting each batch mean by its size makes ``L`` the mean over all probe *samples*, whatever
the batch sizes (a short last batch, or the class-restricted batches of :mod:`.per_class`,
would otherwise be over-weighted). One ``H·v`` costs, per probe batch, one forward pass and two
backward passes (about 2–3 training steps' worth); :class:`LossFunction` counts HVPs,
gradients and forward passes so every result can report what it cost.

Contract with the model (what the Lightning callback relies on):

* the train/eval mode is **never** changed here: the caller decides (BatchNorm in eval mode for
  a deterministic loss); dropout left in train mode makes ``L`` random;
* parameters are never modified; buffers (BatchNorm running statistics) are saved before and
  restored after every evaluation, so a model left in train mode does not drift;
* ``.grad`` fields are untouched (``torch.autograd.grad`` is used, never ``.backward()``);
* it must run with autograd available: under ``torch.inference_mode`` a clear error is raised.

Flat vectors use the parameters' device and (promoted) dtype; ``n`` is the number of selected
scalar parameters, and every algorithm here keeps a handful of such vectors (the memory each
needs is documented with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._checks import check_tensor

__all__ = [
    "LinearOperator",
    "LossFunction",
    "MatrixOperator",
    "ParamFilter",
    "as_operator",
    "select_parameters",
]

ParamFilter = Callable[[str], bool] | str | Sequence[str] | None
"""Which parameters to look at: ``None`` (all trainable ones), a predicate on the parameter name,
or a name / a sequence of names, each either a full parameter name (``"fc.weight"``) or a module
prefix (``"fc"`` selects ``fc.weight`` and ``fc.bias``)."""


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map on flat vectors of size ``numel`` (what the algorithms need).

    ``hvp_count`` and ``forward_count`` are running counters; algorithms report the difference
    over their run.
    """

    numel: int
    dtype: torch.dtype
    device: torch.device
    hvp_count: int
    forward_count: int

    def matvec(self, v: Tensor) -> Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix ``A`` (n, n) seen as a :class:`LinearOperator` (``v ↦ A v``).

    For small problems and tests: every product counts as one HVP and no forward pass.
    """

    def __init__(self, matrix: Tensor) -> None:
        check_tensor(matrix, "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ValueError(
                f"`matrix` must be a non-empty square 2-D tensor (n, n); got shape "
                f"{tuple(matrix.shape)}."
            )
        if not matrix.is_floating_point():
            raise TypeError(f"`matrix` must be floating point; got dtype {matrix.dtype}.")
        self.matrix = matrix
        self.numel = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.hvp_count = 0
        self.forward_count = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.hvp_count += 1
        return self.matrix @ v


def as_operator(op: LinearOperator | Tensor) -> LinearOperator:
    """``op`` itself, or a :class:`MatrixOperator` when a square matrix is given."""
    if isinstance(op, Tensor):
        return MatrixOperator(op)
    if not isinstance(op, LinearOperator):
        raise TypeError(
            "`op` must be a LossFunction, a LinearOperator (numel, dtype, device, matvec, "
            f"hvp_count, forward_count) or a square matrix tensor; got {type(op).__name__}."
        )
    return op


def _name_matches(name: str, key: str) -> bool:
    return name == key or name.startswith(key + ".")


def select_parameters(
    model: nn.Module, param_filter: ParamFilter = None
) -> list[tuple[str, Tensor]]:
    """The ``(name, parameter)`` pairs of ``model`` that ``param_filter`` keeps, in model order.

    Only parameters with ``requires_grad`` are considered (frozen ones have no curvature to
    report). A name in ``param_filter`` that matches no trainable parameter raises, listing the
    available names, so that a typo never silently yields an empty or partial view.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if param_filter is None:
        chosen = named
    elif callable(param_filter):
        chosen = [(n, p) for n, p in named if param_filter(n)]
    else:
        keys = [param_filter] if isinstance(param_filter, str) else list(param_filter)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(
                "`param_filter` must be None, a callable on the parameter name, a name or a "
                f"sequence of names; got {param_filter!r}."
            )
        unknown = [k for k in keys if not any(_name_matches(n, k) for n, _ in named)]
        if unknown:
            raise ValueError(
                f"`param_filter` names {unknown} match no trainable parameter of the model; "
                f"available: {[n for n, _ in named]}."
            )
        chosen = [(n, p) for n, p in named if any(_name_matches(n, k) for k in keys)]
    if not chosen:
        raise ValueError(
            f"`param_filter` selects no trainable parameter (got {param_filter!r}; trainable: "
            f"{[n for n, _ in named]})."
        )
    return chosen


def default_batch_size(batch: Any) -> int:
    """Leading dimension of the batch's first tensor (a tensor, or inside a sequence / mapping)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, Iterable) and not isinstance(items, str | bytes):
        for item in items:
            if isinstance(item, Tensor) and item.ndim > 0:
                return int(item.shape[0])
    raise TypeError(
        "cannot infer the size of a probe batch of type "
        f"{type(batch).__name__}: pass `batch_size=` (a callable batch -> int)."
    )


class LossFunction:
    """The probe loss ``L(θ)`` of ``model`` over a fixed probe set, with gradient and HVP.

    Give either ``loss_fn`` and ``batches`` (the loss is the size-weighted mean of the batch
    losses, see the module docstring) or a ``closure`` (called with no argument, returns the
    scalar loss at the model's current parameters; counted as one forward pass).

    Args:
        model: the network; its mode and parameters are left as they are.
        loss_fn: ``loss_fn(model, batch) -> Tensor`` scalar, the **mean** loss of the batch.
        batches: the probe batches (any iterable; it is materialised once, so that every HVP
            sees the same data).
        closure: alternative to ``loss_fn``/``batches``.
        param_filter: which parameters ``θ`` holds (see :data:`ParamFilter`); per-layer views.
        batch_size: ``batch -> int``; default: leading dimension of the batch's first tensor.

    Counters (running totals, read them before and after a run): ``hvp_count``,
    ``gradient_count``, ``loss_count`` (calls of :meth:`matvec`, :meth:`value_and_gradient`,
    :meth:`loss`)
    and ``forward_count`` (model forward passes, one per probe batch per call).

    Example:
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> fn = LossFunction(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [(x, y)])
        >>> fn.numel, fn.matvec(torch.ones(4)).shape
        (4, torch.Size([4]))
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        batches: Iterable[Any] | None = None,
        *,
        closure: Callable[[], Tensor] | None = None,
        param_filter: ParamFilter = None,
        batch_size: Callable[[Any], int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
        if closure is not None:
            if loss_fn is not None or batches is not None:
                raise ValueError(
                    "give either `closure` or `loss_fn` with `batches`, not both; got closure="
                    f"{closure!r}, loss_fn={loss_fn!r}."
                )
            if not callable(closure):
                raise TypeError(f"`closure` must be callable; got {type(closure).__name__}.")
            self._terms: list[tuple[Callable[[], Tensor], float]] = [(closure, 1.0)]
        else:
            if loss_fn is None or not callable(loss_fn):
                raise TypeError(
                    "`loss_fn` must be a callable (model, batch) -> scalar loss (or pass "
                    f"`closure=`); got {loss_fn!r}."
                )
            probe = list(batches) if batches is not None else []
            if not probe:
                raise ValueError("`batches` must hold at least one probe batch; got none.")
            size_of = batch_size or default_batch_size
            sizes = [int(size_of(b)) for b in probe]
            if any(s <= 0 for s in sizes):
                raise ValueError(f"every probe batch must hold >= 1 sample; got sizes {sizes}.")
            total = float(sum(sizes))
            self._terms = [
                ((lambda b=b: loss_fn(model, b)), s / total)
                for b, s in zip(probe, sizes, strict=True)
            ]
        self.model = model
        self.named_params = select_parameters(model, param_filter)
        self.params = [p for _, p in self.named_params]
        self.names = [n for n, _ in self.named_params]
        self.numel = sum(p.numel() for p in self.params)
        dtype = self.params[0].dtype
        for p in self.params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        self.dtype = dtype
        self.device = self.params[0].device
        self.hvp_count = 0
        self.gradient_count = 0
        self.loss_count = 0
        self.forward_count = 0

    # -- flat vectors -------------------------------------------------------------------------
    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors (in :attr:`names` order) into one vector (n,)."""
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Split a flat vector (n,) into tensors shaped like the selected parameters (views)."""
        check_tensor(vector, "vector")
        if vector.shape != (self.numel,):
            raise ValueError(
                f"`vector` must have shape ({self.numel},), one entry per selected parameter; "
                f"got {tuple(vector.shape)}."
            )
        parts = torch.split(vector, [p.numel() for p in self.params])
        return [v.view_as(p).to(p.dtype) for v, p in zip(parts, self.params, strict=True)]

    def named(self, vector: Tensor) -> dict[str, Tensor]:
        """A flat vector as ``{parameter name: tensor}`` (e.g. a Hessian eigenvector as a
        landscape direction)."""
        return dict(zip(self.names, self.unflatten(vector), strict=True))

    def parameters_vector(self) -> Tensor:
        """The current value of ``θ`` as a flat (detached) copy."""
        return self.flatten([p.detach() for p in self.params])

    # -- evaluations --------------------------------------------------------------------------
    def _check_autograd(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Hessian-vector products need autograd, but torch.inference_mode is on; run the "
                "diagnostic outside inference_mode (Lightning's validation loop uses it)."
            )

    def _buffers_saved(self) -> list[tuple[Tensor, Tensor]]:
        return [(b, b.detach().clone()) for b in self.model.buffers()]

    @staticmethod
    def _restore(saved: list[tuple[Tensor, Tensor]]) -> None:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)

    def _scalar(self, term: Callable[[], Tensor]) -> Tensor:
        out = term()
        self.forward_count += 1
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise ValueError(
                "the loss (`loss_fn(model, batch)` or `closure()`) must return a scalar tensor; "
                f"got {type(out).__name__} with shape {getattr(out, 'shape', None)}."
            )
        return out.reshape(())

    def loss(self) -> float:
        """``L(θ)`` at the model's current parameters (no graph is built)."""
        saved = self._buffers_saved()
        try:
            with torch.no_grad():
                total = sum(w * float(self._scalar(t)) for t, w in self._terms)
        finally:
            self._restore(saved)
        self.loss_count += 1
        return float(total)

    def value_and_gradient(self) -> tuple[float, Tensor]:
        """``(L(θ), ∇L(θ))``, the gradient as a flat vector (n,), from one pass over the batches."""
        self._check_autograd()
        saved = self._buffers_saved()
        acc = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        value = 0.0
        try:
            with torch.enable_grad():
                for term, w in self._terms:
                    loss = self._scalar(term)
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                    acc.add_(self._flat_or_zero(grads), alpha=w)
                    value += w * float(loss.detach())
        finally:
            self._restore(saved)
        self.gradient_count += 1
        return value, acc

    def gradient(self) -> Tensor:
        """``∇L(θ)`` as a flat vector (n,)."""
        return self.value_and_gradient()[1]

    def _flat_or_zero(self, grads: Sequence[Tensor | None]) -> Tensor:
        return self.flatten(
            [
                torch.zeros_like(p) if g is None else g
                for g, p in zip(grads, self.params, strict=True)
            ]
        )

    def hvp(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """``H·v`` with ``v`` given per parameter (as :meth:`unflatten` returns it)."""
        return self.unflatten(self.matvec(self.flatten(vectors)))

    def matvec(self, v: Tensor) -> Tensor:
        """``H·v`` for a flat vector ``v`` (n,): one double backward per probe batch."""
        self._check_autograd()
        vs = self.unflatten(v.detach())
        saved = self._buffers_saved()
        acc = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        try:
            with torch.enable_grad():
                for term, w in self._terms:
                    grads = torch.autograd.grad(
                        self._scalar(term), self.params, create_graph=True, allow_unused=True
                    )
                    dot = sum(
                        (g * u).sum() for g, u in zip(grads, vs, strict=True) if g is not None
                    )
                    if not isinstance(dot, Tensor) or not dot.requires_grad:
                        continue  # the gradient does not depend on θ: this batch adds H_b = 0
                    hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                    acc.add_(self._flat_or_zero(hv), alpha=w)
        finally:
            self._restore(saved)
        self.hvp_count += 1
        return acc

    def hessian(self) -> Tensor:
        """The dense Hessian (n, n), column by column (``n`` HVPs): for small ``n`` only."""
        eye = torch.eye(self.numel, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)
