r"""Circle loss, pair-level with identity labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_positive, check_range
from ...registry import register_loss
from ._pairs import PairLoss, Pairs, cosine_similarity_matrix, masked_logsumexp


@register_loss(
    "circle",
    family="metric",
    paper="Sun et al., Circle Loss: A Unified Perspective of Pair Similarity Optimization, "
    "CVPR 2020",
)
class CircleLoss(PairLoss):
    r"""Circle loss: each pair similarity is pushed toward its own optimum, with a weight that
    grows with its distance from it.

    For anchor :math:`a` with cosine similarities :math:`s_p` to its positives (same label, not
    :math:`a`) and :math:`s_n` to its negatives:

    .. math::
        \ell_a = \log\Bigl[1 + \sum_{n} e^{\gamma \alpha_n (s_n - \Delta_n)}
                 \sum_{p} e^{-\gamma \alpha_p (s_p - \Delta_p)}\Bigr]
               = \operatorname{softplus}\Bigl(\operatorname{LSE}_n\bigl(\gamma\alpha_n
                 (s_n - \Delta_n)\bigr) + \operatorname{LSE}_p\bigl(-\gamma\alpha_p
                 (s_p - \Delta_p)\bigr)\Bigr)

    with :math:`\alpha_p = [1 + m - s_p]_+`, :math:`\alpha_n = [s_n + m]_+` (detached, as in
    the paper's gradient analysis and the reference code), :math:`\Delta_p = 1 - m`,
    :math:`\Delta_n = m`. Computed in log space (the right-hand form), so :math:`\gamma = 256`
    stays finite in any dtype.

    Shapes: ``input`` embeddings ``(N, D)`` (normalised inside), ``target`` labels ``(N,)``;
    ``reduction="none"`` gives ``(N,)``. An anchor without a positive or a negative gets zero
    and is counted; the mean runs over all ``N`` anchors (as fast-reid's
    ``pairwise_circleloss``).

    Args:
        margin: relaxation :math:`m`, 0.25 (the paper's re-ID and face setting, fast-reid).
        gamma: scale :math:`\gamma`, 128 (the paper's re-ID setting, fast-reid; the paper
            uses 256 for faces and 80 with :math:`m = 0.4` for fine-grained retrieval).
        gather_across_ranks: compare against the embeddings of every rank (False).
        chunk_size: compute blocks of this many anchors, each recomputed in the backward
            pass, when the ``(N, M)`` matrices do not fit (None: all at once).

    Differences from pytorch-metric-learning's ``CircleLoss`` (tested): the per-anchor values
    agree; PML defaults to :math:`m = 0.4, \gamma = 80` and averages over the anchors with a
    non-zero loss, this loss over all anchors.

    Example:
        >>> loss = CircleLoss()
        >>> value = loss(embeddings, identity_labels)
    """

    def __init__(
        self,
        margin: float = 0.25,
        gamma: float = 128.0,
        *,
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
        self.margin = check_range(margin, "margin", 0.0, 1.0)
        self.gamma = check_positive(gamma, "gamma")

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        s = cosine_similarity_matrix(pairs.anchors, pairs.references)
        m, gamma = self.margin, self.gamma
        alpha_p = F.relu(1.0 + m - s.detach())
        alpha_n = F.relu(s.detach() + m)
        logit_p = -gamma * alpha_p * (s - (1.0 - m))
        logit_n = gamma * alpha_n * (s - m)
        lse = masked_logsumexp(logit_p, pairs.positive) + masked_logsumexp(logit_n, pairs.negative)
        valid = pairs.has_positive & pairs.has_negative
        values = F.softplus(lse)
        return values * valid.to(values.dtype), valid

    def extra_repr(self) -> str:
        return f"margin={self.margin}, gamma={self.gamma}, {super().extra_repr()}"
