"""Stochastic estimates of the Hessian trace: Hutchinson and Hutch++.

**Hutchinson** (Hutchinson 1990; PyHessian's trace, Yao et al. 2020): for Rademacher vectors
``v_i ∈ {±1}^n``, ``E[v_iᵀ H v_i] = tr(H)``, so with ``m`` HVPs

.. code-block:: text

    t̂ = (1/m) Σ_i v_iᵀ H v_i,        SE = std(v_iᵀ H v_i; ddof = 1) / √m.

Its variance is ``2(‖H‖_F² − Σ_i H_ii²)/m``: error ``O(1/√m)``, large when a few big eigenvalues
dominate (the usual Hessian spectrum: a handful of outliers and a bulk near zero).

**Hutch++** (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace Estimation",
SOSA 2021) spends a third of the budget on a sketch of the top of the spectrum, computes that
part exactly and uses Hutchinson only on the rest:

.. code-block:: text

    s = ⌊m/3⌋,  g = m − 2s
    S ∈ {±1}^{n×s};  Q = orth(H S)                            s HVPs (QR, Q is n×s)
    t̂ = tr(QᵀHQ) + (1/g) Σ_i w_iᵀ H w_i,   w_i = (I − QQᵀ) v_i      s + g HVPs

The first term is exact; the second is Hutchinson on ``(I−QQᵀ)H(I−QQᵀ)``, whose Frobenius norm
no longer holds the top ``s`` eigenvalues, so the error falls like ``O(1/m)`` for a PSD matrix.
The reported standard error is that of the second term, **conditional on the sketch Q** (it
does not include the randomness of ``S``). Memory: ``s`` vectors of size n (33 for the default
budget), against 2 for Hutchinson.

Default budget: 100 HVPs. Every result records its HVPs and forward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_int
from ._common import CostMeter, Seed, make_generator, random_vector
from .hvp import LinearOperator, as_operator

__all__ = ["TraceResult", "hutchinson", "hutchpp", "trace"]


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate.

    Attributes:
        estimate: the estimate of ``tr(H)``.
        std_error: its standard error (for Hutch++, of the Hutchinson part given the sketch).
        samples: float64 (g,), the quadratic forms ``vᵀHv`` of the Hutchinson part.
        exact_part: ``tr(QᵀHQ)`` of the Hutch++ sketch (0 for Hutchinson).
        hvp_count, forward_count: what the run cost.
        method: ``"hutchinson"`` or ``"hutch++"``.
    """

    estimate: float
    std_error: float
    samples: Tensor
    exact_part: float
    hvp_count: int
    forward_count: int
    method: str


def _hutchinson_samples(
    op: LinearOperator, count: int, gen: torch.Generator, basis: Tensor | None
) -> Tensor:
    out = []
    for _ in range(count):
        v = random_vector(op, gen, "rademacher")
        if basis is not None:
            v = v - basis @ (basis.T @ v)
        out.append(float(torch.dot(v, op.matvec(v))))
    return torch.tensor(out, dtype=torch.float64)


def _std_error(samples: Tensor) -> float:
    return float(samples.std(unbiased=True)) / math.sqrt(samples.numel())


def hutchinson(
    op: LinearOperator | Tensor, num_matvecs: int = 100, *, seed: Seed = 0
) -> TraceResult:
    """Hutchinson's estimate of ``tr(H)`` from ``num_matvecs`` (>= 2) Rademacher probes."""
    op = as_operator(op)
    m = check_int(num_matvecs, "num_matvecs", minimum=2)
    gen = make_generator(seed)
    meter = CostMeter(op)
    samples = _hutchinson_samples(op, m, gen, None)
    hvps, forwards = meter.spent()
    return TraceResult(
        estimate=float(samples.mean()),
        std_error=_std_error(samples),
        samples=samples,
        exact_part=0.0,
        hvp_count=hvps,
        forward_count=forwards,
        method="hutchinson",
    )


def hutchpp(op: LinearOperator | Tensor, num_matvecs: int = 100, *, seed: Seed = 0) -> TraceResult:
    """Hutch++'s estimate of ``tr(H)`` with ``num_matvecs`` (>= 4) HVPs in all."""
    op = as_operator(op)
    m = check_int(num_matvecs, "num_matvecs", minimum=4)
    gen = make_generator(seed)
    meter = CostMeter(op)
    s = m // 3
    g = m - 2 * s
    sketch = torch.stack(
        [op.matvec(random_vector(op, gen, "rademacher")) for _ in range(s)], dim=1
    )  # (n, s)
    q, _ = torch.linalg.qr(sketch)  # (n, min(n, s))
    del sketch
    exact = sum(
        float(torch.dot(q[:, i], op.matvec(q[:, i].contiguous()))) for i in range(q.shape[1])
    )
    samples = _hutchinson_samples(op, g, gen, q)
    hvps, forwards = meter.spent()
    return TraceResult(
        estimate=exact + float(samples.mean()),
        std_error=_std_error(samples),
        samples=samples,
        exact_part=exact,
        hvp_count=hvps,
        forward_count=forwards,
        method="hutch++",
    )


def trace(
    op: LinearOperator | Tensor, num_matvecs: int = 100, *, method: str = "hutch++", seed: Seed = 0
) -> TraceResult:
    """:func:`hutchpp` (default: lower error for the same budget) or :func:`hutchinson`."""
    check_choice(method, ("hutch++", "hutchinson"), "method")
    return (hutchpp if method == "hutch++" else hutchinson)(op, num_matvecs, seed=seed)
