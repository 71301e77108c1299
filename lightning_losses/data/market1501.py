r"""A loader for the Market-1501 folder layout.

.. code-block:: text

    root/
      bounding_box_train/   training images
      query/                query images
      bounding_box_test/    gallery images

File names read ``PPPP_cCsS_FFFFFF_NN.jpg`` (Zheng et al., *Scalable Person
Re-identification: A Benchmark*, ICCV 2015): identity ``PPPP`` (``-1`` for junk boxes,
``0000`` for distractors), camera ``C``, video sequence ``S``, frame ``FFFFFF`` and box ``NN``;
e.g. ``0002_c1s1_000451_03.jpg`` or ``-1_c3s2_012345_01.jpg``. Files whose extension is not an
image's (Market ships ``Thumbs.db`` files) are skipped; an image whose name does not follow the
pattern is a ``ValueError`` that names it.

The splits:

* **train**: identities ``0`` and ``-1`` are dropped (they are no class), the others are
  relabelled ``0 .. T - 1`` in ascending order of their number (class labels for
  cross-entropy); :attr:`Market1501Images.pids` keeps the original numbers.
* **query** and **gallery**: ids as in the file names, junk ``-1`` and distractors ``0``
  included: the retrieval metric removes the junk and keeps the distractors as wrong matches,
  as the official evaluation does (:mod:`lightning_losses.metrics.retrieval`).

Cameras are the file names' numbers (1 .. 6 for Market). Images are read with PIL on access,
converted to RGB, resized to ``image_size`` (bilinear) and normalised with ImageNet's
statistics. Samples are the same mappings as the embedded identities':
``{"image", "id", "camera", "index"}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int
from .identities import ReIDSplits, augment_image

__all__ = ["MARKET_SPLITS", "Market1501Images", "market1501_splits", "parse_market_name"]

#: split name -> folder
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NAME = re.compile(r"^(-1|\d{4})_c(\d+)s(\d+)_(\d+)_(\d+)$")


def parse_market_name(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(identity, camera)`` from a Market-1501 file name; ValueError naming a malformed one.

    Example:
        >>> parse_market_name("bounding_box_test/0002_c1s1_000451_03.jpg")
        (2, 1)
        >>> parse_market_name("-1_c3s2_012345_01.jpg")
        (-1, 3)
    """
    p = Path(path)
    match = _NAME.match(p.stem)
    if match is None:
        raise ValueError(
            f"malformed Market-1501 file name {str(p)!r}: expected PPPP_cCsS_FFFFFF_NN.jpg "
            "(a 4-digit identity or -1, camera C, sequence S, frame and box numbers), e.g. "
            "0002_c1s1_000451_03.jpg."
        )
    return int(match.group(1)), int(match.group(2))


def _scan(folder: Path) -> list[tuple[Path, int, int]]:
    if not folder.is_dir():
        raise ValueError(f"Market-1501 folder {str(folder)!r} is missing.")
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
            found.append((path, *parse_market_name(path)))
    if not found:
        raise ValueError(f"Market-1501 folder {str(folder)!r} holds no .jpg or .png image.")
    return found


class Market1501Images(Dataset[dict[str, Any]]):
    """One split of a Market-1501 tree: images read from files on access.

    Args:
        paths: image files. ids: the ids the samples carry (train: class labels). cameras: camera
            numbers. pids: the file names' identity numbers (default ``ids``).
        image_size: ``(H, W)`` of the output images.
        mean, std: per-channel normalisation of ``x / 255``; default ImageNet's.
        augment: a random horizontal flip and shift on access (training).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        ids: Tensor,
        cameras: Tensor,
        image_size: tuple[int, int] = (256, 128),
        pids: Tensor | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.ids, self.cameras = ids.long(), cameras.long()
        self.pids = self.ids if pids is None else pids.long()
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.paths[index]) as img:
            h, w = self.image_size
            rgb = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1)
        x = (x / 255 - self.mean) / self.std
        if self.augment:
            x = augment_image(x)
        return {
            "image": x,
            "id": int(self.ids[index]),
            "camera": int(self.cameras[index]),
            "index": index,
        }


def market1501_splits(
    root: str | os.PathLike[str],
    image_size: tuple[int, int] = (256, 128),
    augment_train: bool = True,
) -> ReIDSplits:
    """The train, query and gallery splits of the Market-1501 tree at ``root``.

    Args:
        root: the folder holding ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``.
        image_size: ``(H, W)``, default (256, 128), the usual re-ID input size.
        augment_train: random flips and shifts on access to the train split.

    Raises:
        ValueError: a folder missing or without images, a malformed file name (named), or a
            training split with no identity other than 0 and -1.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"Market-1501 root {str(base)!r} is not a folder.")
    if len(image_size) != 2:
        raise ValueError(f"`image_size` must be (H, W); got {image_size!r}.")
    size = (check_int(image_size[0], "image_size", 8), check_int(image_size[1], "image_size", 8))
    files = {split: _scan(base / folder) for split, folder in MARKET_SPLITS.items()}

    train = [(p, pid, cam) for p, pid, cam in files["train"] if pid > 0]
    if not train:
        raise ValueError(
            f"{str(base / MARKET_SPLITS['train'])!r} holds no identity other than the junk (-1) "
            "and distractor (0) ids."
        )
    pids = torch.tensor([pid for _, pid, _ in train])
    _, labels = torch.unique(pids, sorted=True, return_inverse=True)
    splits: dict[str, Market1501Images] = {
        "train": Market1501Images(
            [p for p, _, _ in train],
            labels,
            torch.tensor([cam for _, _, cam in train]),
            size,
            pids=pids,
            augment=augment_train,
        )
    }
    for split in ("query", "gallery"):
        entries = files[split]
        splits[split] = Market1501Images(
            [p for p, _, _ in entries],
            torch.tensor([pid for _, pid, _ in entries]),
            torch.tensor([cam for _, _, cam in entries]),
            size,
        )
    return ReIDSplits(**splits)
