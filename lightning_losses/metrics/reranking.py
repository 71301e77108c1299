r"""Post-processing of re-ID rankings: k-reciprocal re-ranking and average query expansion.

**k-reciprocal re-ranking** (Zhong, Zheng, Cao, Li, *Re-ranking Person Re-identification with
k-reciprocal Encoding*, CVPR 2017). Over all :math:`N = Q + G` probe and gallery items with
distances :math:`d` (each row scaled by its maximum, as in the authors' code, so that the
kernel below sees the same range for every item):

.. math::
    N(i, k) &= \text{the } k + 1 \text{ nearest items of } i \text{ (itself included)}\\
    R(i, k) &= \{ j \in N(i, k) : i \in N(j, k) \} \quad\text{(k-reciprocal neighbours)}\\
    R^*(i, k_1) &= R(i, k_1) \cup \bigcup_{q} R(q, \operatorname{round}(k_1/2)),\quad
        q \in R(i, k_1),\ |R(i, k_1) \cap R(q, k_1/2)| \ge \tfrac23 |R(q, k_1/2)|\\
    V_{ij} &= \frac{e^{-d(i,j)}\, 1[j \in R^*(i, k_1)]}{\sum_l e^{-d(i,l)}\, 1[l \in R^*(i, k_1)]},
    \qquad V_i \leftarrow \frac1{k_2}\sum_{j \in N(i, k_2 - 1)} V_j \quad\text{(local expansion)}\\
    d_J(p, g) &= 1 - \frac{\sum_j \min(V_{pj}, V_{gj})}{\sum_j \max(V_{pj}, V_{gj})},\qquad
    d^*(p, g) = (1 - \lambda)\, d_J(p, g) + \lambda\, d(p, g).

Defaults :math:`k_1 = 20`, :math:`k_2 = 6`, :math:`\lambda = 0.3`: the paper's Market-1501
setting. Where the paper and the authors' code differ, this follows the **paper** for the
expansion test (:math:`\ge \frac23`; the code tests :math:`>`, which differs only on exact
ties) and the **code** for what the paper leaves open: rows of :math:`d` scaled by their
maximum, rows of :math:`V` normalised to sum 1 (the paper's Eq. 7 leaves them unnormalised),
the local expansion over the :math:`k_2` nearest items including the item itself, and
:math:`\operatorname{round}(k_1/2)` rounding half to even (NumPy's ``around``). The distances
are used as given: the authors feed squared Euclidean distances; the retrieval metric feeds
its own (cosine by default).

**Cost.** The sets and :math:`V` are dense :math:`N \times N` tensors (two boolean, two
float): for Market-1501's 19,281 evaluation images about 3 GB in float32. The Jaccard step
only visits the non-zero columns of each probe row (at most a few hundred), in chunks of
probes, so its memory is :math:`O(G \cdot \text{chunk} \cdot \text{nnz})`.

**Average query expansion** (Chum, Philbin, Sivic, Isard, Zisserman, *Total Recall*, ICCV
2007): each query feature is replaced by the mean of itself and its :math:`k` nearest gallery
features, then L2-normalised.

Both functions take NumPy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, check_range

__all__ = ["average_query_expansion", "k_reciprocal_rerank"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


def _as_tensor(x: object, arg: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"`{arg}` must be a NumPy array or a torch tensor; got {type(x).__name__}.")
    if x.ndim != 2:
        raise ValueError(f"`{arg}` must be 2-D; got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        x = x.float()
    return x


def _like(result: Tensor, template: object) -> np.ndarray | Tensor:
    return result.cpu().numpy() if isinstance(template, np.ndarray) else result


def _membership(neighbours: Tensor, n: int) -> Tensor:
    """Boolean (N, N): ``[i, j]`` is True when j is among row i's ``neighbours``."""
    member = torch.zeros(n, n, dtype=torch.bool, device=neighbours.device)
    member.scatter_(1, neighbours, True)
    return member


def k_reciprocal_rerank(
    q_g: ArrayOrTensor,
    q_q: ArrayOrTensor,
    g_g: ArrayOrTensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 64,
) -> ArrayOrTensor:
    r"""Re-ranked query-to-gallery distances :math:`d^*` (see the module docstring).

    Args:
        q_g: query-to-gallery distances ``(Q, G)``.
        q_q: query-to-query distances ``(Q, Q)``.
        g_g: gallery-to-gallery distances ``(G, G)``.
        k1: size of the k-reciprocal neighbourhoods, :math:`1 \le k_1 < N`. Default 20.
        k2: size of the local query expansion, :math:`k_2 \ge 1` (1: none). Default 6.
        lambda_value: weight :math:`\lambda \in [0, 1]` of the original distance. Default 0.3.
        chunk_size: rows handled at once in the expansion and Jaccard steps.

    Returns:
        ``(Q, G)`` distances, same kind (NumPy or torch) as ``q_g``, in its floating dtype
        (at least float32).

    Example:
        >>> q, g = torch.randn(3, 8), torch.randn(30, 8)
        >>> d = k_reciprocal_rerank(torch.cdist(q, g), torch.cdist(q, q), torch.cdist(g, g))
        >>> d.shape
        torch.Size([3, 30])
    """
    qg, qq, gg = _as_tensor(q_g, "q_g"), _as_tensor(q_q, "q_q"), _as_tensor(g_g, "g_g")
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"`q_q` must be ({nq}, {nq}) and `g_g` ({ng}, {ng}) for `q_g` of shape {(nq, ng)}; "
            f"got {tuple(qq.shape)} and {tuple(gg.shape)}."
        )
    n = nq + ng
    check_int(k1, "k1", 1)
    if k1 >= n:
        raise ValueError(f"`k1` must be below the number of items Q + G = {n}; got {k1}.")
    check_int(k2, "k2", 1)
    if k2 > n:
        raise ValueError(f"`k2` must be at most Q + G = {n}; got {k2}.")
    lam = check_range(lambda_value, "lambda_value", 0.0, 1.0)
    check_int(chunk_size, "chunk_size", 1)

    dtype = torch.promote_types(qg.dtype, torch.float32)
    top = torch.cat([qq.to(dtype), qg.to(dtype)], dim=1)
    bottom = torch.cat([qg.to(dtype).T, gg.to(dtype)], dim=1)
    dist = torch.cat([top, bottom], dim=0)
    dist = dist / dist.amax(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    rank = torch.argsort(dist, dim=1, stable=True)

    half = round(k1 / 2)
    near = _membership(rank[:, : k1 + 1], n)
    recip = near & near.T
    near_half = _membership(rank[:, : half + 1], n)
    recip_half = near_half & near_half.T
    half_size = recip_half.sum(1)

    # R*: add a candidate's half-size set when it mostly lies inside R (integer test, exact).
    expanded = recip.clone()
    candidates = rank[:, : k1 + 1]
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        cand = candidates[rows]  # (c, k1 + 1): R(i) lies among these
        is_recip = torch.gather(recip[rows], 1, cand)
        sets = recip_half[cand]  # (c, k1 + 1, N)
        inside = (sets & recip[rows, None, :]).sum(-1)
        take = is_recip & (3 * inside >= 2 * half_size[cand])
        expanded[rows] |= (sets & take[..., None]).any(1)

    weight = torch.where(expanded, torch.exp(-dist), torch.zeros((), dtype=dtype))
    v = weight / weight.sum(1, keepdim=True)
    if k2 > 1:
        v = torch.cat(
            [v[rank[s : s + chunk_size, :k2]].mean(1) for s in range(0, n, chunk_size)], dim=0
        )

    vq, vg = v[:nq], v[nq:]
    vq_sum, vg_sum = vq.sum(1), vg.sum(1)
    nnz = int((vq > 0).sum(1).max())
    jaccard = torch.empty(nq, ng, dtype=dtype, device=v.device)
    for start in range(0, nq, chunk_size):
        rows = slice(start, start + chunk_size)
        # a probe's zero columns add nothing to the sum of minima: visit its non-zero ones
        # (topk pads short rows with zero columns, harmless for the same reason)
        cols = torch.topk((vq[rows] > 0).to(torch.int8), nnz, dim=1).indices  # (c, nnz)
        vals = torch.gather(vq[rows], 1, cols)
        smin = torch.minimum(vals[None], vg[:, cols]).sum(-1).T  # (c, G)
        smax = vq_sum[rows, None] + vg_sum[None, :] - smin
        jaccard[rows] = 1 - smin / smax
    final = (1 - lam) * jaccard + lam * dist[:nq, nq:]
    return _like(final, q_g)


def average_query_expansion(
    query: ArrayOrTensor,
    gallery: ArrayOrTensor,
    k: int = 5,
    metric: str = "cosine",
) -> ArrayOrTensor:
    r"""Query features averaged with their :math:`k` nearest gallery features.

    .. math::
        q' = \frac{\hat q + \sum_{i=1}^{k} \hat g_{(i)}}{\lVert \hat q + \sum_{i=1}^{k}
        \hat g_{(i)} \rVert_2}

    with :math:`\hat x = x / \lVert x \rVert_2` and :math:`g_{(i)}` the :math:`i`-th nearest
    gallery feature of :math:`q` under ``metric`` (``"cosine"`` or ``"euclidean"``). The result
    is compared with the gallery by either metric as before (normalised features give the same
    Euclidean and cosine order).

    Args:
        query: ``(Q, D)`` features. gallery: ``(G, D)`` features.
        k: gallery neighbours averaged in, :math:`1 \le k \le G`. Default 5.
        metric: how neighbours are found.

    Example:
        >>> q, g = torch.randn(2, 4), torch.randn(10, 4)
        >>> average_query_expansion(q, g, k=3).shape
        torch.Size([2, 4])
    """
    q, g = _as_tensor(query, "query"), _as_tensor(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"`query` and `gallery` must have the same feature size; got {q.shape[1]} and "
            f"{g.shape[1]}."
        )
    check_int(k, "k", 1)
    if k > g.shape[0]:
        raise ValueError(f"`k` must be at most the gallery size {g.shape[0]}; got {k}.")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"`metric` must be 'cosine' or 'euclidean'; got {metric!r}.")
    qn, gn = F.normalize(q, dim=1), F.normalize(g, dim=1)
    dist = -(qn @ gn.T) if metric == "cosine" else torch.cdist(q, g)
    nearest = torch.topk(dist, k, dim=1, largest=False).indices
    expanded = F.normalize(qn + gn[nearest].sum(1), dim=1)
    return _like(expanded, query)
