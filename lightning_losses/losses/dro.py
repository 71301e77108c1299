"""Distributionally robust losses that act on the labels of one sample.

The batch-level DRO best responses (CVaR, chi-square, KL, spectral risk, group DRO) are weights,
not losses: they live in :mod:`lightning_losses.weighting.dro` and reach training through the
``sample_weights`` protocol of :class:`~lightning_losses.LossMixin`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    check_choice,
    check_int,
    check_number,
    check_positive,
)
from .._reduce import PerSample
from ..registry import register_loss
from ._inputs import Categorical, per_sample_reduce, target_mask
from ._sample_tables import all_gather_rows, check_sample_index, last_write
from .classification import CategoricalLoss


@register_loss(
    "ldr_kl",
    family="dro",
    paper="Zhu, Ying, Yang, Label Distributionally Robust Losses for Multi-class Classification: "
    "Consistency, Robustness and Adaptivity, ICML 2023",
)
class LDRKLLoss(CategoricalLoss):
    r"""Label-distributionally robust loss with a KL penalty (LDR-KL).

    The worst case over label distributions :math:`p \in \Delta_K` of the margin-shifted logit
    gaps, penalised by :math:`\lambda\,\mathrm{KL}(p\,\|\,\mathbf{1}/K)`, in closed form:

    .. math::
        \ell(z, y) = \max_{p \in \Delta_K} \sum_k p_k \big(z_k - z_y + c\,[k \ne y]\big)
                     - \lambda\,\mathrm{KL}(p \,\|\, \mathbf{1}/K)
                   = \lambda \log \frac{1}{K} \sum_{k=1}^{K}
                     \exp\!\Big(\frac{z_k - z_y + c\,[k \ne y]}{\lambda}\Big)

    computed as a log-sum-exp. Special cases: :math:`c = 0` gives temperature-scaled
    cross-entropy, :math:`\ell = \lambda\,\mathrm{CE}(z/\lambda, y) - \lambda \log K`;
    :math:`\lambda \to 0` gives the Crammer–Singer multi-class hinge
    :math:`\max\big(0, \max_{k \ne y} (z_k + c) - z_y\big)`, approached from below within
    :math:`\lambda \log K`.

    Logit transform (``transform_logits=True``, the default): the official code replaces the
    logits by :math:`s = \mathrm{softplus}(z)/\overline{\mathrm{softplus}(z)}` (row mean) before
    the formula. The scores are then positive with mean 1, so :math:`c` and :math:`\lambda` have
    a fixed scale whatever the network's logit scale; the defaults below were chosen with it, and
    results differ without it. ``False`` applies the formula to the raw logits (the paper's
    definition, and the form in which the limits above hold).

    Args:
        margin: :math:`c \ge 0`; 2.0, the default of ``LDRLoss_V1`` in the official code.
        lam: :math:`\lambda > 0`; 1.0, the same source (the paper tunes it in
            :math:`\{0.1, 1, 10\}`).
        transform_logits: apply the official softplus / mean transform first; True.
        weight, ignore_index: as in :class:`~lightning_losses.losses.CrossEntropyLoss`.

    Shape: input (N, K) or (N, K, *d); target (N,) / (N, *d) class indices.

    Example:
        >>> loss = LDRKLLoss(margin=2.0, lam=1.0)
        >>> loss(torch.randn(4, 10), torch.tensor([1, 0, 9, 3]))  # doctest: +SKIP
    """

    def __init__(
        self,
        margin: float = 2.0,
        lam: float = 1.0,
        transform_logits: bool = True,
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
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.lam = check_positive(lam, "lam")
        if not isinstance(transform_logits, bool):
            raise TypeError(
                f"`transform_logits` must be a bool; got {type(transform_logits).__name__}."
            )
        self.transform_logits = transform_logits

    def element_loss(self, c: Categorical) -> Tensor:
        z = c.logits
        if self.transform_logits:
            z = F.softplus(z)
            z = z / z.mean(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        k = z.shape[1]
        not_target = 1.0 - target_mask(z, c.target).to(z.dtype)
        gaps = z - z.gather(1, c.target[:, None]) + self.margin * not_target
        return self.lam * (torch.logsumexp(gaps / self.lam, dim=1) - math.log(k))

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, lam={self.lam}, transform_logits={self.transform_logits}, "
            f"{super().extra_repr()}"
        )


#: Logit transforms of :class:`ALDRKLLoss`: divide by the mean absolute logit (official default),
#: softplus first and then the same division (the official code's CIFAR-100 runs), or none.
ALDR_LOGIT_TRANSFORMS = ("abs_mean", "softplus_mean", "none")


def aldr_kl_lambda(gaps: Tensor, lam_prev: Tensor, lam: float, alpha: float) -> Tensor:
    r"""One ALDR-KL temperature step: the best :math:`\lambda` for the worst case at ``lam_prev``.

    .. math::
        p = \mathrm{softmax}(\delta / \lambda_{\text{prev}}), \qquad
        \lambda = \lambda_0 \Big(1 - \frac{\mathrm{KL}(p \,\|\, \mathbf{1}/K)}{\alpha \log K}\Big)
        \in \big[\lambda_0 (1 - 1/\alpha),\ \lambda_0\big]

    Args:
        gaps: :math:`\delta_k = s_k - s_y + c\,[k \ne y]`, shape (N, K), K >= 2.
        lam_prev: the previous temperatures, shape (N,), positive.
        lam: :math:`\lambda_0 > 0`.
        alpha: :math:`\alpha > 1`.

    Returns:
        The new temperatures, shape (N,), in ``gaps``' dtype. No gradient flows through them.
    """
    with torch.no_grad():
        k = gaps.shape[1]
        log_k = math.log(k)
        log_p = torch.log_softmax(gaps / lam_prev.to(gaps.dtype)[:, None], dim=1)
        kl = (log_p.exp() * (log_p + log_k)).sum(1).clamp(0.0, log_k)
        return lam * (1.0 - kl / (alpha * log_k))


@register_loss(
    "aldr_kl",
    family="dro",
    paper="Zhu, Ying, Yang, Label Distributionally Robust Losses for Multi-class Classification: "
    "Consistency, Robustness and Adaptivity, ICML 2023 (ALDR-KL)",
)
class ALDRKLLoss(CategoricalLoss):
    r"""Adaptive LDR-KL (ALDR-KL): LDR-KL with a per-sample temperature :math:`\lambda_i`.

    Objective. With scores :math:`s` (the transformed logits, below) and gaps
    :math:`\delta_k = s_k - s_y + c\,[k \ne y]`, sample :math:`i` takes the worst case over both
    the label distribution and its own temperature, which a quadratic keeps near
    :math:`\lambda_0`:

    .. math::
        \ell_i = \max_{\lambda > 0} \max_{p \in \Delta_K} \sum_k p_k \delta_{ik}
                 - \lambda\,\mathrm{KL}(p \,\|\, \mathbf{1}/K)
                 - \frac{\alpha \log K}{2 \lambda_0} (\lambda - \lambda_0)^2 .

    A sample whose worst-case :math:`p` concentrates on few labels (a large KL: the scores are
    peaked, whether or not they agree with the label) gets a smaller :math:`\lambda`, a loss
    closer to the hinge end of the LDR family; a sample with flat scores keeps
    :math:`\lambda \approx \lambda_0`. For fixed :math:`\lambda` the inner maximum is the LDR-KL
    closed form :math:`\lambda \log \frac{1}{K}\sum_k e^{\delta_k/\lambda}` at
    :math:`p = \mathrm{softmax}(\delta/\lambda)`; for fixed :math:`p` the best temperature is
    :math:`\lambda_0 (1 - \mathrm{KL}(p\|\mathbf{1}/K)/(\alpha \log K))`, which lies in
    :math:`[\lambda_0(1 - 1/\alpha), \lambda_0]` because :math:`0 \le \mathrm{KL} \le \log K`.

    Update (the state). Each visit of sample :math:`i` takes one block-coordinate ascent step
    from the temperature stored at its previous visit, as the official code does:

    .. math::
        p_i = \mathrm{softmax}(\delta_i / \lambda_i^{\text{old}}), \quad
        \lambda_i = \lambda_0 \Big(1 - \frac{\mathrm{KL}(p_i \,\|\, \mathbf{1}/K)}
                    {\alpha \log K}\Big), \quad
        \ell_i = \lambda_i \log \frac{1}{K} \sum_k e^{\delta_{ik}/\lambda_i}
                 - \frac{\alpha \log K}{2 \lambda_0} (\lambda_i - \lambda_0)^2 .

    :math:`\lambda_i` is computed without gradient and held fixed in :math:`\ell_i` (so the
    regulariser adds to the value but not to the gradient); at a joint maximum this is the
    gradient of :math:`\ell_i` (envelope theorem). The table of :math:`\lambda_i` starts at
    :math:`\lambda_0` and is a persistent float64 buffer ``lambdas``: it moves with ``.to()``, is
    saved in checkpoints and restored exactly. As :math:`\alpha \to \infty`,
    :math:`\lambda_i \to \lambda_0` and the regulariser vanishes: the loss becomes
    :class:`LDRKLLoss` with ``lam`` = :math:`\lambda_0` (on the same scores).

    Source and deviations. Objective, update and scaling are read from ``ALDRLoss_V1`` in the
    authors' code (``loss.py`` of Optimization-AI/ICML2023_LDR): its :math:`\lambda` update is
    the exact maximiser above and its ``extra_loss`` is the regulariser's value. The paper's text
    was not available to check its notation; it may write the regulariser as
    :math:`\frac{\alpha}{2}(\lambda-\lambda_0)^2` with :math:`\alpha` scaled differently. Here
    :math:`\alpha` is the code's (its ``--alpha``). Two deliberate differences from that code:
    :math:`p` is :math:`\mathrm{softmax}(\delta/\lambda)`, the exact :math:`p`-step of the
    objective, where the code uses :math:`\mathrm{softmax}(s/\lambda)` without the margin
    (identical for :math:`c = 0`, and within a factor :math:`e^{\pm c/\lambda} \le e^{0.02}` on
    each :math:`p_k` at the defaults); and the KL is computed exactly from ``log_softmax``
    where the code adds :math:`10^{-5}` to :math:`p` and renormalises.

    When the table changes. Only on a forward that trains: the module in training mode, grad
    enabled and ``input`` requiring grad. Other training-mode calls read the table (one step from
    the stored :math:`\lambda_i`) without writing. In eval mode the indices belong to an
    evaluation set, so the table is neither read nor written: every sample steps from
    :math:`\lambda_0`, as at its first visit. Two training forwards of the same sample in one
    optimiser step (gradient accumulation over repeated samples, SAM's second pass) advance it
    twice. A sample that appears twice in a batch keeps the value of its last occurrence.

    DDP. DDP broadcasts module buffers from rank 0 before each forward
    (``broadcast_buffers=True``), so a rank-local write would be lost and ranks would disagree.
    Each write is therefore all-gathered (the indices and new temperatures of every rank; two
    collectives per training forward) and applied on every rank in rank order, so all ranks hold
    the same table, the one a single process would hold after processing the ranks' batches one
    after the other, and the checkpoint written by rank 0 is complete. All ranks must call the
    loss's training forward the same number of times (true in a DDP training step).

    Logit transform (``logit_transform``): the official ``ALDRLoss_V1`` divides the logits by
    their mean absolute value, :math:`s = z / \overline{|z|}` (``"abs_mean"``, default), and with
    ``softplus=True`` (its CIFAR-100 runs) applies softplus first (``"softplus_mean"``, the
    transform of :class:`LDRKLLoss`); ``"none"`` uses raw logits.

    Args:
        num_samples: size of the training set, the length of the ``lambdas`` table; an index
            outside ``[0, num_samples)`` is an error. None (default): the table grows to cover
            the largest index written, with unseen samples at :math:`\lambda_0`, and takes the
            saved size when a checkpoint is loaded; growing reads the largest index on the host
            at every training step, which a fixed ``num_samples`` avoids.
        margin: :math:`c \ge 0`; 0.1, the official run script's ``--margin``.
        lam: :math:`\lambda_0 > 0`; 10.0, the value the official run script uses for ALDR (the
            paper tunes it in :math:`\{0.1, 1, 10\}`).
        alpha: :math:`\alpha > 1`; 2.0, the official run script's ``--alpha``. It must exceed 1
            so that :math:`\lambda_i \ge \lambda_0(1 - 1/\alpha) > 0` (the code's own comment
            says ``alpha > 1.0``; its class default of 1 lets :math:`\lambda_i` reach 0).
        logit_transform: ``"abs_mean"`` (default), ``"softplus_mean"`` or ``"none"``.
        weight, ignore_index: as in :class:`~lightning_losses.losses.CrossEntropyLoss`; ignored
            samples leave their :math:`\lambda_i` unchanged.

    Context: ``index``, the dataset indices of the samples, shape (N,), integers (LossMixin
    passes ``batch["index"]``).

    Shape: input (N, K) with K >= 2 (one temperature per sample, so no dense input); target
    (N,) class indices. Cost: one extra softmax over (N, K) per call, no extra memory for the
    graph; a table of ``num_samples`` float64 values.

    Example:
        >>> loss = ALDRKLLoss(num_samples=50_000)
        >>> loss(torch.randn(4, 10), torch.tensor([1, 0, 9, 3]), index=torch.tensor([7, 3, 0, 9]))
        ... # doctest: +SKIP
    """

    context = ("index",)

    def __init__(
        self,
        num_samples: int | None = None,
        margin: float = 0.1,
        lam: float = 10.0,
        alpha: float = 2.0,
        logit_transform: str = "abs_mean",
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
        if num_samples is not None:
            check_int(num_samples, "num_samples", minimum=1)
        self.num_samples = num_samples
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.lam = check_positive(lam, "lam")
        alpha = check_number(alpha, "alpha")
        if alpha <= 1.0:
            raise ValueError(
                f"`alpha` must be > 1 (then every lambda_i >= lam * (1 - 1/alpha) > 0); got "
                f"{alpha!r}."
            )
        self.alpha = alpha
        self.logit_transform = check_choice(
            logit_transform, ALDR_LOGIT_TRANSFORMS, "logit_transform"
        )
        # float64, so that the stored lam and the temperatures carry no storage rounding.
        self.register_buffer(
            "lambdas", torch.full((num_samples or 0,), self.lam, dtype=torch.float64)
        )

    def scores(self, logits: Tensor) -> Tensor:
        """The transformed logits :math:`s` of shape (N, K) (see ``logit_transform``)."""
        if self.logit_transform == "none":
            return logits
        if self.logit_transform == "softplus_mean":
            logits = F.softplus(logits)
        scale = logits.abs().mean(1, keepdim=True)
        return logits / scale.clamp_min(torch.finfo(logits.dtype).tiny)

    def per_sample(self, input: Tensor, target: Tensor, index: Tensor) -> PerSample:
        c = self.prepare(input, target)
        if input.ndim != 2:
            raise ValueError(
                "`input` must be logits of shape (N, K) for ALDR-KL (one temperature per "
                f"sample); got shape {tuple(input.shape)}."
            )
        n, k = input.shape
        if k < 2:
            raise ValueError(f"`input` must have at least 2 classes; got {k}.")
        index = check_sample_index(
            index, n, device=self.lambdas.device, num_samples=self.num_samples,
            training=self.training,
        )  # fmt: skip
        s = self.scores(c.logits)
        not_target = 1.0 - target_mask(s, c.target).to(s.dtype)
        gaps = s - s.gather(1, c.target[:, None]) + self.margin * not_target
        if self.training:
            lam_prev = self._read(index).to(device=s.device, dtype=s.dtype)
        else:
            lam_prev = torch.full((n,), self.lam, dtype=s.dtype, device=s.device)
        lam_i = aldr_kl_lambda(gaps.detach(), lam_prev, self.lam, self.alpha)
        log_k = math.log(k)
        penalty = self.alpha * log_k / (2.0 * self.lam) * (lam_i - self.lam) ** 2
        values = lam_i * (torch.logsumexp(gaps / lam_i[:, None], dim=1) - log_k) - penalty
        if self.training and torch.is_grad_enabled() and input.requires_grad:
            self._write(index, lam_i, c.valid)
        w = self.class_weight(c)
        if w is not None:
            values = values * w
        return per_sample_reduce(values, c.valid, n)

    # -- the table ------------------------------------------------------------------------------

    def _read(self, index: Tensor) -> Tensor:
        """Stored temperatures of ``index``; ``lam`` for samples never written."""
        table = self.lambdas
        if table.numel() == 0:
            return torch.full(index.shape, self.lam, dtype=table.dtype, device=table.device)
        inside = index < table.shape[0]
        stored = table[torch.where(inside, index, 0)]
        return torch.where(inside, stored, torch.full_like(stored, self.lam))

    def _write(self, index: Tensor, lam_i: Tensor, valid: Tensor | None) -> None:
        """Store the temperatures of the valid rows; when an index repeats, the last row wins.

        With ``num_samples`` set this makes no host read: every row writes, an ignored row (or
        an earlier duplicate) writes the value its slot must end with, so colliding writes agree.
        Without it the table grows to the largest index seen, which the host must read.
        """
        values = lam_i.detach().to(device=self.lambdas.device, dtype=self.lambdas.dtype)
        if valid is None:
            valid = torch.ones_like(index, dtype=torch.bool)
        valid = valid.to(index.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            index, rows = all_gather_rows(index, torch.stack([values, valid.to(values.dtype)], 1))
            values, valid = rows[:, 0], rows[:, 1].bool()
        if index.numel() == 0:
            return
        if self.num_samples is None:
            size = int(index.max()) + 1  # a growing table: the size is data, read on the host
            if size > self.lambdas.shape[0]:
                grown = torch.full((size,), self.lam, dtype=self.lambdas.dtype, device=index.device)
                grown[: self.lambdas.shape[0]] = self.lambdas
                self.lambdas = grown
        # The last valid row with the same index, found in O(n^2) on the batch (no table-sized
        # scratch); -1 where no valid row has that index: the slot keeps its stored value.
        last = last_write(index, valid)
        final = torch.where(last >= 0, values[last.clamp_min(0)], self.lambdas[index])
        self.lambdas[index] = final

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Without `num_samples` the table takes its size from the data: adopt the saved size.
        saved = state_dict.get(prefix + "lambdas")
        if self.num_samples is None and saved is not None and saved.shape != self.lambdas.shape:
            self.lambdas = torch.empty(
                saved.shape, dtype=self.lambdas.dtype, device=self.lambdas.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, margin={self.margin}, lam={self.lam}, "
            f"alpha={self.alpha}, logit_transform={self.logit_transform!r}, "
            f"{super().extra_repr()}"
        )
