"""The embedded classification data: scikit-learn's handwritten digits.

1,797 real 8x8 grey images of the digits 0-9 (values 0..16), shipped inside the scikit-learn
package, so the classification recipe runs with no download.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""Class names of the digits set, in label order."""

_DIGITS_MAX = 16.0


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / _DIGITS_MAX
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digits_labels() -> np.ndarray:
    """Labels of all 1,797 digits, shape (1797,), without building any image tensor."""
    return _raw_digits()[1]


def check_image_options(image_size: int, in_chans: int) -> None:
    """``image_size`` must be an int >= 8 and ``in_chans`` 1 (grey) or 3 (RGB)."""
    check_int(image_size, "image_size", 8)
    if in_chans not in (1, 3) or isinstance(in_chans, bool):
        raise ValueError(f"`in_chans` must be 1 (grey) or 3 (RGB); got {in_chans!r}.")


def check_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Validate per-channel normalisation statistics (both given, or neither)."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("`mean` and `std` must be given together (or both left as None).")
    m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(m) != in_chans or len(s) != in_chans:
        raise ValueError(
            f"`mean` and `std` need one value per channel (in_chans={in_chans}); "
            f"got {len(m)} and {len(s)}."
        )
    if not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"`std` must be finite and positive; got {s}.")
    return m, s


def safe_std(value: float) -> float:
    """A standard deviation to divide by: a constant channel (std ~ 0) is left unscaled."""
    return value if value > 1e-6 else 1.0


class DigitsDataset(Dataset[tuple[Tensor, int]]):
    """scikit-learn's digits as ``(image, label)`` pairs, preprocessed once at construction.

    Each 8x8 image is scaled from 0..16 to [0, 1], resized to ``image_size`` with bilinear
    interpolation (``align_corners=False``), repeated to 3 channels when ``in_chans=3``, and
    normalised as ``(x - mean) / std`` per channel.

    Args:
        indices: which of the 1,797 digits to hold (positions into ``load_digits()``);
            ``None`` holds all of them.
        image_size: side ``S`` of the square output images; default 32 (a size every timm
            backbone accepts).
        in_chans: 1 (grey, the native format) or 3 (the grey channel repeated).
        mean, std: per-channel statistics to normalise with (length ``in_chans``). ``None``
            computes them from the images held here, after resizing; pass the training split's
            statistics to the validation and test splits.

    Attributes:
        images: float32 tensor (N, in_chans, S, S), already normalised.
        targets: int64 tensor (N,) of labels.
        mean, std: the statistics used, one value per channel.
        classes: ``["0", ..., "9"]``.

    Example:
        >>> train = DigitsDataset(indices=range(1000))
        >>> val = DigitsDataset(indices=range(1000, 1797), mean=train.mean, std=train.std)
        >>> image, label = train[0]
        >>> image.shape, label
        (torch.Size([1, 32, 32]), 0)
    """

    def __init__(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        image_size: int = 32,
        in_chans: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_image_options(image_size, in_chans)
        stats = check_stats(mean, std, in_chans)
        raw_images, raw_labels = _raw_digits()
        if indices is None:
            idx = np.arange(raw_labels.size)
        else:
            idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
            idx = idx.astype(np.int64, copy=False)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"`indices` must be a non-empty 1-D sequence; got shape {idx.shape}.")
        if int(idx.min()) < 0 or int(idx.max()) >= raw_labels.size:
            raise ValueError(
                f"`indices` must lie in [0, {raw_labels.size}); "
                f"got values in [{int(idx.min())}, {int(idx.max())}]."
            )

        x = torch.from_numpy(raw_images[idx]).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        if image_size != x.shape[-1]:
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bilinear", align_corners=False
            )
        if stats is None:
            grey_mean = float(x.mean())
            grey_std = safe_std(float(x.std(unbiased=False)))
            stats = ((grey_mean,) * in_chans, (grey_std,) * in_chans)
        if in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        m = torch.tensor(stats[0], dtype=torch.float32).view(1, in_chans, 1, 1)
        s = torch.tensor(stats[1], dtype=torch.float32).view(1, in_chans, 1, 1)

        self.images: Tensor = ((x - m) / s).contiguous()
        self.targets: Tensor = torch.from_numpy(raw_labels[idx].copy())
        self.mean, self.std = stats
        self.classes: list[str] = list(DIGITS_CLASSES)

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])
