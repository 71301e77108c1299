"""Top-k Hessian eigenvalues: deflated power iteration and Lanczos (the better default).

Both read ``H`` only through products ``H·v`` (:class:`~.hvp.LossFunction` or any
:class:`~.hvp.LinearOperator`). PyHessian (Yao et al., IEEE BigData 2020) reports sharpness as
the largest Hessian eigenvalues computed this way.

**Power iteration with Gram–Schmidt deflation** (eigenpair ``i = 1..k``, PyHessian's method):

.. code-block:: text

    v ← random, v ⟂ u_1..u_{i-1}, ‖v‖ = 1
    repeat:  w = H v;  λ = vᵀw;  w ← w − Σ_j (u_jᵀw) u_j     (deflation)
             stop when |λ − λ_prev| < tol·|λ_prev|;  v ← w / ‖w‖
    u_i = v,  λ_i = λ

It converges to the eigenvalue of largest **magnitude** (of the deflated operator) at the rate
``|λ_{i+1}/λ_i|`` per HVP, slowly when eigenvalues cluster, and the stopping rule (relative
change of ``λ``) can stop early on a plateau. Cost: ``Σ_i iterations_i`` HVPs; memory ``k + 2``
vectors of size n.

**Lanczos with full reorthogonalisation** (Golub & Van Loan, *Matrix Computations*, §10.1):

.. code-block:: text

    q_1 = v / ‖v‖;   for j = 1..m:
        w = H q_j − β_{j-1} q_{j-1};   α_j = q_jᵀ w;   w ← w − α_j q_j
        w ← w − Q_j (Q_jᵀ w)                    (full reorthogonalisation; Q_j = [q_1..q_j])
        if ‖w‖ < ‖w_before‖ / √2:  w ← w − Q_j (Q_jᵀ w)     (once more, DGKS)
        β_j = ‖w‖;   q_{j+1} = w / β_j
    T_m = tridiag(β, α, β) = S diag(θ) Sᵀ        Ritz values θ, Ritz vectors y_i = Q_m s_i
    ‖H y_i − θ_i y_i‖ = β_m |s_{m,i}|            (the residual costs nothing)

It stops when the wanted ``k`` Ritz pairs have ``β_m |s_{m,i}| < tol·|θ_i|`` (a bound on the
eigenvector residual, stricter than a change in θ), after ``max_iter`` steps, or when the Krylov
space is exhausted (``β ≈ 0``; a fresh random start orthogonal to ``Q`` then continues, so that a
matrix such as ``c·I`` still yields ``k`` values). Lanczos needs far fewer HVPs than power
iteration for the same accuracy (its error falls like a Chebyshev polynomial of the gap, not a
power of the ratio) and finds the top-k together; the price is memory: all ``m`` Lanczos vectors
are kept (``m·n`` numbers, e.g. 100 steps × 25.6 M parameters × 4 B ≈ 10 GB for ResNet-50,
stored in a few blocks, at most ``max(3, m/4)`` rows ahead of use), and time: the
reorthogonalisation reads them all at every step (two matrix-vector products with ``Q_j``),
``O(j·n)`` work that matters only when an HVP is cheap (a small MLP). The projection is
classical Gram–Schmidt over the whole basis, repeated when it removed more than ``1 − 1/√2`` of
the norm (the criterion of Daniel, Gragg, Kaufman & Stewart, Math. Comp. 1976, which ARPACK's
Lanczos uses): the second pass restores orthogonality after cancellation, and is skipped when
there was none (the usual case: the three-term recurrence has already removed almost all of
``w``'s component along ``Q_j``).

Defaults: ``max_iter = 100``, ``tol = 1e-3`` (PyHessian's). The comparisons are strict, so
``tol = 0`` runs exactly ``max_iter`` HVPs per eigenpair even once the estimate stops changing in
floating point (as PyHessian's ``tol = -inf``), which equal-work comparisons need. Results are
seeded (``seed``) and report the HVPs and forward passes they cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from ._common import CostMeter, Seed, check_k, make_generator, random_vector
from .hvp import LinearOperator, as_operator

__all__ = [
    "EigenResult",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "top_eigenvalues",
]

WHICH = ("largest", "smallest", "magnitude")


@dataclass(frozen=True)
class EigenResult:
    """Top-k eigenpairs of an operator.

    Attributes:
        eigenvalues: float64 (k,), in the order asked for (descending for ``"largest"`` and
            ``"magnitude"`` by value / by magnitude, ascending for ``"smallest"``).
        eigenvectors: (k, n) unit vectors in the operator's dtype, or ``None`` when not asked.
        residuals: float64 (k,), ``‖H u_i − λ_i u_i‖`` of each returned pair.
        iterations: HVP iterations of the algorithm (all deflation rounds for power iteration,
            Lanczos steps for Lanczos).
        hvp_count, forward_count: what the run cost (forward passes over probe batches).
        converged: every pair met the stopping rule before ``max_iter``.
        method: ``"power"`` or ``"lanczos"``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    iterations: int
    hvp_count: int
    forward_count: int
    converged: bool
    method: str


def _check_common(op: LinearOperator | Tensor, k: int, max_iter: int, tol: float):
    op = as_operator(op)
    k = check_k(k, op.numel)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tol = check_positive(tol, "tol", allow_zero=True)
    return op, k, max_iter, tol


def _orthogonalise(w: Tensor, basis: list[Tensor]) -> Tensor:
    """Modified Gram–Schmidt of ``w`` against orthonormal ``basis``, in place."""
    for q in basis:
        w.sub_(q, alpha=float(torch.dot(q, w)))
    return w


_DGKS = 2**-0.5
"""Reorthogonalise again when a pass leaves less than this fraction of the norm (Daniel, Gragg,
Kaufman & Stewart, Math. Comp. 1976; the test ARPACK applies in its Lanczos iteration)."""


class _Basis:
    """Orthonormal vectors (n,) kept as the rows of a few preallocated blocks.

    Projecting a vector out of the basis is then two matrix-vector products per block
    (``w ← w − Q_bᵀ(Q_b w)``, classical Gram–Schmidt, block by block) instead of two small
    operations per vector. A new block holds a quarter of the rows stored so far (at least 4,
    never more than ``capacity`` in all), so at most ``max(3, m/4)`` rows are allocated unused.
    """

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, capacity: int):
        self.numel, self.dtype, self.device = numel, dtype, device
        self.capacity = capacity
        self.blocks: list[Tensor] = []
        self.used = 0  # rows filled in the last block
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, q: Tensor) -> None:
        if not self.blocks or self.used == self.blocks[-1].shape[0]:
            rows = min(max(4, self.size // 4), self.capacity - self.size)
            if rows <= 0:
                raise RuntimeError("Lanczos basis is full (more vectors than its capacity).")
            self.blocks.append(torch.empty(rows, self.numel, dtype=self.dtype, device=self.device))
            self.used = 0
        self.blocks[-1][self.used].copy_(q)
        self.used += 1
        self.size += 1

    def _filled(self) -> list[Tensor]:
        if not self.blocks:
            return []
        return [*self.blocks[:-1], self.blocks[-1][: self.used]]

    def project_out(self, w: Tensor) -> Tensor:
        """``w ← w − Σ_i (q_iᵀw) q_i`` block by block (in place)."""
        for q in self._filled():
            w.sub_(q.T @ (q @ w))
        return w

    def vectors(self) -> list[Tensor]:
        """The stored vectors, as views (m of them, in order)."""
        return [row for block in self._filled() for row in block]

    def combine(self, coefficients: Tensor) -> Tensor:
        """``C Q`` for ``C`` (k, m): linear combinations of the stored vectors, (k, n)."""
        out = torch.zeros(coefficients.shape[0], self.numel, dtype=self.dtype, device=self.device)
        start = 0
        for q in self._filled():
            c = coefficients[:, start : start + q.shape[0]].to(dtype=self.dtype, device=self.device)
            out.addmm_(c, q)
            start += q.shape[0]
        return out


def power_iteration(
    op: LinearOperator | Tensor,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: Seed = 0,
    return_eigenvectors: bool = True,
) -> EigenResult:
    """The ``k`` largest-magnitude eigenvalues by power iteration with deflation.

    Args:
        op: a :class:`~.hvp.LossFunction`, a :class:`~.hvp.LinearOperator` or a square matrix.
        k: number of eigenpairs, ``1 <= k <= n``.
        max_iter: HVPs per eigenpair at most (>= 1).
        tol: stop when the Rayleigh quotient changes by less than ``tol`` relatively (0: never,
            ``max_iter`` HVPs are spent; a zero vector ``H v`` still ends the run).
        seed: integer seed or CPU ``torch.Generator`` for the start vectors.
        return_eigenvectors: keep the (k, n) eigenvectors in the result.
    """
    op, k, max_iter, tol = _check_common(op, k, max_iter, tol)
    gen = make_generator(seed)
    meter = CostMeter(op)
    found: list[Tensor] = []
    values, residuals = [], []
    iterations, converged = 0, True
    for _ in range(k):
        v = _orthogonalise(random_vector(op, gen, "gaussian"), found)
        v = v / v.norm()
        lam_prev, done, lam, res = None, False, 0.0, 0.0
        for _ in range(max_iter):
            w = op.matvec(v)
            iterations += 1
            lam = float(torch.dot(v, w))
            w = _orthogonalise(w, found)
            res = float((w - lam * v).norm())
            norm = w.norm()
            if norm == 0 or (lam_prev is not None and abs(lam - lam_prev) < tol * abs(lam_prev)):
                done = True
                break
            lam_prev = lam
            v = w / norm
        converged &= done
        found.append(v)
        values.append(lam)
        residuals.append(res)
    hvps, forwards = meter.spent()
    return EigenResult(
        eigenvalues=torch.tensor(values, dtype=torch.float64),
        eigenvectors=torch.stack(found) if return_eigenvectors else None,
        residuals=torch.tensor(residuals, dtype=torch.float64),
        iterations=iterations,
        hvp_count=hvps,
        forward_count=forwards,
        converged=converged,
        method="power",
    )


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _lanczos_run(
    op: LinearOperator,
    start: Tensor,
    steps: int,
    reorthogonalize: bool,
    restart: Callable[[], Tensor] | None,
    stop: Callable[[list[float], list[float], float], bool] | None,
) -> tuple[list[float], list[float], _Basis | None]:
    """:func:`lanczos_tridiagonal`, returning the basis as a :class:`_Basis` (no copy)."""
    eps = torch.finfo(op.dtype).eps ** 0.5
    q = start / start.norm()
    q_prev: Tensor | None = None
    basis = _Basis(op.numel, q.dtype, q.device, steps) if reorthogonalize else None
    if basis is not None:
        basis.append(q)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(steps):
        w = op.matvec(q)
        alpha = float(torch.dot(q, w))
        w.sub_(q, alpha=alpha)
        if q_prev is not None:
            w.sub_(q_prev, alpha=betas[-1])
        if basis is not None:
            before = float(w.norm())
            basis.project_out(w)
            beta = float(w.norm())
            if beta < _DGKS * before:  # cancellation: a second pass restores orthogonality
                basis.project_out(w)
                beta = float(w.norm())
        else:
            beta = float(w.norm())
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        last = j == steps - 1 or len(alphas) == op.numel
        if beta <= eps * scale and not last and restart is not None and basis is not None:
            w = basis.project_out(basis.project_out(restart()))
            beta_next, q_next = 0.0, w / w.norm()
        elif beta <= eps * scale:
            betas.append(beta)
            break
        else:
            beta_next, q_next = beta, w / beta
        betas.append(beta_next)
        if last or (stop is not None and stop(alphas, betas, beta)):
            break
        q_prev = q if beta_next > 0 else None
        q = q_next
        if basis is not None:
            basis.append(q)
    return alphas, betas, basis


def lanczos_tridiagonal(
    op: LinearOperator,
    start: Tensor,
    steps: int,
    *,
    reorthogonalize: bool = True,
    restart: Callable[[], Tensor] | None = None,
    stop: Callable[[list[float], list[float], float], bool] | None = None,
) -> tuple[list[float], list[float], list[Tensor] | None]:
    """Run up to ``steps`` Lanczos steps from ``start``; return ``(alphas, betas, basis)``.

    ``alphas`` (m,) and ``betas`` (m,) define ``T_m`` (``betas[m-1]`` is the residual norm
    ``β_m``); ``basis`` holds the m Lanczos vectors when ``reorthogonalize`` (else ``None``: only
    three vectors are alive at any time, and orthogonality is lost in floating point, which
    duplicates converged Ritz values but keeps the quadrature of :mod:`.density` usable).

    On an (almost) invariant Krylov space (``β ≤ √eps·‖T‖``) the run stops, unless ``restart``
    gives a new start vector, which is orthogonalised against the basis (``β`` is then 0: T is
    block diagonal). ``stop(alphas, betas, beta)`` is asked after each step.
    """
    alphas, betas, basis = _lanczos_run(op, start, steps, reorthogonalize, restart, stop)
    if basis is None:
        return alphas, betas, None
    return alphas, betas, basis.vectors()[: len(alphas)]


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    if which == "largest":
        return torch.argsort(theta, descending=True)[:k]
    if which == "smallest":
        return torch.argsort(theta)[:k]
    return torch.argsort(theta.abs(), descending=True)[:k]


def lanczos(
    op: LinearOperator | Tensor,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    which: str = "largest",
    seed: Seed = 0,
    return_eigenvectors: bool = True,
) -> EigenResult:
    """The ``k`` extreme eigenvalues by Lanczos with full reorthogonalisation.

    Args:
        op: a :class:`~.hvp.LossFunction`, a :class:`~.hvp.LinearOperator` or a square matrix.
        k: number of eigenpairs, ``1 <= k <= n``.
        max_iter: Lanczos steps (= HVPs) at most; ``>= k`` (and at most ``n`` are taken).
        tol: stop when every wanted Ritz pair has residual ``< tol·|θ_i|`` (0: never, all
            ``max_iter`` steps are taken).
        which: ``"largest"`` (algebraic, the sharpness), ``"smallest"`` (the most negative:
            saddle directions) or ``"magnitude"`` (what power iteration finds).
        seed: integer seed or CPU ``torch.Generator`` for the start vector(s).
        return_eigenvectors: form the (k, n) Ritz vectors ``Q s_i`` in the result.
    """
    op, k, max_iter, tol = _check_common(op, k, max_iter, tol)
    check_choice(which, WHICH, "which")
    if max_iter < k:
        raise ValueError(f"`max_iter` must be >= k (= {k}) for Lanczos; got {max_iter}.")
    gen = make_generator(seed)
    meter = CostMeter(op)
    state = {"converged": False}

    def stop(alphas: list[float], betas: list[float], beta: float) -> bool:
        if len(alphas) < k:
            return False
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        idx = _select(theta, k, which)
        res = (beta * s[-1, idx]).abs()
        state["converged"] = bool((res < tol * theta[idx].abs()).all())
        return state["converged"]

    alphas, betas, basis = _lanczos_run(
        op,
        random_vector(op, gen, "gaussian"),
        min(max_iter, op.numel),
        True,
        lambda: random_vector(op, gen, "gaussian"),
        stop if tol > 0 else None,  # with tol = 0 the rule can never hold: skip its eigh
    )
    assert basis is not None and len(basis) >= len(alphas)
    theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
    idx = _select(theta, k, which)
    residuals = (betas[-1] * s[-1, idx]).abs()
    # Krylov space exhausted (β ≈ 0 or m = n): the Ritz pairs are exact up to rounding.
    exhausted = len(alphas) == op.numel
    converged = state["converged"] or exhausted or bool((residuals < tol * theta[idx].abs()).all())
    vectors = None
    if return_eigenvectors:
        coefficients = torch.zeros(len(idx), len(basis), dtype=s.dtype)
        coefficients[:, : len(alphas)] = s[:, idx].T
        vectors = basis.combine(coefficients)  # (k, n), Ritz vectors Q_m s_i
    hvps, forwards = meter.spent()
    return EigenResult(
        eigenvalues=theta[idx].clone(),
        eigenvectors=vectors,
        residuals=residuals,
        iterations=len(alphas),
        hvp_count=hvps,
        forward_count=forwards,
        converged=converged,
        method="lanczos",
    )


def top_eigenvalues(
    op: LinearOperator | Tensor, k: int = 1, *, method: str = "lanczos", **kwargs
) -> EigenResult:
    """:func:`lanczos` (default) or :func:`power_iteration` by name; ``kwargs`` go through."""
    check_choice(method, ("lanczos", "power"), "method")
    return (lanczos if method == "lanczos" else power_iteration)(op, k, **kwargs)
