"""Filter-normalised random directions in parameter space.

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS
2018), §4: a random direction must have the scale of the weights it perturbs, or a network with
rescaled (but equivalent) weights would look sharper or flatter. For each parameter tensor ``θ``
of the model and a Gaussian draw ``d ~ N(0, I)`` (seeded CPU generator):

.. code-block:: text

    "filter":  d_i ← d_i · ‖θ_i‖ / ‖d_i‖     for each filter i = slice θ[i] along dim 0
                                             (a conv output channel, a row of a Linear weight)
    "layer":   d   ← d · ‖θ‖ / ‖d‖           the whole tensor at once
    "none":    d unchanged

    ignore="biasbn":  d = 0 for every parameter with ``ndim <= 1`` (biases and the affine
                      weights of BatchNorm / LayerNorm / GroupNorm), as the reference's
                      ``xignore=biasbn``
    ignore=None:      such parameters are normalised too, each as a single filter

Only parameters are perturbed (BatchNorm running statistics are buffers and are left as they
are). A filter whose weights are all zero gets a zero direction. The result is a
``{parameter name: tensor}`` dictionary that :mod:`.landscape` adds to the weights; Hessian
eigenvectors (:meth:`~.hvp.LossFunction.named`) can be passed through
:func:`normalize_direction` in the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_tensor
from ._common import Seed, make_generator
from .hvp import ParamFilter, select_parameters

__all__ = [
    "IGNORE",
    "NORMALIZATIONS",
    "normalize_direction",
    "random_direction",
    "resolve_direction",
]

NORMALIZATIONS = ("filter", "layer", "none")
IGNORE = ("biasbn", None)


def _normalize(d: Tensor, w: Tensor, normalization: str) -> Tensor:
    if normalization == "none":
        return d
    if normalization == "layer" or d.ndim <= 1:
        return d * (w.norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
    dims = tuple(range(1, d.ndim))
    w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
    d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True).clamp_min(
        torch.finfo(d.dtype).tiny
    )
    return d * (w_norm / d_norm)


def normalize_direction(
    direction: Mapping[str, Tensor],
    model: nn.Module,
    *,
    normalization: str = "filter",
    ignore: str | None = "biasbn",
) -> dict[str, Tensor]:
    """Rescale ``direction`` (name → tensor, a subset of ``model``'s parameters) to the weights.

    Returns new tensors; ``direction`` is not modified. See the module docstring for the rule.
    """
    check_choice(normalization, NORMALIZATIONS, "normalization")
    if ignore not in IGNORE:
        raise ValueError(f"`ignore` must be one of {IGNORE}; got {ignore!r}.")
    out = {}
    for name, p, d in resolve_direction(direction, model):
        w = p.detach()
        if ignore == "biasbn" and w.ndim <= 1:
            out[name] = torch.zeros_like(w)
        else:
            out[name] = _normalize(d, w, normalization)
    return out


def resolve_direction(
    direction: Mapping[str, Tensor], model: nn.Module, arg: str = "direction"
) -> list[tuple[str, Tensor, Tensor]]:
    """Check ``direction`` against ``model``: ``[(name, parameter, tensor)]``, each tensor
    detached and on its parameter's device and dtype. Raises on an empty mapping, a name that
    is not a parameter, or a wrong shape."""
    if not isinstance(direction, Mapping) or not direction:
        raise TypeError(
            f"`{arg}` must be a non-empty mapping {{parameter name: tensor}} (see "
            f"random_direction); got {type(direction).__name__}."
        )
    params = dict(model.named_parameters())
    out = []
    for name, d in direction.items():
        check_tensor(d, f"{arg}[{name!r}]")
        if name not in params:
            raise ValueError(
                f"`{arg}` has key {name!r}, which is not a parameter of the model; parameters: "
                f"{list(params)}."
            )
        p = params[name]
        if d.shape != p.shape:
            raise ValueError(
                f"`{arg}[{name!r}]` must have the parameter's shape {tuple(p.shape)}; got "
                f"{tuple(d.shape)}."
            )
        out.append((name, p, d.detach().to(device=p.device, dtype=p.dtype)))
    return out


def random_direction(
    model: nn.Module,
    *,
    normalization: str = "filter",
    ignore: str | None = "biasbn",
    param_filter: ParamFilter = None,
    seed: Seed = 0,
) -> dict[str, Tensor]:
    """A Gaussian direction over the parameters ``param_filter`` selects, normalised to them.

    Args:
        model: the network (its weights are only read).
        normalization: ``"filter"`` (default, Li et al.), ``"layer"`` or ``"none"``.
        ignore: ``"biasbn"`` (default: zero on parameters with ndim <= 1) or ``None``.
        param_filter: which parameters get a direction (see :data:`~.hvp.ParamFilter`).
        seed: integer seed or CPU ``torch.Generator``; pass the same generator twice for the
            two independent directions of a plane.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> d = random_direction(net, seed=0)
        >>> torch.allclose(d["0.weight"].norm(dim=1), net[0].weight.norm(dim=1))
        True
        >>> bool((d["0.bias"] == 0).all())
        True
    """
    check_choice(normalization, NORMALIZATIONS, "normalization")
    gen = make_generator(seed)
    raw = {
        name: torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for name, p in select_parameters(model, param_filter)
    }
    return normalize_direction(raw, model, normalization=normalization, ignore=ignore)
