r"""Margin-softmax identity heads: ArcFace and CosFace, with the class weights in the loss.

The loss owns the class weight matrix :math:`W` ``(num_classes, embedding_dim)`` as an
``nn.Parameter``: it moves with ``.to()``, is saved in checkpoints, and must be given to the
optimiser. When the loss is an attribute of the ``LightningModule`` (``self.criterion``),
``self.parameters()`` already includes it; to give it its own learning rate, use a parameter
group:

.. code-block:: python

    torch.optim.SGD([
        {"params": self.backbone.parameters()},
        {"params": self.criterion.parameters(), "lr": 10 * base_lr},
    ], lr=base_lr)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_int, check_positive, check_range
from ..._reduce import PerSample
from ...registry import register_loss
from .._base import Loss
from .._inputs import compute_dtype
from ._pairs import check_class_labels, check_embeddings, explain_class_labels


class MarginSoftmaxLoss(Loss):
    r"""Cross-entropy over scaled cosine logits :math:`s \cos\theta_j` between normalised
    embeddings and normalised class weights, with a margin on the target class.

    Subclasses implement :meth:`target_cosine`, the margin applied to :math:`\cos\theta_y`.
    """

    input_kind = "embeddings"
    target_kind = "index"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        scale: float,
        margin: float,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", minimum=1)
        self.scale = check_positive(scale, "scale")
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        # Normal(0, 0.01) as insightface; only the direction of each row matters.
        nn.init.normal_(self.weight, std=0.01)

    def target_cosine(self, cos_y: Tensor) -> Tensor:
        """The target class's cosine with the margin applied."""
        raise NotImplementedError(f"{type(self).__name__} must implement target_cosine")

    def cosine(self, input: Tensor) -> Tensor:
        """:math:`\\cos\\theta_{ij}` ``(N, num_classes)``, in float32 for half-precision input."""
        dtype = torch.promote_types(compute_dtype(input.dtype), compute_dtype(self.weight.dtype))
        with torch.autocast(device_type=input.device.type, enabled=False):
            x = F.normalize(input.to(dtype), dim=1)
            w = F.normalize(self.weight.to(dtype), dim=1)
            return x @ w.T

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_embeddings(input, target, dim=self.embedding_dim, validate_args=self.validate_args)
        if self.validate_args:
            check_class_labels(target, self.num_classes)
        cos = self.cosine(input)
        index = target[:, None]
        cos_y = cos.gather(1, index).squeeze(1)  # range-checked by the kernel
        logits = cos.scatter(1, index, self.target_cosine(cos_y)[:, None]) * self.scale
        return PerSample(F.cross_entropy(logits, target, reduction="none"))

    def explain_error(self, input: Tensor, target: Tensor) -> None:
        """After a kernel raised: name the labels outside ``[0, num_classes)``, if any."""
        explain_class_labels(target, self.num_classes)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"scale={self.scale}, margin={self.margin}, {super().extra_repr()}"
        )


@register_loss(
    "arcface",
    family="metric",
    paper="Deng et al., ArcFace: Additive Angular Margin Loss for Deep Face Recognition, CVPR 2019",
)
class ArcFaceLoss(MarginSoftmaxLoss):
    r"""ArcFace: an additive angular margin on the target class.

    With :math:`\cos\theta_j = \hat{x} \cdot \hat{W}_j` (normalised embedding and class
    weights):

    .. math::
        \ell = -\log \frac{e^{s \cos(\theta_y + m)}}
            {e^{s \cos(\theta_y + m)} + \sum_{j \ne y} e^{s \cos\theta_j}}

    :math:`\cos(\theta_y + m) = \cos\theta_y \cos m - \sin\theta_y \sin m` with
    :math:`\sin\theta_y = \sqrt{1 - \cos^2\theta_y}` clamped away from 0 (finite gradients at
    :math:`\cos\theta_y = \pm 1`, where :math:`\arccos` has none). Where
    :math:`\theta_y + m > \pi` the target logit uses :math:`\cos\theta_y - m \sin m` instead, so
    it keeps decreasing in :math:`\theta_y` (the reference code's ``easy_margin=False``; the
    paper's formula alone would turn back up).

    Shapes: ``input`` embeddings ``(N, embedding_dim)``, ``target`` class indices ``(N,)`` in
    ``[0, num_classes)``; ``reduction="none"`` gives ``(N,)``. The class weights ``weight``
    ``(num_classes, embedding_dim)`` are a parameter of the loss (see the module docstring for
    their parameter group).

    Args:
        num_classes: number of identities / classes.
        embedding_dim: width :math:`D` of the embeddings.
        scale: :math:`s`, 64 (the paper).
        margin: :math:`m` in radians, 0.5 (the paper).

    pytorch-metric-learning's ``ArcFaceLoss`` takes the margin in degrees (default 28.6, about
    0.4992 rad) and stores :math:`W` transposed; with the same margin and weights the values
    and gradients agree (tested).

    Example:
        >>> loss = ArcFaceLoss(num_classes=751, embedding_dim=512)
        >>> value = loss(embeddings, identity_index)
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        scale: float = 64.0,
        margin: float = 0.5,
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

    def target_cosine(self, cos_y: Tensor) -> Tensor:
        m = self.margin
        sin_y = (1.0 - cos_y.square()).clamp_min(torch.finfo(cos_y.dtype).tiny).sqrt()
        shifted = cos_y * math.cos(m) - sin_y * math.sin(m)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m)
        return torch.where(cos_y > math.cos(math.pi - m), shifted, cos_y - m * math.sin(m))


@register_loss(
    "cosface",
    family="metric",
    paper="Wang et al., CosFace: Large Margin Cosine Loss for Deep Face Recognition, CVPR 2018",
)
class CosFaceLoss(MarginSoftmaxLoss):
    r"""CosFace (large margin cosine loss): an additive cosine margin on the target class.

    With :math:`\cos\theta_j = \hat{x} \cdot \hat{W}_j` (normalised embedding and class
    weights):

    .. math::
        \ell = -\log \frac{e^{s (\cos\theta_y - m)}}
            {e^{s (\cos\theta_y - m)} + \sum_{j \ne y} e^{s \cos\theta_j}}

    Shapes: ``input`` embeddings ``(N, embedding_dim)``, ``target`` class indices ``(N,)`` in
    ``[0, num_classes)``; ``reduction="none"`` gives ``(N,)``. The class weights ``weight``
    ``(num_classes, embedding_dim)`` are a parameter of the loss.

    Args:
        num_classes: number of identities / classes.
        embedding_dim: width :math:`D` of the embeddings.
        scale: :math:`s`, 64 (the paper).
        margin: :math:`m`, 0.35 (the paper's chosen setting; PML's default too).

    pytorch-metric-learning's ``CosFaceLoss`` computes the same values and gradients with the
    same weights (tested).

    Example:
        >>> loss = CosFaceLoss(num_classes=751, embedding_dim=512)
        >>> value = loss(embeddings, identity_index)
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        scale: float = 64.0,
        margin: float = 0.35,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            num_classes,
            embedding_dim,
            scale=scale,
            margin=margin,
            reduction=reduction,
            validate_args=validate_args,
        )

    def target_cosine(self, cos_y: Tensor) -> Tensor:
        return cos_y - self.margin
