"""Exact Euclidean distance transforms of binary masks, on the tensor's device, without gradient.

The squared Euclidean distance is separable: with :math:`f = 0` on the seed pixels and a large
value elsewhere, one pass per axis of

.. math::
    f'(\\ldots, i, \\ldots) = \\min_j \\bigl(f(\\ldots, j, \\ldots) + (i - j)^2\\bigr)

gives the squared distance to the nearest seed (Felzenszwalb & Huttenlocher's decomposition).
Each pass is computed as a min over a ``(..., L, L)`` tensor (``L`` the axis length): exact,
batched over images and channels, no host read, at a memory cost of ``L`` times the mask per
pass (a 256x256 image with 4 channels: 256 MiB of float32 at the peak).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def squared_distance_to(seeds: Tensor, spatial_dims: int) -> Tensor:
    """Squared Euclidean distance from each pixel to the nearest ``True`` pixel of ``seeds``.

    ``seeds`` is boolean ``(..., *spatial)`` with ``spatial_dims`` trailing spatial dims; each
    leading index is its own image. Where an image has no seed, the result exceeds every
    in-image squared distance (the sum of the squared axis lengths plus 1).
    """
    spatial = seeds.shape[seeds.ndim - spatial_dims :]
    far = float(sum(s * s for s in spatial) + 1)
    f = torch.where(seeds, 0.0, far).to(torch.float32)
    for axis in range(seeds.ndim - spatial_dims, seeds.ndim):
        length = f.shape[axis]
        pos = torch.arange(length, device=f.device, dtype=f.dtype)
        cost = (pos[:, None] - pos[None, :]).square()  # (i, j) -> (i - j)^2
        line = f.movedim(axis, -1).unsqueeze(-2)  # (..., 1, j)
        f = (line + cost).amin(-1).movedim(-1, axis)
    return f


@torch.no_grad()
def squared_boundary_distance(mask: Tensor, spatial_dims: int) -> Tensor:
    """Squared distance of each pixel to the other side of ``mask``'s boundary.

    Inside the mask: to the nearest pixel outside; outside: to the nearest pixel inside (so
    both sides of the boundary are at distance 1), as ``edt(mask) + edt(~mask)`` with SciPy's
    ``distance_transform_edt`` (MONAI ``HausdorffDTLoss``). An image whose mask is empty or full
    has no boundary: its map is 0.
    """
    inside = squared_distance_to(~mask, spatial_dims)
    outside = squared_distance_to(mask, spatial_dims)
    field = torch.where(mask, inside, outside)
    flat = mask.flatten(mask.ndim - spatial_dims)
    has_boundary = flat.any(-1) & ~flat.all(-1)
    has_boundary = has_boundary.reshape(*has_boundary.shape, *[1] * spatial_dims)
    return torch.where(has_boundary, field, torch.zeros_like(field))
