r"""Topology-preserving skeletonization by parallel removal of simple points, differentiable
through a straight-through estimator (2-D).

A foreground pixel is *simple* when deleting it changes neither the foreground's components
(8-connected) nor the background's (4-connected), the convention of
:mod:`~lightning_losses.topology.persistence`. In 2-D that is Yokoi's 8-connectivity number
being one,

.. math::
    N_8(p) = \sum_{k \in \{1, 3, 5, 7\}} \bigl(\bar x_k - \bar x_k\,\bar x_{k+1}\,\bar x_{k+2}\bigr)
    = 1,\qquad \bar x_k = 1 - x_k,

with :math:`x_1, \dots, x_8` the neighbours counter-clockwise from the east and
:math:`x_9 = x_1`. An interior pixel has :math:`N_8 = 0`, so deleting simple pixels peels the
shape from its border without ever splitting a component, filling a hole or opening a loop.

Each iteration visits the four subfields of pixels with equal coordinate parities in turn and
deletes, at once, every simple pixel of the subfield that is not an endpoint (a pixel with
exactly one foreground neighbour, kept so branches do not shrink away). Two pixels of one
subfield are never neighbours, so each deletion leaves the others' neighbourhoods unchanged and
the parallel step preserves topology.

**Gradients.** Probabilities are binarised with a straight-through estimator: the forward value
is the binary mask, the backward pass sees a sigmoid. With ``probabilistic=True`` logistic noise
is added to the logits first, :math:`z = (\operatorname{logit} p + \beta\,\epsilon)/\tau`,
:math:`\epsilon \sim \mathrm{Logistic}(0, 1)`, so that training samples binarisations in
proportion to their probability. A deletion multiplies the pixel by 0 (a decision taken on the
binary values, without gradient); the skeleton's surviving pixels pass gradient to the
probabilities that produced them.

Ref: Menten et al., "A Skeletonization Algorithm for Gradient-Based Optimization" (ICCV 2023),
defaults ``probabilistic=True``, ``beta=0.33``, ``tau=1.0``, ``num_iter=5``. The paper also
treats 3-D (26-neighbourhoods, Euler characteristic or Boolean rules); this backend is 2-D only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_positive, check_tensor

__all__ = ["SimplePointSkeletonizer", "simple_point_skeleton", "simple_points"]

# Neighbour offsets (row, col) counter-clockwise from the east: x1 .. x8.
_RING = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _neighbours(x: Tensor) -> list[Tensor]:
    """The eight neighbour maps of (N, C, H, W) ``x``, background beyond the border."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return [padded[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in _RING]


def _check_2d(x: Tensor, arg: str) -> None:
    check_tensor(x, arg)
    if x.ndim != 4:
        raise ValueError(
            f"`{arg}` must be (N, C, H, W): simple-point skeletonization is 2-D only; got shape "
            f"{tuple(x.shape)}."
        )


def simple_points(mask: Tensor) -> Tensor:
    """Boolean map of the simple foreground pixels of a binary mask ``(N, C, H, W)``."""
    _check_2d(mask, "mask")
    fg = (mask > 0).to(torch.float32)
    bg = [1.0 - n for n in _neighbours(fg)]
    bg.extend(bg[:2])  # x9 = x1, x10 = x2
    yokoi = sum(bg[k] - bg[k] * bg[k + 1] * bg[k + 2] for k in (0, 2, 4, 6))
    return (fg > 0) & (yokoi == 1)


def _endpoints(fg: Tensor) -> Tensor:
    return (fg > 0) & (sum(_neighbours(fg)) == 1)


def _subfields(h: int, w: int, device: torch.device) -> list[Tensor]:
    rows = torch.arange(h, device=device).reshape(h, 1) % 2
    cols = torch.arange(w, device=device).reshape(1, w) % 2
    return [(rows == a) & (cols == b) for a in (0, 1) for b in (0, 1)]


def _binarise(probs: Tensor, probabilistic: bool, beta: float, tau: float) -> Tensor:
    """Binary values forward, the gradient of a sigmoid (or identity) backward."""
    if probabilistic:
        eps = torch.finfo(probs.dtype).eps
        p = probs.clamp(eps, 1 - eps)
        u = torch.rand_like(p).clamp(eps, 1 - eps)
        soft = torch.sigmoid(
            (torch.log(p) - torch.log1p(-p) + beta * (u.log() - (-u).log1p())) / tau
        )
    else:
        soft = probs
    hard = (soft > 0.5).to(probs.dtype)
    return hard + (soft - soft.detach())


def simple_point_skeleton(
    probs: Tensor,
    num_iter: int = 5,
    *,
    probabilistic: bool = True,
    beta: float = 0.33,
    tau: float = 1.0,
) -> Tensor:
    """Topology-preserving skeleton of probabilities ``(N, C, H, W)``, same shape (module
    docstring). The result holds 0 and 1 forward; each call with ``probabilistic=True`` draws
    new noise (from torch's global generator).

    Args:
        probs: probabilities in [0, 1], floating point.
        num_iter: thinning iterations (each visits the four subfields); 5 (paper). A structure
            of half-width :math:`r` pixels needs about :math:`r` iterations to become one pixel
            thin; fewer leave it partly thinned, never with changed topology.
        probabilistic: add logistic noise before binarising (paper's default, True).
        beta: noise scale, 0.33 (paper). tau: temperature, 1.0 (paper).
    """
    _check_2d(probs, "probs")
    if not probs.is_floating_point():
        raise TypeError(f"`probs` must be a floating-point tensor; got dtype {probs.dtype}.")
    check_int(num_iter, "num_iter", 0)
    check_positive(beta, "beta", allow_zero=True)
    check_positive(tau, "tau")
    x = _binarise(probs, probabilistic, beta, tau)
    fields = _subfields(*x.shape[-2:], x.device)
    for _ in range(num_iter):
        for field in fields:
            fg = x.detach()
            delete = simple_points(fg) & ~_endpoints(fg) & field
            x = x * (~delete).to(x.dtype)
    return x


class SimplePointSkeletonizer(nn.Module):
    """:func:`simple_point_skeleton` as a :class:`~lightning_losses.topology.Skeletonizer`.

    Args:
        num_iter, probabilistic, beta, tau: see :func:`simple_point_skeleton` (paper defaults).

    Example:
        >>> skeletonizer = SimplePointSkeletonizer(num_iter=10, probabilistic=False)
        >>> skeletonizer(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self, num_iter: int = 5, probabilistic: bool = True, beta: float = 0.33, tau: float = 1.0
    ) -> None:
        super().__init__()
        self.num_iter = check_int(num_iter, "num_iter", 0)
        self.probabilistic = bool(probabilistic)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.tau = check_positive(tau, "tau")

    def forward(self, probs: Tensor) -> Tensor:
        return simple_point_skeleton(
            probs, self.num_iter, probabilistic=self.probabilistic, beta=self.beta, tau=self.tau
        )

    def extra_repr(self) -> str:
        return (
            f"num_iter={self.num_iter}, probabilistic={self.probabilistic}, beta={self.beta}, "
            f"tau={self.tau}"
        )
