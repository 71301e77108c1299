"""Binary shapes with known topology (NumPy bool arrays), shared by the topology tests."""

from __future__ import annotations

import numpy as np


def disk(size: int = 32, radius: float = 8.0, center: tuple[float, float] | None = None):
    """A filled disk: one component, no hole."""
    cy, cx = center if center is not None else ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def ring(size: int = 32, outer: float = 10.0, inner: float = 6.0, center=None):
    """An annulus: one component, one hole."""
    return disk(size, outer, center) & ~disk(size, inner, center)


def two_disks(size: int = 32):
    """Two separate disks: two components, no hole."""
    return disk(size, 5.0, (10, 8)) | disk(size, 5.0, (20, 24))


def figure_eight(size: int = 40):
    """Two rings sharing a bar: one component, two holes."""
    m = np.zeros((size, size), dtype=bool)
    m[5:35, 8:32] = True
    m[9:18, 12:28] = False
    m[22:31, 12:28] = False
    return m


def hline(size: int = 32, row: int = 16, width: int = 1, start: int = 4, stop: int = 28):
    """A horizontal bar ``width`` pixels thick."""
    m = np.zeros((size, size), dtype=bool)
    half = width // 2
    m[row - half : row - half + width, start:stop] = True
    return m


def torus(size: int = 24, major: float = 7.0, minor: float = 2.5):
    """A solid torus in 3-D: one component, one tunnel, no cavity."""
    c = (size - 1) / 2
    zz, yy, xx = np.mgrid[:size, :size, :size] - c
    return (np.sqrt(yy**2 + xx**2) - major) ** 2 + zz**2 <= minor**2


def hollow_ball(size: int = 20, outer: float = 7.0, inner: float = 4.0):
    """A spherical shell in 3-D: one component, no tunnel, one cavity."""
    c = (size - 1) / 2
    zz, yy, xx = np.mgrid[:size, :size, :size] - c
    r2 = zz**2 + yy**2 + xx**2
    return (r2 <= outer**2) & (r2 > inner**2)
