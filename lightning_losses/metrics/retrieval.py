r"""Re-ID retrieval metrics: CMC rank-k, mAP and mINP under the Market-1501 protocol.

Every query ranks the gallery by distance. Following the official Market-1501 evaluation
(Zheng et al., *Scalable Person Re-identification: A Benchmark*, ICCV 2015; its MATLAB code
``compute_AP.m``), for a query with identity :math:`y_q` and camera :math:`c_q`, a gallery
entry :math:`g` is

* **good** (a correct match) when :math:`y_g = y_q` and :math:`c_g \ne c_q`;
* **junk** (removed from the ranking, neither right nor wrong) when :math:`y_g` is the junk id
  (``-1``: Market's badly detected boxes) or when :math:`y_g = y_q` and :math:`c_g = c_q`
  (the same person seen by the same camera is too easy a match);
* **wrong** otherwise, including the **distractors** (id ``0`` in Market: boxes of no person
  of the test set), which stay in the ranking.

On the ranking with the junk removed, with :math:`G_q` the good entries and :math:`r_1 < r_2 <
\dots < r_{|G_q|}` their (1-based) ranks:

.. math::
    \mathrm{CMC}_q(k) = 1[r_1 \le k],\qquad
    \mathrm{AP}_q = \frac{1}{|G_q|} \sum_{i=1}^{|G_q|} \frac{i}{r_i},\qquad
    \mathrm{INP}_q = \frac{|G_q|}{r_{|G_q|}},

averaged over the queries: CMC rank-k, mAP, and mINP (Ye et al., *Deep Learning for Person
Re-identification: A Survey and Outlook*, TPAMI 2021: :math:`R_q^{hard} = r_{|G_q|}` is the
rank of the hardest correct match). AP is the non-interpolated average precision of
open-reid, torchreid and fast-reid; the MATLAB code averages consecutive precisions
(trapezoids), which gives slightly different values. A query **without a good match** (and a
query whose own id is the junk or distractor id) has no defined AP and is **skipped**; the
number skipped is reported. Ties in distance keep the gallery's order (stable sort).

Distances: ``"cosine"`` (default; :math:`1 - \hat q \cdot \hat g` on L2-normalised features)
or ``"euclidean"``. The ranking is computed for ``chunk_size`` queries at a time, so memory is
:math:`O(\text{chunk} \cdot G)` whatever the number of queries. ``backend="faiss"`` ranks
with a flat ``faiss`` index instead (same order up to floating-point ties; needs the optional
``faiss-cpu`` package, the ``retrieval`` extra).

Optional post-processing, as fast-reid offers it: average query expansion over the
``query_expansion`` nearest gallery features, then k-reciprocal re-ranking (``rerank=True``;
:mod:`lightning_losses.metrics.reranking`, dense :math:`(Q + G)^2` memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .._checks import check_choice, check_int, check_range
from .reranking import average_query_expansion, k_reciprocal_rerank

__all__ = ["ReIDMetrics", "pairwise_distance", "reid_metrics"]

METRICS = ("cosine", "euclidean")
BACKENDS = ("torch", "faiss")


def pairwise_distance(query: Tensor, gallery: Tensor, metric: str = "cosine") -> Tensor:
    """Distances ``(Q, G)``: cosine distance on L2-normalised features, or Euclidean.

    Computed in the features' floating dtype, at least float32.
    """
    check_choice(metric, METRICS, "metric")
    dtype = torch.promote_types(query.dtype, torch.float32)
    q, g = query.to(dtype), gallery.to(dtype)
    if metric == "cosine":
        return 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    sq = (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2 * q @ g.T
    return sq.clamp_min(0).sqrt()


def _faiss_ranking(metric: str):
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            "backend='faiss' needs the `faiss` package: install the `retrieval` extra "
            "(pip install 'lightning-losses[retrieval]', i.e. faiss-cpu), or use "
            "backend='torch'."
        ) from err

    def rank(q: Tensor, g: Tensor) -> Tensor:
        qn = q.float().cpu().contiguous().numpy()
        gn = g.float().cpu().contiguous().numpy()
        if metric == "cosine":
            faiss.normalize_L2(qn)
            faiss.normalize_L2(gn)
            index = faiss.IndexFlatIP(gn.shape[1])
        else:
            index = faiss.IndexFlatL2(gn.shape[1])
        index.add(gn)
        _, order = index.search(qn, gn.shape[0])
        return torch.from_numpy(order).long()

    return rank


def _rank_scores(
    order: Tensor,
    q_ids: Tensor,
    q_cams: Tensor,
    g_ids: Tensor,
    g_cams: Tensor,
    junk_id: int | None,
    max_rank: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per query of a chunk: CMC (c, max_rank), AP, INP (float64) and whether it counts."""
    ids, cams = g_ids[order], g_cams[order]  # (c, G), in ranked order
    same_id = ids == q_ids[:, None]
    same_cam = cams == q_cams[:, None]
    junk = same_id & same_cam
    if junk_id is not None:
        junk |= ids == junk_id
    good = same_id & ~junk
    kept_rank = torch.cumsum(~junk, dim=1).double()  # 1-based rank among the kept entries
    hits = torch.cumsum(good, dim=1).double()
    num_good = good.sum(1)
    valid = num_good > 0
    denom = num_good.clamp_min(1).double()
    ap = torch.where(good, hits / kept_rank, 0.0).sum(1) / denom
    big = torch.finfo(torch.float64).max
    first = torch.where(good, kept_rank, big).amin(1)
    hardest = torch.where(good, kept_rank, 0.0).amax(1).clamp_min(1)
    inp = num_good.double() / hardest
    cmc = first[:, None] <= torch.arange(1, max_rank + 1, device=order.device)[None, :]
    return cmc.double(), ap, inp, valid


def reid_metrics(
    query: Tensor,
    query_ids: Tensor,
    query_cameras: Tensor,
    gallery: Tensor,
    gallery_ids: Tensor,
    gallery_cameras: Tensor,
    *,
    metric: str = "cosine",
    ranks: Sequence[int] = (1, 5, 10),
    junk_id: int | None = -1,
    distractor_id: int | None = 0,
    chunk_size: int = 256,
    backend: str = "torch",
    query_expansion: int = 0,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> dict[str, Tensor]:
    """CMC rank-k, mAP and mINP of ``query`` against ``gallery`` (see the module docstring).

    Args:
        query, gallery: features ``(Q, D)`` and ``(G, D)``.
        query_ids, gallery_ids: integer identities ``(Q,)`` and ``(G,)``.
        query_cameras, gallery_cameras: integer camera ids ``(Q,)`` and ``(G,)``.
        metric: ``"cosine"`` or ``"euclidean"``.
        ranks: the CMC ranks to report (keys ``rank1``, ``rank5``, ...).
        junk_id: gallery id removed from every ranking (Market: -1); None for none.
        distractor_id: id of distractors (Market: 0): kept in the gallery as wrong matches;
            queries with this id are skipped. None for none.
        chunk_size: queries ranked at once.
        backend: ``"torch"`` or ``"faiss"``.
        query_expansion: :math:`k` of average query expansion; 0 for none.
        rerank: apply k-reciprocal re-ranking with ``k1``, ``k2``, ``lambda_value``.

    Returns:
        ``rank{k}`` for each k, ``map``, ``minp`` (float64 scalars; NaN when no query counts),
        ``num_queries`` (the queries that count) and ``num_skipped`` (int64 scalars).
    """
    check_choice(metric, METRICS, "metric")
    check_choice(backend, BACKENDS, "backend")
    check_int(chunk_size, "chunk_size", 1)
    check_int(query_expansion, "query_expansion", 0)
    ranks = tuple(check_int(k, "ranks", 1) for k in ranks)
    if not ranks:
        raise ValueError("`ranks` must name at least one CMC rank; got none.")
    if backend == "faiss" and rerank:
        raise ValueError("`rerank=True` needs the dense distances of backend='torch'.")
    if rerank:
        check_range(lambda_value, "lambda_value", 0.0, 1.0)
    _check_split(query, query_ids, query_cameras, "query")
    _check_split(gallery, gallery_ids, gallery_cameras, "gallery")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"`query` and `gallery` must have the same feature size; got {query.shape[1]} and "
            f"{gallery.shape[1]}."
        )
    device = query.device
    q_ids, q_cams = query_ids.long(), query_cameras.long()
    g_ids, g_cams = gallery_ids.long().to(device), gallery_cameras.long().to(device)
    gallery = gallery.to(device)
    if query_expansion and gallery.shape[0]:
        query = average_query_expansion(query, gallery, min(query_expansion, len(gallery)), metric)

    num_q, max_rank = query.shape[0], max(ranks)
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    counted = torch.zeros((), dtype=torch.long, device=device)
    eligible = torch.ones(num_q, dtype=torch.bool, device=device)
    if junk_id is not None:
        eligible &= q_ids != junk_id
    if distractor_id is not None:
        eligible &= q_ids != distractor_id

    reranked = None
    if rerank and num_q and gallery.shape[0]:
        reranked = k_reciprocal_rerank(
            pairwise_distance(query, gallery, metric),
            pairwise_distance(query, query, metric),
            pairwise_distance(gallery, gallery, metric),
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
        )
    faiss_rank = _faiss_ranking(metric) if backend == "faiss" else None
    for start in range(0, num_q if gallery.shape[0] else 0, chunk_size):
        rows = slice(start, start + chunk_size)
        if faiss_rank is not None:
            order = faiss_rank(query[rows], gallery).to(device)
        elif reranked is not None:
            order = torch.argsort(reranked[rows], dim=1, stable=True)
        else:
            order = torch.argsort(
                pairwise_distance(query[rows], gallery, metric), dim=1, stable=True
            )
        cmc, ap, inp, valid = _rank_scores(
            order, q_ids[rows], q_cams[rows], g_ids, g_cams, junk_id, max_rank
        )
        valid &= eligible[rows]
        cmc_sum += (cmc * valid[:, None]).sum(0)
        ap_sum += torch.where(valid, ap, 0.0).sum()
        inp_sum += torch.where(valid, inp, 0.0).sum()
        counted += valid.sum()

    n = counted.double()  # 0 queries: NaN, not a silent 0
    out = {f"rank{k}": cmc_sum[k - 1] / n for k in ranks}
    out["map"] = ap_sum / n
    out["minp"] = inp_sum / n
    out["num_queries"] = counted
    out["num_skipped"] = torch.tensor(num_q, device=device) - counted
    return out


def _check_split(features: Tensor, ids: Tensor, cameras: Tensor, name: str) -> None:
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(
            f"`{name}` features must be a 2-D tensor (N, D); got "
            f"{type(features).__name__} {tuple(getattr(features, 'shape', ()))}."
        )
    n = features.shape[0]
    for t, arg in ((ids, "ids"), (cameras, "cameras")):
        if not isinstance(t, Tensor) or t.shape != (n,):
            raise ValueError(
                f"`{name}` {arg} must be a tensor of shape ({n},), one per feature row; got "
                f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}."
            )
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"`{name}` {arg} must be integers; got dtype {t.dtype}.")


class ReIDMetrics(Metric):
    r"""CMC rank-k, mAP and mINP under the Market-1501 protocol, gathered across ranks.

    Collects features, identities and cameras of queries and gallery entries over the
    evaluation (list states, concatenated across processes under DDP, so every rank ranks the
    whole gallery), then computes :func:`reid_metrics` (formulas and the junk/distractor rule
    in the module docstring).

    ``update(features, ids, cameras, is_query, indices=None)`` takes a batch of either split or
    a mix: ``is_query`` is a bool or a bool tensor ``(N,)``. A distributed evaluation sampler
    pads the last batches by repeating samples; pass each sample's dataset ``indices`` and
    repeated ``(is_query, index)`` pairs count once.

    Args:
        metric: ``"cosine"`` (default, on L2-normalised features: the standard for features
            trained with a BNNeck) or ``"euclidean"``.
        ranks: CMC ranks reported. Default (1, 5, 10), the usual table.
        junk_id: Market's -1. distractor_id: Market's 0 (kept as wrong matches).
        chunk_size: queries ranked at a time (memory ``chunk_size x G``). Default 256.
        backend: ``"torch"`` or ``"faiss"`` (``retrieval`` extra).
        query_expansion: AQE neighbours, 0 for none. rerank: k-reciprocal re-ranking with
            ``k1`` 20, ``k2`` 6, ``lambda_value`` 0.3 (the paper's Market setting).
        kwargs: torchmetrics ``Metric`` options.

    Example:
        >>> metric = ReIDMetrics()
        >>> ids, cams = torch.tensor([1, 2, 3, 4, 0, 5]), torch.tensor([0, 0, 1, 1, 1, 1])
        >>> metric.update(torch.randn(4, 8), ids[:4], 1 - cams[:4], True)
        >>> metric.update(torch.randn(6, 8), ids, cams, False)
        >>> sorted(metric.compute())
        ['map', 'minp', 'num_queries', 'num_skipped', 'rank1', 'rank10', 'rank5']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        metric: str = "cosine",
        ranks: Sequence[int] = (1, 5, 10),
        junk_id: int | None = -1,
        distractor_id: int | None = 0,
        chunk_size: int = 256,
        backend: str = "torch",
        query_expansion: int = 0,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.options = {
            "metric": check_choice(metric, METRICS, "metric"),
            "ranks": tuple(check_int(k, "ranks", 1) for k in ranks),
            "junk_id": junk_id,
            "distractor_id": distractor_id,
            "chunk_size": check_int(chunk_size, "chunk_size", 1),
            "backend": check_choice(backend, BACKENDS, "backend"),
            "query_expansion": check_int(query_expansion, "query_expansion", 0),
            "rerank": bool(rerank),
            "k1": check_int(k1, "k1", 1),
            "k2": check_int(k2, "k2", 1),
            "lambda_value": check_range(lambda_value, "lambda_value", 0.0, 1.0),
        }
        if backend == "faiss":
            _faiss_ranking(metric)  # fail at construction, not after a whole evaluation
        for name in ("features", "ids", "cameras", "is_query", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        features: Tensor,
        ids: Tensor,
        cameras: Tensor,
        is_query: bool | Tensor,
        indices: Tensor | None = None,
    ) -> None:
        """Add a batch: features ``(N, D)``, integer ``ids`` and ``cameras`` ``(N,)``,
        ``is_query`` a bool or bool ``(N,)``, optional dataset ``indices`` ``(N,)``."""
        _check_split(features, ids, cameras, "batch")
        n = features.shape[0]
        if isinstance(is_query, bool):
            is_query = torch.full((n,), is_query, dtype=torch.bool, device=features.device)
        if (
            not isinstance(is_query, Tensor)
            or is_query.dtype != torch.bool
            or is_query.shape != (n,)
        ):
            raise ValueError(
                f"`is_query` must be a bool or a bool tensor of shape ({n},); got "
                f"{type(is_query).__name__} {getattr(is_query, 'dtype', '')} "
                f"{tuple(getattr(is_query, 'shape', ()))}."
            )
        if indices is None:
            indices = torch.full((n,), -1, dtype=torch.long, device=features.device)
        elif not isinstance(indices, Tensor) or indices.shape != (n,):
            raise ValueError(
                f"`indices` must be a tensor of shape ({n},); got {type(indices).__name__} "
                f"{tuple(getattr(indices, 'shape', ()))}."
            )
        if self.features and self.features[0].shape[1] != features.shape[1]:
            raise ValueError(
                f"`features` must keep their size: {self.features[0].shape[1]} before, "
                f"{features.shape[1]} now."
            )
        self.features.append(features.detach())
        self.ids.append(ids.long())
        self.cameras.append(cameras.long())
        self.is_query.append(is_query)
        self.indices.append(indices.long())

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        feats, ids = dim_zero_cat(self.features), dim_zero_cat(self.ids)
        cams, is_query = dim_zero_cat(self.cameras), dim_zero_cat(self.is_query).bool()
        indices = dim_zero_cat(self.indices)
        if bool((indices >= 0).any()):  # drop repeated (split, index) pairs: DDP padding
            key = indices * 2 + is_query.long()
            order = torch.argsort(key, stable=True)
            repeat = torch.zeros_like(is_query)
            repeat[order[1:]] = key[order[1:]] == key[order[:-1]]
            keep = ~(repeat & (indices >= 0))
            feats, ids, cams, is_query = feats[keep], ids[keep], cams[keep], is_query[keep]
        return feats, ids, cams, is_query

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.features, list) and not self.features:  # a tensor once synced
            raise ValueError("ReIDMetrics.compute() before any update: no query or gallery.")
        feats, ids, cams, is_query = self._gathered()
        q, g = is_query, ~is_query
        return reid_metrics(feats[q], ids[q], cams[q], feats[g], ids[g], cams[g], **self.options)
