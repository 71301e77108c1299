r"""Center loss: pull each embedding toward a learned centre of its class."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..._checks import check_choice, check_int, check_range
from ..._reduce import PerSample
from ...registry import register_loss
from .._base import Loss
from .._inputs import compute_dtype
from ._pairs import check_class_labels, check_embeddings, distributed_world, explain_class_labels

UPDATES = ("parameter", "moving_average")


@register_loss(
    "center",
    family="metric",
    paper="Wen et al., A Discriminative Feature Learning Approach for Deep Face Recognition, "
    "ECCV 2016",
)
class CenterLoss(Loss):
    r"""Center loss: half the squared distance of each embedding to its class centre.

    .. math::
        \ell_i = \tfrac12 \|x_i - c_{y_i}\|_2^2

    It is a regulariser added to a classification loss, :math:`\mathcal{L} = \mathcal{L}_S +
    \lambda \mathcal{L}_C`. The centres ``centers`` ``(num_classes, embedding_dim)`` belong to
    the loss and are saved in its ``state_dict`` (the same key in both update modes); they
    start from a standard normal draw.

    **Centre updates** (``update``):

    * ``"parameter"`` (default): the centres are an ``nn.Parameter`` trained by the optimiser
      through the gradient of the loss. Give them their own parameter group: the re-ID bag of
      tricks trains them with SGD at lr 0.5 and divides their gradient by :math:`\lambda`, so
      that the weight on the loss does not slow the centres down.
    * ``"moving_average"``: the paper's rule. The centres are a buffer (no gradient); each
      training forward (module in training mode, gradients enabled) moves them, after the loss
      is computed, by

      .. math::
          c_j \leftarrow c_j - \alpha \frac{\sum_{i: y_i = j} (c_j - x_i)}
                                           {1 + |\{i: y_i = j\}|}

      with :math:`\alpha` = ``alpha``. Under DDP the sums and counts are all-reduced first,
      so every rank applies the update of the global batch and the centres stay equal. The
      update ignores ``sample_weight``, and a loss called twice per step (SAM) updates twice.

    Shapes: ``input`` embeddings ``(N, embedding_dim)``, ``target`` class indices ``(N,)`` in
    ``[0, num_classes)``; ``reduction="none"`` gives ``(N,)``; ``"mean"`` is the paper's
    :math:`\mathcal{L}_C` divided by :math:`N`. Computed in float32 for half-precision input.

    Args:
        num_classes: number of classes (identities).
        embedding_dim: width :math:`D` of the embeddings.
        update: ``"parameter"`` or ``"moving_average"`` (see above).
        alpha: the centre learning rate :math:`\alpha` of ``"moving_average"``, 0.5 (the
            paper's default).

    The widely used implementation behind the re-ID bag of tricks (KaiyangZhou's
    ``CenterLoss``, with :math:`\lambda = 5 \cdot 10^{-4}`) averages
    :math:`\|x_i - c_{y_i}\|^2` without the paper's :math:`\tfrac12`; its
    :math:`\lambda = 5 \cdot 10^{-4}` is :math:`\lambda = 10^{-3}` here.

    Example:
        >>> center = CenterLoss(num_classes=751, embedding_dim=2048)
        >>> loss = ce(logits, y) + 5e-4 * center(features, y)
    """

    input_kind = "embeddings"
    target_kind = "index"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        update: str = "parameter",
        alpha: float = 0.5,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", minimum=1)
        self.update = check_choice(update, UPDATES, "update")
        self.alpha = check_range(alpha, "alpha", 0.0, 1.0)
        centers = torch.randn(num_classes, embedding_dim)
        if self.update == "parameter":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_embeddings(input, target, dim=self.embedding_dim, validate_args=self.validate_args)
        if self.validate_args:
            check_class_labels(target, self.num_classes)
        dtype = torch.promote_types(compute_dtype(input.dtype), compute_dtype(self.centers.dtype))
        with torch.autocast(device_type=input.device.type, enabled=False):
            x = input.to(dtype)
            own = self.centers.index_select(0, target).to(dtype)  # range-checked by the kernel
            values = 0.5 * (x - own).square().sum(1)
        if self.update == "moving_average" and self.training and torch.is_grad_enabled():
            self._move_centers(x.detach(), target)
        return PerSample(values)

    @torch.no_grad()
    def _move_centers(self, x: Tensor, target: Tensor) -> None:
        c = self.centers
        gap = c.index_select(0, target) - x.to(c.dtype)
        sums = torch.zeros_like(c).index_add_(0, target, gap)
        counts = torch.zeros(c.shape[0], dtype=c.dtype, device=c.device)
        counts.index_add_(0, target, torch.ones_like(target, dtype=c.dtype))
        if distributed_world()[1] > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        c.sub_(self.alpha * sums / (1.0 + counts)[:, None])

    def explain_error(self, input: Tensor, target: Tensor) -> None:
        """After a kernel raised: name the labels outside ``[0, num_classes)``, if any."""
        explain_class_labels(target, self.num_classes)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"update={self.update!r}, alpha={self.alpha}, {super().extra_repr()}"
        )
