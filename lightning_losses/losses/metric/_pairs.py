r"""Shared pieces of the metric-learning losses: checks, pair geometry, masks, masked reductions.

Every pair-based loss here takes embeddings ``(N, D)`` and identity labels ``(N,)``, compares
each **anchor** (a row of the batch) with a set of **references** (the batch itself, or the
batch of every rank with ``gather_across_ranks=True``) and returns one value per anchor, so
``reduction="none"`` gives ``(N,)`` and sample weights compose.

Numerics:

* Distances and similarities are computed in float32 for half-precision input, with autocast
  switched off around the matrix product (autocast would run it in bf16/fp16 again).
* Masked entries are replaced by the extreme finite values of the compute dtype
  (``torch.finfo``), never by literals such as ``1e9``, which overflow in fp16.
* Euclidean distances clamp the squared distance at ``finfo.tiny`` before the square root, so
  identical embeddings (and the diagonal) give a zero, not an infinite, gradient.
* Memory is one ``(N, M)`` matrix per quantity (``M`` references), or ``(chunk_size, M)``
  with ``chunk_size``: no index lists of pairs or triplets, no ``(N, M, M)`` tensor.

An anchor with no valid positive (or negative, where the loss needs one) has an undefined loss:
it gets **zero**, and :class:`PairLoss` counts such anchors in tensors that a caller can log
without a host read (see :class:`PairLoss`).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..._checks import check_choice, check_finite, check_int, check_on_device, check_tensor
from ..._reduce import PerSample
from .._base import Loss
from .._inputs import upcast

DISTANCES = ("euclidean", "sqeuclidean", "cosine")


# -- checks ------------------------------------------------------------------------------------


def check_embeddings(
    input: Tensor, target: Tensor, *, dim: int | None = None, validate_args: bool = False
) -> None:
    """Embeddings ``(N, D)`` (floating point) and integer labels ``(N,)``; metadata only, plus a
    finite check on the device when ``validate_args``."""
    check_tensor(input, "input")
    check_tensor(target, "target")
    if not input.is_floating_point():
        raise TypeError(
            f"`input` must be floating-point embeddings of shape (N, D); got dtype {input.dtype}."
        )
    if input.ndim != 2:
        raise ValueError(
            f"`input` must be embeddings of shape (N, D); got shape {tuple(input.shape)}. "
            "Flatten or pool the features to one vector per sample first."
        )
    if dim is not None and input.shape[1] != dim:
        raise ValueError(
            f"`input` must have {dim} columns (`embedding_dim`); got shape {tuple(input.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"`target` must hold integer labels; got dtype {target.dtype}.")
    if target.shape != (input.shape[0],):
        raise ValueError(
            f"`target` must hold one label per embedding, shape ({input.shape[0]},); got "
            f"{tuple(target.shape)}."
        )
    if validate_args:
        check_finite(input, "input")


def _class_label_message(target: Tensor, num_classes: int) -> str:
    k = num_classes
    bad = sorted(set(target[(target < 0) | (target >= k)].tolist()))[:5]
    return f"`target` holds labels outside [0, {k - 1}] (`num_classes`={k}): {bad}."


def check_class_labels(target: Tensor, num_classes: int) -> None:
    """Class indices in ``[0, num_classes)``, checked on the device (``validate_args``)."""
    k = num_classes
    check_on_device(
        ((target >= 0) & (target < k)).all(),
        f"`target` holds labels outside [0, {k - 1}] (`num_classes`={k}).",
        lambda: _class_label_message(target, k),
    )


def explain_class_labels(target: Tensor, num_classes: int) -> None:
    """After a kernel raised (error path, may read values): name the labels outside
    ``[0, num_classes)``, if any."""
    if (
        isinstance(target, Tensor)
        and not target.is_floating_point()
        and target.ndim == 1
        and bool(((target < 0) | (target >= num_classes)).any())
    ):
        raise ValueError(_class_label_message(target, num_classes))


# -- geometry ----------------------------------------------------------------------------------


def _autocast_off(x: Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def _common(x: Tensor, ref: Tensor, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Both operands in one compute dtype (float32 for half precision, else the wider one),
    L2-normalised when asked."""
    x, ref = upcast(x), upcast(ref)
    dtype = torch.promote_types(x.dtype, ref.dtype)
    x, ref = x.to(dtype), ref.to(dtype)
    if normalize:
        return F.normalize(x, dim=1), F.normalize(ref, dim=1)
    return x, ref


def cosine_similarity_matrix(x: Tensor, ref: Tensor) -> Tensor:
    """:math:`s_{ij} = \\langle x_i, r_j \\rangle / (\\|x_i\\| \\|r_j\\|)`, shape ``(N, M)``."""
    with _autocast_off(x):
        x, ref = _common(x, ref, normalize=True)
        return x @ ref.T


def squared_distance_matrix(x: Tensor, ref: Tensor, normalize: bool = False) -> Tensor:
    """:math:`\\|x_i - r_j\\|^2` from the Gram matrix, clamped at 0, shape ``(N, M)``
    (of the L2-normalised embeddings when ``normalize``)."""
    with _autocast_off(x):
        x, ref = _common(x, ref, normalize)
        sq = x.pow(2).sum(1)[:, None] + ref.pow(2).sum(1)[None, :] - 2.0 * (x @ ref.T)
        return sq.clamp_min(0.0)


def distance_matrix(x: Tensor, ref: Tensor, distance: str, normalize: bool = False) -> Tensor:
    """Pairwise distances ``(N, M)``: ``"euclidean"`` :math:`\\|x_i - r_j\\|`,
    ``"sqeuclidean"`` :math:`\\|x_i - r_j\\|^2`, or ``"cosine"`` :math:`1 - s_{ij}`; of the
    L2-normalised embeddings when ``normalize``."""
    if distance == "cosine":
        return 1.0 - cosine_similarity_matrix(x, ref)
    sq = squared_distance_matrix(x, ref, normalize)
    if distance == "sqeuclidean":
        return sq
    # Clamped before the root: a zero distance (the diagonal, duplicates) gets a zero gradient.
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


# -- masks and masked reductions ---------------------------------------------------------------


class Pairs(NamedTuple):
    """Anchors against references, with the masks every pair loss needs."""

    anchors: Tensor  # (N, D) the local embeddings
    references: Tensor  # (M, D) the local batch, or every rank's batch
    positive: Tensor  # (N, M) bool: same label, not the anchor itself
    negative: Tensor  # (N, M) bool: another label
    not_self: Tensor  # (N, M) bool: every reference but the anchor itself

    @property
    def has_positive(self) -> Tensor:
        return self.positive.any(1)

    @property
    def has_negative(self) -> Tensor:
        return self.negative.any(1)


def label_masks(
    labels: Tensor, ref_labels: Tensor, offset: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Positive, negative and not-self masks ``(N, M)``; anchor ``i`` is reference
    ``offset + i`` (its own column, excluded from the positives)."""
    same = labels[:, None] == ref_labels[None, :]
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None] + offset
    cols = torch.arange(ref_labels.shape[0], device=labels.device)[None, :]
    not_self = rows != cols
    return same & not_self, ~same, not_self


def log_zero(dtype: torch.dtype) -> float:
    """The finite stand-in for :math:`\\log 0` of a dtype (its most negative value)."""
    return torch.finfo(dtype).min


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise maximum over the masked entries; 0 for a row with none."""
    top = torch.where(mask, x, torch.finfo(x.dtype).min).amax(1)
    return torch.where(mask.any(1), top, torch.zeros_like(top))


def masked_min(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise minimum over the masked entries; 0 for a row with none."""
    low = torch.where(mask, x, torch.finfo(x.dtype).max).amin(1)
    return torch.where(mask.any(1), low, torch.zeros_like(low))


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int | None = 1) -> Tensor:
    """:math:`\\log \\sum_{j \\in \\text{mask}} e^{x_j}` along ``dim`` (all entries when None);
    a row with no entry gives :func:`log_zero` (finite, so sums and ``softplus`` stay finite and
    the masked entries get a zero gradient)."""
    filled = torch.where(mask, x, log_zero(x.dtype))
    if dim is None:
        return filled.reshape(-1).logsumexp(0)
    return filled.logsumexp(dim)


def masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise softmax over the masked entries; exact zeros elsewhere and on empty rows."""
    weights = torch.where(mask, x, log_zero(x.dtype)).softmax(1)
    return weights * mask.to(weights.dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise mean over the masked entries; 0 for a row with none."""
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


# -- cross-rank references ---------------------------------------------------------------------


def distributed_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and keeps this
    rank's slice: every rank's anchors that used this rank's embeddings as references send
    their gradient back to them (with DDP's averaging, the step equals one process on the
    joint batch). Putting the live local tensor into a plain ``all_gather``'s output would
    also reach the local embeddings, but would drop the gradient of the other ranks' anchors
    with respect to them."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        rank, world = distributed_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[ctx.rows[0] : ctx.rows[1]]


def gather_references(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """Every rank's embeddings and labels, concatenated in rank order, and the row offset of
    this rank's batch in them. Gradients reach the local embeddings from every rank's use of
    them. A no-op (offset 0) outside a process group.

    Every rank must call it with the same batch size (``all_gather`` needs equal shapes), as
    with ``drop_last=True`` or a P x K sampler.
    """
    rank, world = distributed_world()
    if world == 1:
        return embeddings, labels, 0
    parts = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(parts, labels.contiguous())
    return _GatherWithGradient.apply(embeddings), torch.cat(parts), rank * embeddings.shape[0]


# -- the base class ----------------------------------------------------------------------------


class PairLoss(Loss):
    r"""Base of the pair-based losses: checks, references, masks and the invalid-anchor count.

    Subclasses implement :meth:`anchor_losses`, which returns the per-anchor values (zero where
    the loss is undefined) and which anchors are valid.

    **Anchors without a valid pair.** Such an anchor contributes zero, and the mean runs over
    all ``N`` anchors (so ``reduction="none"`` then ``.mean()`` equals ``"mean"``). A batch in
    which *no* anchor is valid therefore gives 0, and this is never silent: the loss keeps two
    integer tensors, updated on the device without a host read,

    * ``last_invalid_anchors``: the count in the last call (log it every step, e.g.
      ``self.log("invalid_anchors", criterion.last_invalid_anchors)``);
    * ``invalid_anchors_seen``: the running total since construction or
      :meth:`reset_invalid_anchors`,

    and :meth:`warn_invalid_anchors` reads the total (one host read: call it outside the
    training step, e.g. at the end of an epoch) and warns once when it is not zero. The
    training step itself never reads a value back.

    **Chunks.** Memory is one ``(N, M)`` matrix per quantity; where that does not fit (large
    gathered batches), ``chunk_size=c`` computes blocks of ``c`` anchors, each recomputed in the
    backward pass (activation checkpointing), so the largest tensor is ``(c, M)``, at the cost
    of a second forward of the loss. The values and gradients are the same. Losses whose value
    is a statistic of the whole batch (alignment / uniformity) do not offer it.

    **Cross-rank references.** With ``gather_across_ranks=True`` the anchors stay local and the
    references are the embeddings of every rank (``all_gather``, gradients flowing back to each
    rank's own embeddings): each anchor sees ``world_size`` times more positives and negatives.
    Every rank must call the loss with the same batch size and backpropagate through it (the
    backward sums the gradients over ranks); with DDP's averaging the step then equals one
    process on the joint batch. Outside a process group the option changes nothing.
    """

    input_kind = "embeddings"
    target_kind = "labels"
    batch_statistic = True

    def __init__(
        self,
        *,
        gather_across_ranks: bool = False,
        chunk_size: int | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.gather_across_ranks = bool(gather_across_ranks)
        self.chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
        # Diagnostics, not state: kept out of checkpoints, moved with .to().
        self.register_buffer(
            "last_invalid_anchors", torch.zeros((), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "invalid_anchors_seen", torch.zeros((), dtype=torch.long), persistent=False
        )
        self._warned = False

    def anchor_losses(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        """Per-anchor values ``(N,)`` (zero where undefined) and the valid anchors ``(N,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement anchor_losses")

    def rows(
        self, x: Tensor, labels: Tensor, refs: Tensor, ref_labels: Tensor, offset: int
    ) -> tuple[Tensor, Tensor]:
        """:meth:`anchor_losses` of the anchors ``x`` (rows ``offset`` on of the references)."""
        positive, negative, not_self = label_masks(labels, ref_labels, offset)
        return self.anchor_losses(Pairs(x, refs, positive, negative, not_self))

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        check_embeddings(input, target, validate_args=self.validate_args)
        refs, ref_labels, offset = input, target, 0
        if self.gather_across_ranks:
            refs, ref_labels, offset = gather_references(input, target)
        n, chunk = input.shape[0], self.chunk_size
        if chunk is None or n <= chunk:
            values, valid = self.rows(input, target, refs, ref_labels, offset)
        else:
            # Blocks of anchors, each recomputed in the backward pass: no (N, M) tensor lives.
            parts = [
                checkpoint(
                    self.rows,
                    input[start : start + chunk],
                    target[start : start + chunk],
                    refs,
                    ref_labels,
                    offset + start,
                    use_reentrant=False,
                )
                for start in range(0, n, chunk)
            ]
            values = torch.cat([p[0] for p in parts])
            valid = torch.cat([p[1] for p in parts])
        invalid = (~valid).sum()
        with torch.no_grad():
            self.last_invalid_anchors.copy_(invalid)
            self.invalid_anchors_seen.add_(invalid)
        return PerSample(values)

    def reset_invalid_anchors(self) -> None:
        """Zero the running count (e.g. at the start of an epoch)."""
        self.invalid_anchors_seen.zero_()

    def warn_invalid_anchors(self) -> int:
        """The running count of anchors without a valid pair, read on the host; warns once
        when it is not zero. Call it outside the training step (it waits for the device)."""
        seen = int(self.invalid_anchors_seen)
        if seen and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: {seen} anchors had no valid positive or negative in "
                "their batch and contributed zero loss. Sample several instances per label "
                "(a P x K sampler) or gather references across ranks.",
                stacklevel=2,
            )
        return seen

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gather_across_ranks={self.gather_across_ranks}"


def check_distance(distance: str) -> str:
    return check_choice(distance, DISTANCES, "distance")


__all__ = [
    "DISTANCES",
    "PairLoss",
    "Pairs",
    "check_class_labels",
    "check_distance",
    "check_embeddings",
    "cosine_similarity_matrix",
    "distance_matrix",
    "distributed_world",
    "explain_class_labels",
    "gather_references",
    "label_masks",
    "log_zero",
    "masked_logsumexp",
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_softmax",
    "squared_distance_matrix",
]
