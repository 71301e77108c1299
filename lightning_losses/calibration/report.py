r"""Calibration report: ECE, MCE, RMS, adaptive ECE, NLL, Brier and reliability-diagram data.

Definitions, for top-label confidence :math:`c_i = \max_k p_{ik}`, correctness
:math:`a_i = 1[\arg\max_k p_{ik} = y_i]` and :math:`B` bins :math:`S_b`:

.. math::
    \mathrm{ECE} = \sum_b \frac{|S_b|}{N} \big|\bar a_b - \bar c_b\big|,\quad
    \mathrm{MCE} = \max_b \big|\bar a_b - \bar c_b\big|,\quad
    \mathrm{RMS} = \Big(\sum_b \frac{|S_b|}{N} (\bar a_b - \bar c_b)^2\Big)^{1/2}

* ECE, MCE and RMS are torchmetrics' ``MulticlassCalibrationError`` with ``norm="l1"``,
  ``"max"`` and ``"l2"`` (equal-width bins :math:`[\frac{b}{B}, \frac{b+1}{B})`; torchmetrics
  gives confidences of exactly 1.0 a bin of their own).
* Adaptive ECE uses equal-mass bins: the confidences are sorted and cut into :math:`B`
  contiguous groups whose sizes differ by at most one (the first :math:`N \bmod B` groups hold
  one more), as in Nixon et al., Measuring Calibration in Deep Learning (CVPR-W 2019).
* NLL is :math:`-\frac1N\sum_i \log p_{i y_i}`; Brier is
  :math:`\frac1N \sum_i \sum_k (p_{ik} - 1[k = y_i])^2` (Brier 1950; in [0, 2]).
* The reliability data uses the same equal-width bins, with the last bin closed at 1:
  per bin the mean confidence, the accuracy and the count.

Example:
    >>> report = CalibrationReport(num_classes=10, n_bins=15)
    >>> report.update(logits, labels)  # doctest: +SKIP
    >>> d = report.compute()  # doctest: +SKIP
    >>> d["ece"], d["reliability"]["accuracy"]  # doctest: +SKIP
    >>> plot_reliability_diagram(d["reliability"], path="reliability.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_calibration_error
from torchmetrics.utilities import dim_zero_cat

from .._checks import check_int
from ._inputs import check_n_bins, flatten_scores


def _bins_from_confidence(confidence: Tensor, correct: Tensor, n_bins: int) -> dict[str, Tensor]:
    """Equal-width reliability bins from top-label confidences (M,) and correctness (M,)."""
    dtype = torch.float64
    conf = confidence.to(dtype)
    acc = correct.to(dtype)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=dtype, device=conf.device)
    index = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=dtype, device=conf.device).scatter_add_(
        0, index, torch.ones_like(conf)
    )
    conf_sum = torch.zeros_like(count).scatter_add_(0, index, conf)
    acc_sum = torch.zeros_like(count).scatter_add_(0, index, acc)
    denom = count.clamp_min(1)
    mean_conf, mean_acc = conf_sum / denom, acc_sum / denom
    total = count.sum().clamp_min(1)
    ece = ((mean_acc - mean_conf).abs() * count / total).sum()
    return {
        "edges": edges,
        "confidence": mean_conf,
        "accuracy": mean_acc,
        "count": count.to(torch.long),
        "ece": ece,
    }


def reliability_bins(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    *,
    ignore_index: int | None = None,
) -> dict[str, Tensor]:
    r"""Reliability-diagram data of softmax probabilities, in equal-width confidence bins.

    Bin :math:`b` holds the samples with top-label confidence in
    :math:`[\frac{b}{B}, \frac{b+1}{B})` (the last bin includes 1).

    Args:
        probs: (N, K) probabilities (or dense (N, K, *d)), values in [0, 1].
        labels: (N,) class indices (or (N, *d)).
        n_bins: number of bins :math:`B \ge 1`; 15 (Guo et al. 2017 and torchmetrics).
        ignore_index: elements whose label equals it are left out, or None.

    Returns:
        A dict of float64 tensors: ``edges`` (B + 1,), and per bin ``confidence`` (mean
        top-label confidence), ``accuracy`` and ``count`` (long; empty bins have count 0 and
        confidence = accuracy = 0), plus ``ece``, the count-weighted mean gap of these bins.
        :func:`~lightning_losses.calibration.plot_reliability_diagram` draws it.
    """
    check_n_bins(n_bins)
    p, y = flatten_scores(
        probs, labels, scores_arg="probs", ignore_index=ignore_index, probabilities=True
    )
    confidence, prediction = p.max(dim=1)
    return _bins_from_confidence(confidence, prediction == y, n_bins)


def adaptive_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> Tensor:
    r"""ECE with equal-mass bins over top-label confidences (M,) and correctness (M,).

    .. math::
        \mathrm{ECE}_\text{adaptive} = \sum_b \frac{|S_b|}{N}\,|\bar a_b - \bar c_b|

    where the :math:`S_b` are :math:`B` contiguous groups of the sorted confidences whose sizes
    differ by at most one (the first :math:`N \bmod B` hold one more). With :math:`N < B` some
    groups are empty and contribute nothing.
    """
    check_n_bins(n_bins)
    n = confidence.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float64, device=confidence.device)
    order = torch.argsort(confidence, stable=True)
    conf = confidence[order].to(torch.float64)
    acc = correct[order].to(torch.float64)
    base, extra = divmod(n, n_bins)
    sizes = torch.full((n_bins,), base, dtype=torch.long, device=conf.device)
    sizes[:extra] += 1
    index = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes)
    gap = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    gap.scatter_add_(0, index, acc - conf)
    return gap.abs().sum() / n


class CalibrationReport(Metric):
    r"""Accumulates multiclass predictions and reports every calibration number at once.

    ``compute()`` returns a dict of tensors:

    ===================  ==================================================================
    ``ece``              expected calibration error (torchmetrics, ``norm="l1"``)
    ``mce``              maximum calibration error (torchmetrics, ``norm="max"``)
    ``rms``              root-mean-square calibration error (torchmetrics, ``norm="l2"``)
    ``adaptive_ece``     ECE with equal-mass bins
    ``nll``              mean negative log-likelihood of the labels
    ``brier``            multiclass Brier score, :math:`\frac1N\sum_i\|p_i - e_{y_i}\|^2`
    ``accuracy``         top-1 accuracy
    ``confidence``       mean top-label confidence
    ``count``            number of (non-ignored) samples
    ``reliability``      per-bin data for :func:`plot_reliability_diagram` (see
                         :func:`reliability_bins`)
    ===================  ==================================================================

    The formulas are in :mod:`lightning_losses.calibration.report`. The states are
    torchmetrics states (top-label confidences and correctness concatenated across processes,
    NLL / Brier sums and the count summed), so the report is exact under DDP. Memory grows as
    two floats per sample, as for torchmetrics' own calibration error.

    Args:
        num_classes: number of classes :math:`K`.
        n_bins: number of bins :math:`B \ge 1`; 15 (Guo et al. 2017, torchmetrics' default).
        from_logits: ``update`` receives logits (True, default; softmax is applied) or
            probabilities in [0, 1] (False).
        ignore_index: label value to skip (pixel-level reports), or None.

    Example:
        >>> report = CalibrationReport(num_classes=10, n_bins=15)
        >>> report.update(logits, labels)  # any number of times  # doctest: +SKIP
        >>> d = report.compute()  # doctest: +SKIP
        >>> print(f"ECE {d['ece']:.4f}")  # doctest: +SKIP
        >>> fig = plot_reliability_diagram(d["reliability"], "rel.png")  # doctest: +SKIP
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    confidences: list[Tensor]
    correct: list[Tensor]
    nll_sum: Tensor
    brier_sum: Tensor
    total: Tensor

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        *,
        from_logits: bool = True,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_int(num_classes, "num_classes", 2)
        self.num_classes = num_classes
        self.n_bins = check_n_bins(n_bins)
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.add_state("confidences", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        zero = torch.zeros((), dtype=torch.float64)
        self.add_state("nll_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("brier_sum", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, labels: Tensor) -> None:
        """Add a batch: ``preds`` (N, K) or (N, K, *d) logits (or probabilities with
        ``from_logits=False``) and ``labels`` (N,) or (N, *d) class indices."""
        scores, y = flatten_scores(
            preds.detach(),
            labels.detach(),
            scores_arg="preds",
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            probabilities=not self.from_logits,
        )
        scores = scores.to(torch.float64)
        if self.from_logits:
            logp = F.log_softmax(scores, dim=1)
            probs = logp.exp()
        else:
            probs = scores
            logp = probs.clamp_min(torch.finfo(torch.float64).tiny).log()
        confidence, prediction = probs.max(dim=1)
        onehot = F.one_hot(y, self.num_classes).to(probs.dtype)
        self.confidences.append(confidence.float())
        self.correct.append((prediction == y).float())
        self.nll_sum += -logp.gather(1, y[:, None]).sum()
        self.brier_sum += (probs - onehot).pow(2).sum()
        self.total += y.numel()

    def compute(self) -> dict[str, Any]:
        if int(self.total) == 0:
            raise ValueError(
                "CalibrationReport has no samples: call `update(preds, labels)` with at least "
                "one non-ignored label before `compute()`."
            )
        conf = dim_zero_cat(self.confidences)
        correct = dim_zero_cat(self.correct)
        ce = {
            name: binary_calibration_error(
                conf, correct.long(), n_bins=self.n_bins, norm=norm, validate_args=False
            )
            .to(device=conf.device, dtype=torch.float64)
            .reshape(())
            for name, norm in (("ece", "l1"), ("mce", "max"), ("rms", "l2"))
        }
        n = self.total.to(torch.float64)
        return {
            **ce,
            "adaptive_ece": adaptive_calibration_error(conf, correct, self.n_bins),
            "nll": self.nll_sum / n,
            "brier": self.brier_sum / n,
            "accuracy": correct.to(torch.float64).mean(),
            "confidence": conf.to(torch.float64).mean(),
            "count": self.total.clone(),
            "reliability": _bins_from_confidence(conf, correct, self.n_bins),
        }
