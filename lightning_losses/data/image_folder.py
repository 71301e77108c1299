"""The real classification loader: an image-folder tree read with PIL.

Layout (the torchvision ``ImageFolder`` convention, one tree per split)::

    root/
      train/<class_name>/*.png|jpg|...     required
      val/<class_name>/...                 optional
      test/<class_name>/...                optional

Class names are the folder names under ``train/``, sorted alphabetically; their position in
that list is the label, in every split. Files whose extension is not an image extension and
names starting with ``.`` are skipped; class folders are searched recursively.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .digits import check_image_options, check_stats, safe_std

IMG_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
"""File extensions read as images (compared case-insensitively)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split folder names; only ``train`` is required."""

Sample = tuple[Path, int]


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def folder_classes(root: str | os.PathLike[str]) -> list[str]:
    """The class names of an image-folder tree, from folder names only (no file is read).

    Checks that ``root`` and ``root/train`` exist, that ``train`` holds class folders, and that
    every class folder of ``val`` / ``test`` (when present) is also a class of ``train``.

    Raises:
        ValueError: ``root`` or ``root/train`` missing, no class folders, or a class in
            ``val`` / ``test`` that ``train`` lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"`data_dir` must be an existing folder; {str(root)!r} does not exist.")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ValueError(
            f"`data_dir` must contain a 'train' folder ({str(root)!r} holds "
            f"{sorted(p.name for p in root.iterdir())}); expected root/train/<class_name>/<image>."
        )
    classes = _class_dirs(train_dir)
    if not classes:
        raise ValueError(
            f"No class folders in {str(train_dir)!r}; expected train/<class_name>/<image>."
        )
    for split in SPLITS[1:]:
        split_dir = root / split
        if split_dir.is_dir():
            extra = sorted(set(_class_dirs(split_dir)) - set(classes))
            if extra:
                raise ValueError(
                    f"Class folder(s) {extra} in {str(split_dir)!r} have no counterpart in "
                    f"'train'; every split must use the classes of 'train': {classes}."
                )
    return classes


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def list_images(split_dir: str | os.PathLike[str], classes: Sequence[str]) -> list[Sample]:
    """``(path, label)`` for every image under ``split_dir/<class>/``, sorted by class then path.

    ``split_dir`` may lack some of ``classes`` (a validation folder without a rare class), but
    may not hold a class folder outside ``classes``, an empty class folder, or no image at all.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ValueError(f"Split folder {str(split_dir)!r} does not exist.")
    present = _class_dirs(split_dir)
    extra = sorted(set(present) - set(classes))
    if extra:
        raise ValueError(
            f"Class folder(s) {extra} in {str(split_dir)!r} are not among the training "
            f"classes {list(classes)}."
        )
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and _is_image(p))
        if not files:
            raise ValueError(
                f"Class folder {str(class_dir)!r} holds no image (extensions: "
                f"{', '.join(IMG_EXTENSIONS)}); remove it or add images."
            )
        samples.extend((path, label) for path in files)
    if not samples:
        raise ValueError(f"No images in {str(split_dir)!r}; expected <class_name>/<image> inside.")
    return samples


def load_image(path: str | os.PathLike[str], image_size: int, in_chans: int) -> Tensor:
    """One image as a float32 tensor (in_chans, S, S) in [0, 1]: PIL, "L" or "RGB", bilinear."""
    with Image.open(path) as img:
        img = img.convert("L" if in_chans == 1 else "RGB")
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(array)
    return x.unsqueeze(0) if in_chans == 1 else x.permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Images of an image-folder split, read lazily with PIL, as ``(image, label)`` pairs.

    Each item is converted to grey (``in_chans=1``) or RGB (``in_chans=3``), resized to
    ``image_size`` x ``image_size`` (bilinear, aspect ratio not kept), scaled to [0, 1] and
    normalised as ``(x - mean) / std`` per channel when ``mean`` / ``std`` are given.

    Args:
        samples: ``(path, label)`` pairs, as returned by :func:`list_images`.
        classes: class names in label order.
        image_size: side ``S`` of the square output images; default 32.
        in_chans: 1 or 3.
        mean, std: per-channel statistics (length ``in_chans``), or ``None`` for raw [0, 1]
            values (see :func:`channel_stats`).

    Example::

        classes = folder_classes("data")  # ["cat", "dog", ...]
        train = ImageFolderDataset(list_images("data/train", classes), classes, in_chans=3)
        image, label = train[0]  # float32 (3, 32, 32), int
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike[str], int]],
        classes: Sequence[str],
        image_size: int = 32,
        in_chans: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_image_options(image_size, in_chans)
        stats = check_stats(mean, std, in_chans)
        self.classes: list[str] = list(classes)
        self.samples: list[Sample] = [(Path(p), int(y)) for p, y in samples]
        bad = [y for _, y in self.samples if not 0 <= y < len(self.classes)]
        if bad:
            raise ValueError(
                f"`samples` labels must lie in [0, {len(self.classes)}); got {sorted(set(bad))}."
            )
        self.image_size = image_size
        self.in_chans = in_chans
        self.mean: tuple[float, ...] | None = stats[0] if stats else None
        self.std: tuple[float, ...] | None = stats[1] if stats else None
        self._norm = (
            (
                torch.tensor(stats[0], dtype=torch.float32).view(in_chans, 1, 1),
                torch.tensor(stats[1], dtype=torch.float32).view(in_chans, 1, 1),
            )
            if stats
            else None
        )

    @property
    def targets(self) -> list[int]:
        """The label of each sample, in order."""
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        x = load_image(path, self.image_size, self.in_chans)
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        return x, label


def channel_stats(
    samples: Sequence[tuple[str | os.PathLike[str], int]],
    image_size: int = 32,
    in_chans: int = 1,
    max_images: int = 1024,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of preprocessed images in [0, 1].

    Reads at most ``max_images`` images, a seeded random subset when there are more (1,024
    images pin the mean to about 1e-3 for natural images, and keep a setup on a large folder
    to seconds). Sums are accumulated in float64. A constant channel gets std 1.
    """
    if not samples:
        raise ValueError("`samples` is empty; cannot compute normalisation statistics.")
    rng = np.random.default_rng(seed)
    chosen = (
        range(len(samples))
        if len(samples) <= max_images
        else sorted(rng.choice(len(samples), size=max_images, replace=False).tolist())
    )
    total = torch.zeros(in_chans, dtype=torch.float64)
    total_sq = torch.zeros(in_chans, dtype=torch.float64)
    count = 0
    for i in chosen:
        x = load_image(samples[i][0], image_size, in_chans).to(torch.float64)
        total += x.sum(dim=(1, 2))
        total_sq += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = tuple(safe_std(math.sqrt(float(v))) for v in var)
    return tuple(float(m) for m in mean), std
