r"""Calibration losses: MDCA and DCA (train time) and the correctness-aware loss (post hoc).

MDCA and DCA add to a classification loss a penalty that is a statistic of the whole batch (a
difference of batch means), not a sum of per-sample terms. Under the library's per-sample contract
(``reduction="none"`` returns ``(N,)``) the penalty is **broadcast**: every valid sample
carries the same value :math:`\beta R`, so that

.. math::
    \frac{1}{N_\text{valid}} \sum_i \ell_i = \overline{\ell_\text{base}} + \beta R

i.e. ``reduction="none"`` followed by ``.mean()`` equals ``reduction="mean"`` and equals the
paper's objective "mean base loss + beta x penalty". The gradient of :math:`R` flows once per
sample copy, which the mean divides back out. Consequences worth knowing:

* the batch means inside :math:`R` run over the batch's non-ignored elements only, and are
  *not* weighted by ``sample_weight``;
* ``reduction="sum"`` gives :math:`\sum_i \ell_{\text{base},i} + N_\text{valid}\, \beta R`;
* with ``sample_weight`` :math:`w`, ``"mean"`` gives
  :math:`\frac{1}{N}\sum_i w_i \ell_{\text{base},i} + \beta R \cdot \frac{1}{N}\sum_i w_i`
  (for unbiased importance weights such as InfoBatch's, :math:`\mathbb{E}[w] = 1`);
* the penalty depends on the batch composition and size (larger batches estimate it better);
  under DDP each process computes it on its own shard, as the reference implementations do.

Dense inputs ``(N, K, *d)`` are accepted: every non-ignored element (pixel) enters the batch
means, as in MDCA's segmentation experiments.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice, check_positive
from .._reduce import PerSample
from ..registry import register_loss
from ._inputs import Categorical, target_mask
from .classification import CategoricalLoss, log_one_minus_p_target

BASES = ("cross_entropy", "focal")


def _valid_mean(x: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of the rows of ``x`` (M,) or (M, K) over the valid rows; 0 when none is valid."""
    if valid is None:
        return x.sum(0) / max(x.shape[0], 1)
    mask = valid.to(x.dtype)
    if x.ndim == 2:
        mask = mask[:, None]
    return (x * mask).sum(0) / valid.sum().clamp_min(1).to(x.dtype)


def mdca_penalty(c: Categorical) -> Tensor:
    r"""MDCA of flattened rows: :math:`\frac1K\sum_k |\bar p_k - \bar y_k|` over valid rows."""
    probs = F.softmax(c.logits, dim=1)
    onehot = target_mask(probs, c.target).to(probs.dtype)
    return (_valid_mean(probs, c.valid) - _valid_mean(onehot, c.valid)).abs().mean()


def dca_penalty(c: Categorical) -> Tensor:
    r"""DCA of flattened rows: :math:`|\overline{\max_k p_k} - \overline{1[\hat y = y]}|`."""
    probs = F.softmax(c.logits, dim=1)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == c.target).to(probs.dtype)
    return (_valid_mean(confidence, c.valid) - _valid_mean(correct, c.valid)).abs()


class _BatchPenaltyLoss(CategoricalLoss, abc.ABC):
    """Base loss (cross-entropy or focal) per element plus ``beta`` x a batch penalty."""

    #: Each per-sample value carries a term computed from the whole batch, so it changes when
    #: the rest of the batch changes (the conformance suite reads this flag).
    batch_statistic: ClassVar[bool] = True

    def __init__(
        self,
        beta: float,
        base: str,
        gamma: float | None,
        *,
        weight: Sequence[float] | Tensor | None,
        ignore_index: int | None,
        reduction: str,
        validate_args: bool,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.base = check_choice(base, BASES, "base")
        if base == "cross_entropy" and gamma is not None:
            raise ValueError(
                f"`gamma` is the focal loss exponent and needs base='focal'; got gamma={gamma!r} "
                "with base='cross_entropy'."
            )
        self.gamma = check_positive(1.0 if gamma is None else gamma, "gamma", allow_zero=True)

    @abc.abstractmethod
    def penalty(self, c: Categorical) -> Tensor:
        """The batch statistic :math:`R` (a scalar) of the flattened rows."""

    def element_loss(self, c: Categorical) -> Tensor:
        loss = -F.log_softmax(c.logits, dim=1).gather(1, c.target[:, None]).squeeze(1)
        if self.base == "focal" and self.gamma > 0:
            loss = torch.exp(self.gamma * log_one_minus_p_target(c.logits, c.target)) * loss
        return loss

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        c = self.prepare(input, target)
        base = self.reduce_elements(c)
        return PerSample(base.values + self.beta * self.penalty(c), base.valid)

    def extra_repr(self) -> str:
        gamma = f", gamma={self.gamma}" if self.base == "focal" else ""
        return f"beta={self.beta}, base={self.base!r}{gamma}, {super().extra_repr()}"


@register_loss(
    "mdca",
    family="calibration",
    paper="Hebbalaguppe et al., A Stitch in Time Saves Nine: A Train-Time Regularizing Loss for "
    "Improved Neural Network Calibration, CVPR 2022",
)
class MDCALoss(_BatchPenaltyLoss):
    r"""Cross-entropy (or focal) plus the Multi-class Difference in Confidence and Accuracy.

    With :math:`p_i = \mathrm{softmax}(z_i)`, one-hot labels :math:`y_i` and the :math:`M`
    non-ignored elements of the batch:

    .. math::
        \mathrm{MDCA} = \frac{1}{K} \sum_{k=1}^{K}
            \Big| \frac{1}{M}\sum_{i} p_{ik} - \frac{1}{M}\sum_{i} y_{ik} \Big|,
        \qquad
        \ell_i = \ell_{\text{base}}(z_i, y_i) + \beta\, \mathrm{MDCA}

    where :math:`\ell_\text{base}` is :math:`-w_{y}\log p_{y}` (``base="cross_entropy"``) or
    :math:`-w_{y}(1-p_y)^\gamma \log p_y` (``base="focal"``). MDCA is a batch statistic: it is
    broadcast to every sample, so the mean of the per-sample values is exactly
    "mean base loss + beta x MDCA" (see :mod:`lightning_losses.losses.calibration` for the
    consequences under ``sum`` and ``sample_weight``). The class weight :math:`w` applies to the
    base term only.

    Args:
        beta: weight :math:`\beta \ge 0` of MDCA; 1 (the paper's and the authors' scripts'
            setting for NLL+MDCA and FL+MDCA).
        base: ``"cross_entropy"`` (NLL+MDCA, default) or ``"focal"`` (FL+MDCA).
        gamma: focal exponent, only with ``base="focal"``; None means 1 (the authors' FL+MDCA
            setting).
        weight: per-class weights (K,) of the base term, or None.
        ignore_index: index targets equal to it are skipped, in the base term and in MDCA;
            None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d) logits; target (N,) / (N, *d) class indices (soft targets
    are not supported).

    Example:
        >>> loss = MDCALoss(beta=1.0)
        >>> loss(torch.randn(8, 10), torch.randint(0, 10, (8,)))  # doctest: +SKIP
    """

    def __init__(
        self,
        beta: float = 1.0,
        base: str = "cross_entropy",
        gamma: float | None = None,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            beta,
            base,
            gamma,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )

    def penalty(self, c: Categorical) -> Tensor:
        return mdca_penalty(c)


@register_loss(
    "dca",
    family="calibration",
    paper="Liang et al., Improved Trainable Calibration Method for Neural Networks on Medical "
    "Imaging Classification, BMVC 2020",
)
class DCALoss(_BatchPenaltyLoss):
    r"""Cross-entropy plus the Difference between Confidence and Accuracy of the batch.

    With confidence :math:`c_i = \max_k p_{ik}`, prediction :math:`\hat y_i = \arg\max_k p_{ik}`
    and the :math:`M` non-ignored elements of the batch:

    .. math::
        \mathrm{DCA} = \Big| \frac{1}{M}\sum_i c_i - \frac{1}{M}\sum_i 1[\hat y_i = y_i] \Big|,
        \qquad
        \ell_i = \ell_{\text{base}}(z_i, y_i) + \beta\, \mathrm{DCA}

    The accuracy term is piecewise constant in the logits, so the gradient of DCA flows through
    the mean confidence only (it pulls the confidence towards the batch accuracy). DCA is a
    batch statistic and is broadcast to every sample as in :class:`MDCALoss`.

    Args:
        beta: weight :math:`\beta \ge 0` of DCA; 10, the default of the authors' released code
            (``loss_fn.py``: ``alpha=1, beta=10``). The MDCA authors' re-run of DCA on CIFAR uses
            :math:`\beta = 1`; tune it on a validation split (it trades accuracy for calibration).
        base: ``"cross_entropy"`` (the paper, default) or ``"focal"``.
        gamma: focal exponent, only with ``base="focal"``; None means 1.
        weight: per-class weights (K,) of the base term, or None.
        ignore_index: index targets equal to it are skipped, in the base term and in DCA;
            None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d) logits; target (N,) / (N, *d) class indices.

    Example:
        >>> loss = DCALoss(beta=10.0)
        >>> loss(torch.randn(8, 3), torch.randint(0, 3, (8,)))  # doctest: +SKIP
    """

    def __init__(
        self,
        beta: float = 10.0,
        base: str = "cross_entropy",
        gamma: float | None = None,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            beta,
            base,
            gamma,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )

    def penalty(self, c: Categorical) -> Tensor:
        return dca_penalty(c)


def correctness_aware_element(c: Categorical) -> Tensor:
    r"""Squared gap between top-label confidence and correctness, :math:`(c_i - a_i)^2`, per row.

    The confidence is taken in log space, :math:`\log c = \max_k z_k - \mathrm{logsumexp}_k z_k`
    (so :math:`c` is finite and its gradient bounded at saturated logits); the correctness
    :math:`a_i = 1[\arg\max_k z_{ik} = y_i]` is piecewise constant and carries no gradient.
    """
    log_p = F.log_softmax(c.logits, dim=1)
    log_conf, prediction = log_p.max(dim=1)
    correct = (prediction == c.target).to(log_p.dtype)
    return (torch.exp(log_conf) - correct).square()


@register_loss(
    "correctness_aware",
    family="calibration",
    paper="Liu et al., Optimizing Calibration by Gaining Aware of Prediction Correctness, "
    "arXiv 2024",
)
class CorrectnessAwareLoss(CategoricalLoss):
    r"""Correctness-aware (CA) loss: pull the top-label confidence towards 0/1 correctness.

    The loss of a post-hoc calibrator. With the calibrated logits :math:`z_i` (for example
    :math:`z_i = x_i / T(x_i)`, the output of
    :class:`~lightning_losses.calibration.CorrectnessAwareCalibrator`),
    confidence :math:`c_i = \max_k \mathrm{softmax}(z_i)_k` and correctness
    :math:`a_i = 1[\arg\max_k z_{ik} = y_i]`:

    .. math::
        \ell_i = w_{y_i}\,\big(c_i - a_i\big)^2,
        \qquad \log c_i = \max_k z_{ik} - \log\sum_k e^{z_{ik}}

    It raises the confidence of correctly predicted samples and lowers that of wrongly
    predicted ones, whatever the probability of the true class; cross-entropy instead raises
    :math:`p_{y}` and can raise the confidence of a narrowly wrong prediction. A positive
    per-sample temperature does not move the arg-max, so :math:`a_i` is the correctness of the
    *original* prediction; the gradient flows through :math:`c_i` only.

    The authors' code weighs correct samples by :math:`1-\mathrm{acc}` and wrong ones by
    :math:`\mathrm{acc}` (acc: the accuracy of the batch) and normalises by the sum of the
    weights; that balance is a batch statistic and is left to the caller (``sample_weight``;
    ``CorrectnessAwareCalibrator.fit`` applies it), so each value here is the sample's own.

    Args:
        weight: per-class weights :math:`w` (K,), or None (the paper: none).
        ignore_index: index targets equal to it are skipped; None (the default) skips nothing.

    Shape: input (N, K) or (N, K, *d) logits; target (N,) / (N, *d) class indices (soft targets
    are rejected: correctness needs a hard label).

    Example:
        >>> loss = CorrectnessAwareLoss()
        >>> loss(torch.randn(8, 10), torch.randint(0, 10, (8,)))  # doctest: +SKIP
    """

    # correctness compares labels with the argmax, which no kernel range-checks
    labels_checked_by_kernel = False

    def __init__(
        self,
        *,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            validate_args=validate_args,
        )

    def element_loss(self, c: Categorical) -> Tensor:
        return correctness_aware_element(c)
