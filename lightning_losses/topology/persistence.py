r"""Betti numbers and a Betti matching of binary 2-D and 3-D masks (CPU, NumPy, for metrics).

**Connectivity convention.** A pixel (voxel) is a closed unit square (cube): two foreground
pixels touching at an edge or a corner are connected (8-connectivity in 2-D, 26 in 3-D) and the
background is face-connected (4 in 2-D, 6 in 3-D). This is the T-construction of cubical
complexes, the one ``cripser.computePH_T`` uses, so the counts here and the persistence bars
agree. Under it a one-pixel diagonal line is one component and the pixels it encloses are a
hole.

**Betti numbers.** :math:`\beta_0` counts foreground components (``scipy.ndimage.label``).
The top dimension (:math:`\beta_1` in 2-D, :math:`\beta_2` in 3-D) counts holes (cavities):
background components that do not reach the image border. In 3-D the tunnels follow from the
Euler characteristic of the union of closed voxels,
:math:`\beta_1 = \beta_0 + \beta_2 - \chi`.

**Betti matching.** Stucki et al., "Topologically Faithful Image Segmentation via Induced
Matching of Persistence Barcodes" (ICML 2023), match the persistence bars of a prediction
:math:`P` and a ground truth :math:`G` through the bars of the comparison image
:math:`C = \min(P, G)` (for binary masks the intersection :math:`P \wedge G`): the inclusions
:math:`C \subseteq P` and :math:`C \subseteq G` induce matchings :math:`B(C) \to B(P)` and
:math:`B(C) \to B(G)`, and a bar of :math:`P` and one of :math:`G` are matched when they are
matched to the same bar of :math:`C`. The Betti matching error of dimension :math:`k` is the
number of bars of dimension :math:`k` left unmatched in :math:`P` and in :math:`G` together.

:func:`betti_matching_error` computes the bars of :math:`P`, :math:`G` and :math:`C` with
``cripser`` (cubical persistence, T-construction, superlevel filtration of the mask) and builds
the two matchings from the regions the bars live in, which is what the inclusions induce on
binary masks:

- dimension 0: a bar is born on a foreground component; every component of :math:`C` lies in
  one component of :math:`P`, and each component of :math:`P` is matched to the *eldest* bar of
  :math:`C` that lies in it;
- top dimension (holes in 2-D, cavities in 3-D): a bar dies on a hole; every hole of
  :math:`P` lies in one background component of :math:`C`, and each hole of :math:`C` is matched
  to the eldest hole of :math:`P` inside it.

"Eldest" orders bars by birth, then by longer life, then by the raster index of the cell
cripser reports for them. This is **not** the general induced matching of Bauer and Lesnick
that the authors compute from image persistence, and it has not been compared with their
implementation (not installable here). It is a region-level matching through the same
comparison image: identical masks have error 0; a missing, extra or displaced component or hole
leaves its bars unmatched; a split or a merge leaves the surplus bars unmatched; the error is
symmetric, at least the Betti number error and of the same parity (tested). Where several bars
of :math:`C` map to one region, the representative is chosen by the rule above rather than by
the refined filtration order, so counts may differ from the authors' in such configurations.
It is defined for binary masks only. 3-D tunnels (dimension 1) are not matched, as they live in
no region; their Betti number error is available.
"""

from __future__ import annotations

import itertools

import cripser
import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["betti_matching_error", "betti_number_error", "betti_numbers", "euler_characteristic"]


def _binary_mask(mask: ArrayLike, arg: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"`{arg}` must be a 2-D or 3-D mask; got shape {m.shape}.")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"`{arg}` must be binary (bool or values in {{0, 1}}).")
        m = m.astype(bool)
    return m


def _foreground_labels(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Foreground components, 8- (2-D) or 26-connected (3-D)."""
    return ndimage.label(m, structure=np.ones((3,) * m.ndim, dtype=bool))


def _background_labels(m: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Face-connected background components of ``m`` padded by a background frame, cropped
    back to ``m``'s shape, with their count and the label of the outer (frame) component."""
    padded = np.pad(~m, 1, constant_values=True)
    labels, n = ndimage.label(padded, structure=ndimage.generate_binary_structure(m.ndim, 1))
    outer = int(labels[(0,) * m.ndim])
    return labels[(slice(1, -1),) * m.ndim], n, outer


def euler_characteristic(mask: ArrayLike) -> int:
    r"""Euler characteristic of the union of the closed pixels (voxels) of a binary mask.

    :math:`\chi = \sum_k (-1)^k n_k`, with :math:`n_k` the number of :math:`k`-cells (vertices,
    edges, squares, cubes) of the grid that belong to at least one foreground pixel.
    """
    m = _binary_mask(mask, "mask")
    padded = np.pad(m, 1)
    chi = 0
    # A cell spans the axes in `span` (one pixel wide there) and is a grid point along the
    # others, where the two pixels on either side share it.
    for span in itertools.product((True, False), repeat=m.ndim):
        touched = padded
        for axis, spans in enumerate(span):
            sl = [slice(None)] * m.ndim
            if spans:
                sl[axis] = slice(1, -1)
                touched = touched[tuple(sl)]
            else:
                lo, hi = list(sl), list(sl)
                lo[axis], hi[axis] = slice(None, -1), slice(1, None)
                touched = touched[tuple(lo)] | touched[tuple(hi)]
        chi += (-1) ** sum(span) * int(touched.sum())
    return chi


def betti_numbers(mask: ArrayLike) -> np.ndarray:
    r"""Betti numbers of a binary mask: :math:`(\beta_0, \beta_1)` in 2-D,
    :math:`(\beta_0, \beta_1, \beta_2)` in 3-D, as an int64 array.

    Foreground 8- (26-) connected, background 4- (6-) connected (module docstring).

    Example:
        >>> ring = np.ones((5, 5), bool); ring[2, 2] = False
        >>> betti_numbers(ring)
        array([1, 1])
    """
    m = _binary_mask(mask, "mask")
    components = _foreground_labels(m)[1]
    holes = _background_labels(m)[1] - 1
    if m.ndim == 2:
        return np.array([components, holes], dtype=np.int64)
    tunnels = components + holes - euler_characteristic(m)
    return np.array([components, tunnels, holes], dtype=np.int64)


def betti_number_error(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    r""":math:`|\beta_k(P) - \beta_k(G)|` for each dimension :math:`k`, as an int64 array."""
    p, g = _binary_mask(pred, "pred"), _binary_mask(target, "target")
    _check_same_shape(p, g)
    return np.abs(betti_numbers(p) - betti_numbers(g))


def _check_same_shape(p: np.ndarray, g: np.ndarray) -> None:
    if p.shape != g.shape:
        raise ValueError(f"`pred` and `target` must have the same shape; got {p.shape}, {g.shape}.")


class _Features:
    """The persistence bars of one binary mask that it carries (born inside the mask), each tied
    to the region it lives in: a foreground component (dimension 0) or a hole (top dimension)."""

    def __init__(self, m: np.ndarray) -> None:
        self.fg, self.n_fg = _foreground_labels(m)
        self.bg, n_bg, self.outer = _background_labels(m)
        # Superlevel filtration of the mask = sublevel filtration of 1 - mask.
        bars = cripser.compute_ph(1.0 - m.astype(np.float64), filtration="T", maxdim=m.ndim - 1)
        bars = bars[bars[:, 1] == 0.0]  # bars present at the mask's level
        self.rank: dict[int, dict[int, int]] = {}
        top = m.ndim - 1
        for dim, labels, cell_cols, count in (
            (0, self.fg, slice(3, 3 + m.ndim), self.n_fg),
            (top, self.bg, slice(6, 6 + m.ndim), n_bg - 1),
        ):
            rows = bars[bars[:, 0] == dim]
            finite = rows[np.isfinite(rows[:, 2])]
            cells = finite[:, cell_cols].astype(np.int64)
            raster = np.ravel_multi_index(tuple(cells.T), m.shape)
            order = np.lexsort((raster, -finite[:, 2]))  # longer life first, then raster index
            region = labels[tuple(cells.T)][order].tolist()
            if len(rows) > len(finite):
                # The essential bar (the component that never dies) is the eldest. cripser's
                # location for it is not always on that component, so it takes the one region
                # no finite bar claims.
                region = sorted(set(range(1, count + 1)) - set(region)) + region
            if len(rows) != count or len(set(region)) != count:
                raise RuntimeError(
                    f"cripser's {len(rows)} bars of dimension {dim} do not map one-to-one onto "
                    f"the mask's {count} regions; the connectivity conventions disagree."
                )
            self.rank[dim] = {int(r): i for i, r in enumerate(region)}


def _first_pixels(labels: np.ndarray) -> dict[int, int]:
    """Label -> flat index of its first pixel in raster order (label 0 included)."""
    values, index = np.unique(labels.ravel(), return_index=True)
    return dict(zip(values.tolist(), index.tolist(), strict=True))


def _matched_components(p: _Features, g: _Features, c: _Features) -> int:
    """Pairs (component of P, component of G) matched through the same component of C."""
    first = _first_pixels(c.fg)
    p_of, g_of = p.fg.ravel(), g.fg.ravel()
    chosen_p: dict[int, int] = {}
    chosen_g: dict[int, int] = {}
    for comp in sorted(c.rank[0], key=c.rank[0].__getitem__):  # eldest first
        chosen_p.setdefault(int(p_of[first[comp]]), comp)
        chosen_g.setdefault(int(g_of[first[comp]]), comp)
    return len(set(chosen_p.values()) & set(chosen_g.values()))


def _matched_holes(p: _Features, g: _Features, c: _Features, top: int) -> int:
    """Pairs (hole of P, hole of G) matched through the same hole of C."""

    c_of = c.bg.ravel()

    def holes_of_c_hit(x: _Features) -> set[int]:
        first = _first_pixels(x.bg)
        regions = {int(c_of[first[hole]]) for hole in x.rank[top]}
        return regions - {c.outer}  # a hole of x inside a hole of C

    # Every hole of C that contains a hole of P has an eldest one, its match in P; likewise G.
    return len(holes_of_c_hit(p) & holes_of_c_hit(g))


def betti_matching_error(pred: ArrayLike, target: ArrayLike) -> dict[int, int]:
    """Unmatched persistence bars per dimension between binary masks (module docstring).

    Args:
        pred: binary mask, 2-D ``(H, W)`` or 3-D ``(D, H, W)``.
        target: binary mask of the same shape.

    Returns:
        ``{0: e0, 1: e1}`` in 2-D and ``{0: e0, 2: e2}`` in 3-D: the number of bars of that
        dimension of ``pred`` and of ``target`` that the matching through ``pred & target``
        leaves unmatched, the two counts added.

    Example:
        >>> a = np.zeros((8, 8), bool); a[1:3, 1:3] = True
        >>> b = np.zeros((8, 8), bool); b[5:7, 5:7] = True
        >>> betti_matching_error(a, b)  # same Betti numbers, features elsewhere
        {0: 2, 1: 0}
    """
    p, g = _binary_mask(pred, "pred"), _binary_mask(target, "target")
    _check_same_shape(p, g)
    fp, fg, fc = _Features(p), _Features(g), _Features(p & g)
    top = p.ndim - 1
    m0 = _matched_components(fp, fg, fc)
    m_top = _matched_holes(fp, fg, fc, top)
    return {
        0: fp.n_fg + fg.n_fg - 2 * m0,
        top: len(fp.rank[top]) + len(fg.rank[top]) - 2 * m_top,
    }
