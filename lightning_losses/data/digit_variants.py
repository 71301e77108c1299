"""A larger embedded dataset: seeded geometric variants of the 1,797 digits.

Benchmarks of training cost (InfoBatch's saving, for instance) need a training set where the
model's compute dominates, at least ten thousand samples. The digits are too few, so each digit
is drawn ``copies`` times through a random affine map (rotation, scale, shear, shift) and a
little pixel noise, all from one seeded generator: the same data on every machine, no download.

The split is made on the **source digits** first (per class, like
:class:`~lightning_losses.data.ClassificationDataModule`), and only then are the variants
drawn, so no variant of a test digit is ever trained on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from .._checks import check_int, check_number
from ._splits import SplitDataModule
from .digits import DIGITS_CLASSES, _raw_digits, digits_labels
from .long_tail import stratified_split


def digit_variants(
    indices: np.ndarray | list[int],
    copies: int,
    image_size: int = 16,
    seed: int = 0,
    max_rotation: float = 15.0,
    noise: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """``copies`` random affine variants of each digit in ``indices``.

    Each variant maps the 8x8 digit (values in [0, 1]) to ``image_size`` pixels through a
    rotation in ``±max_rotation`` degrees, a scale in [0.85, 1.15], a shear in ±0.15 and a
    shift of up to 10 % of the side, with bilinear sampling, then adds Gaussian noise of
    standard deviation ``noise``.

    Returns:
        images float32 (len(indices)·copies, 1, S, S), labels int64, variants of one digit
        consecutive.
    """
    check_int(copies, "copies", 1)
    check_int(image_size, "image_size", 8)
    check_number(max_rotation, "max_rotation")
    check_number(noise, "noise")
    raw, labels = _raw_digits()
    idx = np.asarray(indices, dtype=np.int64)
    x = torch.from_numpy(raw[idx]).unsqueeze(1).repeat_interleave(copies, 0)
    y = torch.from_numpy(labels[idx].copy()).repeat_interleave(copies, 0)
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    scale = uniform(0.85, 1.15)
    shear = uniform(-0.15, 0.15)
    shift = torch.stack([uniform(-0.2, 0.2), uniform(-0.2, 0.2)], 1)  # grid units: ±10 % of side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, image_size, image_size], align_corners=False)
    images = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images = images + noise * torch.randn(images.shape, generator=g)
    return images.contiguous(), y


class DigitVariantsDataModule(SplitDataModule):
    """Train, validation and test sets of digit variants (see the module docstring).

    With the defaults: 1,797 digits split 70/10/20 per class, 8 variants each, so about
    10,060 training, 1,440 validation and 2,880 test images of 16x16 pixels, grey, normalised
    with the training split's mean and standard deviation. Batches are ``(image, label)``.

    Args:
        copies: variants drawn per source digit, >= 1.
        image_size: side of the images, >= 8.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` worker processes.
        val_fraction, test_fraction: shares of the source digits.
        seed: seeds the split and the variants.
    """

    num_classes = len(DIGITS_CLASSES)
    in_chans = 1

    def __init__(
        self,
        copies: int = 8,
        image_size: int = 16,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.copies = check_int(copies, "copies", 1)
        self.image_size = check_int(image_size, "image_size", 8)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.num_workers = check_int(num_workers, "num_workers", 0)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = check_int(seed, "seed")
        self._built = False

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        train, test, val = stratified_split(
            digits_labels(), [self.test_fraction, self.val_fraction], seed=self.seed
        )
        parts = {}
        for k, (name, idx) in enumerate((("train", train), ("val", val), ("test", test))):
            parts[name] = digit_variants(idx, self.copies, self.image_size, seed=self.seed + k)
        mean = float(parts["train"][0].mean())
        std = float(parts["train"][0].std())
        for name, (x, y) in parts.items():
            setattr(self, f"{name}_dataset", TensorDataset((x - mean) / std, y))
        self._built = True
