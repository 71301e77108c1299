r"""Threshold-consistent margin (TCM): a regulariser for one similarity threshold across classes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..._checks import check_positive, check_range
from ...registry import register_loss
from ._pairs import PairLoss, Pairs, cosine_similarity_matrix, distributed_world


@register_loss(
    "tcm",
    family="metric",
    paper="Zhang et al., Threshold-Consistent Margin Loss for Open-World Deep Metric Learning, "
    "ICLR 2024 (arXiv:2307.04047)",
)
class ThresholdConsistentMarginLoss(PairLoss):
    r"""Threshold-consistent margin (TCM) regulariser on cosine similarities.

    Over the batch's positive pairs (same label, not the same sample) with cosine similarity
    below :math:`m^+` and its negative pairs (different labels) above :math:`m^-`:

    .. math::
        \mathcal{L}_\text{TCM} =
          \lambda^+ \frac{\sum_{(i,j) \in P} (m^+ - s_{ij})\,\mathbb{1}[s_{ij} \le m^+]}
                         {\sum_{(i,j) \in P} \mathbb{1}[s_{ij} \le m^+]}
        + \lambda^- \frac{\sum_{(i,j) \in N} (s_{ij} - m^-)\,\mathbb{1}[s_{ij} \ge m^-]}
                         {\sum_{(i,j) \in N} \mathbb{1}[s_{ij} \ge m^-]}

    Only the hard pairs count, each term is a mean over its own hard pairs (0 when there is
    none), and the pairs are ordered (each unordered pair counted twice, which leaves the means
    unchanged). It is meant to be **added to a base loss**, as in the paper's framework:
    ``triplet(x, y) + tcm(x, y)``.

    Per anchor: :math:`\ell_a = N \cdot \bigl(\lambda^+ \sum_{j}(\cdot)^+_{aj} / H^+ +
    \lambda^- \sum_{j}(\cdot)^-_{aj} / H^-\bigr)`, the anchor's share of the two batch sums,
    with :math:`H^\pm` the batch's hard-pair counts, so the mean over the :math:`N` anchors is
    :math:`\mathcal{L}_\text{TCM}` and ``reduction="none"`` gives ``(N,)``. With
    ``gather_across_ranks=True`` the counts :math:`H^\pm` are all-reduced (no gradient flows
    through a count) and the share is scaled by the world size, so the mean over ranks of the
    ranks' losses is the loss of the joint batch. An anchor with no positive and no negative
    pair is counted as invalid (``last_invalid_anchors``); an anchor with only one kind still
    contributes its hard pairs of that kind.

    Args:
        lambda_plus: :math:`\lambda^+`, 1.0.
        lambda_minus: :math:`\lambda^-`, 1.0.
        margin_plus: :math:`m^+`, 0.9.
        margin_minus: :math:`m^-`, 0.5 (all four the defaults of pytorch-metric-learning's
            implementation of the paper).
        gather_across_ranks: pairs against the embeddings of every rank (False).
        chunk_size: not offered: the counts :math:`H^\pm` are statistics of the whole batch.

    pytorch-metric-learning's ``ThresholdConsistentMarginLoss`` computes the same batch value
    (tested, values and gradients); it returns one already-reduced number, this loss one value
    per anchor.

    Example:
        >>> base, tcm = build_loss("triplet"), build_loss("tcm")
        >>> loss = base(embeddings, labels) + tcm(embeddings, labels)
    """

    def __init__(
        self,
        lambda_plus: float = 1.0,
        lambda_minus: float = 1.0,
        margin_plus: float = 0.9,
        margin_minus: float = 0.5,
        *,
        gather_across_ranks: bool = False,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            gather_across_ranks=gather_across_ranks,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.lambda_plus = check_positive(lambda_plus, "lambda_plus", allow_zero=True)
        self.lambda_minus = check_positive(lambda_minus, "lambda_minus", allow_zero=True)
        self.margin_plus = check_range(margin_plus, "margin_plus", -1.0, 1.0)
        self.margin_minus = check_range(margin_minus, "margin_minus", -1.0, 1.0)

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        s = cosine_similarity_matrix(pairs.anchors, pairs.references)
        hard_pos = pairs.positive & (s <= self.margin_plus)
        hard_neg = pairs.negative & (s >= self.margin_minus)
        zero = torch.zeros((), dtype=s.dtype, device=s.device)
        pos_sums = torch.where(hard_pos, self.margin_plus - s, zero).sum(1)
        neg_sums = torch.where(hard_neg, s - self.margin_minus, zero).sum(1)
        counts = torch.stack([hard_pos.sum(), hard_neg.sum()]).to(s.dtype)
        scale = float(s.shape[0])
        world = distributed_world()[1]
        if self.gather_across_ranks and world > 1:
            dist.all_reduce(counts)  # no gradient flows through a count
            scale *= world
        counts = counts.clamp_min(1.0)
        values = scale * (
            self.lambda_plus * pos_sums / counts[0] + self.lambda_minus * neg_sums / counts[1]
        )
        valid = pairs.has_positive | pairs.has_negative
        return values, valid

    def extra_repr(self) -> str:
        return (
            f"lambda_plus={self.lambda_plus}, lambda_minus={self.lambda_minus}, "
            f"margin_plus={self.margin_plus}, margin_minus={self.margin_minus}, "
            f"{super().extra_repr()}"
        )
