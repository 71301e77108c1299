r"""Centroid triplet loss: each anchor against the centroid of its class and of the others."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_positive
from ...registry import register_loss
from ._pairs import (
    PairLoss,
    _autocast_off,
    _common,
    check_distance,
    distance_matrix,
    label_masks,
    masked_min,
)


def _row_distance(x: Tensor, c: Tensor, distance: str) -> Tensor:
    """Distance of row ``i`` of ``x`` to row ``i`` of ``c``, shape ``(N,)``."""
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, c, dim=1, eps=torch.finfo(x.dtype).tiny)
    sq = (x - c).square().sum(1)
    if distance == "sqeuclidean":
        return sq
    # clamped before the root: an anchor on its centroid gets a zero, not an infinite, gradient
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


@register_loss(
    "centroid_triplet",
    family="metric",
    paper="Wieczorek, Rychalska & Dąbrowski, On the Unreasonable Effectiveness of Centroids in "
    "Image Retrieval, ICONIP 2021 (arXiv:2104.13643)",
)
class CentroidTripletLoss(PairLoss):
    r"""Triplet loss whose positive and negatives are class centroids of the batch.

    For anchor :math:`a` with label :math:`y_a`, positives :math:`P(a)` (same label, not
    :math:`a`) and, for every other label :math:`k` present in the batch, its samples
    :math:`S_k`:

    .. math::
        c_a^+ = \frac{1}{|P(a)|}\sum_{p \in P(a)} x_p,\qquad
        c_k = \frac{1}{|S_k|}\sum_{j \in S_k} x_j,\qquad
        \ell_a = \Bigl[m + d(x_a, c_a^+) - \min_{k \ne y_a} d(x_a, c_k)\Bigr]_+

    The positive centroid leaves the anchor out (as the paper's query / centroid split does);
    the hardest negative centroid is mined. Gradients flow through the centroids, which are
    means of the batch's embeddings. At inference the paper replaces every gallery identity
    by the centroid of its embeddings.

    Shapes: ``input`` embeddings ``(N, D)``, ``target`` identity labels ``(N,)``;
    ``reduction="none"`` gives one value per anchor ``(N,)``. An anchor without a positive
    (a label seen once) or without another label in the batch gets zero and is counted
    (``last_invalid_anchors``, see :class:`~lightning_losses.losses.metric.PairLoss`); with
    :math:`K` instances per identity each positive centroid averages :math:`K - 1` embeddings,
    so sample :math:`K \ge 2` (the paper uses P x K batches). Memory: two ``(N, M)`` masks and
    one ``(M, M)`` class matrix for :math:`M` references; no triplet is listed.

    Args:
        margin: :math:`m`, 0.3, the triplet margin of the re-ID bag of tricks, on whose
            training setup the paper builds (the paper's own value was not checked here).
        distance: ``"euclidean"`` (default, the paper), ``"sqeuclidean"`` or ``"cosine"``
            (:math:`1 - \cos`).
        normalize: L2-normalise the embeddings before the centroids are taken (False); the
            centroids themselves are not re-normalised.
        gather_across_ranks: centroids of the embeddings of every rank (False).
        chunk_size: compute blocks of this many anchors, each recomputed in the backward
            pass (None: all at once).

    pytorch-metric-learning 2.9 has no centroid triplet loss, so there is no side-by-side test;
    the loss is checked against a float64 loop over anchors and classes.

    Example:
        >>> loss = CentroidTripletLoss(margin=0.3)
        >>> value = loss(embeddings, identity_labels)  # P x K batch, K >= 2
    """

    def __init__(
        self,
        margin: float = 0.3,
        *,
        distance: str = "euclidean",
        normalize: bool = False,
        gather_across_ranks: bool = False,
        chunk_size: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            gather_across_ranks=gather_across_ranks,
            chunk_size=chunk_size,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)

    def rows(
        self, x: Tensor, labels: Tensor, refs: Tensor, ref_labels: Tensor, offset: int
    ) -> tuple[Tensor, Tensor]:
        # The class centroids need the references' labels, which Pairs does not carry.
        positive, negative, _ = label_masks(labels, ref_labels, offset)
        members = ref_labels[:, None] == ref_labels[None, :]  # (M, M): reference j's class
        with _autocast_off(x):
            x, refs = _common(x, refs, self.normalize)
            pos = positive.to(x.dtype)
            own = (pos @ refs) / pos.sum(1, keepdim=True).clamp_min(1.0)
            same = members.to(x.dtype)
            centroids = (same @ refs) / same.sum(1, keepdim=True)
            d_pos = _row_distance(x, own, self.distance)
            d_neg = masked_min(distance_matrix(x, centroids, self.distance), negative)
        valid = positive.any(1) & negative.any(1)
        values = F.relu(self.margin + d_pos - d_neg)
        return values * valid.to(values.dtype), valid

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, distance={self.distance!r}, normalize={self.normalize}, "
            f"{super().extra_repr()}"
        )
