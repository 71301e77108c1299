r"""Triplet loss with in-batch mining: batch-hard, soft margin, softmax-weighted."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_choice, check_positive
from ...registry import register_loss
from ._pairs import (
    PairLoss,
    Pairs,
    check_distance,
    distance_matrix,
    masked_max,
    masked_min,
    masked_softmax,
)

MINING = ("hard", "weighted")


@register_loss(
    "triplet",
    family="metric",
    paper="Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person "
    "Re-Identification, arXiv:1703.07737 (2017); weighted variant: Ristani & Tomasi, Features "
    "for Multi-Target Multi-Camera Tracking and Re-Identification, CVPR 2018",
)
class TripletLoss(PairLoss):
    r"""Triplet loss over every anchor of the batch, with its positive and negative mined.

    For anchor :math:`a` with positives :math:`P(a)` (same label, not :math:`a`) and negatives
    :math:`N(a)` (another label), and distances :math:`d`:

    .. math::
        \ell_a = \bigl[m + d_{a+} - d_{a-}\bigr]_+
        \qquad\text{or, with a soft margin,}\qquad
        \ell_a = \log\bigl(1 + e^{d_{a+} - d_{a-}}\bigr)

    where ``mining="hard"`` (batch-hard) takes :math:`d_{a+} = \max_{p \in P(a)} d(a, p)` and
    :math:`d_{a-} = \min_{n \in N(a)} d(a, n)`, and ``mining="weighted"`` takes softmax-weighted
    averages :math:`d_{a+} = \sum_p w_p d(a,p)`, :math:`w_p \propto e^{d(a,p)}` over
    :math:`P(a)`, and :math:`d_{a-} = \sum_n w_n d(a,n)`, :math:`w_n \propto e^{-d(a,n)}` over
    :math:`N(a)` (the weights are not detached, as in fast-reid).

    Shapes: ``input`` embeddings ``(N, D)``, ``target`` integer identity labels ``(N,)``;
    ``reduction="none"`` gives one value per anchor ``(N,)``. An anchor without a positive or a
    negative gets zero and is counted (``last_invalid_anchors``, see
    :class:`~lightning_losses.losses.metric.PairLoss`); the mean runs over all ``N`` anchors.
    Memory: one ``(N, N)`` distance matrix; no triplet is ever listed.

    Args:
        margin: :math:`m`, 0.3 (the re-ID bag of tricks, fast-reid); ``"soft"`` for the soft
            margin of Hermans et al.
        mining: ``"hard"`` (default) or ``"weighted"``.
        distance: ``"euclidean"`` (default, Hermans et al. and fast-reid),
            ``"sqeuclidean"`` or ``"cosine"`` (:math:`1 - \cos`). fast-reid's normalised
            variant uses :math:`2 - 2\cos`, which is ``normalize=True`` with ``"sqeuclidean"``.
        normalize: L2-normalise the embeddings first (False).
        gather_across_ranks: compare against the embeddings of every rank (False).
        chunk_size: compute blocks of this many anchors, each recomputed in the backward
            pass, when the ``(N, M)`` matrices do not fit (None: all at once).

    Differences from pytorch-metric-learning (``TripletMarginLoss`` + ``BatchHardMiner``, tested
    in ``tests/losses/metric``): the per-anchor values agree, but PML averages over the
    triplets with a non-zero loss (``AvgNonZeroReducer``), this loss over all anchors, as the
    paper and fast-reid do; PML's defaults are a margin of 0.05 on L2-normalised embeddings.
    fast-reid counts the anchor itself among its positives, which changes the weighted variant
    and gives a singleton anchor :math:`[m - d_{a-}]_+` instead of zero.

    Example:
        >>> loss = TripletLoss(margin=0.3)
        >>> value = loss(embeddings, identity_labels)
    """

    def __init__(
        self,
        margin: float | str = 0.3,
        *,
        mining: str = "hard",
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
        if isinstance(margin, str):
            check_choice(margin, ("soft",), "margin")
            self.margin: float | None = None
        else:
            self.margin = check_positive(margin, "margin", allow_zero=True)
        self.mining = check_choice(mining, MINING, "mining")
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        d = distance_matrix(pairs.anchors, pairs.references, self.distance, self.normalize)
        if self.mining == "hard":
            d_pos = masked_max(d, pairs.positive)
            d_neg = masked_min(d, pairs.negative)
        else:
            d_pos = (masked_softmax(d, pairs.positive) * d).sum(1)
            d_neg = (masked_softmax(-d, pairs.negative) * d).sum(1)
        gap = d_pos - d_neg
        values = F.softplus(gap) if self.margin is None else F.relu(gap + self.margin)
        valid = pairs.has_positive & pairs.has_negative
        return values * valid.to(values.dtype), valid

    def extra_repr(self) -> str:
        margin = "'soft'" if self.margin is None else self.margin
        return (
            f"margin={margin}, mining={self.mining!r}, distance={self.distance!r}, "
            f"normalize={self.normalize}, {super().extra_repr()}"
        )
