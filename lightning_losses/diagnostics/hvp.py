"""The probe loss as a function of (some of) the model's parameters, and its Hessian-vector product.

Every curvature diagnostic in this package reads the Hessian only through products ``H·v``
(Pearlmutter's trick, as in PyHessian, Yao et al., "PyHessian: Neural Networks Through the Lens
of the Hessian", IEEE BigData 2020):

.. code-block:: text

    θ        = the selected parameters (``param_filter``), flattened to one vector (n,)
    L(θ)     = Σ_b (N_b / N) · L_b(θ)          L_b = loss_fn(model, batch_b), a batch *mean*
                                               N_b = batch size, N = Σ_b N_b
    ∇L(θ)    = Σ_b (N_b / N) · ∇L_b(θ)
    g_b      = ∇_θ L_b(θ), built with its own graph (``create_graph=True``)
    H·v      = Σ_b (N_b / N) · ∇_θ ⟨g_b, v⟩           (double backward, one per batch)

Weighting each batch mean by its size makes ``L`` the mean over all probe *samples*, whatever
the batch sizes (a short last batch, or the class-restricted batches of :mod:`.per_class`,
would otherwise be over-weighted). :class:`LossFunction` counts HVPs, gradients and forward
passes so every result can report what it cost.

**Reusing the gradient graph.** Building ``g_b`` costs one forward and one backward pass; the
product ``∇_θ ⟨g_b, v⟩`` is one more (double) backward through the graph of ``g_b``. For fixed
data and fixed ``θ`` that graph does not depend on ``v``, so it can be kept
(``retain_graph``) and each further HVP costs the double backward alone (about half to a third
of a rebuilt HVP). A kept graph holds the batch's activations and their gradient graph: about
the memory of one training step on that batch, for as long as it is kept. The policy:

* ``retain_graph=False``: every HVP rebuilds each batch's graph and frees it before the next
  batch; peak memory is one batch's graph;
* ``retain_graph=True``: the graph of every probe batch is kept (peak: all of them at once);
* ``retain_graph="auto"`` (default): a single probe batch keeps its graph (the peak is then the
  same as without reuse: that graph is built by every HVP anyway; it is only held between
  products); with several batches, graphs are kept in batch order while their total estimated
  size stays within ``max_graph_bytes`` (default 256 MiB), and the other batches are rebuilt
  for every HVP, so reuse adds at most ``max_graph_bytes`` to the peak. A ``closure`` keeps no
  graph under ``"auto"`` (it may draw new data on every call).

A graph's size is estimated when it is built, from the tensors autograd saves for it (a saved-
tensor hook counts each distinct storage once, leaving out the parameters and buffers, which
exist anyway) plus the gradients ``g_b``; it counts whole storages and the probe inputs, so it
errs on the large side. :attr:`LossFunction.graph_bytes` reports what is held.

Kept graphs are dropped (and rebuilt at the next HVP) as soon as a call sees that the model
changed since they were built: a parameter or buffer modified in place (its version counter
``t._version`` moved: ``copy_``, ``add_``, optimizer steps and ``load_state_dict`` all move
it), a parameter or buffer replaced by another tensor or given another storage
(``p.data = ...``, ``model.to(...)``), a module's train/eval mode, or the autocast state.
Changes that bypass the version counter (writes through ``.data``, and the running statistics
that BatchNorm updates in a train-mode forward run elsewhere) are not seen: call
:meth:`LossFunction.release` after them. :meth:`LossFunction.release` also frees the graphs on
request; otherwise they are freed with the object. The probe batches must not be modified in
place while graphs are kept.

Contract with the model (what the Lightning callback relies on):

* the train/eval mode is **never** changed here: the caller decides (BatchNorm in eval mode for
  a deterministic loss); dropout left in train mode makes ``L`` random (a kept graph fixes the
  dropout masks drawn when it was built, so every HVP through it sees the same network);
* parameters are never modified; buffers (BatchNorm running statistics) are saved before and
  restored after every evaluation that runs a forward pass, so a model left in train mode does
  not drift. Only buffers whose values changed are written back (a write would invalidate the
  graphs that saved them); a graph whose build changed a buffer (train-mode BatchNorm) is used
  once and never kept;
* ``.grad`` fields are untouched (``torch.autograd.grad`` is used, never ``.backward()``);
* it must run with autograd available: under ``torch.inference_mode`` a clear error is raised.

Counters count what is really done: an HVP through a kept graph adds to ``hvp_count`` but not
to ``forward_count``.

Flat vectors use the parameters' device and (promoted) dtype; ``n`` is the number of selected
scalar parameters, and every algorithm here keeps a handful of such vectors (the memory each
needs is documented with it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._checks import check_int, check_tensor

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


DEFAULT_MAX_GRAPH_BYTES = 256 * 2**20
"""Default bound on the gradient graphs kept by ``retain_graph="auto"`` with several batches."""


class _Graph:
    """The gradient graph of one probe batch: the outputs ``g_b`` that depend on ``θ`` and the
    indices of their parameters (``outputs`` empty: the gradient is constant, ``H_b = 0``)."""

    __slots__ = ("index", "nbytes", "outputs")

    def __init__(self, outputs: list[Tensor], index: list[int], nbytes: int) -> None:
        self.outputs = outputs
        self.index = index
        self.nbytes = nbytes


class _SavedBytes:
    """Saved-tensor hooks that add up the distinct storages autograd saves, except ``skip``."""

    def __init__(self, skip: Iterable[Tensor]) -> None:
        self.seen: set[tuple[str, int]] = set()
        for t in skip:
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self.seen.add(_storage_key(t))
        self.nbytes = 0

    def pack(self, t: Tensor) -> Tensor:
        try:
            key, nbytes = _storage_key(t), t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
            key, nbytes = ("tensor", id(t)), t.numel() * t.element_size()
        if key not in self.seen:
            self.seen.add(key)
            self.nbytes += nbytes
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


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
        retain_graph: keep each batch's gradient graph between HVPs: ``True``, ``False`` or
            ``"auto"`` (default; see "Reusing the gradient graph" in the module docstring).
        max_graph_bytes: bound (bytes, >= 0) on the graphs that ``"auto"`` keeps when there are
            several batches; default 256 MiB.

    Counters (running totals, read them before and after a run): ``hvp_count``,
    ``gradient_count``, ``loss_count`` (calls of :meth:`matvec`, :meth:`value_and_gradient`,
    :meth:`loss`)
    and ``forward_count`` (model forward passes, one per probe batch per call, none for a
    batch whose kept graph an HVP reuses).

    Example:
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> fn = LossFunction(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [(x, y)])
        >>> fn.numel, fn.matvec(torch.ones(4)).shape
        (4, torch.Size([4]))
        >>> _ = fn.matvec(torch.ones(4))  # the graph is reused: no forward pass
        >>> fn.hvp_count, fn.forward_count
        (2, 1)
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
        retain_graph: bool | str = "auto",
        max_graph_bytes: int = DEFAULT_MAX_GRAPH_BYTES,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
        if not (isinstance(retain_graph, bool) or retain_graph == "auto"):
            raise ValueError(f'`retain_graph` must be True, False or "auto"; got {retain_graph!r}.')
        self.max_graph_bytes = check_int(max_graph_bytes, "max_graph_bytes", minimum=0)
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
        self.retain_graph = retain_graph
        self._from_closure = closure is not None
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
        self._graphs: dict[int, _Graph] = {}
        self._graph_key: tuple | None = None
        self._sizes: dict[int, int] = {}  # estimated graph size of each batch, once measured

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

    # -- kept graphs --------------------------------------------------------------------------
    @property
    def retained_graphs(self) -> int:
        """Number of probe batches whose gradient graph is kept now."""
        return len(self._graphs)

    @property
    def graph_bytes(self) -> int:
        """Estimated bytes held by the kept graphs (see the module docstring)."""
        return sum(g.nbytes for g in self._graphs.values())

    def release(self) -> None:
        """Free the kept gradient graphs now (the next HVP rebuilds what it needs)."""
        self._graphs.clear()
        self._graph_key = None

    def _state_key(self) -> tuple:
        """What a kept graph depends on besides the probe data: the identity, storage and
        version of every parameter and buffer of the model, the modules' modes and the autocast
        state."""
        key: list[object] = [torch.is_autocast_enabled(self.device.type)]
        for mod in self.model.modules():
            key.append(mod.training)
            for t in mod._parameters.values():
                if t is not None:
                    key.append((id(t), t.data_ptr(), t._version))
            for t in mod._buffers.values():
                if t is not None:
                    key.append((id(t), t.data_ptr(), t._version))
        return tuple(key)

    def _drop_stale_graphs(self) -> None:
        if self._graphs and self._state_key() != self._graph_key:
            self.release()

    def _wants_to_keep(self, i: int) -> tuple[bool, bool]:
        """``(keep, measure)`` for a graph of batch ``i`` about to be built."""
        if self.retain_graph is False:
            return False, False
        if self.retain_graph is True:
            return True, True
        if self._from_closure:
            return False, False
        if len(self._terms) == 1:
            return True, True
        room = self.max_graph_bytes - self.graph_bytes
        known = self._sizes.get(i)
        if known is not None and known > room:
            return False, False
        return True, True

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
    def _changed(saved: list[tuple[Tensor, Tensor]]) -> list[bool]:
        """Which buffers differ from their saved copy (one device synchronisation at most)."""
        if not saved:
            return []
        flags = [
            torch.ne(b, c).any() if b.shape == c.shape else torch.tensor(True, device=b.device)
            for b, c in saved
        ]
        if len({f.device for f in flags}) == 1:
            return [bool(f) for f in torch.stack(flags).tolist()]
        return [bool(f) for f in flags]

    @classmethod
    def _restore(cls, saved: list[tuple[Tensor, Tensor]]) -> None:
        """Write back the buffers that changed (writing an unchanged one would move its version
        counter and invalidate the graphs that saved it)."""
        with torch.no_grad():
            for (b, copy), changed in zip(saved, cls._changed(saved), strict=True):
                if changed:
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
        self._drop_stale_graphs()
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
        self._drop_stale_graphs()
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

    def _build(self, term: Callable[[], Tensor], measure: bool) -> _Graph:
        """Forward pass and first backward of one batch, keeping the graph of ``g_b``."""
        meter = None
        if measure:
            meter = _SavedBytes([*self.model.parameters(), *self.model.buffers()])
        with torch.enable_grad():
            if meter is None:
                grads = torch.autograd.grad(
                    self._scalar(term), self.params, create_graph=True, allow_unused=True
                )
            else:
                with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
                    grads = torch.autograd.grad(
                        self._scalar(term), self.params, create_graph=True, allow_unused=True
                    )
        index = [j for j, g in enumerate(grads) if g is not None and g.requires_grad]
        outputs = [grads[j] for j in index]
        nbytes = 0 if meter is None else meter.nbytes
        nbytes += sum(g.numel() * g.element_size() for g in outputs)
        return _Graph(outputs, index, nbytes)

    def matvec(self, v: Tensor) -> Tensor:
        """``H·v`` for a flat vector ``v`` (n,): one double backward per probe batch, after a
        forward and a first backward for each batch whose graph is not kept."""
        self._check_autograd()
        vs = self.unflatten(v.detach())
        acc: Tensor | None = None
        self._drop_stale_graphs()
        if not self._graphs:
            self._graph_key = self._state_key()
        saved: list[tuple[Tensor, Tensor]] | None = None
        try:
            for i, (term, w) in enumerate(self._terms):
                graph = self._graphs.get(i)
                keep = graph is not None
                if graph is None:
                    if saved is None:
                        saved = self._buffers_saved()
                    keep, measure = self._wants_to_keep(i)
                    graph = self._build(term, measure)
                    if measure:
                        self._sizes[i] = graph.nbytes
                    keep = keep and self._may_keep(i, graph, saved)
                    if keep:
                        self._graphs[i] = graph
                if not graph.outputs:
                    continue  # the gradient does not depend on θ: this batch adds H_b = 0
                with torch.enable_grad():
                    hv = torch.autograd.grad(
                        graph.outputs,
                        self.params,
                        grad_outputs=[vs[j] for j in graph.index],
                        retain_graph=keep,
                        allow_unused=True,
                    )
                flat = self._flat_or_zero(hv)  # a new tensor: ours to scale in place
                if acc is None:
                    acc = flat if w == 1.0 else flat.mul_(w)
                else:
                    acc.add_(flat, alpha=w)
        finally:
            if saved is not None:
                self._restore(saved)
        self.hvp_count += 1
        if acc is None:  # every batch has H_b = 0
            return torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        return acc

    def _may_keep(self, i: int, graph: _Graph, saved: list[tuple[Tensor, Tensor]]) -> bool:
        """Whether the graph just built for batch ``i`` may be kept: within the policy's bound
        and its build left every buffer as it was (restoring one would invalidate it)."""
        if (
            self.retain_graph == "auto"
            and len(self._terms) > 1
            and self.graph_bytes + graph.nbytes > self.max_graph_bytes
        ):
            return False
        return not any(self._changed(saved))

    def hessian(self) -> Tensor:
        """The dense Hessian (n, n), column by column (``n`` HVPs): for small ``n`` only."""
        eye = torch.eye(self.numel, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)
