r"""Contrastive losses over labelled views: SupCon, NT-Xent / InfoNCE, alignment + uniformity.

The labels say which embeddings form positive pairs: the two augmented views of one image
share a label in self-supervised training (NT-Xent, alignment), a class shares a label in
supervised training (SupCon). Every embedding is an anchor, and ``reduction="none"`` gives one
value per anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_positive
from ...registry import register_loss
from ._pairs import (
    PairLoss,
    Pairs,
    cosine_similarity_matrix,
    masked_logsumexp,
    masked_mean,
    squared_distance_matrix,
)


@register_loss(
    "supcon",
    family="metric",
    paper="Khosla et al., Supervised Contrastive Learning, NeurIPS 2020; ReLU option: Kini et "
    "al., Symmetric Neural-Collapse Representations with Supervised Contrastive Loss: The "
    "Impact of ReLU and Batching, ICLR 2024",
)
class SupConLoss(PairLoss):
    r"""Supervised contrastive loss (the :math:`\mathcal{L}^{sup}_{out}` form).

    With :math:`z` the L2-normalised embeddings, :math:`P(i)` the other samples with the label
    of :math:`i` and :math:`A(i)` all samples but :math:`i`:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
            \log \frac{e^{z_i \cdot z_p / \tau}}{\sum_{a \in A(i)} e^{z_i \cdot z_a / \tau}}

    The denominator is a log-sum-exp, which subtracts the (detached) row maximum as the
    reference code does. With ``relu=True`` the embeddings pass through a ReLU before the
    normalisation (the final ReLU of Kini et al., which makes the learned geometry symmetric
    under class imbalance).

    Shapes: ``input`` embeddings ``(N, D)``, ``target`` labels ``(N,)``; ``reduction="none"``
    gives ``(N,)``. An anchor without a positive gets zero and is counted (the reference code
    divides by zero there); the mean runs over all ``N`` anchors.

    Args:
        temperature: :math:`\tau`, 0.1 (the paper's ImageNet setting and PML's default).
        relu: apply a ReLU to the embeddings before normalising (False).
        gather_across_ranks: compare against the embeddings of every rank (False).
        chunk_size: compute blocks of this many anchors, each recomputed in the backward
            pass, when the ``(N, M)`` matrices do not fit (None: all at once).

    Differences from pytorch-metric-learning's ``SupConLoss`` (tested): the per-anchor values
    agree; PML averages over the anchors with a non-zero loss and returns zero for a batch
    without any positive or without any negative pair.

    Example:
        >>> loss = SupConLoss(temperature=0.1)
        >>> value = loss(projections, class_labels)
    """

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        relu: bool = False,
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
        self.temperature = check_positive(temperature, "temperature")
        self.relu = bool(relu)

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        x, refs = pairs.anchors, pairs.references
        if self.relu:
            x, refs = F.relu(x), F.relu(refs)
        logits = cosine_similarity_matrix(x, refs) / self.temperature
        log_denominator = masked_logsumexp(logits, pairs.not_self)
        valid = pairs.has_positive
        # Rows without another sample have log_zero as denominator: keep them finite.
        log_denominator = torch.where(valid, log_denominator, torch.zeros_like(log_denominator))
        log_prob = logits - log_denominator[:, None]
        return -masked_mean(log_prob, pairs.positive), valid

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, relu={self.relu}, {super().extra_repr()}"


@register_loss(
    "nt_xent",
    family="metric",
    paper="Chen et al., A Simple Framework for Contrastive Learning of Visual Representations "
    "(SimCLR), ICML 2020; van den Oord et al., Representation Learning with Contrastive "
    "Predictive Coding (InfoNCE), 2018",
)
class NTXentLoss(PairLoss):
    r"""NT-Xent (normalised temperature-scaled cross-entropy), the InfoNCE loss of SimCLR.

    With cosine similarities :math:`s`, each positive pair :math:`(i, p)` (same label) is a
    classification of :math:`p` among itself and the negatives :math:`N(i)` of :math:`i`:

    .. math::
        \ell_{i,p} = -\log \frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau}
            + \sum_{n \in N(i)} e^{s_{in}/\tau}},
        \qquad \ell_i = \frac{1}{|P(i)|} \sum_{p \in P(i)} \ell_{i,p}

    In SimCLR's setting (two views per image, labels marking the pairs) each anchor has one
    positive, the denominator runs over the :math:`2N - 1` other views, and the mean over the
    anchors equals the paper's mean over the :math:`2N` ordered pairs.

    Shapes: ``input`` embeddings ``(N, D)``, ``target`` labels ``(N,)`` marking the views of
    one source; ``reduction="none"`` gives ``(N,)``. An anchor without a positive gets zero and
    is counted.

    Args:
        temperature: :math:`\tau`, 0.1 (the best value of SimCLR's temperature ablation with
            normalised embeddings and a 4096 batch; PML's default is 0.07).
        gather_across_ranks: compare against the embeddings of every rank (False); this is how
            SimCLR obtains its large negative sets.
        chunk_size: compute blocks of this many anchors, each recomputed in the backward
            pass, when the ``(N, M)`` matrices do not fit (None: all at once).

    Differences from pytorch-metric-learning's ``NTXentLoss`` (tested): the same pair losses;
    PML averages over positive pairs, this loss first over each anchor's positives and then
    over anchors, which is the same when every anchor has the same number of positives (the
    two-view case) and weighs anchors equally otherwise.

    Example:
        >>> views = torch.cat([f(aug1(x)), f(aug2(x))])
        >>> labels = torch.arange(len(x)).repeat(2)
        >>> value = NTXentLoss()(views, labels)
    """

    def __init__(
        self,
        temperature: float = 0.1,
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
        self.temperature = check_positive(temperature, "temperature")

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        logits = cosine_similarity_matrix(pairs.anchors, pairs.references) / self.temperature
        # log of the negatives' sum; log_zero (finite) when an anchor has none, so the pair
        # loss is then exactly 0.
        log_negatives = masked_logsumexp(logits, pairs.negative)
        pair_losses = torch.logaddexp(logits, log_negatives[:, None]) - logits
        return masked_mean(pair_losses, pairs.positive), pairs.has_positive

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, {super().extra_repr()}"


@register_loss(
    "align_uniform",
    family="metric",
    paper="Wang & Isola, Understanding Contrastive Representation Learning through Alignment "
    "and Uniformity on the Hypersphere, ICML 2020",
)
class AlignUniformLoss(PairLoss):
    r"""Alignment plus uniformity of L2-normalised embeddings.

    .. math::
        \mathcal{L}_\text{align} = \mathbb{E}_{(x, x^+)} \|f(x) - f(x^+)\|_2^\alpha,
        \qquad
        \mathcal{L}_\text{uniform} = \log \mathbb{E}_{(x, y)} e^{-t \|f(x) - f(y)\|_2^2}

    :math:`\ell_i = \lambda_a \frac{1}{|P(i)|}\sum_{p \in P(i)} \|f_i - f_p\|^\alpha +
    \lambda_u \mathcal{L}_\text{uniform}`: the alignment is per anchor (over its positives,
    same label), the uniformity is **one batch statistic**, the log of the mean over all
    ordered pairs with different labels (in the two-view setting: all pairs of views of
    distinct images), computed as a log-sum-exp, and broadcast to every anchor, so the mean
    over anchors is :math:`\lambda_a \mathcal{L}_\text{align} + \lambda_u
    \mathcal{L}_\text{uniform}` (the paper's combined objective). The paper's code computes
    the uniformity within each view separately and averages the two; over a two-view batch this
    loss also counts the pairs across views of distinct images. With ``sample_weight`` the
    uniformity term is scaled by the mean weight. Under ``gather_across_ranks`` the uniformity
    runs over this rank's anchors against every rank's embeddings.

    Shapes: ``input`` embeddings ``(N, D)``, ``target`` labels ``(N,)``; ``reduction="none"``
    gives ``(N,)``. An anchor without a positive has no alignment term and is counted; a batch
    without any pair of different labels has a uniformity of 0.

    Args:
        alpha: :math:`\alpha`, 2 (the paper's default).
        t: :math:`t`, 2 (the paper's default).
        align_weight: :math:`\lambda_a`, 1.
        uniform_weight: :math:`\lambda_u`, 1 (the paper's experiments weigh the two terms
            equally by default).
        gather_across_ranks: compare against the embeddings of every rank (False).

    Example:
        >>> loss = AlignUniformLoss()
        >>> value = loss(views, pair_labels)
    """

    def __init__(
        self,
        alpha: float = 2.0,
        t: float = 2.0,
        *,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        gather_across_ranks: bool = False,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            gather_across_ranks=gather_across_ranks,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.alpha = check_positive(alpha, "alpha")
        self.t = check_positive(t, "t")
        self.align_weight = check_positive(align_weight, "align_weight", allow_zero=True)
        self.uniform_weight = check_positive(uniform_weight, "uniform_weight", allow_zero=True)

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        sq = squared_distance_matrix(pairs.anchors, pairs.references, normalize=True)
        if self.alpha == 2.0:
            powered = sq
        else:  # clamped so that identical embeddings give a zero, not an infinite, gradient
            powered = sq.clamp_min(torch.finfo(sq.dtype).tiny).pow(self.alpha / 2.0)
        align = masked_mean(powered, pairs.positive)
        count = pairs.negative.sum().clamp_min(1).to(sq.dtype)
        uniform = masked_logsumexp(-self.t * sq, pairs.negative, dim=None) - count.log()
        uniform = torch.where(pairs.negative.any(), uniform, torch.zeros_like(uniform))
        values = self.align_weight * align + self.uniform_weight * uniform
        return values, pairs.has_positive

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, t={self.t}, align_weight={self.align_weight}, "
            f"uniform_weight={self.uniform_weight}, {super().extra_repr()}"
        )
