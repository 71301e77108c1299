"""Validation of (scores, labels) pairs for the calibration tools, with argument-named errors."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, check_float, check_int, check_tensor


def check_n_bins(n_bins: int) -> int:
    check_int(n_bins, "n_bins", 1)
    return n_bins


def flatten_scores(
    scores: Tensor,
    labels: Tensor,
    *,
    scores_arg: str,
    labels_arg: str = "labels",
    num_classes: int | None = None,
    ignore_index: int | None = None,
    probabilities: bool = False,
) -> tuple[Tensor, Tensor]:
    """Check and flatten scores (N, K) / (N, K, *d) and labels (N,) / (N, *d) to (M, K), (M,).

    Elements whose label equals ``ignore_index`` are dropped. With ``probabilities=True`` the
    scores must lie in [0, 1].
    """
    check_tensor(scores, scores_arg)
    check_tensor(labels, labels_arg)
    check_float(scores, scores_arg)
    if scores.ndim < 2:
        raise ValueError(
            f"`{scores_arg}` must have shape (N, K) or (N, K, *d); got {tuple(scores.shape)}."
        )
    k = scores.shape[1]
    if num_classes is not None and k != num_classes:
        raise ValueError(
            f"`{scores_arg}` must have num_classes={num_classes} entries along dim 1; got shape "
            f"{tuple(scores.shape)}."
        )
    expected = (scores.shape[0], *scores.shape[2:])
    if labels.shape != expected:
        raise ValueError(
            f"`{labels_arg}` must have shape {expected} for `{scores_arg}` of shape "
            f"{tuple(scores.shape)}; got {tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"`{labels_arg}` must hold integer class indices; got dtype {labels.dtype}."
        )
    check_finite(scores, scores_arg)
    flat_scores = scores.movedim(1, -1).reshape(-1, k)
    flat_labels = labels.reshape(-1).long()
    if ignore_index is not None:
        keep = flat_labels != ignore_index
        flat_scores, flat_labels = flat_scores[keep], flat_labels[keep]
    bad = (flat_labels < 0) | (flat_labels >= k)
    if bool(bad.any()):
        vals = sorted(set(flat_labels[bad].tolist()))[:5]
        ignored = f" and not `ignore_index`={ignore_index}" if ignore_index is not None else ""
        raise ValueError(
            f"`{labels_arg}` holds labels outside [0, {k - 1}] ({k} classes){ignored}: {vals}."
        )
    if (
        probabilities
        and flat_scores.numel()
        and bool(((flat_scores < 0) | (flat_scores > 1)).any())
    ):
        raise ValueError(
            f"`{scores_arg}` must be probabilities in [0, 1]; got values in "
            f"[{float(flat_scores.min())}, {float(flat_scores.max())}]. Pass logits where logits "
            "are expected (or apply softmax first)."
        )
    return flat_scores, flat_labels
