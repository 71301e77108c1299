r"""Soft morphology and the soft skeleton of clDice, for 2-D and 3-D probability maps.

Min- and max-pooling stand in for grey-scale erosion and dilation, so the skeleton is a chain
of differentiable operations on probabilities ``(N, C, H, W)`` or ``(N, C, D, H, W)``:

.. math::
    \mathrm{erode}(x) = \min_{k \in K} \bigl(-\mathrm{maxpool}_k(-x)\bigr),\qquad
    \mathrm{dilate}(x) = \mathrm{maxpool}_{3^d}(x),\qquad
    \mathrm{open}(x) = \mathrm{dilate}(\mathrm{erode}(x)),

with :math:`K` the cross kernels, (3, 1) and (1, 3) in 2-D and the three axis kernels in 3-D.
The skeleton keeps what each successive erosion loses to an opening:

.. math::
    s_0 = \mathrm{relu}(x - \mathrm{open}(x)),\qquad
    x_{j} = \mathrm{erode}(x_{j-1}),\quad
    \delta_j = \mathrm{relu}(x_j - \mathrm{open}(x_j)),\quad
    s_j = s_{j-1} + \mathrm{relu}(\delta_j - s_{j-1}\,\delta_j),

for :math:`j = 1, \dots, k`. Each iteration peels one pixel layer, so a structure of radius
:math:`r` needs :math:`k \ge r` iterations; the result stops changing once the erosions have
emptied the map. ``num_iter`` is honoured as given (the reference code hard-codes 10, its issue
#31). Memory grows with :math:`k` because every iteration's tensors are kept for the backward.

Ref: Shit et al., "clDice – a Novel Topology-Preserving Loss Function for Tubular Structure
Segmentation" (CVPR 2021), section 3.2 and its reference code (jocpae/clDice).

Pooling pads with the identity of its operation, so the image border neither erodes nor dilates
a structure that touches it (as in the reference).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_tensor

__all__ = [
    "Skeletonizer",
    "SoftSkeletonizer",
    "soft_dilate",
    "soft_erode",
    "soft_open",
    "soft_skeleton",
]


@runtime_checkable
class Skeletonizer(Protocol):
    """Anything that maps probabilities ``(N, C, *spatial)`` to skeletons of the same shape.

    A loss that needs a skeleton (clDice) takes any such callable, so the soft morphological
    skeleton and the topology-preserving one of :mod:`~lightning_losses.topology.simple_points`
    are interchangeable backends.
    """

    def __call__(self, probs: Tensor) -> Tensor: ...


def _spatial_dims(x: Tensor, arg: str = "x") -> int:
    check_tensor(x, arg)
    if x.ndim not in (4, 5):
        raise ValueError(
            f"`{arg}` must be (N, C, H, W) or (N, C, D, H, W); got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"`{arg}` must be a floating-point tensor; got dtype {x.dtype}.")
    return x.ndim - 2


def _axis_kernels(dims: int) -> list[tuple[int, ...]]:
    """The cross kernels: length 3 along one axis, 1 along the others."""
    return [tuple(3 if a == axis else 1 for a in range(dims)) for axis in range(dims)]


def soft_erode(x: Tensor) -> Tensor:
    """Grey-scale erosion by the cross: the minimum of min-pools along each axis."""
    dims = _spatial_dims(x)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    eroded = [
        -pool(-x, kernel, stride=1, padding=tuple(k // 2 for k in kernel))
        for kernel in _axis_kernels(dims)
    ]
    out = eroded[0]
    for e in eroded[1:]:
        out = torch.minimum(out, e)
    return out


def soft_dilate(x: Tensor) -> Tensor:
    """Grey-scale dilation by the full 3^d box (max-pool, stride 1)."""
    dims = _spatial_dims(x)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    return pool(x, 3, stride=1, padding=1)


def soft_open(x: Tensor) -> Tensor:
    """Morphological opening: dilation of the erosion."""
    return soft_dilate(soft_erode(x))


def soft_skeleton(x: Tensor, num_iter: int = 3) -> Tensor:
    """The soft skeleton of probabilities ``x`` (N, C, *spatial), same shape (module docstring).

    Args:
        x: probabilities in [0, 1], ``(N, C, H, W)`` or ``(N, C, D, H, W)``, floating point.
        num_iter: erosion iterations :math:`k >= 0`; 3 (clDice paper's default, METHODS 7.1).
            It should be at least the largest structure radius in pixels.
    """
    _spatial_dims(x)
    check_int(num_iter, "num_iter", 0)
    skel = F.relu(x - soft_open(x))
    for _ in range(num_iter):
        x = soft_erode(x)
        delta = F.relu(x - soft_open(x))
        skel = skel + F.relu(delta - skel * delta)
    return skel


class SoftSkeletonizer(nn.Module):
    """The soft morphological skeleton as a :class:`Skeletonizer` (no parameters).

    Args:
        num_iter: erosion iterations, 3 by default (clDice); see :func:`soft_skeleton`.

    Example:
        >>> skel = SoftSkeletonizer(num_iter=5)(torch.rand(2, 1, 32, 32))
        >>> skel.shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, num_iter: int = 3) -> None:
        super().__init__()
        self.num_iter = check_int(num_iter, "num_iter", 0)

    def forward(self, probs: Tensor) -> Tensor:
        return soft_skeleton(probs, self.num_iter)

    def extra_repr(self) -> str:
        return f"num_iter={self.num_iter}"
