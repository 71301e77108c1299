"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization via Hessian
Eigenvalue Density" (ICML 2019); also PyHessian's ``density`` (Yao et al. 2020). The spectral
density ``φ(t) = (1/n) Σ_i δ(t − λ_i)`` is smoothed by a Gaussian ``g_σ`` and estimated as

.. code-block:: text

    φ_σ(t) = (1/n) Σ_i g_σ(t − λ_i) = (1/n) tr g_σ(t − H) = E_v[ vᵀ g_σ(t − H) v ] / n
           ≈ (1/n_v) Σ_{l=1..n_v} Σ_{j=1..m} τ_{lj}² · g_σ(t − θ_{lj})

    v_l  : Rademacher, q_1 = v_l/‖v_l‖ (= v_l/√n), so E[q_1 q_1ᵀ] = I/n
    T_m  = S diag(θ) Sᵀ from m Lanczos steps started at q_1   (see :mod:`.eigen`)
    θ_lj : Ritz values (the quadrature nodes), τ_lj = S[0, j] (Gauss quadrature weights, Σ_j τ² = 1)

The m-node Gauss quadrature is exact for polynomials of degree ``≤ 2m − 1``, so the moments of
the estimated density are unbiased for the true ones: ``Σ_j τ_j² θ_j^p = q_1ᵀ H^p q_1`` and
``E[q_1ᵀ H^p q_1] = tr(H^p)/n`` (``p ≤ 2m − 1``); in particular the total mass is 1 and the mean
is ``tr(H)/n``. The only noise is the choice of ``v`` (variance falls like ``1/(n·n_v)``).

Memory and cost: each run takes ``m`` HVPs (fewer when its Krylov space is exhausted earlier,
``β ≈ 0``: then the quadrature is already exact for every polynomial). With full
reorthogonalisation (default) a run keeps its ``m`` Lanczos vectors (``m·n`` numbers;
100 × 25.6 M × 4 B ≈ 10 GB for ResNet-50) and frees them before the next run, so memory does
not grow with ``n_v``. With ``reorthogonalize=False`` only three vectors are alive (``3·n``);
orthogonality is then lost once Ritz values converge, which produces duplicated ("ghost")
copies of the outliers and splits their weight between the copies, while the low moments of
the quadrature stay accurate (Paige's analysis of Lanczos in floating point; tested here for
p ≤ 2).

Defaults (PyHessian): ``num_steps = 100``, ``num_runs = 1``, ``σ² = 1e-5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int, check_positive, check_tensor
from ._common import CostMeter, Seed, make_generator, random_vector
from .eigen import _tridiagonal, lanczos_tridiagonal
from .hvp import LinearOperator, as_operator

__all__ = ["DEFAULT_SIGMA", "SpectralDensity", "spectral_density"]

DEFAULT_SIGMA = math.sqrt(1e-5)
"""Width of the Gaussian kernel: PyHessian's ``sigma_squared = 1e-5``."""


@dataclass(frozen=True)
class SpectralDensity:
    """Quadrature nodes and weights of an SLQ estimate, and the smoothed density they define.

    Attributes:
        nodes: float64 (R,), the Ritz values of all runs, concatenated.
        weights: float64 (R,), ``τ²/n_v``; they sum to 1.
        num_runs: ``n_v``.
        sigma: default width of the Gaussian kernel.
        hvp_count, forward_count: what the estimate cost.
    """

    nodes: Tensor
    weights: Tensor
    num_runs: int
    sigma: float
    hvp_count: int
    forward_count: int

    def moment(self, p: int) -> float:
        """``Σ_j w_j θ_j^p``: an unbiased estimate of ``tr(H^p)/n`` for ``p <= 2m − 1``."""
        return float((self.weights * self.nodes ** check_int(p, "p", minimum=0)).sum())

    def density(self, grid: Tensor, sigma: float | None = None) -> Tensor:
        """``φ_σ(t) = Σ_j w_j g_σ(t − θ_j)`` at each point of ``grid`` (any shape), float64."""
        check_tensor(grid, "grid")
        s = self.sigma if sigma is None else check_positive(sigma, "sigma")
        t = grid.detach().to(device="cpu", dtype=torch.float64).unsqueeze(-1)
        kernel = torch.exp(-0.5 * ((t - self.nodes) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        return kernel @ self.weights

    def grid(self, num_points: int = 1000, padding: float = 0.01) -> Tensor:
        """An evenly spaced grid over ``[min θ − pad, max θ + pad]``; ``pad`` is
        ``padding·(max θ − min θ)`` plus ``5σ``, so the Gaussian tails fit."""
        check_int(num_points, "num_points", minimum=2)
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        pad = check_positive(padding, "padding", allow_zero=True) * (hi - lo) + 5 * self.sigma
        return torch.linspace(lo - pad, hi + pad, num_points, dtype=torch.float64)

    def histogram(self, edges: Tensor, sigma: float | None = None) -> Tensor:
        """Mass of the density in each bin ``[edges[i], edges[i+1])``, float64 (B,).

        With ``sigma=0`` the nodes are point masses (no smoothing); otherwise the Gaussian mass
        ``Φ((b − θ)/σ) − Φ((a − θ)/σ)`` of each node is summed.
        """
        check_tensor(edges, "edges")
        e = edges.detach().to(device="cpu", dtype=torch.float64)
        if e.ndim != 1 or e.numel() < 2 or not bool((e[1:] > e[:-1]).all()):
            raise ValueError(
                f"`edges` must be a strictly increasing 1-D tensor with >= 2 entries; got {e}."
            )
        s = self.sigma if sigma is None else check_positive(sigma, "sigma", allow_zero=True)
        if s == 0:
            cdf = (self.nodes.unsqueeze(0) < e.unsqueeze(1)).double()
        else:
            cdf = torch.special.ndtr((e.unsqueeze(1) - self.nodes) / s)
        return (cdf[1:] - cdf[:-1]) @ self.weights

    @property
    def negative_mass(self) -> float:
        """Estimated fraction of eigenvalues below 0 (unsmoothed): saddle-point indicator."""
        return float(self.weights[self.nodes < 0].sum())


def spectral_density(
    op: LinearOperator | Tensor,
    num_runs: int = 1,
    num_steps: int = 100,
    *,
    sigma: float = DEFAULT_SIGMA,
    reorthogonalize: bool = True,
    seed: Seed = 0,
) -> SpectralDensity:
    """SLQ estimate of the eigenvalue density of ``op`` (see the module docstring).

    Args:
        op: a :class:`~.hvp.LossFunction`, a :class:`~.hvp.LinearOperator` or a square matrix.
        num_runs: ``n_v`` random start vectors (>= 1).
        num_steps: Lanczos steps ``m`` per run (>= 1; at most ``n`` are taken).
        sigma: Gaussian kernel width for :meth:`SpectralDensity.density` (> 0).
        reorthogonalize: full reorthogonalisation (``m`` vectors per run) or none (3 vectors).
        seed: integer seed or CPU ``torch.Generator``.
    """
    op = as_operator(op)
    runs = check_int(num_runs, "num_runs", minimum=1)
    steps = check_int(num_steps, "num_steps", minimum=1)
    sigma = check_positive(sigma, "sigma")
    gen = make_generator(seed)
    meter = CostMeter(op)
    nodes, weights = [], []
    for _ in range(runs):
        alphas, betas, _ = lanczos_tridiagonal(
            op,
            random_vector(op, gen, "rademacher"),
            min(steps, op.numel),
            reorthogonalize=reorthogonalize,
        )
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(s[0] ** 2 / runs)
    hvps, forwards = meter.spent()
    return SpectralDensity(
        nodes=torch.cat(nodes),
        weights=torch.cat(weights),
        num_runs=runs,
        sigma=sigma,
        hvp_count=hvps,
        forward_count=forwards,
    )
