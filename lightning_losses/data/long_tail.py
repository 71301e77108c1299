"""Index selection over a label vector: seeded stratified splits and long-tailed subsets.

Both functions work on labels only (no images are read), so a datamodule can plan its splits and
report its class counts before it loads anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_labels(labels: Sequence[int] | np.ndarray, arg: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(
            f"`{arg}` must be a 1-D sequence of class indices; got shape {array.shape}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{arg}` must hold integer class indices; got dtype {array.dtype}.")
    array = array.astype(np.int64, copy=False)
    if array.size and int(array.min()) < 0:
        raise ValueError(f"`{arg}` must be non-negative class indices; got {int(array.min())}.")
    return array


def check_imbalance_factor(imbalance_factor: float) -> float:
    """``imbalance_factor`` must be a finite number >= 1 (1 leaves the classes unchanged)."""
    try:
        value = float(imbalance_factor)
    except (TypeError, ValueError):
        raise ValueError(
            f"`imbalance_factor` must be a number >= 1; got {imbalance_factor!r}."
        ) from None
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(
            "`imbalance_factor` must be a finite number >= 1 (n_max / n_min; 1 keeps every "
            f"sample); got {imbalance_factor!r}."
        )
    return value


def long_tail_counts(class_counts: Sequence[int], imbalance_factor: float) -> list[int]:
    """How many samples each class keeps under the exponential long-tail profile.

    With ``K`` classes ordered by index and ``n_max`` the largest count in ``class_counts``,
    class ``c`` keeps

        n_c = min(count_c, max(1, floor(n_max * imbalance_factor ** (-c / (K - 1)))))

    as in CIFAR-10/100-LT (Cui et al., 2019; Cao et al., LDAM, 2019): class 0 keeps all of its
    samples and the last class keeps ``floor(n_max / imbalance_factor)``. The floor matches the
    ``int(...)`` of the reference code (a 1e-9 tolerance guards against ``99.99999...``), and
    every non-empty class keeps at least one sample.
    """
    factor = check_imbalance_factor(imbalance_factor)
    counts = [int(n) for n in class_counts]
    num_classes = len(counts)
    if factor == 1.0 or num_classes < 2:
        return counts
    n_max = max(counts)
    kept = []
    for c, count in enumerate(counts):
        target = math.floor(n_max * factor ** (-c / (num_classes - 1)) + 1e-9)
        kept.append(min(count, max(1, target)))
    return kept


def long_tail_indices(
    labels: Sequence[int] | np.ndarray, imbalance_factor: float, seed: int = 0
) -> list[int]:
    """Positions of a long-tailed subset of ``labels`` (exponential profile, seeded).

    Args:
        labels: class index of each sample, shape (N,); ``K = max(labels) + 1`` classes.
        imbalance_factor: ratio between the largest and the smallest kept class, >= 1.
            ``1`` returns every position. See :func:`long_tail_counts` for the profile.
        seed: which samples of each class are kept (NumPy ``default_rng(seed)``).

    Returns:
        The kept positions into ``labels``, in increasing order.

    Example:
        >>> labels = [0] * 100 + [1] * 100 + [2] * 100
        >>> kept = long_tail_indices(labels, imbalance_factor=10, seed=0)
        >>> [sum(labels[i] == c for i in kept) for c in range(3)]
        [100, 31, 10]
    """
    factor = check_imbalance_factor(imbalance_factor)
    array = _as_labels(labels)
    if factor == 1.0 or array.size == 0:
        return list(range(array.size))
    num_classes = int(array.max()) + 1
    counts = np.bincount(array, minlength=num_classes)
    kept_counts = long_tail_counts(counts.tolist(), factor)
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for c, n_keep in enumerate(kept_counts):
        members = np.flatnonzero(array == c)
        kept.append(rng.choice(members, size=n_keep, replace=False))
    return sorted(int(i) for i in np.concatenate(kept))


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int = 0
) -> list[list[int]]:
    """Split positions of ``labels`` into a remainder and one part per fraction, class by class.

    Each class's members are shuffled with NumPy ``default_rng(seed)``; part ``k`` takes
    ``round(fractions[k] * n_c)`` of them (half rounds up) and the remainder keeps the rest, so
    every part has the class proportions of the whole. The parts are disjoint and together cover
    every position. A class always keeps at least one sample in the remainder.

    Returns:
        ``[remainder, part_1, ..., part_k]``, each a sorted list of positions.
    """
    array = _as_labels(labels)
    for f in fractions:
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"`fractions` must each lie in (0, 1); got {list(fractions)}.")
    if sum(fractions) >= 1.0:
        raise ValueError(f"`fractions` must sum to less than 1; got {list(fractions)}.")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(array):
        members = rng.permutation(np.flatnonzero(array == c))
        n = members.size
        start = 0
        for k, f in enumerate(fractions, start=1):
            take = min(math.floor(f * n + 0.5), n - 1 - start)
            parts[k].extend(int(i) for i in members[start : start + max(take, 0)])
            start += max(take, 0)
        parts[0].extend(int(i) for i in members[start:])
    return [sorted(p) for p in parts]
