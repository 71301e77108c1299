r"""AdaFace: a margin-softmax head whose margin adapts to image quality through the feature norm."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_positive, check_range
from ..._reduce import PerSample
from ...registry import register_loss
from ._pairs import check_class_labels, check_embeddings, distributed_world
from .margin_softmax import MarginSoftmaxLoss


@register_loss(
    "adaface",
    family="metric",
    paper="Kim, Jain & Liu, AdaFace: Quality Adaptive Margin for Face Recognition, CVPR 2022",
)
class AdaFaceLoss(MarginSoftmaxLoss):
    r"""AdaFace: cross-entropy over scaled cosine logits with a norm-adaptive target margin.

    The feature norm :math:`\|x_i\|` is the proxy of image quality. With :math:`\mu, \sigma`
    running averages of the norm's batch mean and standard deviation, the normalised norm

    .. math::
        \hat z_i = \operatorname{clip}\Bigl(h \frac{\|x_i\| - \mu}{\sigma + \epsilon},
                   -1, 1\Bigr),\qquad
        g_\text{angle} = -m \hat z_i,\qquad g_\text{add} = m \hat z_i + m

    sets the target logit, and

    .. math::
        \ell_i = -\log \frac{e^{s (\cos(\theta_{y_i} + g_\text{angle}) - g_\text{add})}}
            {e^{s (\cos(\theta_{y_i} + g_\text{angle}) - g_\text{add})}
             + \sum_{j \ne y_i} e^{s \cos\theta_j}}

    with :math:`\cos\theta_j = \hat x_i \cdot \hat W_j` clamped to
    :math:`[-1 + \epsilon, 1 - \epsilon]` and :math:`\theta_{y_i} + g_\text{angle}` to
    :math:`[\epsilon, \pi - \epsilon]`, as the reference code does (finite :math:`\arccos`
    gradients). A low-quality sample (:math:`\hat z = -1`) gets ArcFace's angular margin
    :math:`\cos(\theta_y + m)`, an average one (:math:`\hat z = 0`) CosFace's
    :math:`\cos\theta_y - m`, a high-quality one (:math:`\hat z = 1`)
    :math:`\cos(\theta_y - m) - 2m`, which stresses its hard examples; the scale :math:`s`
    multiplies the whole target cosine. The norms enter the margin detached, clipped to
    :math:`[10^{-3}, 100]`.

    **State.** :math:`\mu` and :math:`\sigma` are persistent buffers ``norm_mean`` and
    ``norm_std`` (saved in checkpoints, moved by ``.to()``), starting at 20 and 100 as in the
    reference code. A forward that trains (module in training mode, grad enabled, ``input``
    requiring grad) first moves them toward the batch's mean and (unbiased) standard deviation,
    :math:`\mu \leftarrow \alpha\mu + (1 - \alpha)\,\overline{\|x\|}`, then computes the loss,
    as the reference code does; other calls read them. A batch of one sample leaves
    :math:`\sigma` unchanged (its standard deviation is undefined). Under DDP the batch
    statistics are those of the global batch (one all-reduce of three numbers), so every rank
    holds the same buffers.

    Shapes: ``input`` embeddings ``(N, embedding_dim)`` (not normalised: their norm is the
    signal), ``target`` class indices ``(N,)`` in ``[0, num_classes)``; ``reduction="none"``
    gives ``(N,)``. The class weights ``weight`` ``(num_classes, embedding_dim)`` are a
    parameter of the loss (see :mod:`~lightning_losses.losses.metric.margin_softmax` for their
    parameter group). In training the value depends on the batch through :math:`\mu, \sigma`.

    Args:
        num_classes: number of identities / classes.
        embedding_dim: width :math:`D` of the embeddings.
        margin: :math:`m`, 0.4 (the paper and the reference code).
        h: :math:`h`, 0.333 (the paper: about 68% of :math:`\hat z` in
            :math:`[-0.333, 0.333]`).
        scale: :math:`s`, 64 (the paper).
        momentum: :math:`\alpha`, 0.99 (the reference code's ``t_alpha = 0.01`` weight of
            the new batch).
        eps: :math:`\epsilon`, 1e-3 (the reference code).

    No established library side by side: pytorch-metric-learning 2.9 has no AdaFace; the loss
    is checked against a float64 loop written from the formula, and it equals ArcFace at
    :math:`\hat z = -1` and CosFace at :math:`\hat z = 0` (tested).

    Example:
        >>> loss = AdaFaceLoss(num_classes=751, embedding_dim=512)
        >>> value = loss(features, identity_index)  # unnormalised features
    """

    batch_statistic = True

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        margin: float = 0.4,
        h: float = 0.333,
        scale: float = 64.0,
        momentum: float = 0.99,
        eps: float = 1e-3,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        check_range(margin, "margin", 0.0, math.pi / 2)
        super().__init__(
            num_classes,
            embedding_dim,
            scale=scale,
            margin=margin,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.h = check_positive(h, "h")
        self.momentum = check_range(momentum, "momentum", 0.0, 1.0)
        self.eps = check_range(eps, "eps", 0.0, 0.5, closed="neither")
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    @torch.no_grad()
    def update_norm_statistics(self, norms: Tensor) -> None:
        """Move ``norm_mean`` / ``norm_std`` toward the (global, under DDP) batch's statistics."""
        x = norms.double()
        # the count as a device fill, not a tensor copied from the host (a blocking copy on a GPU)
        count = x.new_full((), float(x.numel()))
        stats = torch.stack([x.sum(), x.square().sum(), count])
        if distributed_world()[1] > 1:
            dist.all_reduce(stats)
        total, squares, n = stats.unbind()
        mean = total / n
        variance = (squares - n * mean.square()) / (n - 1).clamp_min(1.0)
        std = variance.clamp_min(0.0).sqrt()
        a = self.momentum
        new_mean = a * self.norm_mean.double() + (1.0 - a) * mean
        new_std = torch.where(n > 1, a * self.norm_std.double() + (1.0 - a) * std, self.norm_std)
        self.norm_mean.copy_(new_mean)
        self.norm_std.copy_(new_std)

    def quality(self, norms: Tensor) -> Tensor:
        """:math:`\\hat z` ``(N,)`` from the detached, clipped norms and the stored statistics."""
        mean = self.norm_mean.to(norms.dtype)
        std = self.norm_std.to(norms.dtype)
        return (self.h * (norms - mean) / (std + self.eps)).clamp(-1.0, 1.0)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_embeddings(input, target, dim=self.embedding_dim, validate_args=self.validate_args)
        if self.validate_args:
            check_class_labels(target, self.num_classes)
        eps = self.eps
        cos = self.cosine(input).clamp(-1.0 + eps, 1.0 - eps)
        with torch.autocast(device_type=input.device.type, enabled=False):
            norms = input.detach().to(cos.dtype).norm(dim=1).clamp(1e-3, 100.0)
            if self.training and torch.is_grad_enabled() and input.requires_grad:
                self.update_norm_statistics(norms)
            z = self.quality(norms)
            index = target[:, None]
            cos_y = cos.gather(1, index).squeeze(1)  # range-checked by the kernel
            theta = torch.acos(cos_y) - self.margin * z
            target_cos = torch.cos(theta.clamp(eps, math.pi - eps)) - (
                self.margin * z + self.margin
            )
            logits = cos.scatter(1, index, target_cos[:, None]) * self.scale
            return PerSample(F.cross_entropy(logits, target, reduction="none"))

    def extra_repr(self) -> str:
        return f"h={self.h}, momentum={self.momentum}, eps={self.eps}, {super().extra_repr()}"
