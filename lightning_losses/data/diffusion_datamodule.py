"""Images for training a diffusion model: the embedded digits or an image folder, in [-1, 1].

:class:`DiffusionImagesDataModule` gives mapping batches ``{"image": (N, C, S, S) in [-1, 1],
"label": (N,), "index": (N,), "corrupted": (N,) bool}``. By default it holds scikit-learn's
1,797 handwritten digits (8x8, shipped inside the package), resized to ``image_size`` and
split per class into training, validation and test sets; ``data_dir`` reads an image-folder
tree instead (``train/<class>/<image>``, optional ``val/`` and ``test/``), loaded into memory
once (a small-image recipe, not a streaming loader).

``corrupt_fraction`` replaces that fraction of the *training* images (chosen with ``seed``) by
uniform noise in [-1, 1], an outlier no clean image resembles. It is the setting of the
scheduled pseudo-Huber loss (Khrapov et al. 2024, "Improving Diffusion Models's
Data-Corruption Resistance using Scheduled Pseudo-Huber Loss"): a model trained with an L2 loss
learns to reproduce the noise images, a robust loss less so. Validation and test images, and
:meth:`DiffusionImagesDataModule.reference_images`, stay clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int
from ._splits import SplitDataModule
from .digits import DIGITS_CLASSES, _raw_digits, check_image_options
from .image_folder import folder_classes, list_images, load_image
from .long_tail import stratified_split


def _check_fraction(value: float, arg: str, *, allow_zero: bool) -> float:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"`{arg}` must be a fraction in {interval}; got {value!r}.")
    return float(value)


def to_unit_range(images: Tensor) -> Tensor:
    """Images in [0, 1] mapped to [-1, 1], the range diffusion models are trained in."""
    return images * 2.0 - 1.0


def corrupt_images(images: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Replace ``round(fraction * N)`` of ``images`` (N, C, H, W), chosen with ``seed``, by
    uniform noise in [-1, 1]; returns the new images and the boolean mask of replaced ones."""
    fraction = _check_fraction(fraction, "corrupt_fraction", allow_zero=True)
    n = images.shape[0]
    mask = torch.zeros(n, dtype=torch.bool)
    count = round(fraction * n)
    if count == 0:
        return images, mask
    rng = np.random.default_rng(seed)
    chosen = torch.from_numpy(rng.choice(n, size=count, replace=False))
    mask[chosen] = True
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((count, *images.shape[1:]), generator=generator) * 2.0 - 1.0
    out = images.clone()
    out[chosen] = noise.to(images.dtype)
    return out, mask


class DiffusionImages(Dataset[dict[str, Any]]):
    """In-memory images in [-1, 1] with labels, as mapping samples.

    Each sample: ``{"image": (C, S, S), "label": int, "index": int, "corrupted": bool}``.
    """

    def __init__(self, images: Tensor, labels: Tensor, corrupted: Tensor | None = None) -> None:
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"`images` must be (N, C, H, W) and `labels` (N,); got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}."
            )
        self.images = images.contiguous()
        self.labels = labels.long()
        self.corrupted = (
            torch.zeros(images.shape[0], dtype=torch.bool) if corrupted is None else corrupted
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index],
            "label": int(self.labels[index]),
            "index": index,
            "corrupted": bool(self.corrupted[index]),
        }


def digits_images(image_size: int, in_chans: int = 1) -> tuple[Tensor, Tensor]:
    """All 1,797 embedded digits resized to ``image_size`` (bilinear), in [-1, 1], with labels."""
    check_image_options(image_size, in_chans)
    raw, labels = _raw_digits()
    x = torch.from_numpy(np.array(raw)).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0)
    if in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    return to_unit_range(x).contiguous(), torch.from_numpy(np.array(labels))


def _folder_images(paths: list, image_size: int, in_chans: int) -> tuple[Tensor, Tensor]:
    images = torch.stack([load_image(p, image_size, in_chans) for p, _ in paths])
    labels = torch.tensor([y for _, y in paths], dtype=torch.long)
    return to_unit_range(images), labels


class DiffusionImagesDataModule(SplitDataModule):
    """The diffusion recipe's data: embedded digits (default) or an image folder, in [-1, 1].

    Args:
        data_dir: ``None`` for the embedded digits; else an image-folder tree
            (``train/<class>/<image>``; ``val/`` and ``test/`` used when present, otherwise
            split from ``train`` like the digits).
        image_size: side S of the square images; 8 (the digits' own size) by default. A U-Net
            with L levels needs S divisible by 2^(L-1).
        in_chans: 1 (grey) or 3 (RGB).
        val_size, test_size: fractions held out per class for validation and test (0.1 each).
        corrupt_fraction: fraction of training images replaced by uniform noise (module
            docstring); 0 by default.
        batch_size, num_workers: of every loader.
        seed: the split, the corruption and the shuffling.

    Attributes (after ``setup``): ``train_dataset``, ``val_dataset``, ``test_dataset``,
    ``classes``; ``num_classes`` and ``in_chans`` are available before.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 8,
        in_chans: int = 1,
        val_size: float = 0.1,
        test_size: float = 0.1,
        corrupt_fraction: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_image_options(image_size, in_chans)
        self.data_dir = None if data_dir is None else Path(data_dir)
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ValueError(f"`data_dir` must be an existing folder; got {str(data_dir)!r}.")
        self.image_size = image_size
        self.in_chans = in_chans
        self.val_size = _check_fraction(val_size, "val_size", allow_zero=False)
        self.test_size = _check_fraction(test_size, "test_size", allow_zero=False)
        if self.val_size + self.test_size >= 1.0:
            raise ValueError(
                f"`val_size` + `test_size` must be < 1; got {self.val_size} + {self.test_size}."
            )
        self.corrupt_fraction = _check_fraction(
            corrupt_fraction, "corrupt_fraction", allow_zero=True
        )
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.num_workers = check_int(num_workers, "num_workers", 0)
        self.seed = check_int(seed, "seed", 0)
        self.classes: list[str] = (
            list(DIGITS_CLASSES) if self.data_dir is None else folder_classes(self.data_dir)
        )
        self._ready = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        splits = self._load_splits()
        train_x, train_y = splits["train"]
        self._clean_train = train_x
        noisy, mask = corrupt_images(train_x, self.corrupt_fraction, self.seed)
        self.train_dataset = DiffusionImages(noisy, train_y, mask)
        self.val_dataset = DiffusionImages(*splits["val"])
        self.test_dataset = DiffusionImages(*splits["test"])
        self._ready = True

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self.data_dir is None:
            images, labels = digits_images(self.image_size, self.in_chans)
            given: dict[str, tuple[Tensor, Tensor]] = {}
        else:
            root = self.data_dir
            images, labels = _folder_images(
                list_images(root / "train", self.classes), self.image_size, self.in_chans
            )
            given = {
                split: _folder_images(
                    list_images(root / split, self.classes), self.image_size, self.in_chans
                )
                for split in ("val", "test")
                if (root / split).is_dir()
            }
        missing = [s for s in ("val", "test") if s not in given]
        fractions = [self.val_size if s == "val" else self.test_size for s in missing]
        parts = stratified_split(labels.numpy(), fractions, seed=self.seed) if missing else None
        splits: dict[str, tuple[Tensor, Tensor]] = dict(given)
        keep = parts[0] if parts is not None else list(range(labels.numel()))
        splits["train"] = (images[keep], labels[keep])
        for k, split in enumerate(missing, start=1):
            assert parts is not None
            splits[split] = (images[parts[k]], labels[parts[k]])
        return splits

    def reference_images(self) -> tuple[Tensor, Tensor]:
        """The clean training images and labels (before corruption), the sample-quality
        reference set."""
        self.setup()
        return self._clean_train, self.train_dataset.labels

    @property
    def corrupted_mask(self) -> Tensor:
        """Which training images were replaced by noise, (N_train,) bool."""
        self.setup()
        return self.train_dataset.corrupted


__all__ = [
    "DiffusionImages",
    "DiffusionImagesDataModule",
    "corrupt_images",
    "digits_images",
    "to_unit_range",
]
