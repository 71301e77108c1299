r"""OPIS: how much one similarity threshold's utility varies across classes.

Zhang et al., *Threshold-Consistent Margin Loss for Open-World Deep Metric Learning*, ICLR 2024
(arXiv:2307.04047) define the operating-point-inconsistency score. A pair of embeddings is
accepted as a match when its cosine similarity reaches the threshold :math:`t`. For each class
:math:`c` with at least two samples,

* its **sensitivity** :math:`\mathrm{TAR}_c(t)` is the fraction of its positive pairs (two
  samples of :math:`c`) accepted,
* its **specificity** :math:`\mathrm{TRR}_c(t)` the fraction of its negative pairs (one sample
  of :math:`c`, one of another class) rejected,
* its **utility** their harmonic mean,
  :math:`U_c(t) = 2\,\mathrm{TAR}_c\,\mathrm{TRR}_c / (\mathrm{TAR}_c + \mathrm{TRR}_c)`
  (0 when both are 0),

and :math:`\bar U(t)` is the same utility of all pairs pooled. Over a calibration range
:math:`[t_\text{low}, t_\text{high}]` of thresholds,

.. math::
    \mathrm{OPIS} = \frac{1}{T} \sum_{c=1}^{T} \frac{1}{t_\text{high} - t_\text{low}}
        \int_{t_\text{low}}^{t_\text{high}} \bigl(U_c(t) - \bar U(t)\bigr)^2 \, dt

with uniform class weights :math:`1/T`, the integral taken as the mean over
``num_thresholds`` evenly spaced thresholds (both ends included). 0 means one threshold serves
every class equally; larger is less consistent.

**Calibration range.** By default it is where the false accept rate of all negative pairs
lies in ``far_range`` = (0.01, 0.1): :math:`t_\text{low}` and :math:`t_\text{high}` are the
0.9 and 0.99 quantiles (linear interpolation) of the similarities of all negative pairs, the
operating range of a deployed retrieval system. ``thresholds=(low, high)`` fixes it instead.

Details the paper's text leaves open, chosen here and stated so that numbers can be compared:
the utility is the harmonic mean of sensitivity and specificity (an F1-style utility), the
overall utility is that of the pooled pairs, pairs are unordered (ordered pairs give the same
fractions), and the paper's :math:`\epsilon`-OPIS variant is not computed.

Cost: the similarities are computed ``chunk_size`` rows at a time, so memory is
``chunk_size x N`` plus, for the default calibration, every negative pair's similarity
(:math:`\approx N^2/2` floats; pass ``thresholds`` for large sets). Run it on an evaluation
set, not in the training step (it reads values on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .._checks import check_int, check_range

__all__ = ["OPIS", "operating_point_inconsistency"]


def _check(embeddings: Tensor, labels: Tensor) -> None:
    if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
        raise TypeError("`embeddings` must be a floating-point tensor of shape (N, D).")
    if embeddings.ndim != 2:
        raise ValueError(f"`embeddings` must have shape (N, D); got {tuple(embeddings.shape)}.")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError("`labels` must be an integer tensor of shape (N,).")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"`labels` must hold one label per embedding, shape ({embeddings.shape[0]},); got "
            f"{tuple(labels.shape)}."
        )


def _quantile(values: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile (``torch.quantile``'s default) without its size limit."""
    n = values.numel()
    position = q * (n - 1)
    lo = int(position)
    hi = min(lo + 1, n - 1)
    low = values.kthvalue(lo + 1).values
    high = values.kthvalue(hi + 1).values
    return low + (high - low) * (position - lo)


def _check_pair(value: Sequence[float], arg: str, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"`{arg}` must be a pair (low, high); got {value!r}.")
    a = check_range(value[0], arg, low, high)
    b = check_range(value[1], arg, low, high)
    if not a < b:
        raise ValueError(f"`{arg}` must be increasing, (low, high) with low < high; got {value!r}.")
    return a, b


def operating_point_inconsistency(
    embeddings: Tensor,
    labels: Tensor,
    *,
    thresholds: Sequence[float] | None = None,
    far_range: Sequence[float] = (0.01, 0.1),
    num_thresholds: int = 101,
    chunk_size: int = 1024,
) -> Tensor:
    """OPIS of ``embeddings`` ``(N, D)`` with class ``labels`` ``(N,)`` (see the module
    docstring); a float64 scalar. Classes with fewer than two samples have no positive pair
    and are left out of the mean (their samples still serve as negatives)."""
    _check(embeddings, labels)
    check_int(num_thresholds, "num_thresholds", minimum=2)
    check_int(chunk_size, "chunk_size", minimum=1)
    x = F.normalize(embeddings.detach().double(), dim=1)
    _, y = torch.unique(labels, return_inverse=True)
    n = y.shape[0]
    num_classes = int(y.max()) + 1 if n else 0
    sizes = torch.bincount(y, minlength=num_classes)
    evaluated = sizes >= 2
    if int(evaluated.sum()) == 0 or num_classes < 2:
        raise ValueError(
            "OPIS needs at least one class with two samples (a positive pair) and a second "
            f"class (negative pairs); got {num_classes} classes of sizes {sizes.tolist()}."
        )
    rows = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]

    def block(start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """Similarities of rows start:stop to all, same-class mask, upper-triangle mask."""
        s = x[start:stop] @ x.T
        same = y[start:stop, None] == y[None, :]
        upper = torch.arange(start, stop)[:, None] < torch.arange(n)[None, :]
        return s, same, upper

    if thresholds is None:
        low_far, high_far = _check_pair(far_range, "far_range", 0.0, 1.0)
        blocks = (block(start, stop) for start, stop in rows)
        negatives = torch.cat([s[~same & upper] for s, same, upper in blocks])
        # FAR(t) = share of negative pairs with s >= t: FAR f at the (1 - f) quantile
        t_low, t_high = _quantile(negatives, 1.0 - high_far), _quantile(negatives, 1.0 - low_far)
    else:
        low, high = _check_pair(thresholds, "thresholds", -1.0, 1.0)
        t_low, t_high = (
            torch.tensor(low, dtype=torch.float64),
            torch.tensor(high, dtype=torch.float64),
        )
    grid = torch.linspace(0.0, 1.0, num_thresholds, dtype=torch.float64) * (t_high - t_low) + t_low

    # accepted[c, k]: pairs of class c (positive) or touching c (negative) with s >= grid[k]
    bins = num_thresholds + 1
    pos_hist = torch.zeros(num_classes * bins, dtype=torch.float64)
    neg_hist = torch.zeros(num_classes * bins, dtype=torch.float64)
    for start, stop in rows:
        s, same, upper = block(start, stop)
        passed = torch.searchsorted(grid, s, right=True)  # thresholds each pair reaches
        yi, yj = y[start:stop, None].expand_as(s), y[None, :].expand_as(s)
        pos = same & upper
        pos_hist.index_add_(0, (yi * bins + passed)[pos], torch.ones_like(s)[pos])
        neg = ~same & upper  # an unordered negative pair touches both of its classes
        for cls in (yi, yj):
            neg_hist.index_add_(0, (cls * bins + passed)[neg], torch.ones_like(s)[neg])

    def accepted(hist: Tensor) -> tuple[Tensor, Tensor]:
        h = hist.reshape(num_classes, bins)
        # pairs reaching more than k thresholds are accepted at grid[k]
        reach = h.flip(1).cumsum(1).flip(1)[:, 1:]
        return reach, h.sum(1)

    pos_acc, pos_total = accepted(pos_hist)
    neg_acc, neg_total = accepted(neg_hist)

    def utility(acc_pos, tot_pos, acc_neg, tot_neg):
        tar = acc_pos / tot_pos.clamp_min(1.0)
        trr = 1.0 - acc_neg / tot_neg.clamp_min(1.0)
        total = tar + trr
        return torch.where(total > 0, 2.0 * tar * trr / total.clamp_min(1e-300), 0.0)

    per_class = utility(pos_acc, pos_total[:, None], neg_acc, neg_total[:, None])
    # pooled: every positive pair once, every negative pair once (it touches two classes)
    overall = utility(pos_acc.sum(0), pos_total.sum(), neg_acc.sum(0) / 2, neg_total.sum() / 2)
    deviation = (per_class[evaluated] - overall).square().mean(1)
    return deviation.mean()


class OPIS(Metric):
    """Operating-point-inconsistency score as a torchmetrics ``Metric`` (see the module
    docstring for the definition, the calibration range and the cost).

    ``update(embeddings, labels)`` stores the batch; ``compute()`` gathers every rank's
    batches (torchmetrics' ``cat`` reduction) and returns the score of the whole set, a float64
    scalar. Lower is more consistent.

    Args:
        thresholds: fixed calibration range ``(low, high)`` of cosine similarities; None
            (default) derives it from ``far_range``.
        far_range: false accept rates of all negative pairs at the two ends of the range,
            (0.01, 0.1).
        num_thresholds: thresholds evaluated in the range, 101.
        chunk_size: rows of the similarity matrix computed at once, 1024.

    Example:
        >>> metric = OPIS()
        >>> metric.update(embeddings, labels)
        >>> metric.compute()
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        *,
        thresholds: Sequence[float] | None = None,
        far_range: Sequence[float] = (0.01, 0.1),
        num_thresholds: int = 101,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if thresholds is not None:
            _check_pair(thresholds, "thresholds", -1.0, 1.0)
        _check_pair(far_range, "far_range", 0.0, 1.0)
        self.options = dict(
            thresholds=thresholds,
            far_range=far_range,
            num_thresholds=check_int(num_thresholds, "num_thresholds", minimum=2),
            chunk_size=check_int(chunk_size, "chunk_size", minimum=1),
        )
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        _check(embeddings, labels)
        self.embeddings.append(embeddings.detach())
        self.labels.append(labels.detach())

    def compute(self) -> Tensor:
        # a list of batches, or one tensor once torchmetrics has gathered the ranks' lists
        if isinstance(self.embeddings, list) and not self.embeddings:
            raise ValueError("OPIS.compute() needs at least one update() first.")
        embeddings = dim_zero_cat(self.embeddings).cpu()
        labels = dim_zero_cat(self.labels).cpu()
        return operating_point_inconsistency(embeddings, labels, **self.options)
