"""Loss landscape probes: 1-D and 2-D slices, linear interpolation, ε-sharpness.

All functions evaluate a :class:`~.hvp.LossFunction` (its probe batches, its size weighting)
after moving some weights, and **always** put every moved tensor back bit for bit in a
``try/finally``, so that an exception inside the loss (or a keyboard interrupt) leaves the
model exactly as it was. The model's train/eval mode is never touched. Each result records the
forward passes it cost (and no HVPs).

**Slices** (Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018), with
directions from :mod:`.directions`:

.. code-block:: text

    line:   f(α)    = L(θ + α d),          α ∈ linspace(−distance, distance, num_points)
    plane:  f(α, β) = L(θ + α δ + β η),    α, β on the same kind of grid

Defaults follow loss-landscapes (line: distance 0.1; plane: distance 1, 20 × 20) but use an odd
number of points (51 and 21 × 21) so that the grid holds α = 0, the unperturbed model, exactly.

**Linear interpolation and barrier** (linear mode connectivity; Frankle et al., ICML 2020;
Entezari et al., ICLR 2022):

.. code-block:: text

    θ(t)    = (1 − t) θ_A + t θ_B,    t ∈ linspace(0, 1, num_points)
    barrier = max_t [ L(θ(t)) − ((1 − t) L(θ_A) + t L(θ_B)) ]   (≥ 0: the grid holds t = 0, 1)

the height of the path above the straight line between the end losses. (Some papers use
``max_t L(θ(t)) − max(L_A, L_B)`` or ``− (L_A + L_B)/2`` instead; both can be read off
:attr:`Interpolation.losses`.) Every floating-point entry of the two state dicts is
interpolated, BatchNorm running statistics included; integer entries (``num_batches_tracked``)
come from the nearer end. Interpolated running statistics are not the statistics of the
interpolated network, which can inflate the barrier of BN networks: re-estimate them (a pass in
train mode over training data) for a faithful barrier.

**ε-sharpness** (Keskar et al., "On Large-Batch Training for Deep Learning: Generalization Gap
and Sharp Minima", ICLR 2017, metric (4) with A = I):

.. code-block:: text

    C_ε      = { z : |z_i| ≤ b_i },   b_i = ε (|θ_i| + 1)          (box relative to the weights)
    value    = max_{z ∈ C_ε} L(θ + z) − L(θ)
    relative = 100 · value / (1 + L(θ))                              (Keskar's φ, in percent)

The maximum is approached by projected sign-gradient ascent from z = 0 (Keskar et al. use
L-BFGS-B; sign ascent is the natural steepest ascent for a box):

.. code-block:: text

    z ← clip(z + η · b ⊙ sign(∇L(θ + z)), −b, b),   η = min(1, 2.5 / steps)

and ``value`` is the largest increase over all evaluated points, z = 0 included, so it is a
lower bound of the true maximum, ≥ 0, and exactly 0 for ε = 0. Cost: ``steps + 1`` gradient
evaluations (at z = 0 and after each step; every point goes through the same code path, so
equal weights give bit-equal losses).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from .directions import resolve_direction
from .hvp import LossFunction

__all__ = [
    "EpsilonSharpness",
    "Interpolation",
    "LineSlice",
    "PlaneSlice",
    "epsilon_sharpness",
    "interpolate",
    "line_slice",
    "plane_slice",
]


@dataclass(frozen=True)
class LineSlice:
    """``losses[i] = L(θ + alphas[i]·d)`` (float64), and what it cost."""

    alphas: Tensor
    losses: Tensor
    forward_count: int
    hvp_count: int = 0


@dataclass(frozen=True)
class PlaneSlice:
    """``losses[i, j] = L(θ + alphas[i]·δ + betas[j]·η)`` (float64), and what it cost."""

    alphas: Tensor
    betas: Tensor
    losses: Tensor
    forward_count: int
    hvp_count: int = 0


@dataclass(frozen=True)
class Interpolation:
    """``losses[i] = L((1 − ts[i])·θ_A + ts[i]·θ_B)`` and the barrier (module docstring)."""

    ts: Tensor
    losses: Tensor
    barrier: float
    barrier_t: float
    forward_count: int
    hvp_count: int = 0


@dataclass(frozen=True)
class EpsilonSharpness:
    """ε-sharpness (module docstring): ``value`` = max increase, ``relative`` = Keskar's φ (%)."""

    value: float
    relative: float
    base_loss: float
    max_loss: float
    epsilon: float
    steps: int
    forward_count: int
    gradient_count: int
    hvp_count: int = 0


@contextmanager
def _restored(tensors: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """Save copies of ``tensors`` (yielded) and copy them back on exit, whatever happens."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)


def _grid(distance: float, num_points: int, points_arg: str) -> Tensor:
    n = check_int(num_points, points_arg, minimum=2)
    d = check_positive(distance, "distance")
    return torch.linspace(-d, d, n, dtype=torch.float64)


def _evaluate_grid(
    fn: LossFunction,
    directions: Sequence[Mapping[str, Tensor]],
    coefficients: Sequence[Tensor],
) -> Tensor:
    """``L(θ + Σ_k c_k d_k)`` on the outer grid of the coefficient vectors."""
    names = ("direction", "direction2")[: len(directions)]
    resolved = [
        [(p, d) for _, p, d in resolve_direction(direction, fn.model, arg)]
        for direction, arg in zip(directions, names, strict=True)
    ]
    params = list({id(p): p for pairs in resolved for p, _ in pairs}.values())
    grids = torch.meshgrid(*coefficients, indexing="ij")
    losses = torch.empty(grids[0].shape, dtype=torch.float64)
    with _restored(params) as base:
        origin = {id(p): b for p, b in zip(params, base, strict=True)}
        for index in itertools.product(*(range(n) for n in losses.shape)):
            with torch.no_grad():
                for p in params:
                    p.copy_(origin[id(p)])
                for pairs, grid in zip(resolved, grids, strict=True):
                    c = float(grid[index])
                    for p, d in pairs:
                        p.add_(d, alpha=c)
            losses[index] = fn.loss()
    return losses


def line_slice(
    fn: LossFunction,
    direction: Mapping[str, Tensor],
    *,
    distance: float = 0.1,
    num_points: int = 51,
) -> LineSlice:
    """The 1-D slice ``L(θ + α d)`` for ``α`` in ``linspace(−distance, distance, num_points)``.

    Args:
        fn: the probe loss (its model's weights are moved and restored).
        direction: ``{parameter name: tensor}``, e.g. from :func:`~.directions.random_direction`;
            parameters not in it stay fixed.
        distance: half-width of the grid (> 0).
        num_points: grid size (>= 2; odd sizes hold α = 0).
    """
    alphas = _grid(distance, num_points, "num_points")
    forwards0 = fn.forward_count
    losses = _evaluate_grid(fn, [direction], [alphas])
    return LineSlice(alphas=alphas, losses=losses, forward_count=fn.forward_count - forwards0)


def plane_slice(
    fn: LossFunction,
    direction: Mapping[str, Tensor],
    direction2: Mapping[str, Tensor],
    *,
    distance: float = 1.0,
    num_points: int | tuple[int, int] = 21,
) -> PlaneSlice:
    """The 2-D slice ``L(θ + α δ + β η)`` on a ``num_points`` grid over ``[−distance, distance]²``.

    ``num_points`` is one size for both axes or a pair ``(n_α, n_β)``, each >= 2.
    """
    na, nb = (num_points, num_points) if isinstance(num_points, int) else tuple(num_points)
    alphas = _grid(distance, na, "num_points")
    betas = _grid(distance, nb, "num_points")
    forwards0 = fn.forward_count
    losses = _evaluate_grid(fn, [direction, direction2], [alphas, betas])
    return PlaneSlice(
        alphas=alphas, betas=betas, losses=losses, forward_count=fn.forward_count - forwards0
    )


def interpolate(
    fn: LossFunction,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    *,
    num_points: int = 21,
) -> Interpolation:
    """Loss along ``(1 − t) θ_A + t θ_B`` and the barrier height (module docstring).

    Args:
        fn: the probe loss of a model with the architecture of both state dicts.
        state_a, state_b: two ``state_dict()`` of that architecture (same keys and shapes).
        num_points: points on ``t ∈ [0, 1]``, ends included (>= 2).
    """
    n = check_int(num_points, "num_points", minimum=2)
    ts = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    own = fn.model.state_dict(keep_vars=True)
    for arg, state in (("state_a", state_a), ("state_b", state_b)):
        if not isinstance(state, Mapping) or set(state) != set(own):
            missing = sorted(set(own) - set(state)) if isinstance(state, Mapping) else []
            extra = sorted(set(state) - set(own)) if isinstance(state, Mapping) else []
            raise ValueError(
                f"`{arg}` must be a state_dict of the model (same keys); missing {missing}, "
                f"unexpected {extra}."
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"`{arg}[{key!r}]` must have shape {tuple(own[key].shape)}; got "
                    f"{tuple(value.shape)}."
                )
    targets = [t for t in own.values() if isinstance(t, Tensor)]
    forwards0 = fn.forward_count
    losses = torch.empty(len(ts), dtype=torch.float64)
    with _restored(targets):
        for i, t in enumerate(ts.tolist()):
            with torch.no_grad():
                for key, target in own.items():
                    a = state_a[key].to(device=target.device)
                    b = state_b[key].to(device=target.device)
                    if target.is_floating_point():
                        target.copy_(torch.lerp(a.to(target.dtype), b.to(target.dtype), t))
                    else:
                        target.copy_(a if t <= 0.5 else b)
            losses[i] = fn.loss()
    excess = losses - ((1 - ts) * losses[0] + ts * losses[-1])
    where = int(torch.argmax(excess))
    return Interpolation(
        ts=ts,
        losses=losses,
        barrier=float(excess[where]),
        barrier_t=float(ts[where]),
        forward_count=fn.forward_count - forwards0,
    )


def epsilon_sharpness(
    fn: LossFunction, epsilon: float = 1e-3, *, steps: int = 10
) -> EpsilonSharpness:
    """Keskar et al.'s ε-sharpness of ``L`` at the current weights (module docstring).

    Args:
        fn: the probe loss; the box is over the parameters it selects (``param_filter``).
        epsilon: relative box size ε >= 0 (Keskar et al. report 1e-3 and 5e-4).
        steps: projected ascent steps (>= 1), each one gradient evaluation (plus one at z = 0).
    """
    eps = check_positive(epsilon, "epsilon", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    forwards0, grads0 = fn.forward_count, fn.gradient_count
    theta = fn.parameters_vector()
    bound = eps * (theta.abs() + 1)
    eta = min(1.0, 2.5 / steps)
    z = torch.zeros_like(theta)

    def assign(vector: Tensor) -> None:
        with torch.no_grad():
            for p, v in zip(fn.params, fn.unflatten(theta + vector), strict=True):
                p.copy_(v)

    with _restored(fn.params):
        base, grad = fn.value_and_gradient()
        best = base
        for _ in range(steps):
            z = torch.minimum(torch.maximum(z + eta * bound * torch.sign(grad), -bound), bound)
            assign(z)
            value, grad = fn.value_and_gradient()  # same code path as `base`: ε = 0 gives 0
            best = max(best, value)
    value = best - base
    return EpsilonSharpness(
        value=value,
        relative=100.0 * value / (1.0 + base),
        base_loss=base,
        max_loss=best,
        epsilon=eps,
        steps=steps,
        forward_count=fn.forward_count - forwards0,
        gradient_count=fn.gradient_count - grads0,
    )
